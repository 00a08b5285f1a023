"""Value types inside an SNP attestation report: product, TCB_VERSION, POLICY, PLATFORM_INFO,
SIGNER_INFO and firmware versions. Pure decoders over integers and bytes; the report layout itself
lives in ``abi``.

Bit positions follow AMD's SEV-SNP firmware ABI as summarised in ``shared/notes/snp.md`` §3-§5.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum

from shared.errors import ParseError

TCB_SIZE = 8


class Product(str, Enum):
    """An SNP product line. The value is the spelling AMD's KDS uses in URL paths."""

    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @property
    def has_fmc(self) -> bool:
        # Turin added an FMC SVN and rearranged TCB_VERSION; older products share one layout.
        return self is Product.TURIN


_FAMILY_ZEN3_4 = 0x19
_FAMILY_ZEN5 = 0x1A


def product_from_cpuid(family: int, model: int) -> Product | None:
    """Product from the report's CPUID_FAM_ID / CPUID_MOD_ID bytes (v3+); ``None`` if unknown.

    Bergamo and Siena (Zen 4c, models 0xA0-0xAF) are served by the Genoa KDS path and roots, so
    they map to ``GENOA``.
    """
    if family == _FAMILY_ZEN3_4:
        if 0x00 <= model <= 0x0F:
            return Product.MILAN
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return Product.GENOA
    if family == _FAMILY_ZEN5 and 0x00 <= model <= 0x11:
        return Product.TURIN
    return None


@dataclass(frozen=True, slots=True)
class TcbVersion:
    """One 8-byte TCB_VERSION. ``raw`` keeps every byte, including the reserved ones: the signature
    binds the whole value and the VEK derivation uses it, so nothing is lost by decoding."""

    raw: bytes
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None = None  # Turin only

    @property
    def u64(self) -> int:
        return int.from_bytes(self.raw, "little")

    def components(self) -> dict[str, int]:
        """SVNs by name, in KDS parameter order (fmc first on Turin)."""
        parts = {} if self.fmc is None else {"fmc": self.fmc}
        parts.update(bootloader=self.bootloader, tee=self.tee, snp=self.snp, microcode=self.microcode)
        return parts

    @classmethod
    def decode(cls, raw: bytes, product: Product) -> TcbVersion:
        # Reserved TCB bytes are not rejected: AMD has already moved fields between reserved and
        # assigned bytes once (Turin), REPORTED_TCB is bound to the VEK by key derivation, and the
        # raw value is kept for anyone who needs the exact bytes.
        if len(raw) != TCB_SIZE:
            raise ParseError("report.tcb", f"expected {TCB_SIZE} bytes, got {len(raw)}")
        if product.has_fmc:
            return cls(bytes(raw), bootloader=raw[1], tee=raw[2], snp=raw[3], microcode=raw[7], fmc=raw[0])
        return cls(bytes(raw), bootloader=raw[0], tee=raw[1], snp=raw[6], microcode=raw[7])


