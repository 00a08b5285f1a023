"""Azure confidential VMs with a paravisor vTPM (``az-snp-vtpm``, ``az-tdx-vtpm``) in the pipeline.

The evidence has two layers, verified by two cores:

* the hardware layer -- the SNP report inside the HCL report (signed by the VCEK the guest sends
  along) or the TD quote (Intel collateral by FMSPC) -- is handed to the ``SnpPlatform`` /
  ``DcapPlatform`` the runtime already has, for endorsement planning, caching and verification;
* the vTPM layer: SHA-256(var data) must be the hardware REPORT_DATA[0:32] (so the var data, and
  the attestation key in it, come from inside the TEE); that AK must have signed the TPM quote
  over the supplied PCR values; the quote's extraData is the KBS binding.

Intake sees ``EvidenceInfo.report_data`` = the quote's extraData zero-padded to 64 bytes, which it
compares with the KBS runtime-data digest the same way as for SNP/TDX. The evidence carried on the
bus is the canonical v1/v2 JSON of what was sent, so every later stage re-parses one shape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.errors import ParseError, VerificationError
from shared.platforms.azure.evidence import (
    TEE_SNP,
    TEE_TDX,
    AzureEvidence,
    ak_public_key,
    check_evidence_bindings,
    parse_azure_evidence,
)
from shared.platforms.base import Appraisal, EndorsementRequest, EvidenceInfo, Violation
from shared.platforms.snp.platform import SnpPlatform, endorsement_cache_key
from shared.platforms.snp.platform import parse as parse_snp_report
from shared.platforms.tdx.platform import DcapPlatform
from shared.platforms.tpm.abi import parse_attest
from shared.platforms.tpm.verify import QuoteClaims, verify_quote

__all__ = [
    "PCR_REFERENCE_NAMES",
    "AzureVtpmPlatform",
    "canonical_evidence",
    "layer_claims",
    "pcr_violations",
    "quote_extra_data",
    "verify_vtpm_layer",
]

PCR_REFERENCE_NAMES = tuple(f"pcr{i}" for i in range(24))
# Reference names the evidence can only satisfy with a replayed event log, which Azure evidence
# does not carry: provisioning one refuses every evidence (fail closed), with that reason.
_EVENTLOG_REFERENCES = {"kernel_digest": "eventlog.kernel_digest", "secure_boot": "eventlog.secure_boot"}
_REPORT_DATA_SIZE = 64
_HW_NAME = {TEE_SNP: "snp", TEE_TDX: "tdx"}
# Well-known vm-configuration members, by claim name; others are kept in snake case.
_VM_CONFIGURATION = {
    "secure-boot": "azure.secure_boot",
    "tpm-enabled": "azure.tpm_enabled",
    "tpm-persisted": "azure.tpm_persisted",
    "console-enabled": "azure.console_enabled",
    "vmUniqueId": "azure.vm_unique_id",
    "root-cert-thumbprint": "azure.root_cert_thumbprint",
}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def canonical_evidence(ev: AzureEvidence) -> bytes:
    """The v1 JSON of ``ev`` (v2 stays v2: its user-data rule depends on the version). Parsing it
    again gives the same ``AzureEvidence``; v0's int lists and PEM become hex, base64url and DER."""
    doc: dict[str, Any] = {
        "version": max(ev.version, 1),
        "tpm_quote": {
            "signature": ev.quote_signature.hex(),
            "message": ev.quote_message.hex(),
            "pcrs": [pcr.hex() for pcr in ev.pcrs],
        },
        "hcl_report": _b64url(ev.hcl.raw),
    }
    if ev.tee == TEE_SNP:
        assert ev.vcek_der is not None
        doc["vcek"] = _b64url(ev.vcek_der)
    else:
        assert ev.td_quote is not None
        doc["td_quote"] = _b64url(ev.td_quote)
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def quote_extra_data(ev: AzureEvidence) -> bytes:
    """The TPM quote's extraData: the KBS binding (not yet authenticated: the AK check says so)."""
    return parse_attest(ev.quote_message).extra_data


def verify_vtpm_layer(ev: AzureEvidence, nonce: bytes | None = None) -> tuple[QuoteClaims, str]:
    """The quote verifies under the var data's AK over the supplied PCRs (and, given ``nonce``,
    carries it as extraData). Returns the quote claims and the AK's SHA-256 (of its
    SubjectPublicKeyInfo DER, as for a registered plain-TPM AK)."""
    ak = ak_public_key(ev.var_data)
    quote = verify_quote(ev.quote_message, ev.tpmt_signature, ak, ev.pcr_banks, nonce)
    spki = ak.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return quote, hashlib.sha256(spki).hexdigest()


