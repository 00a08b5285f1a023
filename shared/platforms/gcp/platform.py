"""Google Cloud vTPM (``gcp-vtpm``) as the pipeline sees it: a go-tpm-tools attestation in,
verified claims and an appraisal out.

Evidence (KBS ``primary_evidence``) is the serialized go-tpm-tools ``attest.Attestation`` protobuf,
sent as JSON in one of two shapes:

* a JSON string: the base64 of the protobuf bytes;
* a JSON object ``{"attestation": "<base64 of the protobuf>"}``.

Base64 may be standard or URL-safe, padded or not. The challenge binding is the quotes'
``extraData``: every quote must carry the same one, at most 64 bytes; zero-padded to 64 it is the
evidence's report_data (the guest puts the KBS runtime-data digest there as the quote nonce).

Nothing is fetched: the AK certificate travels in the evidence and Google's intermediates ship with
the package, so there is no endorsement document. Trust rests on the AK certificate chaining to a
pinned Google EK/AK CA root (or, for tests and demos only, to roots from a PEM file), on that
certificate's key being the evidence's AK, and on the AK's signatures over the PCR quotes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shared.errors import ParseError, VerificationError
from shared.platforms.base import Appraisal, EvidenceInfo, NoEndorsementToFetch, Violation
from shared.platforms.gcp.akcert import AkCertificate, check_ak_matches, verify_ak_cert
from shared.platforms.gcp.attestation import GcpAttestation, parse_attestation
from shared.platforms.tpm import eventlog
from shared.platforms.tpm.abi import TPM_ALG_SHA256, parse_attest, parse_public
from shared.platforms.tpm.verify import QuoteClaims, verify_quote

TEE = "gcp-vtpm"
PREFIX = "parse.gcp"
REPORT_DATA_SIZE = 64

CHECK_NO_SHA256_QUOTE = "gcp.no_sha256_quote"
CHECK_NONCE_DIFFERS = "gcp.quote_nonce_mismatch"
CHECK_UNQUOTED_LOG = eventlog.EVENTLOG_REPLAY

# PCR 10 is where the OS's IMA measures files; the firmware log never explains it.
IMA_PCR = 10

PCR_NAMES = tuple(f"pcr{i}" for i in range(24))
# Reference names whose match vouches for what runs (the executables claim); the rest configure.
EXECUTABLE_NAMES = (*PCR_NAMES, "kernel_digest")
# Reference name -> the claim it is compared with (as in shared.trust.appraisal.COMPARED_CLAIMS).
COMPARED: dict[str, str] = {
    "project_id": "gcp.project_id",
    **{f"pcr{i}": f"tpm.pcr.sha256.{i}" for i in range(24)},
    "kernel_digest": "eventlog.kernel_digest",
    "secure_boot": "eventlog.secure_boot",
}


def _error(field: str, detail: str) -> ParseError:
    return ParseError(field, detail, prefix=PREFIX)


def _b64(text: str, field: str) -> bytes:
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _error(field, f"not base64: {exc}") from None


def decode_evidence(primary_evidence: bytes) -> bytes:
    """The protobuf bytes from KBS ``primary_evidence`` (a base64 JSON string, or
    ``{"attestation": base64}``); only ``ParseError`` comes out."""
    try:
        doc = json.loads(primary_evidence)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _error("evidence", f"not JSON: {exc}") from None
    if isinstance(doc, dict):
        value = doc.get("attestation")
        if not isinstance(value, str):
            raise _error("evidence.attestation", 'expected {"attestation": "<base64 protobuf>"}')
        raw = _b64(value, "evidence.attestation")
    elif isinstance(doc, str):
        raw = _b64(doc, "evidence")
    else:
        raise _error("evidence", "expected a base64 string or an object with an attestation member")
    if not raw:
        raise _error("evidence", "empty attestation")
    return raw


def common_extra_data(att: GcpAttestation) -> bytes:
    """The extraData every quote carries (they must agree), at most 64 bytes."""
    values = {parse_attest(q.message).extra_data for q in att.quotes}
    if len(values) != 1:
        raise _error("attestation.quotes.extra_data", "the quotes carry different extraData")
    extra = values.pop()
    if len(extra) > REPORT_DATA_SIZE:
        raise _error("attestation.quotes.extra_data", f"{len(extra)} bytes, at most {REPORT_DATA_SIZE}")
    return extra


def ak_spki_sha256(att: GcpAttestation) -> str:
    key = parse_public(att.ak_pub).key
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def load_roots_pem(path: str | Path) -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM file, each one a trust anchor (test vendors only)."""
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ParseError("gcp_ak_roots_path", f"cannot load {path}: {exc}", prefix="config") from None
    return tuple(certs)


