"""LocalPcs over real HTTP: the URLs ``pcs.py`` builds return the right bodies and issuer-chain
headers, for the simulated Intel and for real captured collateral, and what is fetched verifies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from services.cli.verify_dcap import CollateralLocator, fetch_collateral, locate_collateral
from services.demo.local_pcs import LocalPcs, encode_issuer_chain
from services.demo.tdx_sim import DEFAULT_FMSPC, SimulatedIntel, SimulatedTdxPlatform
from shared.errors import EndorsementError, VerificationError
from shared.fetch import EndorsementFetcher
from shared.platforms.tdx import checks, pcs, pinned_root_der
from shared.platforms.tdx.abi import parse_quote
from shared.platforms.tdx.certs import load_certificates, load_crl
from shared.platforms.tdx.collateral import load_collateral
from shared.platforms.tdx.verify import verify_quote

QUOTES = Path(__file__).resolve().parents[1] / "data" / "tdx" / "quotes"
CASES = sorted(p.name for p in QUOTES.iterdir())


async def get(url: str) -> tuple[int, bytes, Mapping[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


def same_certs(a: bytes, b: bytes) -> bool:
    return load_certificates(a) == load_certificates(b)


# -- simulated ---------------------------------------------------------------------------------


@pytest.fixture
def intel() -> SimulatedIntel:
    return SimulatedIntel.generate()


@pytest.fixture
async def sim_pcs(intel: SimulatedIntel) -> AsyncIterator[LocalPcs]:
    server = LocalPcs.from_simulated(intel, DEFAULT_FMSPC)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_simulated_documents_and_headers(intel: SimulatedIntel, sim_pcs: LocalPcs) -> None:
    base = sim_pcs.base_url
    for tee in ("tdx", "sgx"):
        status, body, headers = await get(pcs.tcb_info_url(DEFAULT_FMSPC, tee, base_url=base))
        assert status == 200 and body == intel.tcb_info_json(DEFAULT_FMSPC, tee=tee)
        assert headers["Content-Type"].startswith("application/json")
        assert same_certs(pcs.tcb_info_issuer_chain(headers), intel.tcb_info_issuer_chain_pem)
        status, body, headers = await get(pcs.qe_identity_url(tee, base_url=base))
        assert status == 200 and body == intel.qe_identity_json(tee=tee)
        assert same_certs(pcs.qe_identity_issuer_chain(headers), intel.tcb_info_issuer_chain_pem)
    status, body, headers = await get(pcs.pck_crl_url("platform", base_url=base))
    assert status == 200 and body == intel.pck_crl_der()
    assert same_certs(pcs.pck_crl_issuer_chain(headers), intel.pck_crl_issuer_chain_pem)
    # Percent-encoded the way PCS sends it: no raw newlines, spaces or base64 '+' '/' '='.
    raw_header = headers[pcs.PCK_CRL_ISSUER_CHAIN]
    assert raw_header.startswith("-----BEGIN%20CERTIFICATE-----%0A") and not any(c in raw_header for c in " \n+/=")
    assert raw_header == encode_issuer_chain(intel.pck_crl_issuer_chain_pem)
    for url in (pcs.root_ca_crl_url(base_url=base), f"{base}/IntelSGXRootCA.der"):
        status, body, _ = await get(url)
        assert status == 200 and body == intel.root_ca_crl_der()


async def test_pem_crl_by_default_as_on_pcs(intel: SimulatedIntel, sim_pcs: LocalPcs) -> None:
    status, body, headers = await get(f"{sim_pcs.base_url}/sgx/certification/v4/pckcrl?ca=platform")
    assert status == 200 and body.startswith(b"-----BEGIN X509 CRL-----")
    assert load_crl(body) == x509.load_der_x509_crl(intel.pck_crl_der())
    assert same_certs(pcs.pck_crl_issuer_chain(headers), intel.pck_crl_issuer_chain_pem)


async def test_fetched_collateral_verifies_a_simulated_quote(intel: SimulatedIntel, sim_pcs: LocalPcs) -> None:
    platform = SimulatedTdxPlatform.create(intel)
    raw = platform.make_quote(b"nonce", mr_td=bytes(48), rtmrs=[bytes(48)] * 4)
    locator = locate_collateral(parse_quote(raw))
    assert locator == CollateralLocator(pcs.Tee.TDX, DEFAULT_FMSPC, pcs.PckCa.PLATFORM)
    collateral = await fetch_collateral(locator, sim_pcs.base_url)
    assert verify_quote(raw, collateral, intel.root_der, intel.now).tcb_status == "UpToDate"
    assert sim_pcs.request_count == {
        "/tdx/certification/v4/tcb": 1,
        "/tdx/certification/v4/qe/identity": 1,
        "/sgx/certification/v4/pckcrl": 1,
        "/sgx/certification/v4/rootcacrl": 1,
    }
    # target_count keys are what pcs.py puts after the base URL.
    assert sim_pcs.target_count[pcs.tcb_info_url(DEFAULT_FMSPC, "tdx", base_url="")] == 1
    assert sim_pcs.target_count[pcs.pck_crl_url("platform", base_url="")] == 1


async def test_revocation_after_start_is_served(intel: SimulatedIntel, sim_pcs: LocalPcs) -> None:
    platform = SimulatedTdxPlatform.create(intel)
    raw = platform.make_quote(b"", mr_td=bytes(48), rtmrs=[bytes(48)] * 4)
    intel.revoke(platform.pck_cert)
    collateral = await fetch_collateral(locate_collateral(parse_quote(raw)), sim_pcs.base_url)
    with pytest.raises(VerificationError) as info:
        verify_quote(raw, collateral, intel.root_der, intel.now)
    assert info.value.check == checks.PCK_NOT_REVOKED


async def test_unknown_and_malformed_requests(sim_pcs: LocalPcs) -> None:
    base = sim_pcs.base_url
    expectations = {
        pcs.tcb_info_url("00112233aabb", "tdx", base_url=base): 404,  # unknown FMSPC
        pcs.pck_crl_url("processor", base_url=base): 404,  # the simulation has no Processor CA
        f"{base}/tdx/certification/v4/tcb": 400,
        f"{base}/tdx/certification/v4/tcb?fmspc=zz": 400,
        f"{base}/tdx/certification/v4/tcb?fmspc={DEFAULT_FMSPC.hex()}&update=late": 400,
        f"{base}/sgx/certification/v4/pckcrl?ca=other": 400,
        f"{base}/sgx/certification/v4/pckcrl?ca=platform&encoding=txt": 400,
        f"{base}/snp/certification/v4/qe/identity": 404,
        pcs.tcb_info_url(DEFAULT_FMSPC, "tdx", base_url=base, update="early"): 200,
        pcs.tcb_info_url(DEFAULT_FMSPC.hex().upper(), "sgx", base_url=base): 200,
    }
    for url, want in expectations.items():
        status, _, _ = await get(url)
        assert status == want, url


async def test_the_endorsement_fetcher_reads_it(intel: SimulatedIntel, sim_pcs: LocalPcs) -> None:
    async with EndorsementFetcher(attempts=1) as fetcher:
        body = await fetcher.get(pcs.qe_identity_url("tdx", base_url=sim_pcs.base_url))
        assert body == intel.qe_identity_json()
        with pytest.raises(EndorsementError) as info:
            await fetcher.get(pcs.tcb_info_url("00112233aabb", "tdx", base_url=sim_pcs.base_url))
    assert info.value.reason == "endorsement.not_found"


async def test_delay() -> None:
    server = LocalPcs.from_simulated(SimulatedIntel.generate(), delay_s=0.3)
    await server.start()
    try:
        started = time.perf_counter()
        status, _, _ = await get(pcs.qe_identity_url("tdx", base_url=server.base_url))
        assert status == 200 and time.perf_counter() - started >= 0.3
        async with EndorsementFetcher(timeout_s=0.1, attempts=1) as fetcher:
            with pytest.raises(EndorsementError) as info:
                await fetcher.get(pcs.qe_identity_url("tdx", base_url=server.base_url))
        assert info.value.reason == "endorsement.unavailable"
    finally:
        await server.stop()


async def test_several_fmspcs_and_concurrent_clients(intel: SimulatedIntel) -> None:
    fmspcs = [DEFAULT_FMSPC, bytes.fromhex("30806f040001"), "30806F040002"]
    async with LocalPcs.from_simulated(intel, *fmspcs, tees=("tdx",)) as server:
        urls = [pcs.tcb_info_url(f, "tdx", base_url=server.base_url) for f in fmspcs] * 10
        results = await asyncio.gather(*(get(u) for u in urls))
        assert all(status == 200 for status, _, _ in results)
        assert sum(server.request_count.values()) == 30
        status, _, _ = await get(pcs.tcb_info_url(DEFAULT_FMSPC, "sgx", base_url=server.base_url))
        assert status == 404  # only the TEEs asked for


# -- real collateral ---------------------------------------------------------------------------


def _expected(case: str) -> dict[str, object]:
    return json.loads((QUOTES / case / "expected.json").read_text())


@pytest.mark.parametrize("case", CASES)
async def test_real_collateral_is_served_byte_for_byte(case: str) -> None:
    directory = QUOTES / case / "collateral"
    expected = _expected(case)
    tee, fmspc = str(expected["tee"]), str(expected["fmspc"])
    async with LocalPcs.from_collateral_dir(directory) as server:
        base = server.base_url
        status, body, headers = await get(pcs.tcb_info_url(fmspc, tee, base_url=base))
        assert status == 200 and body == (directory / "tcb_info.json").read_bytes()
        tcb_chain = (directory / "tcb_info_issuer_chain.pem").read_bytes()
        assert same_certs(pcs.tcb_info_issuer_chain(headers), tcb_chain)

        status, body, headers = await get(pcs.qe_identity_url(tee, base_url=base))
        assert status == 200 and body == (directory / "qe_identity.json").read_bytes()
        qe_chain = directory / "qe_identity_issuer_chain.pem"
        want = qe_chain.read_bytes() if qe_chain.exists() else tcb_chain
        assert same_certs(pcs.qe_identity_issuer_chain(headers), want)

        status, body, headers = await get(pcs.pck_crl_url(str(expected["pck_ca"]), base_url=base))
        if (directory / "pck_crl.der").exists():
            assert status == 200 and body == (directory / "pck_crl.der").read_bytes()
            chain = directory / "pck_crl_issuer_chain.pem"
            if chain.exists():
                assert same_certs(pcs.pck_crl_issuer_chain(headers), chain.read_bytes())
            else:
                assert pcs.PCK_CRL_ISSUER_CHAIN not in headers
        else:
            assert status == 404

        status, body, _ = await get(pcs.root_ca_crl_url(base_url=base))
        root_crl = directory / "root_ca_crl.der"
        assert (status, body) == ((200, root_crl.read_bytes()) if root_crl.exists() else (404, b""))

        other_tee = "sgx" if tee == "tdx" else "tdx"
        status, _, _ = await get(pcs.tcb_info_url(fmspc, other_tee, base_url=base))
        assert status == 404


@pytest.mark.parametrize("case", CASES)
async def test_real_collateral_fetched_over_http_verifies(case: str) -> None:
    directory = QUOTES / case / "collateral"
    expected = _expected(case)
    raw = (QUOTES / case / "quote.bin").read_bytes()
    at = datetime.fromisoformat(str(expected["verify_at"]).replace("Z", "+00:00"))
    has_crls = (directory / "pck_crl.der").exists() and (directory / "root_ca_crl.der").exists()
    async with LocalPcs.from_collateral_dir(directory, str(expected["fmspc"]).upper(), str(expected["tee"])) as server:
        if has_crls:
            collateral = await fetch_collateral(locate_collateral(parse_quote(raw)), server.base_url)
        else:
            # The fetch path needs every document; without CRLs assemble what is served by hand.
            _, tcb, tcb_headers = await get(pcs.tcb_info_url(str(expected["fmspc"]), str(expected["tee"]), base_url=server.base_url))
            _, qe, qe_headers = await get(pcs.qe_identity_url(str(expected["tee"]), base_url=server.base_url))
            collateral = load_collateral(
                tcb_info=tcb,
                tcb_info_issuer_chain=pcs.tcb_info_issuer_chain(tcb_headers),
                qe_identity=qe,
                qe_identity_issuer_chain=pcs.qe_identity_issuer_chain(qe_headers),
            )
    verified = verify_quote(raw, collateral, pinned_root_der(), at, require_crls=has_crls)
    assert verified.tcb_status == expected["tcb_status"]


async def test_missing_crls_make_the_fetch_fail_not_found() -> None:
    case = "trustee_tdx_quote_6"
    raw = (QUOTES / case / "quote.bin").read_bytes()
    async with LocalPcs.from_collateral_dir(QUOTES / case / "collateral") as server:
        with pytest.raises(EndorsementError) as info:
            await fetch_collateral(locate_collateral(parse_quote(raw)), server.base_url)
    assert info.value.reason == "endorsement.not_found"
