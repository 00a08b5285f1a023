"""AMD SEV-SNP ATTESTATION_REPORT: 1184 bytes -> ``SnpReport``.

Offsets never move between report versions; newer versions only assign bytes that were reserved
before. So every field is read at its fixed offset and the newer ones are gated on VERSION:

=========  ====  ==========================  =========  ====  ==========================
offset     size  field                       offset     size  field
=========  ====  ==========================  =========  ====  ==========================
0x000         4  VERSION                     0x180         8  REPORTED_TCB
0x004         4  GUEST_SVN                   0x188         1  CPUID_FAM_ID (v3+)
0x008         8  POLICY                      0x189         1  CPUID_MOD_ID (v3+)
0x010        16  FAMILY_ID                   0x18A         1  CPUID_STEP (v3+)
0x020        16  IMAGE_ID                    0x1A0        64  CHIP_ID
0x030         4  VMPL                        0x1E0         8  COMMITTED_TCB
0x034         4  SIGNATURE_ALGO (1)          0x1E8         3  CURRENT build/minor/major
0x038         8  CURRENT_TCB                 0x1EC         3  COMMITTED build/minor/major
0x040         8  PLATFORM_INFO               0x1F0         8  LAUNCH_TCB
0x048         4  SIGNER_INFO                 0x1F8         8  LAUNCH_MIT_VECTOR (v5)
0x050        64  REPORT_DATA                 0x200         8  CURRENT_MIT_VECTOR (v5)
0x090        48  MEASUREMENT                 0x2A0        72  signature R (little-endian)
0x0C0        32  HOST_DATA                   0x2E8        72  signature S (little-endian)
0x0E0        48  ID_KEY_DIGEST
0x110        48  AUTHOR_KEY_DIGEST
0x140        32  REPORT_ID
0x160        32  REPORT_ID_MA
=========  ====  ==========================  =========  ====  ==========================

Version 4 has never been seen on hardware; it is accepted and read like version 3. That is safe
because the only bytes a later version could have assigned (0x1F8..) are then checked as reserved
and must be zero: an unknown meaning fails closed instead of being silently ignored.

Every reserved range must be zero; the ``ParseError`` field names the range, e.g.
``report.reserved.0x1f8-0x29f``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shared.errors import ParseError
from shared.platforms.binary import as_bytes
from shared.platforms.snp.fields import (
    TCB_SIZE,
    FirmwareVersion,
    GuestPolicy,
    PlatformInfo,
    Product,
    SignerInfo,
    SigningKey,
    TcbVersion,
    product_from_cpuid,
)

__all__ = [
    "REPORT_SIZE",
    "SIGNATURE_COMPONENT_SIZE",
    "SIGNED_REGION_END",
    "SUPPORTED_VERSIONS",
    "FirmwareVersion",
    "GuestPolicy",
    "PlatformInfo",
    "Product",
    "SignerInfo",
    "SigningKey",
    "SnpReport",
    "TcbVersion",
    "parse_report",
    "product_from_cpuid",
    "signed_region",
]

REPORT_SIZE = 0x4A0
SIGNED_REGION_END = 0x2A0
SIGNATURE_COMPONENT_SIZE = 72
SUPPORTED_VERSIONS = frozenset({2, 3, 4, 5})
SIGNATURE_ALGO_ECDSA_P384_SHA384 = 1

_CPUID_MIN_VERSION = 3
_MIT_VECTOR_MIN_VERSION = 5

_SIG_R = 0x2A0
_SIG_S = _SIG_R + SIGNATURE_COMPONENT_SIZE

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _reserved_ranges(version: int) -> tuple[tuple[int, int], ...]:
    """Half-open [start, end) byte ranges that must be zero for ``version``."""
    cpuid_end = 0x18B if version >= _CPUID_MIN_VERSION else 0x188
    mit_end = 0x208 if version >= _MIT_VECTOR_MIN_VERSION else 0x1F8
    return (
        (0x04C, 0x050),
        (cpuid_end, 0x1A0),
        (0x1EB, 0x1EC),
        (0x1EF, 0x1F0),
        (mit_end, SIGNED_REGION_END),
        (_SIG_S + SIGNATURE_COMPONENT_SIZE, REPORT_SIZE),
    )


@dataclass(frozen=True, slots=True)
class SnpReport:
    """One parsed report. Byte fields are the exact report bytes; ``product`` selects the TCB
    layout and the AMD roots. ``cpuid_*`` are ``None`` before v3, mitigation vectors before v5."""

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    signer_info: SignerInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int | None
    cpuid_mod_id: int | None
    cpuid_step: int | None
    chip_id: bytes
    committed_tcb: TcbVersion
    current_version: FirmwareVersion
    committed_version: FirmwareVersion
    launch_tcb: TcbVersion
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes
    product: Product

    @property
    def signing_key(self) -> SigningKey:
        return self.signer_info.signing_key

    @property
    def r(self) -> int:
        return int.from_bytes(self.signature_r, "little")

    @property
    def s(self) -> int:
        return int.from_bytes(self.signature_s, "little")


def _as_bytes(data: object) -> bytes:
    return as_bytes(data, "report.type")


def _sized(data: object) -> bytes:
    raw = _as_bytes(data)
    if len(raw) != REPORT_SIZE:
        raise ParseError("report.size", f"expected {REPORT_SIZE} bytes, got {len(raw)}")
    return raw


def signed_region(raw: bytes) -> bytes:
    """The bytes the firmware signs: 0x000-0x29F."""
    return _sized(raw)[:SIGNED_REGION_END]


def _resolve_product(raw: bytes, version: int, product: Product | None) -> Product:
    if product is not None and not isinstance(product, Product):
        raise ParseError("report.product", f"expected Product, got {type(product).__name__}")
    detected = product_from_cpuid(raw[0x188], raw[0x189]) if version >= _CPUID_MIN_VERSION else None
    if detected is not None:
        # The report's own CPUID wins over a caller's hint; whether it agrees with the VEK's
        # product is a verification question (``snp.product_mismatch``), not a parse one.
        return detected
    if product is not None:
        # v2 (no CPUID) or a model this code does not know yet: the chain under that product's
        # roots and the TCB binding still have to hold.
        return product
    if version < _CPUID_MIN_VERSION:
        raise ParseError(
            "report.product",
            f"version {version} reports carry no CPUID: pass the product (e.g. from the VEK issuer)",
        )
    raise ParseError("report.cpuid", f"unknown CPU family/model {raw[0x188]:#04x}/{raw[0x189]:#04x}")


def parse_report(data: bytes, product: Product | None = None) -> SnpReport:
    """Parse and check one ATTESTATION_REPORT. Raises only ``ParseError`` (``parse.report.<field>``).

    ``product`` is used only when the report does not name its product: always for version 2 (no
    CPUID bytes, so it is required there), and for v3+ reports from a CPU model not known here.
    """
    raw = _sized(data)
    version = _U32.unpack_from(raw, 0x000)[0]
    if version not in SUPPORTED_VERSIONS:
        raise ParseError("report.version", f"unsupported report version {version}")
    signature_algo = _U32.unpack_from(raw, 0x034)[0]
    if signature_algo != SIGNATURE_ALGO_ECDSA_P384_SHA384:
        raise ParseError("report.signature_algo", f"unsupported signature algorithm {signature_algo}")
    for start, end in _reserved_ranges(version):
        if any(raw[start:end]):
            raise ParseError(f"report.reserved.{start:#05x}-{end - 1:#05x}", "reserved bytes are not zero")
    signer_info = SignerInfo.decode(_U32.unpack_from(raw, 0x048)[0])
    prod = _resolve_product(raw, version, product)

    def tcb(offset: int) -> TcbVersion:
        return TcbVersion.decode(raw[offset : offset + TCB_SIZE], prod)

    has_cpuid = version >= _CPUID_MIN_VERSION
    has_mit = version >= _MIT_VECTOR_MIN_VERSION
    return SnpReport(
        version=version,
        guest_svn=_U32.unpack_from(raw, 0x004)[0],
        policy=GuestPolicy.decode(_U64.unpack_from(raw, 0x008)[0]),
        family_id=raw[0x010:0x020],
        image_id=raw[0x020:0x030],
        vmpl=_U32.unpack_from(raw, 0x030)[0],
        signature_algo=signature_algo,
        current_tcb=tcb(0x038),
        platform_info=PlatformInfo.decode(_U64.unpack_from(raw, 0x040)[0]),
        signer_info=signer_info,
        report_data=raw[0x050:0x090],
        measurement=raw[0x090:0x0C0],
        host_data=raw[0x0C0:0x0E0],
        id_key_digest=raw[0x0E0:0x110],
        author_key_digest=raw[0x110:0x140],
        report_id=raw[0x140:0x160],
        report_id_ma=raw[0x160:0x180],
        reported_tcb=tcb(0x180),
        cpuid_fam_id=raw[0x188] if has_cpuid else None,
        cpuid_mod_id=raw[0x189] if has_cpuid else None,
        cpuid_step=raw[0x18A] if has_cpuid else None,
        chip_id=raw[0x1A0:0x1E0],
        committed_tcb=tcb(0x1E0),
        current_version=FirmwareVersion.decode(raw[0x1E8:0x1EB]),
        committed_version=FirmwareVersion.decode(raw[0x1EC:0x1EF]),
        launch_tcb=tcb(0x1F0),
        launch_mit_vector=_U64.unpack_from(raw, 0x1F8)[0] if has_mit else None,
        current_mit_vector=_U64.unpack_from(raw, 0x200)[0] if has_mit else None,
        signature_r=raw[_SIG_R:_SIG_S],
        signature_s=raw[_SIG_S : _SIG_S + SIGNATURE_COMPONENT_SIZE],
        product=prod,
    )


def read_reported_tcb(data: bytes, product: Product) -> TcbVersion:
    """REPORTED_TCB without the rest of the checks, for tools that must look at a report that does
    not parse (e.g. to explain which binding a corrupted report would also fail)."""
    return TcbVersion.decode(_sized(data)[0x180:0x188], product)


def read_chip_id(data: bytes) -> bytes:
    """CHIP_ID without the rest of the checks (see ``read_reported_tcb``)."""
    return _sized(data)[0x1A0:0x1E0]
