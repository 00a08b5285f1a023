"""URLs of AMD's Key Distribution Service (KDS).

Only VCEKs can be fetched by chip: a VLEK is provisioned by AMD to a cloud provider and is not
served publicly, so VLEK evidence must bring its certificate along. Chains and CRLs exist for both.

Builders emit one canonical form (lowercase hex, plain decimal SPLs, KDS's documented parameter
order) so that caches keyed by URL never hold one certificate twice; ``parse_vcek_url`` accepts the
variants seen in working URLs (upper-case hex, zero-padded numbers, any parameter order).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from shared.errors import ParseError
from shared.platforms.snp.abi import SnpReport
from shared.platforms.snp.certs import HWID_SIZE, TURIN_HWID_SIZE, VekKind
from shared.platforms.snp.fields import Product, SigningKey, TcbVersion

DEFAULT_KDS_BASE = "https://kdsintf.amd.com"

# Query parameter -> TcbVersion component, in the order KDS documents them.
_SPL_PARAMS = (("blSPL", "bootloader"), ("teeSPL", "tee"), ("snpSPL", "snp"), ("ucodeSPL", "microcode"))
_FMC_PARAM = ("fmcSPL", "fmc")
_PARAM_OF = {component: param for param, component in (_FMC_PARAM, *_SPL_PARAMS)}
_SPL_MAX = 0xFF

_VCEK_PATH_RE = re.compile(r"/vcek/v1/(Milan|Genoa|Turin)/([0-9A-Fa-f]+)")


@dataclass(frozen=True, slots=True)
class VcekRequest:
    """What identifies one VCEK: product, hwID (64 bytes; 8 on Turin) and the TCB SPLs."""

    product: Product
    hw_id: bytes
    spls: tuple[tuple[str, int], ...]  # (component, value) in KDS parameter order

    def url(self, base: str = DEFAULT_KDS_BASE) -> str:
        query = "&".join(f"{_PARAM_OF[component]}={value}" for component, value in self.spls)
        return f"{_base(base)}/vcek/v1/{self.product.value}/{self.hw_id.hex()}?{query}"


def _base(base: str) -> str:
    if not isinstance(base, str) or not base:
        raise ParseError("kds.base", "KDS base URL must be a non-empty string")
    return base.rstrip("/")


def _product(product: object) -> Product:
    if not isinstance(product, Product):
        raise ParseError("kds.product", f"expected Product, got {type(product).__name__}")
    return product


def _params(product: Product) -> tuple[tuple[str, str], ...]:
    # Turin added the FMC SPL; KDS lists it first.
    return (_FMC_PARAM, *_SPL_PARAMS) if product.has_fmc else _SPL_PARAMS


def _hw_id(product: Product, chip_id: bytes) -> bytes:
    if not isinstance(chip_id, bytes) or len(chip_id) != HWID_SIZE:
        raise ParseError("kds.chip_id", f"CHIP_ID must be {HWID_SIZE} bytes")
    if not any(chip_id):
        raise ParseError("kds.chip_id", "CHIP_ID is masked (all zero): KDS cannot identify the chip")
    if not product.has_fmc:
        return chip_id
    # Turin chips have an 8-byte ID; KDS rejects the zero-padded 64-byte form.
    if any(chip_id[TURIN_HWID_SIZE:]):
        raise ParseError("kds.chip_id", "Turin CHIP_ID must be 8 bytes of ID followed by zeros")
    return chip_id[:TURIN_HWID_SIZE]


def vcek_request(product: Product, chip_id: bytes, reported_tcb: TcbVersion) -> VcekRequest:
    """The VCEK identity for a chip at a TCB. Pass REPORTED_TCB: the VCEK is derived from it,
    never from CURRENT_TCB."""
    hw_id = _hw_id(_product(product), chip_id)
    components = reported_tcb.components()
    spls: list[tuple[str, int]] = []
    for param, component in _params(product):
        if component not in components:
            raise ParseError(f"kds.{param}", f"TCB has no {component} SVN for {product.value}")
        spls.append((component, components[component]))
    return VcekRequest(product=product, hw_id=hw_id, spls=tuple(spls))


def vcek_url(
    product: Product, chip_id: bytes, reported_tcb: TcbVersion, *, base: str = DEFAULT_KDS_BASE
) -> str:
    """KDS URL of the DER VCEK for ``chip_id`` at ``reported_tcb``."""
    return vcek_request(product, chip_id, reported_tcb).url(base)


def vcek_url_for_report(report: SnpReport, *, base: str = DEFAULT_KDS_BASE) -> str:
    """KDS URL of the VCEK that should have signed ``report``."""
    if report.signing_key is not SigningKey.VCEK:
        raise ParseError(
            "kds.signing_key", f"report is signed by {report.signing_key.name}; only VCEKs are on KDS"
        )
    return vcek_url(report.product, report.chip_id, report.reported_tcb, base=base)


def _kind_segment(kind: VekKind) -> str:
    if not isinstance(kind, VekKind):
        raise ParseError("kds.kind", f"expected VekKind, got {type(kind).__name__}")
    return kind.value.lower()


def cert_chain_url(product: Product, kind: VekKind = VekKind.VCEK, *, base: str = DEFAULT_KDS_BASE) -> str:
    """KDS URL of the PEM chain: ASK (or ASVK for VLEK) first, then ARK."""
    return f"{_base(base)}/{_kind_segment(kind)}/v1/{_product(product).value}/cert_chain"


def crl_url(product: Product, kind: VekKind = VekKind.VCEK, *, base: str = DEFAULT_KDS_BASE) -> str:
    """KDS URL of the DER CRL (signed by the ARK) for VCEK or VLEK intermediates."""
    return f"{_base(base)}/{_kind_segment(kind)}/v1/{_product(product).value}/crl"


def _spl_value(param: str, text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ParseError(f"kds.{param}", f"not a decimal number: {text!r}")
    value = int(text)
    if value > _SPL_MAX:
        raise ParseError(f"kds.{param}", f"SPL {value} out of range 0..{_SPL_MAX}")
    return value


def parse_vcek_url(url: str) -> VcekRequest:
    """The VCEK identity in a KDS VCEK URL (any base, any parameter order, either hex case)."""
    if not isinstance(url, str):
        raise ParseError("kds.url", f"expected str, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ParseError("kds.url", f"malformed URL: {exc}") from None
    idx = parts.path.rfind("/vcek/v1/")
    match = _VCEK_PATH_RE.fullmatch(parts.path[idx:]) if idx >= 0 else None
    if match is None:
        raise ParseError("kds.url", f"not a KDS VCEK URL: {url!r}")
    product = Product(match.group(1))
    hw_hex = match.group(2)
    want_len = 2 * (TURIN_HWID_SIZE if product.has_fmc else HWID_SIZE)
    if len(hw_hex) != want_len:
        raise ParseError("kds.hw_id", f"{product.value} hwID must be {want_len} hex digits")
    given: dict[str, str] = {}
    for key, value in pairs:
        if key in given:
            raise ParseError(f"kds.{key}", "parameter given twice")
        given[key] = value
    expected = _params(product)
    unknown = set(given) - {param for param, _ in expected}
    if unknown:
        raise ParseError("kds.url", f"unexpected parameters {sorted(unknown)}")
    spls: list[tuple[str, int]] = []
    for param, component in expected:
        if param not in given:
            raise ParseError(f"kds.{param}", "parameter missing")
        spls.append((component, _spl_value(param, given[param])))
    return VcekRequest(product=product, hw_id=bytes.fromhex(hw_hex), spls=tuple(spls))
