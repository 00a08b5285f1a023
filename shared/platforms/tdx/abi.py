"""Intel DCAP quotes (SGX v3, TDX v4, typed-body v5) -> ``Quote``. Integers are little-endian.

Layout (offsets from the start of the quote)::

    0x00  header (48): version u16, attestation key type u16, TEE type u32, QE SVN u16, PCE SVN u16,
          QE vendor id (16), user data (20)
    v3/v4 0x30  body: SGX enclave report (384) when the TEE type is SGX, TD report 1.0 (584) for TDX
    v5    0x30  body type u16 (1 SGX, 2 TD 1.0, 3 TD 1.5) and body size u32, body at 0x36
    then  signature data length u32, then exactly that many bytes of signature data:
          quote signature (64), attestation key (64), and the QE material --
          v3: QE report (384), QE report signature (64), QE auth data (u16 size + bytes),
              certification data (u16 type + u32 size + bytes);
          v4/v5: the same QE material wrapped as certification data of type 6, whose payload
              ends with the nested certification data (type 5 = PCK chain for every real quote).

Sizes are checked for exact consistency (each nested size must fill its parent precisely) so one
buffer has one reading. Bytes after the signature data are ignored: real quotes arrive zero-padded
to fixed buffers, and they are outside every signature anyway. ``parse_quote`` raises only
``ParseError`` (reason ``parse.quote.<field>``), whatever the input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from shared.errors import ParseError
from shared.platforms.binary import as_bytes

HEADER_SIZE = 48
SGX_REPORT_SIZE = 384
TD10_REPORT_SIZE = 584
TD15_REPORT_SIZE = 648
SIGNATURE_SIZE = 64  # raw r || s, 32 bytes each, big-endian
PUBLIC_KEY_SIZE = 64  # raw x || y, no SEC1 prefix

TEE_TYPE_SGX = 0x00000000
TEE_TYPE_TDX = 0x00000081
ATT_KEY_ECDSA_P256 = 2

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_HEADER = struct.Struct("<HHIHH16s20s")
_V5_BODY_DESCRIPTOR = struct.Struct("<HI")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CERT_DATA_HEADER = struct.Struct("<HI")


class BodyType(IntEnum):
    """The v5 body type codes; v3/v4 bodies are mapped onto the same values."""

    SGX_ENCLAVE = 1
    TD_REPORT_10 = 2
    TD_REPORT_15 = 3


class CertificationDataType(IntEnum):
    PPID_CLEARTEXT = 1
    PPID_RSA2048_ENCRYPTED = 2
    PPID_RSA3072_ENCRYPTED = 3
    PCK_LEAF = 4
    PCK_CHAIN = 5
    QE_REPORT = 6


_BODY_SIZES = {
    BodyType.SGX_ENCLAVE: SGX_REPORT_SIZE,
    BodyType.TD_REPORT_10: TD10_REPORT_SIZE,
    BodyType.TD_REPORT_15: TD15_REPORT_SIZE,
}

# TD attribute bits (TDX module ABI): the ones policy and claims care about.
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
TD_ATTR_PKS = 1 << 30
TD_ATTR_KEY_LOCKER = 1 << 31
TD_ATTR_PERFMON = 1 << 63

SGX_ATTR_DEBUG = 1 << 1  # in the low u64 (flags) of ATTRIBUTES


@dataclass(frozen=True, slots=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int  # meaningful in v3 only; reserved (zero) in TDX quotes
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes


@dataclass(frozen=True, slots=True)
class EnclaveReport:
    """SGX REPORTBODY: the body of SGX quotes and the QE report of every quote."""

    cpu_svn: bytes
    misc_select: int
    isv_ext_prod_id: bytes
    attributes: bytes  # 16 bytes: flags u64 || XFRM u64
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes
    raw: bytes  # the 384 signed bytes, kept for the QE report signature

    @property
    def attribute_flags(self) -> int:
        return int.from_bytes(self.attributes[:8], "little")

    @property
    def debug(self) -> bool:
        return bool(self.attribute_flags & SGX_ATTR_DEBUG)


@dataclass(frozen=True, slots=True)
class TdReport:
    """TD quote body, TDX 1.0 layout; ``tee_tcb_svn_2``/``mr_service_td`` are set for TDX 1.5."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn_2: bytes | None = None
    mr_service_td: bytes | None = None

    @property
    def td_attributes_value(self) -> int:
        return int.from_bytes(self.td_attributes, "little")

    @property
    def debug(self) -> bool:
        return bool(self.td_attributes_value & TD_ATTR_DEBUG)

    @property
    def sept_ve_disable(self) -> bool:
        return bool(self.td_attributes_value & TD_ATTR_SEPT_VE_DISABLE)


