"""The two shapes a Secure Execution response arrives in.

* Evidence JSON (Trustee's ``SeAttestationResponse`` field names): ``measurement``,
  ``additional_data``, ``user_data``, ``cuid`` as standard base64. Trustee's other fields
  (``encr_measurement_key``, ``encr_request_nonce``, ``image_hdr_tags``) exist for its stateless
  design and are ignored: here the request state is kept by the verifier, never taken from the guest.
* pvattest exchange file: 0x40-byte header (magic ``pvattest``, version u32 0x100, size u32,
  reserved u64) and five (size u32, offset u32) entries -- request, measurement, additional data,
  user data, config UID. Size 0: absent; offset 0 with a size: only the size the UV should fill.

Both parsers raise only ``ParseError`` (reason ``parse.se.<field>``).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass

from shared.errors import ParseError
from shared.platforms.binary import as_bytes
from shared.platforms.se import abi
from shared.platforms.se.measurement import SeResponse

EXCHANGE_MAGIC = b"pvattest"
EXCHANGE_VERSION = 0x100
EXCHANGE_HEADER_SIZE = 0x40
_EXCHANGE_HEADER = struct.Struct(">8sIIQ10I")
_ENTRY_NAMES = ("arcb", "measurement", "additional_data", "user_data", "cuid")
_ENTRY_MAX = {
    "arcb": 0xFFFF_FFFF,
    "measurement": abi.MEASUREMENT_SIZE,
    "additional_data": abi.ADDITIONAL_MAX,
    "user_data": abi.USER_DATA_MAX,
    "cuid": abi.CUID_SIZE,
}


def _err(field: str, detail: str) -> ParseError:
    return ParseError(field, detail, prefix=abi.PREFIX)


def _b64(doc: dict[str, object], name: str, *, required: bool) -> bytes:
    value = doc.get(name)
    if value is None and not required:
        return b""
    if not isinstance(value, str):
        raise _err(f"evidence.{name}", "expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _err(f"evidence.{name}", f"not base64: {exc}") from None


def decode_evidence(primary: bytes) -> SeResponse:
    primary = as_bytes(primary, "evidence")
    try:
        doc = json.loads(primary)
    except (ValueError, RecursionError) as exc:
        raise _err("evidence", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _err("evidence", "expected an object {measurement, additional_data, user_data, cuid}")
    measurement = _b64(doc, "measurement", required=True)
    cuid = _b64(doc, "cuid", required=True)
    user_data = _b64(doc, "user_data", required=False)
    additional = _b64(doc, "additional_data", required=False)
    if len(measurement) != abi.MEASUREMENT_SIZE:
        raise _err("evidence.measurement", f"needs {abi.MEASUREMENT_SIZE} bytes, got {len(measurement)}")
    if len(cuid) != abi.CUID_SIZE:
        raise _err("evidence.cuid", f"needs {abi.CUID_SIZE} bytes, got {len(cuid)}")
    if len(user_data) > abi.USER_DATA_MAX:
        raise _err("evidence.user_data", f"at most {abi.USER_DATA_MAX} bytes, got {len(user_data)}")
    if len(additional) > abi.ADDITIONAL_MAX:
        raise _err("evidence.additional_data", f"at most {abi.ADDITIONAL_MAX} bytes, got {len(additional)}")
    return SeResponse(measurement=measurement, additional_data=additional, cuid=cuid, user_data=user_data)


def encode_evidence(response: SeResponse) -> bytes:
    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return json.dumps(
        {
            "measurement": b64(response.measurement),
            "additional_data": b64(response.additional_data),
            "user_data": b64(response.user_data),
            "cuid": b64(response.cuid),
        }
    ).encode()


@dataclass(frozen=True)
class ExchangeEntry:
    size: int
    data: bytes | None  # None: absent (size 0) or only a size for the UV to fill


@dataclass(frozen=True)
class ExchangeFile:
    arcb: ExchangeEntry
    measurement: ExchangeEntry
    additional_data: ExchangeEntry
    user_data: ExchangeEntry
    cuid: ExchangeEntry

    def to_response(self) -> SeResponse:
        """The response part; a request-only file (no measurement yet) is a ParseError."""
        measurement, cuid = self.measurement.data, self.cuid.data
        if measurement is None:
            raise _err("exchange.measurement", "the exchange file carries no response (not performed yet?)")
        if cuid is None:
            raise _err("exchange.cuid", "the exchange file carries no config UID")
        if len(measurement) != abi.MEASUREMENT_SIZE:
            raise _err("exchange.measurement", f"needs {abi.MEASUREMENT_SIZE} bytes, got {len(measurement)}")
        if len(cuid) != abi.CUID_SIZE:
            raise _err("exchange.cuid", f"needs {abi.CUID_SIZE} bytes, got {len(cuid)}")
        return SeResponse(
            measurement=measurement,
            additional_data=self.additional_data.data or b"",
            cuid=cuid,
            user_data=self.user_data.data or b"",
        )


def parse_exchange_file(raw: bytes) -> ExchangeFile:
    raw = as_bytes(raw, "exchange")
    if len(raw) < EXCHANGE_HEADER_SIZE:
        raise _err("exchange", f"needs at least {EXCHANGE_HEADER_SIZE} bytes, got {len(raw)}")
    magic, version, size, _, *pairs = _EXCHANGE_HEADER.unpack_from(raw)
    if magic != EXCHANGE_MAGIC:
        raise _err("exchange.magic", f"expected {EXCHANGE_MAGIC!r}, got {magic!r}")
    if version != EXCHANGE_VERSION:
        raise _err("exchange.version", f"expected {EXCHANGE_VERSION:#x}, got {version:#x}")
    if size > len(raw):
        raise _err("exchange.size", f"header says {size} bytes, file has {len(raw)}")
    entries = {}
    for index, name in enumerate(_ENTRY_NAMES):
        length, offset = pairs[2 * index], pairs[2 * index + 1]
        if length > _ENTRY_MAX[name]:
            raise _err(f"exchange.{name}", f"at most {_ENTRY_MAX[name]} bytes, got {length}")
        if length == 0 or offset == 0:
            entries[name] = ExchangeEntry(length, None)
            continue
        if offset < EXCHANGE_HEADER_SIZE or offset + length > len(raw):
            raise _err(f"exchange.{name}", f"{length} bytes at {offset:#x} lie outside the file")
        entries[name] = ExchangeEntry(length, raw[offset : offset + length])
    if entries["arcb"].data is None:
        raise _err("exchange.arcb", "contains no attestation request")
    return ExchangeFile(**entries)


def encode_exchange_response(arcb: bytes, response: SeResponse) -> bytes:
    """A performed exchange file as ``pvattest perform`` writes it (the simulator's output)."""
    parts = [
        ("arcb", arcb),
        ("measurement", response.measurement),
        ("additional_data", response.additional_data),
        ("user_data", response.user_data),
        ("cuid", response.cuid),
    ]
    offset = EXCHANGE_HEADER_SIZE
    pairs: list[int] = []
    for _, data in parts:
        pairs += [len(data), offset if data else 0]
        offset += len(data)
    header = _EXCHANGE_HEADER.pack(EXCHANGE_MAGIC, EXCHANGE_VERSION, offset, 0, *pairs)
    return header + b"".join(data for _, data in parts)
