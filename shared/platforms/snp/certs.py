"""AMD certificates: loading, the VCEK/VLEK extensions, and the pinned ARK/ASK/ASVK per product.

VEKs (VCEK and VLEK) carry AMD's TCB and chip identity in private extensions under
1.3.6.1.4.1.3704.1; they are parsed by hand here because ``cryptography`` treats them as opaque.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from shared.errors import ParseError
from shared.platforms.snp.der import TAG_OCTET_STRING, read_ia5_string, read_integer, read_tlv
from shared.platforms.snp.fields import Product

AMD_OID_PREFIX = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.1")
OID_PRODUCT_NAME = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.2")
OID_BL_SPL = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.3.1")
OID_TEE_SPL = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.3.2")
OID_SNP_SPL = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.3.3")
OID_UCODE_SPL = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.3.8")
OID_FMC_SPL = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.3.9")
OID_HW_ID = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.4")
OID_CSP_ID = x509.ObjectIdentifier(f"{AMD_OID_PREFIX}.5")

HWID_SIZE = 64
TURIN_HWID_SIZE = 8
_SPL_MAX = 0xFF  # each SPL is one byte of TCB_VERSION

VCEK_CN = "SEV-VCEK"
VLEK_CN = "SEV-VLEK"
_VLEK_ISSUER_PREFIX = "SEV-VLEK-"
_ASK_ISSUER_PREFIX = "SEV-"

_ROOTS_DIR = Path(__file__).with_name("roots")

# Second anchor beside the PEM files: a root file edited on disk fails loudly at load time instead of
# quietly becoming trusted. Values from shared/vectors/snp/MANIFEST.md.
_PINNED_SHA256: dict[Product, dict[str, str]] = {
    Product.MILAN: {
        "ark": "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
        "ask": "67d303bd3905fd38db8b20e0793699870e7fa612eaad5dec358293fd8c0bac1b",
        "asvk": "c5e081f59b7efab1fe2f8b505e159704e72f29cab7ef7cf628a05a42439082f5",
    },
    Product.GENOA: {
        "ark": "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
        "ask": "5464738c1546aed5f2cecf1dc98c5c960a92e8913238a61711bc90ec6e828521",
        "asvk": "197e610743a917d6b9bb982a5a9226ccc0a15b611be0619e626aca9151457372",
    },
    Product.TURIN: {
        "ark": "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
        "ask": "5b77ef5fe7a7a004fd9032668fba9d0fda22f88c4442069a479636a6ae3b3185",
        "asvk": "104e10a8bd060a3c20a434261a57d0588fd65a88915b4f65b08bdecaf8df1a3c",
    },
}


class VekKind(str, Enum):
    """Which endorsement key signed a report: chip-unique (VCEK) or cloud-provider-loaded (VLEK)."""

    VCEK = "VCEK"
    VLEK = "VLEK"


@dataclass(frozen=True, slots=True)
class VekExtensions:
    """AMD's extensions of one VCEK/VLEK. SPLs must match the report's REPORTED_TCB; ``hw_id``
    (VCEK only) must match CHIP_ID; ``csp_id`` names the cloud provider of a VLEK."""

    struct_version: int | None
    product_name: str | None
    bl_spl: int
    tee_spl: int
    snp_spl: int
    ucode_spl: int
    fmc_spl: int | None
    hw_id: bytes | None
    csp_id: str | None

    def spls(self) -> dict[str, int]:
        """SPLs named like ``TcbVersion.components()``."""
        parts = {} if self.fmc_spl is None else {"fmc": self.fmc_spl}
        parts.update(bootloader=self.bl_spl, tee=self.tee_spl, snp=self.snp_spl, microcode=self.ucode_spl)
        return parts


@dataclass(frozen=True, slots=True)
class AmdRoots:
    """One product's AMD trust anchors: ARK (root), ASK (signs VCEKs) and ASVK (signs VLEKs)."""

    product: Product
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate

    def intermediate(self, kind: VekKind) -> x509.Certificate:
        return self.ask if kind is VekKind.VCEK else self.asvk