def _claim_name(key: str) -> str:
    return _VM_CONFIGURATION.get(key) or "azure." + _CAMEL.sub("_", key).replace("-", "_").lower()


def layer_claims(ev: AzureEvidence, quote: QuoteClaims, ak_sha256: str) -> dict[str, Any]:
    """The vTPM layer's claims: ``tpm.*`` (PCRs as ``tpm.pcr.sha256.<i>``), ``tpm.ak.sha256`` and
    ``azure.*`` (the HCL and the var data's vm-configuration)."""
    out: dict[str, Any] = dict(quote.as_claims())
    out["tpm.ak.sha256"] = ak_sha256
    out["azure.evidence_version"] = ev.version
    out["azure.hcl.version"] = ev.hcl.version
    out["azure.hcl.report_type"] = _HW_NAME[ev.tee]
    out["azure.var_data.sha256"] = ev.hcl.variable_data_sha256.hex()
    out["azure.ek_present"] = ev.var_data.ek_jwk is not None
    if ev.var_data.user_data is not None:
        out["azure.user_data"] = ev.var_data.user_data.hex()
    for key, value in ev.var_data.vm_configuration.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            out[_claim_name(str(key))] = value
    return out


def pcr_violations(claims: dict[str, Any], references: dict[str, frozenset[str]]) -> list[Violation]:
    """``pcr<N>`` for every provisioned PCR whose quoted value is not in its reference set, and
    event-log references the evidence cannot satisfy."""
    found: list[Violation] = []
    for index, name in enumerate(PCR_REFERENCE_NAMES):
        wanted = references.get(name)
        if not wanted:
            continue
        got = str(claims.get(f"tpm.pcr.sha256.{index}", "")).lower()
        if got not in {w.lower() for w in wanted}:
            found.append(Violation(name, got, ",".join(sorted(wanted))))
    for name, claim in _EVENTLOG_REFERENCES.items():
        wanted = references.get(name)
        if not wanted:
            continue
        value = claims.get(claim)
        got = "" if value is None else str(value).lower()
        if got not in {w.lower() for w in wanted}:
            found.append(Violation(name, got or "(no event log)", ",".join(sorted(wanted))))
    return found


