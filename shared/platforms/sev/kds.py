"""Where the legacy SEV endorsements come from.

* CEK: per chip, from AMD's KDS ``https://kdsintf.amd.com/cek/id/<hex of the GET_ID output>``
  (the 64-byte chip ID of the socket; the body is the 2084-byte SEV-format CEK certificate);
* ASK/ARK bundles: ``ask_ark_<generation>.cert`` (one ASK and one ARK in AMD CA format, concatenated).
  REMITS never trusts a fetched ARK/ASK: ``verify.pinned_roots()`` holds them; the URLs are for
  operators refreshing or auditing ``roots/``.

``cek_url``/``ask_ark_url`` are pure; ``fetch_cek`` goes through ``shared.fetch.EndorsementFetcher``
(retries, size limit, stable ``endorsement.*`` reasons). Caching is the caller's job, keyed by URL:
builders emit one canonical form (lowercase hex).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.errors import ParseError
from shared.platforms.binary import as_bytes
from shared.platforms.sev.abi import (
    CA_CERT_HEADER_SIZE,
    AmdCaCert,
    SevCert,
    Usage,
    parse_ca_cert,
    parse_sev_cert,
)

if TYPE_CHECKING:
    from shared.fetch import EndorsementFetcher

__all__ = [
    "ASK_ARK_URLS",
    "CHIP_ID_SIZE",
    "DEFAULT_KDS_BASE",
    "ask_ark_url",
    "cek_url",
    "fetch_cek",
    "parse_cek",
    "split_ask_ark",
]

DEFAULT_KDS_BASE = "https://kdsintf.amd.com"
CHIP_ID_SIZE = 64

# Public ASK/ARK bundles per product family (the legacy format). Newer AMD pages moved them under
# https://download.amd.com/developer/eula/sev/ask_ark_<model>.cert.
ASK_ARK_URLS = {
    "Naples": "https://developer.amd.com/wp-content/resources/ask_ark_naples.cert",
    "Rome": "https://developer.amd.com/wp-content/resources/ask_ark_rome.cert",
    "Milan": "https://developer.amd.com/wp-content/resources/ask_ark_milan.cert",
}


def _base(base: str) -> str:
    if not isinstance(base, str) or not base:
        raise ParseError("kds.base", "KDS base URL must be a non-empty string")
    return base.rstrip("/")


def cek_url(chip_id: bytes, base: str = DEFAULT_KDS_BASE) -> str:
    """The KDS URL of the CEK of the chip whose GET_ID output is ``chip_id`` (64 bytes)."""
    raw = as_bytes(chip_id, "kds.chip_id")
    if len(raw) != CHIP_ID_SIZE:
        raise ParseError("kds.chip_id", f"GET_ID chip ID must be {CHIP_ID_SIZE} bytes, got {len(raw)}")
    if not any(raw):
        raise ParseError("kds.chip_id", "chip ID is all zero: KDS cannot identify the chip")
    return f"{_base(base)}/cek/id/{raw.hex()}"


def ask_ark_url(generation: str) -> str:
    try:
        return ASK_ARK_URLS[generation]
    except KeyError:
        raise ParseError("kds.generation", f"no ASK/ARK bundle URL for {generation!r}") from None


def parse_cek(data: bytes) -> SevCert:
    """The KDS body: exactly one SEV-format certificate with usage CEK."""
    cert = parse_sev_cert(data, "sev.cek")
    if cert.pubkey_usage is not Usage.CEK:
        raise ParseError("sev.cek.pubkey_usage", f"KDS returned a {cert.pubkey_usage.name} certificate")
    return cert


def split_ask_ark(data: bytes) -> tuple[AmdCaCert, AmdCaCert]:
    """An ``ask_ark_*.cert`` bundle -> (ASK, ARK), whichever order the two certificates are in."""
    raw = as_bytes(data, "sev.ask_ark")
    if len(raw) < CA_CERT_HEADER_SIZE:
        raise ParseError("sev.ask_ark.size", f"{len(raw)} bytes is too short")
    modulus_bits = int.from_bytes(raw[0x3C:0x40], "little")
    pubexp_bits = int.from_bytes(raw[0x38:0x3C], "little")
    first_size = CA_CERT_HEADER_SIZE + pubexp_bits // 8 + 2 * (modulus_bits // 8)
    first = parse_ca_cert(raw[:first_size], "sev.ask_ark.first")
    second = parse_ca_cert(raw[first_size:], "sev.ask_ark.second")
    by_usage = {first.key_usage: first, second.key_usage: second}
    if set(by_usage) != {Usage.ASK, Usage.ARK}:
        raise ParseError("sev.ask_ark.key_usage", "bundle must hold one ASK and one ARK")
    return by_usage[Usage.ASK], by_usage[Usage.ARK]


async def fetch_cek(fetcher: EndorsementFetcher, chip_id: bytes, base: str = DEFAULT_KDS_BASE) -> SevCert:
    """GET the CEK from KDS and parse it (``EndorsementError`` / ``ParseError`` on failure)."""
    return parse_cek(await fetcher.get(cek_url(chip_id, base)))