def verify_attestation(
    att: GcpAttestation,
    now: datetime,
    *,
    roots: Sequence[x509.Certificate] | None = None,
    known_intermediates: Sequence[x509.Certificate] | None = None,
    nonce: bytes | None = None,
) -> tuple[dict[str, Any], AkCertificate]:
    """Every check of one attestation, in order: the AK certificate chain at ``now``; its key is
    ``ak_pub``; every quote verifies under the AK over its bank's PCRs (a SHA-256 quote must be
    among them) with one common extraData (``nonce`` when given); the event log, if any, replays to
    every quoted PCR it extends. Returns the flat claims and the verified certificate."""
    cert = verify_ak_cert(
        att.ak_cert_der, att.intermediate_der, now, roots=roots, known_intermediates=known_intermediates
    )
    ak = parse_public(att.ak_pub)
    check_ak_matches(cert, ak.key)
    if not any(q.hash_alg == TPM_ALG_SHA256 for q in att.quotes):
        raise VerificationError(CHECK_NO_SHA256_QUOTE, "no quote over the SHA-256 PCR bank")
    expected = nonce
    verified: dict[str, QuoteClaims] = {}
    for quote in att.quotes:
        if expected is None:
            expected = parse_attest(quote.message).extra_data
        try:
            verified[quote.hash_name] = verify_quote(
                quote.message, quote.signature, ak.key, {quote.hash_name: quote.pcrs}, expected
            )
        except VerificationError as err:
            if err.reason == "tpm.nonce_mismatch" and nonce is None:
                raise VerificationError(CHECK_NONCE_DIFFERS, "the quotes carry different extraData") from None
            raise
    # Only PCR values a verified quote covers are claimed (the protobuf may list more than the
    # quote's selection).
    quoted = {
        bank: {i: bytes.fromhex(v) for i, v in claims.pcrs.get(bank, {}).items()}
        for bank, claims in verified.items()
    }
    main = verified["sha256"]
    out: dict[str, Any] = dict(cert.claims())
    out.update(main.as_claims())
    for bank, claims in verified.items():
        if bank != "sha256":
            for index, value in claims.pcrs.get(bank, {}).items():
                out[f"tpm.pcr.{bank}.{index}"] = value
    out["tpm.quote_banks"] = sorted(verified)
    out["tpm.ak.sha256"] = ak_spki_sha256(att)
    if att.event_log:
        out.update(_replayed_log_claims(att.event_log, quoted))
    return out, cert


def _replayed_log_claims(raw: bytes, quoted: Mapping[str, Mapping[int, bytes]]) -> dict[str, Any]:
    log = eventlog.parse(raw)
    extended = [i for i in eventlog.extended_pcrs(log) if i != IMA_PCR]
    # A log event in a PCR the SHA-256 quote leaves out would be a claim nothing signed.
    missing = [i for i in extended if i not in quoted["sha256"]]
    if missing:
        raise VerificationError(
            CHECK_UNQUOTED_LOG, f"sha256 PCR {missing[0]}: the log extends it but the quote does not cover it"
        )
    eventlog.verify_against(
        log, {bank: {i: pcrs[i] for i in extended if i in pcrs} for bank, pcrs in quoted.items()}
    )
    return eventlog.claims(log, "sha256")


class GcpVtpmPlatform(NoEndorsementToFetch):  # the AK certificate travels with the evidence
    reference_names = tuple(COMPARED)

    def __init__(self, tee: str = TEE, roots_path: str | Path | None = None) -> None:
        self.tee = tee
        # None: Google's pinned roots and the shipped intermediates. A PEM file (test vendors only):
        # its certificates are the only anchors, and Google's intermediates play no part.
        self.roots = None if roots_path is None else load_roots_pem(roots_path)
        self.known_intermediates = None if roots_path is None else ()

    # -- intake ----------------------------------------------------------------------------
    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        raw = decode_evidence(primary_evidence)
        att = parse_attestation(raw)
        extra = common_extra_data(att)
        return EvidenceInfo(
            evidence=raw,
            report_data=extra.ljust(REPORT_DATA_SIZE, b"\x00"),
            endorsement_key=f"gcp-ak:{ak_spki_sha256(att)}",
        )

    # -- identity --------------------------------------------------------------------------
    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        if endorsement:
            raise VerificationError(
                "endorsement.chain_invalid", f"expected no endorsement, got {len(endorsement)} items"
            )
        att = parse_attestation(evidence)
        claims, _ = verify_attestation(
            att, now, roots=self.roots, known_intermediates=self.known_intermediates
        )
        return claims

    # -- measurement and policy ------------------------------------------------------------
    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal:
        violations: list[Violation] = []
        for name, claim in COMPARED.items():
            wanted = references.get(name)
            if not wanted:
                continue
            got = _text(claims.get(claim))
            if got not in {w.lower() for w in wanted}:
                violations.append(Violation(name, got or "absent", ",".join(sorted(wanted))))
        notes: list[str] = []
        vector = {
            # Reached only after verify_identity: the AK certificate chained to a pinned root and
            # its key signed the quotes, so the instance it names is the one that quoted.
            "instance-identity": 2,
            # The vTPM is Google's; its certificate chain is the hardware's endorsement.
            "hardware": 2,
            "configuration": 2,
            "executables": 2,
            # No "runtime-opaque": a Shielded VM without confidential computing runs in memory the
            # host can read and write, so nothing here says the runtime is opaque to it.
        }
        if not any(references.get(name) for name in EXECUTABLE_NAMES):
            vector["executables"] = 33  # nothing provisioned: unrecognized runtime (warning tier)
            notes.append("measurement.no_reference_values")
        if "eventlog.secure_boot" not in claims:
            notes.append("eventlog.absent")
        if claims.get("eventlog.secure_boot") is not True and not references.get("secure_boot"):
            # Secure Boot off (or unknown: no log) and no operator decision about it.
            vector["configuration"] = 32
            notes.append("configuration.secure_boot_not_enabled")
        return Appraisal(vector=vector, violations=violations, notes=notes)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()