@dataclass(frozen=True, slots=True)
class CertificationData:
    cert_type: int
    data: bytes


@dataclass(frozen=True, slots=True)
class QeData:
    """What the quoting enclave adds: its report, the PCK signature over it and its auth data."""

    report: EnclaveReport
    report_signature: bytes
    auth_data: bytes
    certification: CertificationData  # the nested data: type 5 (PCK chain) in real quotes


@dataclass(frozen=True, slots=True)
class Quote:
    header: QuoteHeader
    body_type: BodyType
    body: TdReport | EnclaveReport
    signature: bytes
    attestation_key: bytes
    qe: QeData
    outer_cert_type: int | None  # 6 for v4/v5, None for v3 (no wrapper)
    signed_data: bytes  # header || [v5 body descriptor] || body: what the attestation key signs
    trailing: int  # bytes after the signature data, ignored

    @property
    def is_tdx(self) -> bool:
        return self.header.tee_type == TEE_TYPE_TDX

    @property
    def td_report(self) -> TdReport:
        if not isinstance(self.body, TdReport):
            raise TypeError("not a TDX quote")
        return self.body

    @property
    def enclave_report(self) -> EnclaveReport:
        if not isinstance(self.body, EnclaveReport):
            raise TypeError("not an SGX quote")
        return self.body


