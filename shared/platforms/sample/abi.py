"""Binary layout of a sample-platform attestation report (all integers big-endian).

======  ====  ==========================================================
offset  size  field
======  ====  ==========================================================
0x000      4  magic ``b"RMSE"``
0x004      2  version (must be 1)
0x006      2  flags (bit 0 = DEBUG, all other bits reserved, must be 0)
0x008     16  device_id
0x018     48  measurement (SHA-384 launch digest)
0x048      4  svn
0x04C      4  reserved (zero)
0x050     64  report_data
0x090     32  reserved (zero)
0x0B0     96  signature: r || s of ECDSA P-384/SHA-384, 48 bytes each
======  ====  ==========================================================

The signature covers bytes ``0x000..0x0B0``. Parsing is strict (reserved bits and bytes must be
zero) so that ``encode_report(parse_report(raw)) == raw`` for every accepted input: there is exactly
one encoding per report, and nothing unsigned can hide in the evidence.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shared.errors import ParseError
from shared.platforms.binary import as_bytes

MAGIC = b"RMSE"
VERSION = 1
FLAG_DEBUG = 0x0001
DEVICE_ID_SIZE = 16
MEASUREMENT_SIZE = 48
REPORT_DATA_SIZE = 64
SIGNATURE_COMPONENT_SIZE = 48
SIGNATURE_SIZE = 2 * SIGNATURE_COMPONENT_SIZE

SIGNED_REGION_END = 0x0B0
REPORT_SIZE = SIGNED_REGION_END + SIGNATURE_SIZE  # 0x110 = 272

# magic, version, flags, device_id, measurement, svn, reserved1, report_data, reserved2
_HEADER = struct.Struct(">4sHH16s48sI4s64s32s")
assert _HEADER.size == SIGNED_REGION_END

_RESERVED1_SIZE = 4
_RESERVED2_SIZE = 32
_U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class SampleReport:
    """One parsed report. Field sizes are enforced by ``encode_report``, not here, so that tests can
    build malformed reports deliberately."""

    version: int
    flags: int
    device_id: bytes
    measurement: bytes
    svn: int
    report_data: bytes
    signature: bytes

    @property
    def debug(self) -> bool:
        return bool(self.flags & FLAG_DEBUG)


def _as_bytes(data: object) -> bytes:
    return as_bytes(data, "report.type")


def parse_report(data: bytes) -> SampleReport:
    """Parse and strictly validate a report. Raises only ``ParseError`` (``parse.report.<field>``)."""
    raw = _as_bytes(data)
    if len(raw) != REPORT_SIZE:
        raise ParseError("report.size", f"expected {REPORT_SIZE} bytes, got {len(raw)}")
    (magic, version, flags, device_id, measurement, svn, reserved1, report_data, reserved2) = (
        _HEADER.unpack_from(raw, 0)
    )
    if magic != MAGIC:
        raise ParseError("report.magic", f"expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise ParseError("report.version", f"unsupported version {version}")
    if flags & ~FLAG_DEBUG:
        raise ParseError("report.flags", f"reserved flag bits set: {flags:#06x}")
    if reserved1 != bytes(_RESERVED1_SIZE):
        raise ParseError("report.reserved", "reserved bytes at 0x04c are not zero")
    if reserved2 != bytes(_RESERVED2_SIZE):
        raise ParseError("report.reserved", "reserved bytes at 0x090 are not zero")
    return SampleReport(
        version=version,
        flags=flags,
        device_id=device_id,
        measurement=measurement,
        svn=svn,
        report_data=report_data,
        signature=raw[SIGNED_REGION_END:REPORT_SIZE],
    )


def _check_size(field: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        got = len(value) if isinstance(value, (bytes, bytearray)) else type(value).__name__
        raise ParseError(f"report.{field}", f"expected {size} bytes, got {got}")


def encode_report(report: SampleReport) -> bytes:
    """Serialise ``report``; rejects values the layout cannot hold with ``ParseError``."""
    _check_size("device_id", report.device_id, DEVICE_ID_SIZE)
    _check_size("measurement", report.measurement, MEASUREMENT_SIZE)
    _check_size("report_data", report.report_data, REPORT_DATA_SIZE)
    _check_size("signature", report.signature, SIGNATURE_SIZE)
    if report.version != VERSION:
        raise ParseError("report.version", f"unsupported version {report.version}")
    if not 0 <= report.flags <= FLAG_DEBUG:
        raise ParseError("report.flags", f"reserved flag bits set: {report.flags:#x}")
    if not 0 <= report.svn <= _U32_MAX:
        raise ParseError("report.svn", f"svn {report.svn} does not fit in u32")
    header = _HEADER.pack(
        MAGIC,
        report.version,
        report.flags,
        report.device_id,
        report.measurement,
        report.svn,
        bytes(_RESERVED1_SIZE),
        report.report_data,
        bytes(_RESERVED2_SIZE),
    )
    return header + report.signature


def signed_region(raw: bytes) -> bytes:
    """The bytes the device signs: everything before the signature."""
    data = _as_bytes(raw)
    if len(data) != REPORT_SIZE:
        raise ParseError("report.size", f"expected {REPORT_SIZE} bytes, got {len(data)}")
    return data[:SIGNED_REGION_END]
