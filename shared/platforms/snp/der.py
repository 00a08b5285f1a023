"""The few DER primitives the AMD certificate extensions use, read by hand.

``cryptography`` hands AMD's private extensions over as opaque ``extnValue`` bytes. Each one holds a
single primitive (INTEGER, IA5String, OCTET STRING) or, for hwID, raw bytes with no tag at all.
Decoding is strict DER (minimal lengths and integers, nothing trailing) so that one certificate has
exactly one reading.
"""

from __future__ import annotations

from shared.errors import ParseError

TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_IA5_STRING = 0x16

_MAX_LENGTH_OCTETS = 2  # extension values are tiny; longer length fields are never legitimate


def read_tlv(data: bytes, field: str) -> tuple[int, bytes]:
    """``(tag, value)`` of a single TLV that spans all of ``data``."""
    if len(data) < 2:
        raise ParseError(field, "truncated DER")
    tag, first = data[0], data[1]
    offset = 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > _MAX_LENGTH_OCTETS or len(data) < 2 + count:
            raise ParseError(field, "bad DER length")
        length_bytes = data[2 : 2 + count]
        length = int.from_bytes(length_bytes, "big")
        if length_bytes[0] == 0 or length < 0x80:
            raise ParseError(field, "non-minimal DER length")
        offset += count
    if len(data) != offset + length:
        raise ParseError(field, f"DER length {length} does not match {len(data) - offset} content bytes")
    return tag, data[offset:]


def read_integer(data: bytes, field: str) -> int:
    tag, value = read_tlv(data, field)
    if tag != TAG_INTEGER:
        raise ParseError(field, f"expected INTEGER, got tag {tag:#04x}")
    if not value:
        raise ParseError(field, "empty INTEGER")
    if len(value) > 1 and ((value[0] == 0x00 and value[1] < 0x80) or (value[0] == 0xFF and value[1] >= 0x80)):
        raise ParseError(field, "non-minimal INTEGER")
    return int.from_bytes(value, "big", signed=True)


def read_ia5_string(data: bytes, field: str) -> str:
    tag, value = read_tlv(data, field)
    if tag != TAG_IA5_STRING:
        raise ParseError(field, f"expected IA5String, got tag {tag:#04x}")
    if any(b >= 0x80 for b in value):
        raise ParseError(field, "IA5String holds non-ASCII bytes")
    return value.decode("ascii")