def load_certificate(data: bytes, field: str = "certificate") -> x509.Certificate:
    """One certificate from DER or PEM; ``ParseError(field)`` otherwise.

    Every real VEK has serial number 0, which ``cryptography`` (up to 50) loads with a deprecation
    warning. For AMD certificates the warning carries no information and would repeat for every
    VEK, so it is silenced for this call only. A release that refuses such certificates raises
    ``ValueError``, i.e. ``ParseError`` here; the test suite loads real VEKs to notice that at once.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError(field, f"expected bytes, got {type(data).__name__}")
    blob = bytes(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            if blob.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(blob)
            return x509.load_der_x509_certificate(blob)
    except ValueError as exc:
        raise ParseError(field, f"unreadable certificate: {exc}") from None


def load_cert_chain(pem: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    """``(ASK or ASVK, ARK)`` from a KDS ``cert_chain`` PEM bundle (intermediate first)."""
    if not isinstance(pem, (bytes, bytearray, memoryview)):
        raise ParseError("cert_chain", f"expected bytes, got {type(pem).__name__}")
    try:
        certs = x509.load_pem_x509_certificates(bytes(pem))
    except ValueError as exc:
        raise ParseError("cert_chain", f"unreadable certificate chain: {exc}") from None
    if len(certs) != 2:
        raise ParseError("cert_chain", f"expected 2 certificates, got {len(certs)}")
    return certs[0], certs[1]


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from DER (as KDS serves it) or PEM."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ParseError("crl", f"expected bytes, got {type(data).__name__}")
    blob = bytes(data)
    try:
        if blob.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(blob)
        return x509.load_der_x509_crl(blob)
    except ValueError as exc:
        raise ParseError("crl", f"unreadable CRL: {exc}") from None


def _common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def vek_kind(cert: x509.Certificate) -> VekKind | None:
    """VCEK or VLEK from the subject CN; ``None`` for any other certificate."""
    cn = _common_name(cert.subject)
    if cn == VCEK_CN:
        return VekKind.VCEK
    if cn == VLEK_CN:
        return VekKind.VLEK
    return None


def product_of_issuer(cert: x509.Certificate) -> Product | None:
    """Product named by a VEK's issuer CN (``SEV-Milan``, ``SEV-VLEK-Genoa``, ...). Only a hint: the
    chain check against that product's pinned roots is what makes it true. Needed for v2 reports,
    which carry no CPUID."""
    cn = _common_name(cert.issuer)
    if cn is None:
        return None
    for prefix in (_VLEK_ISSUER_PREFIX, _ASK_ISSUER_PREFIX):
        if cn.startswith(prefix):
            try:
                return Product(cn[len(prefix) :])
            except ValueError:
                return None
    return None


def _extension_values(cert: x509.Certificate) -> dict[str, bytes]:
    try:
        extensions = cert.extensions
    except ValueError as exc:  # duplicate or malformed extensions
        raise ParseError("vek.extensions", str(exc)) from None
    values: dict[str, bytes] = {}
    for ext in extensions:
        if ext.oid.dotted_string.startswith(AMD_OID_PREFIX + ".") and isinstance(
            ext.value, x509.UnrecognizedExtension
        ):
            values[ext.oid.dotted_string] = ext.value.value
    return values


def _spl(values: dict[str, bytes], oid: x509.ObjectIdentifier, name: str) -> int | None:
    data = values.get(oid.dotted_string)
    if data is None:
        return None
    field = f"vek.ext.{name}"
    value = read_integer(data, field)
    if not 0 <= value <= _SPL_MAX:
        raise ParseError(field, f"SPL {value} out of range 0..{_SPL_MAX}")
    return value


def _required_spl(values: dict[str, bytes], oid: x509.ObjectIdentifier, name: str) -> int:
    value = _spl(values, oid, name)
    if value is None:
        raise ParseError(f"vek.ext.{name}", "extension missing")
    return value


def _hw_id(data: bytes) -> bytes:
    # Real VCEKs put the raw ID straight into extnValue; a DER OCTET STRING form also exists. The
    # lengths tell them apart unambiguously (64/8 raw vs 66/10 wrapped).
    if len(data) in (HWID_SIZE, TURIN_HWID_SIZE):
        return data
    tag, value = read_tlv(data, "vek.ext.hwID")
    if tag != TAG_OCTET_STRING or len(value) not in (HWID_SIZE, TURIN_HWID_SIZE):
        raise ParseError("vek.ext.hwID", f"expected {HWID_SIZE} or {TURIN_HWID_SIZE} bytes")
    return value


def parse_vek_extensions(cert: x509.Certificate) -> VekExtensions:
    """AMD extensions of a VCEK/VLEK. Raises ``ParseError("vek.ext.<name>")``."""
    values = _extension_values(cert)
    struct_raw = values.get(OID_STRUCT_VERSION.dotted_string)
    name_raw = values.get(OID_PRODUCT_NAME.dotted_string)
    hw_raw = values.get(OID_HW_ID.dotted_string)
    csp_raw = values.get(OID_CSP_ID.dotted_string)
    return VekExtensions(
        struct_version=None if struct_raw is None else read_integer(struct_raw, "vek.ext.structVersion"),
        product_name=None if name_raw is None else read_ia5_string(name_raw, "vek.ext.productName"),
        bl_spl=_required_spl(values, OID_BL_SPL, "blSPL"),
        tee_spl=_required_spl(values, OID_TEE_SPL, "teeSPL"),
        snp_spl=_required_spl(values, OID_SNP_SPL, "snpSPL"),
        ucode_spl=_required_spl(values, OID_UCODE_SPL, "ucodeSPL"),
        fmc_spl=_spl(values, OID_FMC_SPL, "fmcSPL"),
        hw_id=None if hw_raw is None else _hw_id(hw_raw),
        csp_id=None if csp_raw is None else read_ia5_string(csp_raw, "vek.ext.cspID"),
    )


def _der_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def load_roots(directory: Path, product: Product) -> AmdRoots:
    """ARK/ASK/ASVK from ``ark.pem``, ``ask.pem`` and ``asvk.pem`` in ``directory`` (no pin check)."""
    certs = {
        name: load_certificate((directory / f"{name}.pem").read_bytes(), f"roots.{name}")
        for name in ("ark", "ask", "asvk")
    }
    return AmdRoots(product=product, ark=certs["ark"], ask=certs["ask"], asvk=certs["asvk"])


def pinned_roots() -> dict[Product, AmdRoots]:
    """The AMD roots shipped with REMITS, checked against their pinned SHA-256 digests.

    Loaded once per process; each call returns a fresh dict so no caller can alter another's view.
    Raises ``RuntimeError`` if a shipped file does not match its pin (a packaging or tampering
    problem, not a property of any evidence).
    """
    return dict(_load_pinned_roots())


@cache
def _load_pinned_roots() -> tuple[tuple[Product, AmdRoots], ...]:
    roots: list[tuple[Product, AmdRoots]] = []
    for product in Product:
        loaded = load_roots(_ROOTS_DIR / product.value.lower(), product)
        for name, cert in (("ark", loaded.ark), ("ask", loaded.ask), ("asvk", loaded.asvk)):
            if _der_sha256(cert) != _PINNED_SHA256[product][name]:
                raise RuntimeError(f"shipped {product.value} {name} does not match its pinned SHA-256")
        roots.append((product, loaded))
    return tuple(roots)