class _Reader:
    """Bounds-checked cursor: every read names the field that ran off the end."""

    def __init__(self, data: bytes, start: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def take(self, size: int, field: str) -> bytes:
        if size < 0 or self.pos + size > self.end:
            raise ParseError(field, f"needs {size} bytes at offset {self.pos:#x}, {self.end - self.pos} left")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def u16(self, field: str) -> int:
        return int(_U16.unpack(self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(_U32.unpack(self.take(4, field))[0])


def parse_enclave_report(raw: bytes) -> EnclaveReport:
    """A 384-byte SGX REPORTBODY (reserved ranges are not checked: they are signed, and KSS uses some)."""
    if len(raw) != SGX_REPORT_SIZE:
        raise ParseError("quote.enclave_report", f"expected {SGX_REPORT_SIZE} bytes, got {len(raw)}")
    return EnclaveReport(
        cpu_svn=raw[0:16],
        misc_select=int.from_bytes(raw[16:20], "little"),
        isv_ext_prod_id=raw[32:48],
        attributes=raw[48:64],
        mr_enclave=raw[64:96],
        mr_signer=raw[128:160],
        config_id=raw[192:256],
        isv_prod_id=int.from_bytes(raw[256:258], "little"),
        isv_svn=int.from_bytes(raw[258:260], "little"),
        config_svn=int.from_bytes(raw[260:262], "little"),
        isv_family_id=raw[304:320],
        report_data=raw[320:384],
        raw=raw,
    )


def parse_td_report(raw: bytes) -> TdReport:
    """A TD quote body of 584 (TDX 1.0) or 648 (TDX 1.5) bytes."""
    if len(raw) not in (TD10_REPORT_SIZE, TD15_REPORT_SIZE):
        raise ParseError(
            "quote.td_report", f"expected {TD10_REPORT_SIZE} or {TD15_REPORT_SIZE} bytes, got {len(raw)}"
        )
    rtmrs = (raw[328:376], raw[376:424], raw[424:472], raw[472:520])
    extended = len(raw) == TD15_REPORT_SIZE
    return TdReport(
        tee_tcb_svn=raw[0:16],
        mr_seam=raw[16:64],
        mr_signer_seam=raw[64:112],
        seam_attributes=raw[112:120],
        td_attributes=raw[120:128],
        xfam=raw[128:136],
        mr_td=raw[136:184],
        mr_config_id=raw[184:232],
        mr_owner=raw[232:280],
        mr_owner_config=raw[280:328],
        rtmrs=rtmrs,
        report_data=raw[520:584],
        tee_tcb_svn_2=raw[584:600] if extended else None,
        mr_service_td=raw[600:648] if extended else None,
    )


def _as_bytes(data: object) -> bytes:
    return as_bytes(data, "quote.type")


def _parse_header(raw: bytes) -> QuoteHeader:
    if len(raw) < HEADER_SIZE:
        raise ParseError("quote.header", f"needs {HEADER_SIZE} bytes, got {len(raw)}")
    version, key_type, tee_type, qe_svn, pce_svn, vendor, user_data = _HEADER.unpack_from(raw, 0)
    if version not in (3, 4, 5):
        raise ParseError("quote.header.version", f"unsupported quote version {version}")
    if key_type != ATT_KEY_ECDSA_P256:
        raise ParseError("quote.header.att_key_type", f"unsupported attestation key type {key_type}")
    if tee_type not in (TEE_TYPE_SGX, TEE_TYPE_TDX):
        raise ParseError("quote.header.tee_type", f"unknown TEE type {tee_type:#x}")
    if version == 3 and tee_type != TEE_TYPE_SGX:
        raise ParseError("quote.header.tee_type", "version 3 quotes are SGX only")
    return QuoteHeader(version, key_type, tee_type, qe_svn, pce_svn, vendor, user_data)


def _body_descriptor(header: QuoteHeader, reader: _Reader) -> BodyType:
    if header.version < 5:
        return BodyType.TD_REPORT_10 if header.tee_type == TEE_TYPE_TDX else BodyType.SGX_ENCLAVE
    code = reader.u16("quote.body_type")
    size = reader.u32("quote.body_size")
    try:
        body_type = BodyType(code)
    except ValueError:
        raise ParseError("quote.body_type", f"unsupported v5 body type {code}") from None
    if size != _BODY_SIZES[body_type]:
        raise ParseError(
            "quote.body_size", f"body type {code} needs {_BODY_SIZES[body_type]} bytes, says {size}"
        )
    if (body_type is BodyType.SGX_ENCLAVE) != (header.tee_type == TEE_TYPE_SGX):
        raise ParseError("quote.body_type", f"body type {code} does not match TEE type {header.tee_type:#x}")
    return body_type


def _cert_data(reader: _Reader, field: str) -> tuple[int, int]:
    cert_type, size = _CERT_DATA_HEADER.unpack(reader.take(_CERT_DATA_HEADER.size, f"{field}.header"))
    if size > reader.end - reader.pos:
        raise ParseError(f"{field}.size", f"says {size} bytes, {reader.end - reader.pos} left")
    return int(cert_type), int(size)


def _parse_qe_material(reader: _Reader, field: str) -> QeData:
    report = parse_enclave_report(reader.take(SGX_REPORT_SIZE, f"{field}.qe_report"))
    report_signature = reader.take(SIGNATURE_SIZE, f"{field}.qe_report_signature")
    auth_size = reader.u16(f"{field}.qe_auth_data_size")
    auth_data = reader.take(auth_size, f"{field}.qe_auth_data")
    cert_type, size = _cert_data(reader, f"{field}.certification_data")
    data = reader.take(size, f"{field}.certification_data")
    if reader.pos != reader.end:
        raise ParseError(
            f"{field}.size", f"{reader.end - reader.pos} unaccounted bytes after the certification data"
        )
    return QeData(report, report_signature, auth_data, CertificationData(cert_type, data))


def parse_quote(data: bytes | bytearray | memoryview) -> Quote:
    """Parse any DCAP ECDSA-P256 quote; ``ParseError`` names the first field that does not fit."""
    raw = _as_bytes(data)
    header = _parse_header(raw)
    reader = _Reader(raw, HEADER_SIZE)
    body_type = _body_descriptor(header, reader)
    body_raw = reader.take(_BODY_SIZES[body_type], "quote.body")
    body: TdReport | EnclaveReport = (
        parse_enclave_report(body_raw) if body_type is BodyType.SGX_ENCLAVE else parse_td_report(body_raw)
    )
    signed_end = reader.pos

    sig_len = reader.u32("quote.signature_data_len")
    if sig_len > reader.end - reader.pos:
        raise ParseError("quote.signature_data_len", f"says {sig_len} bytes, {reader.end - reader.pos} left")
    sig_reader = _Reader(raw, reader.pos, reader.pos + sig_len)
    signature = sig_reader.take(SIGNATURE_SIZE, "quote.signature")
    attestation_key = sig_reader.take(PUBLIC_KEY_SIZE, "quote.attestation_key")

    outer_type: int | None = None
    if header.version == 3:
        qe = _parse_qe_material(sig_reader, "quote.signature_data")
    else:
        outer_type, outer_size = _cert_data(sig_reader, "quote.certification_data")
        if outer_type != CertificationDataType.QE_REPORT:
            raise ParseError("quote.certification_data.type", f"expected type 6, got {outer_type}")
        if sig_reader.pos + outer_size != sig_reader.end:
            raise ParseError("quote.certification_data.size", "does not fill the signature data exactly")
        qe = _parse_qe_material(sig_reader, "quote.qe_report_certification_data")

    return Quote(
        header=header,
        body_type=body_type,
        body=body,
        signature=signature,
        attestation_key=attestation_key,
        qe=qe,
        outer_cert_type=outer_type,
        signed_data=raw[:signed_end],
        trailing=len(raw) - sig_reader.end,
    )
