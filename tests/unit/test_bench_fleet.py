"""The benchmark's deterministic fleet: derivation, identities the vendor can resolve, fast ECDSA,
evidence that the real platform code verifies against the pre-issued endorsements, and the cache."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from services.bench import fleet, vendor
from services.demo.serving import serve
from shared.fetch import EndorsementFetcher
from shared.jwe import unwrap_secret, wrap_secret
from shared.kbs.binding import expected_report_data
from shared.platforms.base import Platform, encode_document
from shared.platforms.sample.platform import SamplePlatform
from shared.platforms.snp.certs import load_roots
from shared.platforms.snp.fields import Product
from shared.platforms.snp.platform import SnpPlatform
from shared.platforms.tdx.platform import DcapPlatform

SEED = "unit-seed"
FLEET = 3
NONCE = base64.b64encode(bytes(range(32))).decode()


# -- derivation -----------------------------------------------------------------------------------


def test_keys_are_deterministic_and_distinct_per_tee_seed_and_index() -> None:
    def public(tee: str, seed: str, index: int) -> tuple[int, int]:
        numbers = fleet.device_key(tee, seed, index).public_key().public_numbers()
        return numbers.x, numbers.y

    assert public("snp", SEED, 7) == public("snp", SEED, 7)
    others = {public("snp", SEED, 8), public("snp", "other", 7), public("sample", SEED, 7)}
    assert public("snp", SEED, 7) not in others and len(others) == 3
    tee_a = fleet.tee_key("sample", SEED, 1).private_numbers().private_value
    assert tee_a == fleet.tee_key("sample", SEED, 1).private_numbers().private_value
    assert tee_a != fleet.tee_key("sample", SEED, 2).private_numbers().private_value


@pytest.mark.parametrize(
    ("tee", "make", "size"),
    [("sample", fleet.sample_device_id, 16), ("snp", fleet.snp_chip_id, 64), ("tdx", fleet.tdx_ppid, 16)],
)
def test_identity_names_its_index_and_no_other_fleet(tee: str, make: Any, size: int) -> None:
    ident = make(SEED, 12345)
    assert len(ident) == size and ident[-8:] == (12345).to_bytes(8, "big")
    assert ident == make(SEED, 12345) and ident != make(SEED, 12346)
    assert fleet.index_of(tee, SEED, ident, size) == 12345
    assert fleet.index_of(tee, "another seed", ident, size) is None  # a foreign device
    forged = bytearray(ident)
    forged[-1] ^= 1  # someone else's index behind this fleet's hash
    assert fleet.index_of(tee, SEED, bytes(forged), size) is None
    assert fleet.index_of(tee, SEED, ident[:-1], size) is None


@pytest.mark.parametrize("tee", ["sample", "tdx"])
def test_fixed_nonce_signatures_verify_for_every_device_of_a_range(tee: str) -> None:
    curve = fleet.DEVICE_CURVE[tee]
    algorithm = hashes.SHA384() if curve is fleet.P384 else hashes.SHA256()
    signers = fleet.fixed_nonce_signers(tee, SEED, 40, 5)
    for offset, signer in enumerate(signers):
        key = fleet.derive_key(tee, fleet.signing_key_label(tee), SEED, 40 + offset, curve)
        r, s = signer.sign(b"message %d" % offset)
        key.public_key().verify(encode_dss_signature(r, s), b"message %d" % offset, ec.ECDSA(algorithm))
    assert len({s.r for s in signers}) == 5  # one nonce per device


def test_report_data_and_attest_body_match_the_kbs_binding() -> None:
    guest = fleet.build_guests("sample", SEED, 0, 1)[0]
    assert guest.report_data(NONCE) == expected_report_data(NONCE, guest.tee_jwk)
    odd = 'needs "escaping"\n'
    assert guest.report_data(odd) == expected_report_data(odd, guest.tee_jwk)
    for nonce in (NONCE, odd):
        body = json.loads(guest.attest_body(nonce))
        assert body["runtime-data"] == {"nonce": nonce, "tee-pubkey": guest.tee_jwk}
        assert body["tee-evidence"]["additional_evidence"] == ""
        assert set(body["tee-evidence"]["primary_evidence"]) == {"report"}
    secret = b"released"
    assert unwrap_secret(wrap_secret(secret, guest.tee_jwk), guest.tee_key) == secret


# -- vendor material and evidence -------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


@pytest.fixture(scope="module")
def issued(cache: Path) -> dict[str, fleet.Issued]:
    return {tee: fleet.preissue(tee, SEED, FLEET, cache, workers=1) for tee in fleet.TEES}


def test_the_cache_serves_the_same_vendor_and_certificates_again(
    cache: Path, issued: dict[str, fleet.Issued]
) -> None:
    for tee, first in issued.items():
        again = fleet.preissue(tee, SEED, FLEET, cache, workers=1)
        assert again.issued == 0 and again.certs == first.certs
        assert again.vendor.files() == first.vendor.files()
    grown = fleet.preissue("tdx", SEED, FLEET + 2, cache, workers=1)
    assert grown.issued == 2 and {i: grown.certs[i] for i in range(FLEET)} == issued["tdx"].certs
    other = fleet.preissue("tdx", "another seed", 1, cache, workers=1)
    assert other.vendor.files() != issued["tdx"].vendor.files()


def test_the_vendor_serves_fleet_devices_only(issued: dict[str, fleet.Issued]) -> None:
    sample = issued["sample"]
    assert isinstance(sample.vendor, fleet.SampleVendor)
    kds = vendor.SampleKds(SEED, FLEET, sample.certs, sample.vendor.pki.chain_pem())
    assert kds.device_cert(fleet.sample_device_id(SEED, 2)) == sample.certs[2]
    assert kds.device_cert(fleet.sample_device_id(SEED, FLEET)) is None  # beyond the fleet
    assert kds.device_cert(fleet.sample_device_id("foreign", 2)) is None
    snp = issued["snp"]
    amd = vendor.AmdKds(SEED, FLEET, snp.certs, b"", b"")
    tcb = "blSPL=4&teeSPL=0&snpSPL=27&ucodeSPL=222"
    assert amd.vcek(f"/vcek/v1/Milan/{fleet.snp_chip_id(SEED, 1).hex()}?{tcb}") == snp.certs[1]
    assert amd.vcek(f"/vcek/v1/Milan/{fleet.snp_chip_id('foreign', 1).hex()}?{tcb}") is None
    assert amd.vcek(f"/vcek/v1/Milan/{fleet.snp_chip_id(SEED, 1).hex()}?{tcb.replace('222', '221')}") is None
    assert amd.vcek(f"/vcek/v1/Genoa/{fleet.snp_chip_id(SEED, 1).hex()}?{tcb}") is None


def _platform(tee: str, result: fleet.Issued, url: str, tmp_path: Path) -> Platform:
    if isinstance(result.vendor, fleet.SampleVendor):
        return SamplePlatform(result.vendor.pki.root_cert, url)
    if isinstance(result.vendor, fleet.SnpVendor):
        env = vendor.install_trust({tee: result}, tmp_path)
        roots = Path(env["REMITS_SNP_ROOTS_DIR"]) / "milan"
        return SnpPlatform({Product.MILAN: load_roots(roots, Product.MILAN)}, url)
    assert isinstance(result.vendor, fleet.TdxVendor)
    return DcapPlatform("tdx", result.vendor.intel.root_der, url)


@pytest.fixture
async def vendor_urls(issued: dict[str, fleet.Issued]) -> AsyncIterator[dict[str, str]]:
    stats = vendor.FetchStats()
    runners, urls = [], {}
    for tee, app in vendor.build_apps(issued, SEED, FLEET, stats).items():
        runner, urls[tee] = await serve(app, "127.0.0.1", 0)
        runners.append(runner)
    yield urls
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize("tee", fleet.TEES)
async def test_evidence_verifies_with_the_platform_and_the_served_endorsements(
    tee: str, issued: dict[str, fleet.Issued], vendor_urls: dict[str, str], cache: Path, tmp_path: Path
) -> None:
    platform = _platform(tee, issued[tee], vendor_urls[tee], tmp_path)
    guest = fleet.build_guests(tee, SEED, 1, 1, cache)[0]  # TDX guests read their PCK from the cache
    primary = json.loads(guest.attest_body(NONCE))["tee-evidence"]["primary_evidence"]
    info = platform.parse_evidence(json.dumps(primary).encode())
    assert info.report_data == expected_report_data(NONCE, guest.tee_jwk)
    documents: list[bytes | None] = []
    async with EndorsementFetcher(attempts=1) as fetcher:
        for request in platform.endorsement_requests(info.evidence, info.carried_endorsement):
            body, headers = await fetcher.get_with_headers(request.url, request.headers)
            documents.append(encode_document(body, headers) if request.headers else body)
    endorsement = platform.assemble_endorsement(documents, info.carried_endorsement)
    claims = platform.verify_identity(info.evidence, endorsement, datetime.now(UTC))
    assert fleet.MEASUREMENT.hex() in json.dumps(claims)
    if tee == "snp":
        assert claims["snp.chip_id"] == fleet.snp_chip_id(SEED, 1).hex()
        assert claims["snp.crl_checked"] is True
