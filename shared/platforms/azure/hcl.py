"""The Azure paravisor (HCL) report and its variable data. Integers are little-endian.

Layout of the buffer the HCL hands out (the vTPM NV index holds it zero-padded to 2600 bytes)::

    0x000  header (32): signature "HCLA", version u32, report_size u32, request_type u32,
           status u32, reserved (12)
    0x020  hardware report area (1184): the SNP ATTESTATION_REPORT (all 1184 bytes) or the
           TDREPORT (first 1024 bytes, the rest zero), chosen by report_type
    0x4C0  IGVM request data (20): data_size u32, version u32, report_type u32 (2 SNP, 4 TDX),
           hash_type u32 (1 SHA-256), variable_data_size u32
    0x4D4  variable data: exactly variable_data_size bytes of JSON
    ...    zero padding up to the end of the buffer

``report_size`` covers the header up to the end of the variable data, and ``data_size`` covers the
IGVM request data plus the variable data; both are checked against each other so a buffer has one
reading. ``parse_hcl_report`` and ``parse_var_data`` raise only ``ParseError`` with reason
``parse.azure.<field>`` (e.g. ``parse.azure.hcl.signature``), whatever the input.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from shared.errors import ParseError, VerificationError

__all__ = [
    "AK_KID",
    "EK_KID",
    "HASH_TYPE_SHA256",
    "HCL_SIGNATURE",
    "REPORT_TYPE_SNP",
    "REPORT_TYPE_TDX",
    "HclReport",
    "VarData",
    "check_binding",
    "parse_hcl_report",
    "parse_var_data",
    "strict_json",
]

PREFIX = "parse.azure"

HCL_SIGNATURE = b"HCLA"
SUPPORTED_HCL_VERSIONS = frozenset({1, 2})
IGVM_REQUEST_VERSION = 1
REPORT_TYPE_SNP = 2
REPORT_TYPE_TDX = 4
HASH_TYPE_SHA256 = 1

HEADER_SIZE = 0x20
HW_REPORT_OFFSET = 0x20
HW_REPORT_AREA = 0x4A0  # 1184: sized for the larger of the two hardware reports
IGVM_OFFSET = HW_REPORT_OFFSET + HW_REPORT_AREA  # 0x4C0
IGVM_SIZE = 20
VAR_DATA_OFFSET = IGVM_OFFSET + IGVM_SIZE  # 0x4D4

SNP_REPORT_SIZE = 0x4A0
TDREPORT_SIZE = 1024
TDREPORT_TYPE_TDX = 0x81  # REPORTMACSTRUCT.REPORTTYPE.TYPE

AK_KID = "HCLAkPub"
EK_KID = "HCLEkPub"

_HEADER = struct.Struct("<4sIIII12s")
_IGVM = struct.Struct("<IIIII")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")

# Cut of the hardware area by report type. Unknown types keep the whole area: the parse still
# succeeds so that the mismatch is reported as ``azure.report_type``, a binding failure.
_HW_REPORT_SIZE = {REPORT_TYPE_SNP: SNP_REPORT_SIZE, REPORT_TYPE_TDX: TDREPORT_SIZE}


def _error(field: str, detail: str) -> ParseError:
    return ParseError(field, detail, prefix=PREFIX)


def _as_bytes(data: object, field: str) -> bytes:
    # Untrusted input: a non-buffer must become a ParseError, never a TypeError from struct.
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        try:
            return bytes(data)
        except (TypeError, ValueError, BufferError) as exc:
            raise _error(field, f"unreadable buffer: {exc}") from None
    raise _error(field, f"expected bytes, got {type(data).__name__}")


@dataclass(frozen=True, slots=True)
class HclReport:
    """One parsed HCL report. ``hardware_report`` is cut to the real size of its report type;
    ``variable_data`` is exactly the bytes the hardware report's REPORT_DATA commits to."""

    signature: bytes
    version: int
    report_size: int
    request_type: int
    status: int
    hardware_report: bytes
    igvm_data_size: int
    igvm_version: int
    report_type: int
    hash_type: int
    variable_data_size: int
    variable_data: bytes
    raw: bytes

    @property
    def variable_data_sha256(self) -> bytes:
        return hashlib.sha256(self.variable_data).digest()