# POLICY bits (u64 at 0x008)
_POLICY_SMT = 1 << 16
_POLICY_RESERVED_ONE = 1 << 17
_POLICY_MIGRATE_MA = 1 << 18
_POLICY_DEBUG = 1 << 19
_POLICY_SINGLE_SOCKET = 1 << 20
_POLICY_CXL_ALLOW = 1 << 21
_POLICY_MEM_AES_256_XTS = 1 << 22
_POLICY_RAPL_DIS = 1 << 23
_POLICY_CIPHERTEXT_HIDING = 1 << 24
_POLICY_PAGE_SWAP_DISABLE = 1 << 25
_POLICY_KNOWN = (1 << 26) - 1


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The guest policy the owner fixed at launch. Undefined bits are kept in ``reserved_bits``
    rather than rejected here, so that policy (``validate``) decides what an unknown bit means."""

    raw: int
    abi_minor: int
    abi_major: int
    smt: bool
    reserved_bit17: bool
    migrate_ma: bool
    debug: bool
    single_socket: bool
    cxl_allow: bool
    mem_aes_256_xts: bool
    rapl_dis: bool
    ciphertext_hiding: bool
    page_swap_disable: bool
    reserved_bits: int

    @classmethod
    def decode(cls, raw: int) -> GuestPolicy:
        return cls(
            raw=raw,
            abi_minor=raw & 0xFF,
            abi_major=(raw >> 8) & 0xFF,
            smt=bool(raw & _POLICY_SMT),
            reserved_bit17=bool(raw & _POLICY_RESERVED_ONE),
            migrate_ma=bool(raw & _POLICY_MIGRATE_MA),
            debug=bool(raw & _POLICY_DEBUG),
            single_socket=bool(raw & _POLICY_SINGLE_SOCKET),
            cxl_allow=bool(raw & _POLICY_CXL_ALLOW),
            mem_aes_256_xts=bool(raw & _POLICY_MEM_AES_256_XTS),
            rapl_dis=bool(raw & _POLICY_RAPL_DIS),
            ciphertext_hiding=bool(raw & _POLICY_CIPHERTEXT_HIDING),
            page_swap_disable=bool(raw & _POLICY_PAGE_SWAP_DISABLE),
            reserved_bits=raw & ~_POLICY_KNOWN,
        )


# PLATFORM_INFO bits (u64 at 0x040). Bit 6 is set on real Turin parts but its name is unconfirmed,
# so it stays in ``unknown_bits``.
_PI_SMT = 1 << 0
_PI_TSME = 1 << 1
_PI_ECC = 1 << 2
_PI_RAPL_DIS = 1 << 3
_PI_CIPHERTEXT_HIDING = 1 << 4
_PI_ALIAS_CHECK = 1 << 5
_PI_TIO = 1 << 7
_PI_KNOWN = _PI_SMT | _PI_TSME | _PI_ECC | _PI_RAPL_DIS | _PI_CIPHERTEXT_HIDING | _PI_ALIAS_CHECK | _PI_TIO


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """Platform state at report time. New firmware keeps adding bits: unknown ones are reported in
    ``unknown_bits``, never rejected."""

    raw: int
    smt_enabled: bool
    tsme_enabled: bool
    ecc_enabled: bool
    rapl_disabled: bool
    ciphertext_hiding_enabled: bool
    alias_check_complete: bool
    tio_enabled: bool
    unknown_bits: int

    @classmethod
    def decode(cls, raw: int) -> PlatformInfo:
        return cls(
            raw=raw,
            smt_enabled=bool(raw & _PI_SMT),
            tsme_enabled=bool(raw & _PI_TSME),
            ecc_enabled=bool(raw & _PI_ECC),
            rapl_disabled=bool(raw & _PI_RAPL_DIS),
            ciphertext_hiding_enabled=bool(raw & _PI_CIPHERTEXT_HIDING),
            alias_check_complete=bool(raw & _PI_ALIAS_CHECK),
            tio_enabled=bool(raw & _PI_TIO),
            unknown_bits=raw & ~_PI_KNOWN,
        )


class SigningKey(IntEnum):
    """SIGNER_INFO.SIGNING_KEY: which key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


_SI_AUTHOR_KEY_EN = 1 << 0
_SI_MASK_CHIP_KEY = 1 << 1
_SI_SIGNING_KEY_SHIFT = 2
_SI_SIGNING_KEY_MASK = 0x7
_SI_KNOWN = 0x1F


@dataclass(frozen=True, slots=True)
class SignerInfo:
    raw: int
    author_key_en: bool
    mask_chip_key: bool
    signing_key: SigningKey

    @classmethod
    def decode(cls, raw: int) -> SignerInfo:
        # Unlike POLICY/PLATFORM_INFO these bits decide which key verifies the report, so an
        # undefined value is malformed evidence, not information to pass on.
        if raw & ~_SI_KNOWN:
            raise ParseError("report.signer_info.reserved", f"reserved SIGNER_INFO bits set: {raw:#x}")
        code = (raw >> _SI_SIGNING_KEY_SHIFT) & _SI_SIGNING_KEY_MASK
        try:
            key = SigningKey(code)
        except ValueError:
            raise ParseError("report.signer_info.signing_key", f"undefined signing key {code}") from None
        return cls(
            raw=raw,
            author_key_en=bool(raw & _SI_AUTHOR_KEY_EN),
            mask_chip_key=bool(raw & _SI_MASK_CHIP_KEY),
            signing_key=key,
        )


@dataclass(frozen=True, slots=True, order=True)
class FirmwareVersion:
    """SNP firmware version; stored build, minor, major (one byte each) in the report."""

    major: int
    minor: int
    build: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.build}"

    @classmethod
    def decode(cls, raw: bytes) -> FirmwareVersion:
        return cls(major=raw[2], minor=raw[1], build=raw[0])
