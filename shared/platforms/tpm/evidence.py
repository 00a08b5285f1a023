"""Plain TPM 2.0 evidence as a guest sends it (Trustee's generic TPM attester shape), decoded.

Accepted ``primary_evidence`` (a JSON object, or a JSON string holding one)::

    {
      "ak_public": "<standard base64 of the AK: DER SubjectPublicKeyInfo, TPMT_PUBLIC or TPM2B_PUBLIC>",
      "tpm_quote": {
        "message":   "<TPMS_ATTEST, standard base64 or hex>",
        "signature": "<standard base64 of the marshalled TPMT_SIGNATURE>",
        "pcrs":      ["<hex SHA-256 PCR 0>", ..., "<hex SHA-256 PCR 23>"]
      },
      "eventlog": "<standard base64 of a TCG measured-boot log>"    (optional)
    }

Parsing is strict: every member has one type, unknown members are refused (a field we would
silently ignore is a field an attacker could use to confuse a reader of the record), the PCR list
is exactly 24 SHA-256 values, and the quote and AK structures must parse. Only ``ParseError``
(``parse.tpm.evidence.*``) leaves this module. Nothing here is verified: see ``verify_quote``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from shared.errors import ParseError
from shared.platforms.tpm.abi import Attest, Signature, parse_attest, parse_signature
from shared.platforms.tpm.verify import PublicKey, load_ak

PREFIX = "parse.tpm"
PCR_COUNT = 24
SHA256_SIZE = 32
# Bounds that no genuine evidence reaches: they keep a hostile document from costing much.
_MAX_FIELD_CHARS = 16 * 1024
_MAX_EVENTLOG_BYTES = 1024 * 1024
_HEX = re.compile(r"[0-9a-fA-F]*")
_TOP_LEVEL = frozenset({"ak_public", "tpm_quote", "eventlog"})
_QUOTE_MEMBERS = frozenset({"message", "signature", "pcrs"})


@dataclass(frozen=True)
class TpmEvidence:
    """A decoded evidence. ``ak_spki`` is the AK as DER SubjectPublicKeyInfo whatever form it came
    in, so its fingerprint names the key, not its encoding."""

    ak: PublicKey
    ak_spki: bytes
    message: bytes
    attest: Attest
    signature: Signature
    signature_raw: bytes
    pcrs: tuple[bytes, ...]  # the SHA-256 bank, PCR 0..23
    eventlog: bytes | None

    @property
    def ak_sha256(self) -> str:
        return hashlib.sha256(self.ak_spki).hexdigest()

    def pcr_banks(self) -> dict[str, dict[int, bytes]]:
        return {"sha256": dict(enumerate(self.pcrs))}

    def canonical(self) -> bytes:
        """One byte form per evidence (sorted keys, base64 everywhere, lower-case hex): what intake
        hands on and what the later stages re-parse."""
        doc: dict[str, Any] = {
            "ak_public": base64.b64encode(self.ak_spki).decode(),
            "tpm_quote": {
                "message": base64.b64encode(self.message).decode(),
                "signature": base64.b64encode(self.signature_raw).decode(),
                "pcrs": [value.hex() for value in self.pcrs],
            },
        }
        if self.eventlog is not None:
            doc["eventlog"] = base64.b64encode(self.eventlog).decode()
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def ak_spki(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def ak_fingerprint(material: object) -> str:
    """SHA-256 hex of the AK's DER SubjectPublicKeyInfo: the name it is registered under."""
    return hashlib.sha256(ak_spki(load_ak(material))).hexdigest()


def _string(value: Any, field: str, max_chars: int = _MAX_FIELD_CHARS) -> str:
    if not isinstance(value, str) or not value:
        raise ParseError(field, "expected a non-empty string", prefix=PREFIX)
    if len(value) > max_chars:
        raise ParseError(field, f"{len(value)} characters, at most {max_chars}", prefix=PREFIX)
    return value


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(field, f"not standard base64: {exc}", prefix=PREFIX) from None


def _b64_or_hex(text: str, field: str) -> bytes:
    # A TPMS_ATTEST starts with the magic ff544347: its hex form always begins "ff54", which is
    # also valid base64 of other bytes, so hex is recognised by its alphabet and its magic.
    if len(text) % 2 == 0 and _HEX.fullmatch(text) and text[:8].lower() == "ff544347":
        return bytes.fromhex(text)
    return _b64(text, field)


def _pcrs(value: Any) -> tuple[bytes, ...]:
    field = "evidence.tpm_quote.pcrs"
    if not isinstance(value, list) or len(value) != PCR_COUNT:
        raise ParseError(field, f"expected a list of {PCR_COUNT} hex SHA-256 values", prefix=PREFIX)
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or len(item) != 2 * SHA256_SIZE or not _HEX.fullmatch(item):
            raise ParseError(f"{field}[{index}]", f"expected {2 * SHA256_SIZE} hex digits", prefix=PREFIX)
        out.append(bytes.fromhex(item))
    return tuple(out)


def _members(doc: dict[str, Any], allowed: frozenset[str], field: str) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise ParseError(
            f"{field}.{unknown[0]}", f"unknown member (expected {', '.join(sorted(allowed))})", prefix=PREFIX
        )


def decode_evidence(primary_evidence: bytes) -> TpmEvidence:
    """Raises only ``ParseError``, naming the field."""
    try:
        doc = json.loads(primary_evidence)
        if isinstance(doc, str):  # the evidence object sent as a JSON string
            doc = json.loads(doc)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError("evidence", f"not JSON: {exc}", prefix=PREFIX) from None
    if not isinstance(doc, dict):
        raise ParseError("evidence", "expected an object {ak_public, tpm_quote[, eventlog]}", prefix=PREFIX)
    _members(doc, _TOP_LEVEL, "evidence")
    for member in ("ak_public", "tpm_quote"):
        if member not in doc:
            raise ParseError(f"evidence.{member}", "missing", prefix=PREFIX)
    ak_bytes = _b64(_string(doc["ak_public"], "evidence.ak_public"), "evidence.ak_public")
    try:
        ak = load_ak(ak_bytes)
    except ParseError as err:
        raise ParseError("evidence.ak_public", f"{err.reason}: {err.detail}", prefix=PREFIX) from None
    quote = doc["tpm_quote"]
    if not isinstance(quote, dict):
        raise ParseError("evidence.tpm_quote", "expected an object {message, signature, pcrs}", prefix=PREFIX)
    _members(quote, _QUOTE_MEMBERS, "evidence.tpm_quote")
    for member in sorted(_QUOTE_MEMBERS):
        if member not in quote:
            raise ParseError(f"evidence.tpm_quote.{member}", "missing", prefix=PREFIX)
    message = _b64_or_hex(
        _string(quote["message"], "evidence.tpm_quote.message"), "evidence.tpm_quote.message"
    )
    signature_raw = _b64(
        _string(quote["signature"], "evidence.tpm_quote.signature"), "evidence.tpm_quote.signature"
    )
    pcrs = _pcrs(quote["pcrs"])
    attest = parse_attest(message)
    signature = parse_signature(signature_raw)
    eventlog = None
    if doc.get("eventlog") is not None:
        limit = 4 * _MAX_EVENTLOG_BYTES // 3 + 4
        eventlog = _b64(_string(doc["eventlog"], "evidence.eventlog", limit), "evidence.eventlog")
    return TpmEvidence(
        ak=ak,
        ak_spki=ak_spki(ak),
        message=message,
        attest=attest,
        signature=signature,
        signature_raw=signature_raw,
        pcrs=pcrs,
        eventlog=eventlog,
    )