def parse_hcl_report(data: bytes) -> HclReport:
    """Parse and check one HCL report; ``ParseError`` names the first field that does not fit."""
    raw = _as_bytes(data, "hcl.type")
    if len(raw) < HEADER_SIZE:
        raise _error("hcl.header", f"needs {HEADER_SIZE} bytes, got {len(raw)}")
    signature, version, report_size, request_type, status, reserved = _HEADER.unpack_from(raw, 0)
    if signature != HCL_SIGNATURE:
        raise _error("hcl.signature", f"expected {HCL_SIGNATURE!r}, got {signature!r}")
    if version not in SUPPORTED_HCL_VERSIONS:
        raise _error("hcl.version", f"unsupported HCL report version {version}")
    if status != 0:
        # A non-zero status is the paravisor reporting a failed request: no report to trust.
        raise _error("hcl.status", f"request status {status:#x}")
    if any(reserved):
        raise _error("hcl.reserved", "reserved header bytes are not zero")
    if len(raw) < IGVM_OFFSET:
        raise _error("hcl.hardware_report", f"needs {IGVM_OFFSET} bytes, got {len(raw)}")
    if len(raw) < VAR_DATA_OFFSET:
        raise _error("hcl.igvm_request_data", f"needs {VAR_DATA_OFFSET} bytes, got {len(raw)}")

    data_size, igvm_version, report_type, hash_type, var_size = _IGVM.unpack_from(raw, IGVM_OFFSET)
    if igvm_version != IGVM_REQUEST_VERSION:
        raise _error("hcl.igvm.version", f"unsupported IGVM request data version {igvm_version}")
    if hash_type != HASH_TYPE_SHA256:
        # The var-data binding is only defined for SHA-256; another hash would be unverifiable.
        raise _error("hcl.igvm.hash_type", f"unsupported hash type {hash_type}")
    if data_size != IGVM_SIZE + var_size:
        raise _error("hcl.igvm.data_size", f"is {data_size}, expected {IGVM_SIZE} + {var_size}")
    var_end = VAR_DATA_OFFSET + var_size
    if var_end > len(raw):
        raise _error("hcl.variable_data", f"says {var_size} bytes, {len(raw) - VAR_DATA_OFFSET} left")
    if report_size != var_end:
        raise _error("hcl.report_size", f"is {report_size}, header and data take {var_end}")
    if any(raw[var_end:]):
        raise _error("hcl.padding", "bytes after the variable data are not zero")

    area = raw[HW_REPORT_OFFSET:IGVM_OFFSET]
    hw_size = _HW_REPORT_SIZE.get(report_type, HW_REPORT_AREA)
    if any(area[hw_size:]):
        raise _error("hcl.hardware_report.padding", "bytes after the hardware report are not zero")
    if report_type == REPORT_TYPE_TDX and area[0] != TDREPORT_TYPE_TDX:
        raise _error("hcl.hardware_report.type", f"TDREPORT type {area[0]:#04x}, expected 0x81")

    return HclReport(
        signature=signature,
        version=version,
        report_size=report_size,
        request_type=request_type,
        status=status,
        hardware_report=area[:hw_size],
        igvm_data_size=data_size,
        igvm_version=igvm_version,
        report_type=report_type,
        hash_type=hash_type,
        variable_data_size=var_size,
        variable_data=raw[VAR_DATA_OFFSET:var_end],
        raw=raw,
    )


def check_binding(hcl: HclReport, hardware_report_data: bytes) -> None:
    """The hardware report commits to the var data (and so to the AK): SHA-256(var data) must be
    REPORT_DATA[0:32]. Bytes 32..63 are not constrained by the HCL."""
    if not isinstance(hardware_report_data, (bytes, bytearray)) or len(hardware_report_data) < 32:
        raise VerificationError("azure.var_data_binding", "hardware report_data is shorter than 32 bytes")
    digest = hcl.variable_data_sha256
    if not hmac.compare_digest(digest, bytes(hardware_report_data[:32])):
        raise VerificationError(
            "azure.var_data_binding",
            f"SHA-256(var data) {digest.hex()} != report_data[0:32] {bytes(hardware_report_data[:32]).hex()}",
        )


# --- variable data ------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard constant {name}")


def strict_json(data: bytes, field: str) -> Any:
    """RFC 8259 JSON only: UTF-8, no duplicate members (two readings of one document), no
    NaN/Infinity. Every failure is ``ParseError(field)``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(field, f"not UTF-8: {exc}") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise _error(field, f"not strict JSON: {exc}") from None


@dataclass(frozen=True, slots=True)
class VarData:
    """The var-data JSON. ``keys`` maps kid -> JWK; ``ak_jwk`` is ``None`` when no ``HCLAkPub``
    key is present (reported as ``azure.ak_missing`` by the checks, not as a parse error)."""

    keys: dict[str, dict[str, Any]]
    ak_jwk: dict[str, Any] | None
    ek_jwk: dict[str, Any] | None
    vm_configuration: dict[str, Any]
    user_data: bytes | None
    raw: dict[str, Any]


def _keys(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = doc.get("keys", [])
    if not isinstance(entries, list):
        raise _error("var_data.keys", f"expected a list, got {type(entries).__name__}")
    keys: dict[str, dict[str, Any]] = {}
    for index, jwk in enumerate(entries):
        if not isinstance(jwk, dict):
            raise _error(f"var_data.keys.{index}", f"expected a JWK object, got {type(jwk).__name__}")
        kid = jwk.get("kid")
        if not isinstance(kid, str):
            raise _error(f"var_data.keys.{index}.kid", "missing or not a string")
        if kid in keys:
            # Two AKs would leave the choice of key to the reader.
            raise _error(f"var_data.keys.{index}.kid", f"duplicate kid {kid!r}")
        keys[kid] = jwk
    return keys


def parse_var_data(data: bytes) -> VarData:
    """Parse the var-data JSON. Trailing NULs are tolerated here only for callers that hand in a
    zero-padded buffer; the HCL's own ``variable_data`` is already exact (the vectors' sizes stop
    at the closing brace) and the binding hash is always over that exact slice."""
    raw = _as_bytes(data, "var_data.type").rstrip(b"\x00")
    if not raw:
        raise _error("var_data", "empty")
    doc = strict_json(raw, "var_data")
    if not isinstance(doc, dict):
        raise _error("var_data", f"expected a JSON object, got {type(doc).__name__}")
    keys = _keys(doc)

    vm_configuration = doc.get("vm-configuration", {})
    if not isinstance(vm_configuration, dict):
        raise _error(
            "var_data.vm_configuration", f"expected an object, got {type(vm_configuration).__name__}"
        )

    user_data: bytes | None = None
    if "user-data" in doc:
        text = doc["user-data"]
        # bytes.fromhex would also accept whitespace: one document, one reading.
        if not isinstance(text, str) or not _HEX.fullmatch(text):
            raise _error("var_data.user_data", "expected an even-length hex string")
        user_data = bytes.fromhex(text)

    return VarData(
        keys=keys,
        ak_jwk=keys.get(AK_KID),
        ek_jwk=keys.get(EK_KID),
        vm_configuration=vm_configuration,
        user_data=user_data,
        raw=doc,
    )
