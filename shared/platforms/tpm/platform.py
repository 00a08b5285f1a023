"""A plain TPM 2.0 (a physical TPM or a software one, no confidential-computing hardware around it)
as the pipeline sees it.

Trust model: a TPM quote proves that the holder of an attestation key (AK) reported these PCR
values, fresh for this nonce. Who may hold an AK is not a vendor's statement here but the
operator's: the registry of AK fingerprints kept as the reference value ``tpm``/``ak`` (SHA-256 of
each AK's SubjectPublicKeyInfo; enrolling a node = adding its fingerprint, e.g. after checking its
EK certificate and running credential activation out of band). So there is nothing to fetch: the
endorsement stage gets no requests, identity verification checks the quote under the evidence's
own AK, and the appraisal refuses any AK that is not registered (fail closed: no registry, no
attestation).

Freshness across quotes of one AK (the TPM clock never goes backwards, ``validate.check_clock``)
needs the last state seen per AK, which lives in Redis: the claims carry ``tpm.clock``,
``tpm.reset_count`` and ``tpm.restart_count`` for the stage that keeps it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.errors import ParseError, VerificationError
from shared.kbs.binding import REPORT_DATA_SIZE
from shared.platforms.base import Appraisal, EvidenceInfo, NoEndorsementToFetch, Violation
from shared.platforms.tpm import eventlog as tcg
from shared.platforms.tpm.evidence import TpmEvidence, decode_evidence
from shared.platforms.tpm.verify import verify_quote
from shared.trust.appraisal import COMPARED_CLAIMS

TEE = "tpm"
AK_CLAIM = "tpm.ak.sha256"
PCR_NAMES = tuple(f"pcr{i}" for i in range(24))
# Reference names whose mismatch means "this is not an approved boot chain".
MEASUREMENT_NAMES = (*PCR_NAMES, "kernel_digest")


def endorsement_key(evidence: TpmEvidence) -> str:
    return f"tpm-ak:{evidence.ak_sha256}"


def quote_pcrs(evidence: TpmEvidence) -> dict[str, dict[int, bytes]]:
    return evidence.pcr_banks()


def verify_evidence(evidence: TpmEvidence, nonce: bytes | None) -> dict[str, Any]:
    """The quote under the evidence's AK over its PCRs (``nonce``: the expected extraData, or None
    when it was checked elsewhere), then the event log, if any, against the quoted PCRs. Flat claims."""
    quoted = verify_quote(evidence.message, evidence.signature, evidence.ak, evidence.pcr_banks(), nonce)
    claims: dict[str, Any] = dict(quoted.as_claims())
    claims["tpm.safe"] = quoted.safe
    claims[AK_CLAIM] = evidence.ak_sha256
    if evidence.eventlog is not None:
        log = tcg.parse(evidence.eventlog)
        # Only the PCRs the log extends are its business: PCR 10 (IMA) or PCRs a later stage
        # extends without logging it here are not compared, and are judged by reference values.
        extended = set(tcg.extended_pcrs(log))
        banks = {
            bank: {index: bytes.fromhex(value) for index, value in values.items() if index in extended}
            for bank, values in quoted.pcrs.items()
        }
        if not any(banks.values()):
            raise VerificationError(tcg.EVENTLOG_REPLAY, "the log extends no PCR that the quote covers")
        tcg.verify_against(log, banks)
        claims.update(tcg.claims(log, "sha256" if "sha256" in log.banks else None))
        claims["eventlog.pcrs"] = sorted(extended)
    return claims


class TpmPlatform(NoEndorsementToFetch):  # the AK registry (reference values) is the trust anchor
    tee = TEE
    reference_names: tuple[str, ...] = tuple(COMPARED_CLAIMS[TEE])

    def __init__(self, tee: str = TEE) -> None:
        if tee != TEE:
            raise ValueError(f"TpmPlatform judges {TEE!r} evidence, not {tee!r}")
        self.tee = tee

    # -- intake ----------------------------------------------------------------------------
    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        evidence = decode_evidence(primary_evidence)
        extra = evidence.attest.extra_data
        if len(extra) > REPORT_DATA_SIZE:
            raise ParseError(
                "evidence.tpm_quote.message.extra_data",
                f"{len(extra)} bytes, more than the {REPORT_DATA_SIZE} of a report_data",
                prefix="parse.tpm",
            )
        return EvidenceInfo(
            evidence=evidence.canonical(),
            # Intake compares all 64 bytes with the runtime-data hash zero-padded to 64, so a
            # TPM that signed only the digest (48 bytes of SHA-384) binds it as well as the padded form.
            report_data=extra.ljust(REPORT_DATA_SIZE, b"\x00"),
            endorsement_key=endorsement_key(evidence),
        )

    # -- endorsement -----------------------------------------------------------------------
    # -- identity --------------------------------------------------------------------------
    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        if endorsement:
            raise VerificationError(
                "endorsement.chain_invalid", f"a plain TPM takes no endorsement, got {len(endorsement)}"
            )
        decoded = decode_evidence(evidence)
        # The nonce binding (extraData = the KBS runtime-data hash) was checked at intake.
        return verify_evidence(decoded, decoded.attest.extra_data)

    # -- measurement and policy ------------------------------------------------------------
    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal:
        violations: list[Violation] = []
        notes: list[str] = []
        ak = str(claims.get(AK_CLAIM, "")).lower()
        registered = bool(ak) and ak in references.get("ak", frozenset())
        if not registered:
            want = "a registered AK" if references.get("ak") else "an AK registry (none provisioned)"
            violations.append(Violation("ak", ak or "none", want))
        provisioned = [name for name in MEASUREMENT_NAMES if references.get(name)]
        for name in provisioned:
            got = _claim_text(claims, COMPARED_CLAIMS[TEE][name])
            if got not in references[name]:
                violations.append(Violation(name, got or "absent", ", ".join(sorted(references[name]))))
        secure_boot = references.get("secure_boot")
        if secure_boot:
            got = _claim_text(claims, COMPARED_CLAIMS[TEE]["secure_boot"])
            if got not in {value.lower() for value in secure_boot}:
                violations.append(Violation("secure_boot", got or "absent", ", ".join(sorted(secure_boot))))
        vector = {
            "instance-identity": 2,  # the quote verifies under the AK and carries our nonce
            # A registered AK is a TPM the operator enrolled; any other is not recognised as genuine.
            "hardware": 2 if registered else 97,
            "configuration": 2,
            "executables": 2,
            # No "runtime-opaque": a plain TPM measures the boot but does not encrypt the memory
            # of what runs; the host (or anyone with physical access) can read it. No claim (0).
        }
        if not provisioned:
            vector["executables"] = 33  # no boot-chain reference values: unrecognised runtime (warning)
            notes.append("measurement.no_reference_values")
        if "eventlog.event_count" not in claims:
            notes.append("tpm.no_eventlog")
        return Appraisal(vector=vector, violations=violations, notes=notes)


def _claim_text(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()
