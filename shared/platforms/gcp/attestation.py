"""go-tpm-tools ``attest.Attestation`` (Google Cloud vTPM evidence), decoded without a protobuf runtime.

Field numbers, taken from go-tpm-tools ``proto/attest.proto`` and ``proto/tpm.proto`` and confirmed
on the two real GCE vectors (COS 85) by decoding them by hand:

* ``Attestation``: 1 ``ak_pub`` (bytes, TPMT_PUBLIC), 2 repeated ``quotes`` (Quote), 3 ``event_log``
  (bytes), 4 ``instance_info`` (message, skipped: it is unsigned and the AK certificate carries the
  same facts signed by Google), 5 ``canonical_event_log`` (bytes), 6 ``ak_cert`` (DER), 7 repeated
  ``intermediate_certs`` (DER), 8/9 the optional SEV-SNP / TDX attestation (skipped, not handled here).
  The vectors hold fields 1, 2 (three times), 3 and 6 only.
* ``Quote``: 1 ``quote`` (TPMS_ATTEST, starts ``ff544347``), 2 ``raw_sig`` (TPMT_SIGNATURE),
  3 ``pcrs`` (PCRs).
* ``PCRs``: 1 ``hash`` (enum = TPM_ALG_ID: SHA1 4, SHA256 11, SHA384 12, SHA512 13),
  2 ``map<uint32, bytes> pcrs`` (each entry a message: key field 1, value field 2).

The decoder is stricter than protobuf on purpose: a singular field that appears twice, a known field
with the wrong wire type, a duplicate PCR index or a PCR value of the wrong size is rejected rather
than resolved by "last one wins", so that one evidence blob has exactly one reading. Unknown fields
are skipped, as protobuf does, so that newer producers still parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from shared.errors import ParseError

PREFIX = "parse.gcp"

WIRE_VARINT = 0
WIRE_FIXED64 = 1
WIRE_LEN = 2
WIRE_FIXED32 = 5

_MAX_VARINT_BYTES = 10  # 64 bits at 7 bits per byte
_MAX_FIELD_NUMBER = (1 << 29) - 1

# PCRs.hash is the TPM algorithm id; the value sizes let us refuse PCR values of the wrong length.
HASH_ALG_SIZES: dict[int, int] = {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64}
HASH_ALG_NAMES: dict[int, str] = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}

# A PC-client TPM has 24 PCRs; an index beyond that cannot be selected in a GCE quote.
PCR_COUNT = 24


def _error(field: str, detail: str) -> ParseError:
    return ParseError(field, detail, prefix=PREFIX)


@dataclass(frozen=True)
class WireField:
    """One protobuf field as found on the wire: ``value`` is an int for varint/fixed, else bytes."""

    number: int
    wire_type: int
    value: int | bytes


def read_varint(data: bytes, offset: int, field: str) -> tuple[int, int]:
    """``(value, next_offset)`` of the base-128 varint at ``offset`` (at most 64 bits)."""
    value = 0
    for i in range(_MAX_VARINT_BYTES):
        if offset + i >= len(data):
            raise _error(field, "truncated varint")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if value >= 1 << 64:
                raise _error(field, "varint exceeds 64 bits")
            return value, offset + i + 1
    raise _error(field, "varint longer than 10 bytes")


def iter_fields(data: bytes, field: str) -> Iterator[WireField]:
    """Every field of one message, in wire order. Groups (wire types 3/4) are obsolete and refused."""
    offset = 0
    while offset < len(data):
        key, offset = read_varint(data, offset, f"{field}.key")
        number, wire_type = key >> 3, key & 7
        if number == 0 or number > _MAX_FIELD_NUMBER:
            raise _error(field, f"invalid field number {number}")
        where = f"{field}.{number}"
        if wire_type == WIRE_VARINT:
            value, offset = read_varint(data, offset, where)
            yield WireField(number, wire_type, value)
        elif wire_type in (WIRE_FIXED64, WIRE_FIXED32):
            size = 8 if wire_type == WIRE_FIXED64 else 4
            if offset + size > len(data):
                raise _error(where, f"truncated fixed{size * 8}")
            yield WireField(number, wire_type, int.from_bytes(data[offset : offset + size], "little"))
            offset += size
        elif wire_type == WIRE_LEN:
            length, offset = read_varint(data, offset, where)
            if length > len(data) - offset:
                raise _error(where, f"length {length} exceeds the {len(data) - offset} bytes left")
            yield WireField(number, wire_type, data[offset : offset + length])
            offset += length
        else:
            raise _error(where, f"unsupported wire type {wire_type}")


class _Message:
    """The fields of one message grouped by number, with typed, duplicate-checked accessors."""

    def __init__(self, data: bytes, field: str) -> None:
        self.field = field
        self._by_number: dict[int, list[WireField]] = {}
        for item in iter_fields(data, field):
            self._by_number.setdefault(item.number, []).append(item)

    def _typed(self, number: int, name: str, wire_type: int) -> list[WireField]:
        items = self._by_number.get(number, [])
        for item in items:
            if item.wire_type != wire_type:
                raise _error(f"{self.field}.{name}", f"wire type {item.wire_type}, expected {wire_type}")
        return items

    def _single(self, number: int, name: str, wire_type: int) -> WireField | None:
        items = self._typed(number, name, wire_type)
        if len(items) > 1:
            raise _error(f"{self.field}.{name}", f"singular field appears {len(items)} times")
        return items[0] if items else None

    def bytes_field(self, number: int, name: str) -> bytes:
        item = self._single(number, name, WIRE_LEN)
        return item.value if item is not None and isinstance(item.value, bytes) else b""

    def varint_field(self, number: int, name: str) -> int:
        item = self._single(number, name, WIRE_VARINT)
        return item.value if item is not None and isinstance(item.value, int) else 0

    def repeated_bytes(self, number: int, name: str) -> list[bytes]:
        return [item.value for item in self._typed(number, name, WIRE_LEN) if isinstance(item.value, bytes)]


@dataclass(frozen=True)
class GcpQuote:
    """One TPM2_Quote over one PCR bank: the raw TPMS_ATTEST, TPMT_SIGNATURE and the claimed PCR values."""

    message: bytes
    signature: bytes
    hash_alg: int
    pcrs: dict[int, bytes]

    @property
    def hash_name(self) -> str:
        return HASH_ALG_NAMES[self.hash_alg]


@dataclass(frozen=True)
class GcpAttestation:
    """The decoded evidence. Nothing here is verified: signatures, PCR digests and the AK certificate
    are checked by the callers of this module."""

    ak_pub: bytes
    quotes: tuple[GcpQuote, ...]
    event_log: bytes
    canonical_event_log: bytes
    ak_cert_der: bytes
    intermediate_der: tuple[bytes, ...]


def _parse_pcrs(data: bytes, field: str) -> tuple[int, dict[int, bytes]]:
    msg = _Message(data, field)
    hash_alg = msg.varint_field(1, "hash")
    size = HASH_ALG_SIZES.get(hash_alg)
    if size is None:
        raise _error(f"{field}.hash", f"unsupported hash algorithm {hash_alg:#x}")
    pcrs: dict[int, bytes] = {}
    for i, entry in enumerate(msg.repeated_bytes(2, "pcrs")):
        where = f"{field}.pcrs[{i}]"
        item = _Message(entry, where)
        index = item.varint_field(1, "key")
        value = item.bytes_field(2, "value")
        if index >= PCR_COUNT:
            raise _error(f"{where}.key", f"PCR index {index} is not below {PCR_COUNT}")
        if index in pcrs:
            raise _error(f"{where}.key", f"PCR {index} appears twice")
        if len(value) != size:
            raise _error(
                f"{where}.value",
                f"PCR {index} has {len(value)} bytes, {HASH_ALG_NAMES[hash_alg]} needs {size}",
            )
        pcrs[index] = value
    if not pcrs:
        raise _error(f"{field}.pcrs", "no PCR values")
    return hash_alg, dict(sorted(pcrs.items()))


def _parse_quote(data: bytes, field: str) -> GcpQuote:
    msg = _Message(data, field)
    message = msg.bytes_field(1, "quote")
    signature = msg.bytes_field(2, "raw_sig")
    if not message:
        raise _error(f"{field}.quote", "missing TPMS_ATTEST")
    if not signature:
        raise _error(f"{field}.raw_sig", "missing TPMT_SIGNATURE")
    pcr_item = msg._single(3, "pcrs", WIRE_LEN)
    if pcr_item is None or not isinstance(pcr_item.value, bytes):
        raise _error(f"{field}.pcrs", "missing PCR values")
    hash_alg, pcrs = _parse_pcrs(pcr_item.value, f"{field}.pcrs")
    return GcpQuote(message=message, signature=signature, hash_alg=hash_alg, pcrs=pcrs)


def parse_attestation(data: bytes) -> GcpAttestation:
    """Decode a serialized ``attest.Attestation``; only ``ParseError`` comes out for bad input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _error("attestation", f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    msg = _Message(data, "attestation")
    ak_pub = msg.bytes_field(1, "ak_pub")
    if not ak_pub:
        raise _error("attestation.ak_pub", "missing")
    quotes = tuple(
        _parse_quote(raw, f"attestation.quotes[{i}]") for i, raw in enumerate(msg.repeated_bytes(2, "quotes"))
    )
    if not quotes:
        raise _error("attestation.quotes", "no quotes")
    banks = [q.hash_alg for q in quotes]
    if len(set(banks)) != len(banks):
        # Two quotes over the same bank would leave a verifier free to pick the convenient one.
        raise _error("attestation.quotes", "two quotes over the same PCR bank")
    msg._single(4, "instance_info", WIRE_LEN)  # type-checked only: unsigned, superseded by the AK cert
    return GcpAttestation(
        ak_pub=ak_pub,
        quotes=quotes,
        event_log=msg.bytes_field(3, "event_log"),
        canonical_event_log=msg.bytes_field(5, "canonical_event_log"),
        ak_cert_der=msg.bytes_field(6, "ak_cert"),
        intermediate_der=tuple(msg.repeated_bytes(7, "intermediate_certs")),
    )
