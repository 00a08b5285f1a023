"""The Intel SGX extension of PCK certificates (OID 1.2.840.113741.1.13.1), read by hand.

``cryptography`` hands vendor extensions over as opaque bytes. Intel's is a SEQUENCE of
(OID, value) pairs, some values nested one level (TCB, configuration). Only the DER forms it uses
are understood: SEQUENCE, OBJECT IDENTIFIER, INTEGER, ENUMERATED, OCTET STRING and BOOLEAN.
Everything the TCB rule needs (FMSPC, PCE ID, the 16 component SVNs, PCESVN) must be present.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509

from shared.errors import ParseError

SGX_EXTENSION_OID = x509.ObjectIdentifier("1.2.840.113741.1.13.1")
_PREFIX = "1.2.840.113741.1.13.1"

_TAG_BOOLEAN = 0x01
_TAG_INTEGER = 0x02
_TAG_OCTET_STRING = 0x04
_TAG_OID = 0x06
_TAG_ENUMERATED = 0x0A
_TAG_SEQUENCE = 0x30

_FIELD = "pck.sgx_extension"


@dataclass(frozen=True, slots=True)
class PckExtension:
    ppid: bytes
    tcb_components: tuple[int, ...]  # the 16 SGX TCB component SVNs, compared with TCB Info
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int  # 0 standard, 1 scalable, 2 scalable with integrity
    platform_instance_id: bytes | None = None
    dynamic_platform: bool | None = None
    cached_keys: bool | None = None
    smt_enabled: bool | None = None


def _tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """``(tag, value, next_pos)`` of the TLV at ``pos``; lengths up to 4 octets, definite only."""
    if pos + 2 > len(data):
        raise ParseError(_FIELD, "truncated DER")
    tag, first = data[pos], data[pos + 1]
    pos += 2
    if first & 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ParseError(_FIELD, "bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > len(data):
        raise ParseError(_FIELD, "DER value runs past its container")
    return tag, data[pos : pos + length], pos + length


def _children(data: bytes) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        tag, value, pos = _tlv(data, pos)
        out.append((tag, value))
    return out


def _oid(value: bytes) -> str:
    if not value or value[-1] & 0x80:
        raise ParseError(_FIELD, "malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    acc = 0
    for byte in value:
        acc = (acc << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(acc)
            acc = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def _pairs(data: bytes) -> dict[str, tuple[int, bytes]]:
    """OID -> (tag, value) for a SEQUENCE OF SEQUENCE { OID, value }."""
    out: dict[str, tuple[int, bytes]] = {}
    for tag, body in _children(data):
        if tag != _TAG_SEQUENCE:
            raise ParseError(_FIELD, f"expected SEQUENCE, got tag {tag:#04x}")
        items = _children(body)
        if len(items) != 2 or items[0][0] != _TAG_OID:
            raise ParseError(_FIELD, "expected SEQUENCE { OID, value }")
        oid = _oid(items[0][1])
        if oid in out:
            raise ParseError(_FIELD, f"duplicate {oid}")
        out[oid] = items[1]
    return out


def _need(pairs: dict[str, tuple[int, bytes]], oid: str, tag: int) -> bytes:
    item = pairs.get(oid)
    if item is None:
        raise ParseError(_FIELD, f"missing {oid}")
    if item[0] != tag:
        raise ParseError(_FIELD, f"{oid}: expected tag {tag:#04x}, got {item[0]:#04x}")
    return item[1]


def _uint(value: bytes, oid: str) -> int:
    if not value or value[0] & 0x80:
        raise ParseError(_FIELD, f"{oid}: expected a non-negative INTEGER")
    return int.from_bytes(value, "big")


def _octets(pairs: dict[str, tuple[int, bytes]], oid: str, size: int) -> bytes:
    value = _need(pairs, oid, _TAG_OCTET_STRING)
    if len(value) != size:
        raise ParseError(_FIELD, f"{oid}: expected {size} bytes, got {len(value)}")
    return value


def _flag(pairs: dict[str, tuple[int, bytes]], oid: str) -> bool | None:
    item = pairs.get(oid)
    if item is None:
        return None
    if item[0] != _TAG_BOOLEAN or len(item[1]) != 1:
        raise ParseError(_FIELD, f"{oid}: expected BOOLEAN")
    return item[1] != b"\x00"


def parse_sgx_extension(der: bytes) -> PckExtension:
    """Decode the extension value (the DER inside extnValue)."""
    tag, body, end = _tlv(der, 0)
    if tag != _TAG_SEQUENCE or end != len(der):
        raise ParseError(_FIELD, "extension is not a single SEQUENCE")
    top = _pairs(body)
    tcb = _pairs(_need(top, f"{_PREFIX}.2", _TAG_SEQUENCE))
    components = tuple(
        _uint(_need(tcb, f"{_PREFIX}.2.{i}", _TAG_INTEGER), f"{_PREFIX}.2.{i}") for i in range(1, 17)
    )
    pce_svn = _uint(_need(tcb, f"{_PREFIX}.2.17", _TAG_INTEGER), f"{_PREFIX}.2.17")
    sgx_type_raw = _need(top, f"{_PREFIX}.5", _TAG_ENUMERATED)
    platform_id = top.get(f"{_PREFIX}.6")
    config_item = top.get(f"{_PREFIX}.7")
    config = _pairs(config_item[1]) if config_item is not None and config_item[0] == _TAG_SEQUENCE else {}
    return PckExtension(
        ppid=_octets(top, f"{_PREFIX}.1", 16),
        tcb_components=components,
        pce_svn=pce_svn,
        cpu_svn=_octets(tcb, f"{_PREFIX}.2.18", 16),
        pce_id=_octets(top, f"{_PREFIX}.3", 2),
        fmspc=_octets(top, f"{_PREFIX}.4", 6),
        sgx_type=_uint(sgx_type_raw, f"{_PREFIX}.5"),
        platform_instance_id=platform_id[1] if platform_id and platform_id[0] == _TAG_OCTET_STRING else None,
        dynamic_platform=_flag(config, f"{_PREFIX}.7.1"),
        cached_keys=_flag(config, f"{_PREFIX}.7.2"),
        smt_enabled=_flag(config, f"{_PREFIX}.7.3"),
    )


@lru_cache(maxsize=4096)  # certificates are immutable and hash by their DER
def pck_extension(cert: x509.Certificate) -> PckExtension:
    """The SGX extension of a PCK leaf; ``ParseError("pck.sgx_extension")`` when absent or malformed."""
    try:
        ext = cert.extensions.get_extension_for_oid(SGX_EXTENSION_OID)
    except x509.ExtensionNotFound:
        raise ParseError(_FIELD, "the certificate has no SGX extension") from None
    except ValueError as exc:  # duplicate or malformed extensions
        raise ParseError(_FIELD, f"unreadable extensions: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise ParseError(_FIELD, "unexpected extension type")
    return parse_sgx_extension(value.value)
