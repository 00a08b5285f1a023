"""SNP evidence as guests send it, decoded to the raw 1184-byte report plus carried certificates.

Accepted shapes of KBS ``primary_evidence``:
- Confidential Containers' attester JSON: ``{"attestation_report": <the report as JSON: byte
  arrays as integer lists, TCB objects, signature {r, s}>, "cert_chain": [{"cert_type": "VCEK" |
  "VLEK" | "ASK" | "ARK" | ..., "data": [DER bytes]}] | null}``; the report is re-serialised byte
  for byte, so its signature verifies over exactly what the firmware signed;
- ``{"report": "<standard base64 of the raw report>", "cert_chain": ...}``;
- a bare string: standard base64 of the raw report.
``"cert_table"`` (standard base64 of the certificate table the firmware returns with an extended
report: 24-byte entries {GUID, u32 offset, u32 length}, ended by a zero entry) may accompany the
second shape, as a source of carried certificates.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from shared.errors import ParseError
from shared.platforms.snp.abi import REPORT_SIZE

_MAX_CERTS = 8
_MAX_CERT_BYTES = 16 * 1024
_TABLE_ENTRY = struct.Struct("<16sII")
# Certificate-table GUIDs (RFC 4122 byte order) and what each entry holds.
TABLE_GUIDS = {
    uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae").bytes: "ARK",
    uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782").bytes: "ASK",
    uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd").bytes: "VCEK",
    uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1").bytes: "VLEK",
    uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea").bytes: "CRL",
}


def parse_cert_table(table: bytes) -> tuple[tuple[str, bytes], ...]:
    """Entries of an extended report's certificate table; unknown GUIDs are ignored, every offset
    and length is checked against the buffer."""
    out: list[tuple[str, bytes]] = []
    for index in range(_MAX_CERTS + 1):
        start = index * _TABLE_ENTRY.size
        if start + _TABLE_ENTRY.size > len(table):
            raise ParseError("evidence.cert_table", "no terminating all-zero entry")
        guid, offset, length = _TABLE_ENTRY.unpack_from(table, start)
        if guid == bytes(16) and offset == 0 and length == 0:
            return tuple(out)
        if length == 0 or length > _MAX_CERT_BYTES or offset + length > len(table):
            raise ParseError(f"evidence.cert_table[{index}]", f"offset {offset} length {length} outside the table")
        kind = TABLE_GUIDS.get(guid)
        if kind is not None:
            out.append((kind, table[offset : offset + length]))
    raise ParseError("evidence.cert_table", f"more than {_MAX_CERTS} entries")


@dataclass(frozen=True)
class SnpEvidence:
    report: bytes
    certificates: tuple[tuple[str, bytes], ...]  # (cert_type upper-case, DER)


def _byte_list(doc: dict[str, Any], name: str, size: int) -> bytes:
    value = doc.get(name)
    if not isinstance(value, list) or len(value) != size:
        raise ParseError(f"evidence.attestation_report.{name}", f"expected a list of {size} bytes")
    if not all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
        raise ParseError(f"evidence.attestation_report.{name}", "every item must be an integer 0..255")
    return bytes(value)


def _uint(doc: dict[str, Any], name: str, bits: int, *, optional: bool = False) -> int:
    value = doc.get(name)
    if value is None and optional:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < (1 << bits):
        raise ParseError(f"evidence.attestation_report.{name}", f"expected an unsigned {bits}-bit integer")
    return value


def _tcb(doc: dict[str, Any], name: str) -> bytes:
    tcb = doc.get(name)
    if not isinstance(tcb, dict):
        raise ParseError(f"evidence.attestation_report.{name}", "expected a TCB object")
    parts = {k: _uint(tcb, k, 8) for k in ("bootloader", "tee", "snp", "microcode")}
    if tcb.get("fmc") is None:  # Milan/Genoa layout
        return bytes([parts["bootloader"], parts["tee"], 0, 0, 0, 0, parts["snp"], parts["microcode"]])
    fmc = _uint(tcb, "fmc", 8)  # Turin layout
    return bytes([fmc, parts["bootloader"], parts["tee"], parts["snp"], 0, 0, 0, parts["microcode"]])


def _version(doc: dict[str, Any], name: str) -> bytes:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise ParseError(f"evidence.attestation_report.{name}", "expected {build, minor, major}")
    return bytes([_uint(value, "build", 8), _uint(value, "minor", 8), _uint(value, "major", 8)])


def report_from_json(doc: Any) -> bytes:
    """Re-serialise the attester's JSON form of the report into the firmware's byte layout."""
    if not isinstance(doc, dict):
        raise ParseError("evidence.attestation_report", "expected an object")
    out = bytearray(REPORT_SIZE)
    struct.pack_into("<IIQ", out, 0x000, _uint(doc, "version", 32), _uint(doc, "guest_svn", 32), _uint(doc, "policy", 64))
    out[0x010:0x020] = _byte_list(doc, "family_id", 16)
    out[0x020:0x030] = _byte_list(doc, "image_id", 16)
    struct.pack_into("<II", out, 0x030, _uint(doc, "vmpl", 32), _uint(doc, "sig_algo", 32))
    out[0x038:0x040] = _tcb(doc, "current_tcb")
    struct.pack_into("<QI", out, 0x040, _uint(doc, "plat_info", 64), _uint(doc, "key_info", 32))
    out[0x050:0x090] = _byte_list(doc, "report_data", 64)
    out[0x090:0x0C0] = _byte_list(doc, "measurement", 48)
    out[0x0C0:0x0E0] = _byte_list(doc, "host_data", 32)
    out[0x0E0:0x110] = _byte_list(doc, "id_key_digest", 48)
    out[0x110:0x140] = _byte_list(doc, "author_key_digest", 48)
    out[0x140:0x160] = _byte_list(doc, "report_id", 32)
    out[0x160:0x180] = _byte_list(doc, "report_id_ma", 32)
    out[0x180:0x188] = _tcb(doc, "reported_tcb")
    out[0x188:0x18B] = bytes(
        [
            _uint(doc, "cpuid_fam_id", 8, optional=True),
            _uint(doc, "cpuid_mod_id", 8, optional=True),
            _uint(doc, "cpuid_step", 8, optional=True),
        ]
    )
    out[0x1A0:0x1E0] = _byte_list(doc, "chip_id", 64)
    out[0x1E0:0x1E8] = _tcb(doc, "committed_tcb")
    out[0x1E8:0x1EB] = _version(doc, "current")
    out[0x1EC:0x1EF] = _version(doc, "committed")
    out[0x1F0:0x1F8] = _tcb(doc, "launch_tcb")
    struct.pack_into(
        "<QQ",
        out,
        0x1F8,
        _uint(doc, "launch_mit_vector", 64, optional=True),
        _uint(doc, "current_mit_vector", 64, optional=True),
    )
    signature = doc.get("signature")
    if not isinstance(signature, dict):
        raise ParseError("evidence.attestation_report.signature", "expected {r, s}")
    out[0x2A0:0x2E8] = _byte_list(signature, "r", 72)
    out[0x2E8:0x330] = _byte_list(signature, "s", 72)
    return bytes(out)


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(field, f"not base64: {exc}") from None


def _certificates(chain: Any) -> tuple[tuple[str, bytes], ...]:
    if chain is None:
        return ()
    if not isinstance(chain, list) or len(chain) > _MAX_CERTS:
        raise ParseError("evidence.cert_chain", f"expected a list of at most {_MAX_CERTS} entries")
    out = []
    for index, entry in enumerate(chain):
        if not isinstance(entry, dict) or not isinstance(entry.get("cert_type"), str):
            raise ParseError(f"evidence.cert_chain[{index}]", "expected {cert_type, data}")
        data = entry.get("data")
        if isinstance(data, str):
            der = _b64(data, f"evidence.cert_chain[{index}].data")
        elif isinstance(data, list) and len(data) <= _MAX_CERT_BYTES and all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in data
        ):
            der = bytes(data)
        else:
            raise ParseError(f"evidence.cert_chain[{index}].data", "expected DER bytes")
        out.append((entry["cert_type"].upper(), der))
    return tuple(out)


def decode_evidence(primary_evidence: bytes) -> SnpEvidence:
    """Raises only ParseError, naming the field."""
    try:
        doc = json.loads(primary_evidence)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ParseError("evidence", f"not JSON: {exc}") from None
    if isinstance(doc, str):
        return SnpEvidence(_b64(doc, "evidence"), ())
    if not isinstance(doc, dict):
        raise ParseError("evidence", "expected an object or a base64 string")
    if "attestation_report" in doc:
        return SnpEvidence(report_from_json(doc["attestation_report"]), _certificates(doc.get("cert_chain")))
    if isinstance(doc.get("report"), str):
        carried = _certificates(doc.get("cert_chain"))
        if isinstance(doc.get("cert_table"), str):
            carried += parse_cert_table(_b64(doc["cert_table"], "evidence.cert_table"))
        return SnpEvidence(_b64(doc["report"], "evidence.report"), carried)
    raise ParseError("evidence", 'expected {"attestation_report": ...} or {"report": "<base64>"}')