class AzureVtpmPlatform:
    """One instance per TEE name; ``snp`` / ``dcap`` are the runtime's SNP and TDX platforms."""

    def __init__(self, tee: str, snp: SnpPlatform, dcap: DcapPlatform) -> None:
        if tee not in _HW_NAME:
            raise ValueError(f"not an Azure vTPM TEE: {tee}")
        self.tee = tee
        self.snp = snp
        self.dcap = dcap
        hardware = snp.reference_names if tee == TEE_SNP else dcap.reference_names
        self.reference_names: tuple[str, ...] = tuple(
            dict.fromkeys((*hardware, *PCR_REFERENCE_NAMES, *_EVENTLOG_REFERENCES))
        )

    # -- helpers ---------------------------------------------------------------------------
    def _parse(self, evidence: bytes) -> AzureEvidence:
        return parse_azure_evidence(self.tee, evidence)

    def _dcap_evidence(self, ev: AzureEvidence) -> EvidenceInfo:
        assert ev.td_quote is not None
        doc = {"quote": base64.b64encode(ev.td_quote).decode("ascii"), "cc_eventlog": None}
        return self.dcap.parse_evidence(json.dumps(doc).encode())

    def _hardware(self, ev: AzureEvidence) -> bytes:
        """What the hardware platform takes as evidence: the SNP report, or DCAP's bus form."""
        if self.tee == TEE_SNP:
            return ev.hcl.hardware_report
        return self._dcap_evidence(ev).evidence

    def _carried(self, ev: AzureEvidence, carried: tuple[bytes, ...]) -> tuple[bytes, ...]:
        if carried or ev.vcek_der is None:
            return carried
        return (ev.vcek_der,)

    # -- intake ----------------------------------------------------------------------------
    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        ev = self._parse(primary_evidence)
        extra_data = quote_extra_data(ev)
        if not extra_data or len(extra_data) > _REPORT_DATA_SIZE:
            raise ParseError(
                "evidence.tpm_quote.extra_data", f"{len(extra_data)} bytes, expected 1..{_REPORT_DATA_SIZE}"
            )
        if ev.version >= 2 and not (ev.var_data.user_data or b"").startswith(extra_data):
            # Checked again at identity, where the var data is known to come from the TEE.
            raise VerificationError(
                "azure.user_data_mismatch", "user-data does not start with the quote's nonce"
            )
        if self.tee == TEE_SNP:
            assert ev.vcek_der is not None
            key = endorsement_cache_key(parse_snp_report(ev.hcl.hardware_report))
            carried: tuple[bytes, ...] = (ev.vcek_der,)
        else:
            key = self._dcap_evidence(ev).endorsement_key
            carried = ()
        return EvidenceInfo(
            evidence=canonical_evidence(ev),
            report_data=extra_data.ljust(_REPORT_DATA_SIZE, b"\x00"),
            endorsement_key=key,
            carried_endorsement=carried,
            # Azure binds init-data through PCR8 (extended by the guest), which the intake
            # comparison (a launch field holding the digest) does not model: not offered.
            init_data_binding=None,
        )

    # -- endorsement -----------------------------------------------------------------------
    def endorsement_requests(self, evidence: bytes, carried: tuple[bytes, ...]) -> list[EndorsementRequest]:
        ev = self._parse(evidence)
        if self.tee == TEE_SNP:
            return self.snp.endorsement_requests(self._hardware(ev), self._carried(ev, carried))
        return self.dcap.endorsement_requests(self._hardware(ev), carried)

    def assemble_endorsement(self, documents: list[bytes | None], carried: tuple[bytes, ...]) -> list[bytes]:
        if self.tee == TEE_SNP:
            return self.snp.assemble_endorsement(documents, carried)
        return self.dcap.assemble_endorsement(documents, carried)

    def document_ttl(self, request: EndorsementRequest, document: bytes, now: datetime) -> int | None:
        hardware = self.snp if self.tee == TEE_SNP else self.dcap
        return hardware.document_ttl(request, document, now)

    # -- identity --------------------------------------------------------------------------
    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        ev = self._parse(evidence)
        # 1. the hardware report is genuine (the SNP/TDX core's checks and reasons);
        if self.tee == TEE_SNP:
            claims = self.snp.verify_identity(self._hardware(ev), endorsement, now)
        else:
            claims = self.dcap.verify_identity(self._hardware(ev), endorsement, now)
        # 2. it commits to the var data (TDX: and the HCL's TDREPORT is the quoted TD); v2: the
        #    var data's user-data starts with the nonce the quote carries;
        extra_data = quote_extra_data(ev)
        check_evidence_bindings(ev, extra_data)
        # 3. the var data's AK signed the quote over these PCRs. The nonce itself was compared
        #    with the KBS challenge at intake (report_data).
        quote, ak_sha256 = verify_vtpm_layer(ev, extra_data)
        claims.update(layer_claims(ev, quote, ak_sha256))
        return claims

    # -- measurement and policy ------------------------------------------------------------
    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal:
        ev = self._parse(evidence)
        if self.tee == TEE_SNP:
            hardware = self.snp.appraise(self._hardware(ev), claims, references)
        else:
            hardware = self.dcap.appraise(self._hardware(ev), claims, references)
        vector = dict(hardware.vector)
        notes = [n for n in hardware.notes if n != "measurement.no_reference_values"]
        violations = list(hardware.violations) + pcr_violations(claims, references)
        measured_hw = "measurement.no_reference_values" not in hardware.notes
        measured_pcrs = any(references.get(name) for name in PCR_REFERENCE_NAMES)
        # The hardware measurement is the paravisor's; the guest's boot chain is in the PCRs.
        # Either one provisioned makes the runtime recognized; neither is the warning tier.
        if measured_hw or measured_pcrs:
            if vector.get("executables") == 33:
                vector["executables"] = 2
        else:
            vector["executables"] = 33
            notes.append("measurement.no_reference_values")
        if not measured_pcrs:
            notes.append("azure.pcrs.no_reference_values")
        if claims.get("azure.secure_boot") is False:
            vector["configuration"] = max(vector.get("configuration", 2), 32)
            notes.append("azure.secure_boot_disabled")
        return Appraisal(vector=vector, violations=violations, notes=notes)
