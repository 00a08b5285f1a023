"""EndorsementFetcher against a real local endorsement server on a free port."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web

from shared.errors import EndorsementError
from shared.fetch import MAX_BODY_BYTES, EndorsementFetcher
from shared.platforms.sample import kds
from shared.platforms.sample.abi import parse_report
from shared.platforms.sample.endorsement_server import LocalEndorsementServer
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI
from shared.platforms.sample.verify import load_chain, verify_chain, verify_report

NOW = datetime(2025, 6, 1, tzinfo=UTC)
PKI = VendorPKI.generate(NOW - timedelta(days=1))
DEVICE = SimulatedDevice.create(b"\x5a" * 48, svn=2)
DEVICE_DER = PKI.issue_device_cert(DEVICE.device_id, DEVICE.public_key, NOW)
UNKNOWN_ID = bytes(16)


@pytest.fixture
async def server() -> AsyncIterator[LocalEndorsementServer]:
    async with LocalEndorsementServer({DEVICE.device_id: DEVICE_DER}, PKI.chain_pem()) as srv:
        yield srv


@pytest.fixture
async def fetcher() -> AsyncIterator[EndorsementFetcher]:
    # Tiny backoff keeps retry tests fast; the retry logic is the same at any scale.
    async with EndorsementFetcher(timeout_s=2.0, backoff_base_s=0.01) as f:
        yield f


def _path(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[1].join(["/", ""])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_fetch_device_cert_and_chain_then_verify(
    server: LocalEndorsementServer, fetcher: EndorsementFetcher
) -> None:
    cert_url = kds.device_cert_url(server.base_url, DEVICE.device_id)
    chain_url = kds.cert_chain_url(server.base_url)
    der = await fetcher.get(cert_url)
    chain = await fetcher.get(chain_url)
    assert der == DEVICE_DER
    assert chain == PKI.chain_pem()
    assert server.request_count[_path(cert_url)] == 1
    assert server.request_count[_path(chain_url)] == 1
    # End to end: what came over HTTP verifies a fresh report from the device.
    intermediate, root = load_chain(chain)
    cert = verify_chain(der, intermediate, root, NOW, pinned_root=PKI.root_cert)
    raw = DEVICE.make_report(b"nonce")
    verify_report(raw, parse_report(raw), cert)


async def test_404_is_not_found_without_retry(
    server: LocalEndorsementServer, fetcher: EndorsementFetcher
) -> None:
    url = kds.device_cert_url(server.base_url, UNKNOWN_ID)
    with pytest.raises(EndorsementError) as info:
        await fetcher.get(url)
    assert info.value.reason == "endorsement.not_found"
    assert info.value.detail == url
    assert server.request_count[_path(url)] == 1


async def test_other_4xx_is_fetch_failed_without_retry(
    server: LocalEndorsementServer, fetcher: EndorsementFetcher
) -> None:
    url = server.base_url + "/sample/v1/device/NOT-HEX"
    with pytest.raises(EndorsementError) as info:
        await fetcher.get(url)
    assert info.value.reason == "endorsement.fetch_failed"
    assert "HTTP 400" in info.value.detail
    assert server.request_count["/sample/v1/device/NOT-HEX"] == 1


async def test_503_twice_then_ok(server: LocalEndorsementServer, fetcher: EndorsementFetcher) -> None:
    server.fail_next = 2
    url = kds.device_cert_url(server.base_url, DEVICE.device_id)
    assert await fetcher.get(url) == DEVICE_DER
    assert server.request_count[_path(url)] == 3
    assert server.fail_next == 0


async def test_persistent_503_is_unavailable_after_all_attempts(
    server: LocalEndorsementServer, fetcher: EndorsementFetcher
) -> None:
    server.fail_next = 10
    url = kds.cert_chain_url(server.base_url)
    with pytest.raises(EndorsementError) as info:
        await fetcher.get(url)
    assert info.value.reason == "endorsement.unavailable"
    assert "HTTP 503" in info.value.detail
    assert server.request_count[_path(url)] == 3
    assert server.fail_next == 7


async def test_retry_after_is_honoured_but_capped(server: LocalEndorsementServer) -> None:
    server.fail_next = 1
    server.retry_after_s = 3600
    url = kds.cert_chain_url(server.base_url)
    async with EndorsementFetcher(retry_after_max_s=0.05, backoff_base_s=10.0) as f:
        started = time.monotonic()
        assert await f.get(url) == PKI.chain_pem()
        elapsed = time.monotonic() - started
    # The capped Retry-After (0.05 s) replaced the 5-10 s exponential backoff.
    assert 0.05 <= elapsed < 2.0
    assert server.request_count[_path(url)] == 2


async def test_unreachable_port_is_unavailable(fetcher: EndorsementFetcher) -> None:
    url = kds.cert_chain_url(f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(EndorsementError) as info:
        await fetcher.get(url)
    assert info.value.reason == "endorsement.unavailable"
    assert "3 attempts failed" in info.value.detail


async def test_slow_server_times_out_each_attempt(server: LocalEndorsementServer) -> None:
    server.delay_s = 0.5
    url = kds.cert_chain_url(server.base_url)
    async with EndorsementFetcher(timeout_s=0.1, attempts=2, backoff_base_s=0.01) as f:
        with pytest.raises(EndorsementError) as info:
            await f.get(url)
    assert info.value.reason == "endorsement.unavailable"
    assert "timed out" in info.value.detail
    assert server.request_count[_path(url)] == 2


async def test_too_large_with_content_length(
    server: LocalEndorsementServer, fetcher: EndorsementFetcher
) -> None:
    big_id = b"\xbb" * 16
    server.add_device(big_id, b"\x00" * (MAX_BODY_BYTES + 1))
    url = kds.device_cert_url(server.base_url, big_id)
    with pytest.raises(EndorsementError) as info:
        await fetcher.get(url)
    assert info.value.reason == "endorsement.too_large"
    assert server.request_count[_path(url)] == 1
    # Exactly at the limit is fine.
    server.add_device(big_id, b"\x01" * MAX_BODY_BYTES)
    assert len(await fetcher.get(url)) == MAX_BODY_BYTES


async def test_too_large_when_streamed_without_content_length() -> None:
    # A chunked response has no Content-Length, so the limit must be enforced while reading.
    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(64):
            await resp.write(b"\x00" * 4096)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/stream", endless)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        async with EndorsementFetcher(max_body_bytes=10_000) as f:
            with pytest.raises(EndorsementError) as info:
                await f.get(f"http://{host}:{port}/stream")
        assert info.value.reason == "endorsement.too_large"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/sample/v1/cert_chain", "http:///x", "no-scheme", None])
async def test_bad_url_fails_without_retry(fetcher: EndorsementFetcher, url: object) -> None:
    started = time.monotonic()
    with pytest.raises(EndorsementError) as info:
        await fetcher.get(url)  # type: ignore[arg-type]
    assert info.value.reason == "endorsement.fetch_failed"
    assert time.monotonic() - started < 0.005 * 10  # no backoff sleeps happened


async def test_caller_session_is_not_closed(server: LocalEndorsementServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with EndorsementFetcher(session=session) as f:
            assert await f.get(kds.cert_chain_url(server.base_url)) == PKI.chain_pem()
        assert session.closed is False


async def test_server_counts_and_stops() -> None:
    srv = LocalEndorsementServer({}, b"chain")
    base = await srv.start()
    assert base.startswith("http://127.0.0.1:") and base == srv.base_url
    async with EndorsementFetcher(backoff_base_s=0.01) as f:
        assert await f.get(kds.cert_chain_url(base)) == b"chain"
        srv.add_device(DEVICE.device_id, DEVICE_DER)
        assert await f.get(kds.device_cert_url(base, DEVICE.device_id)) == DEVICE_DER
        assert dict(srv.request_count) == {
            "/sample/v1/cert_chain": 1,
            f"/sample/v1/device/{DEVICE.device_id.hex()}": 1,
        }
        await srv.stop()
        with pytest.raises(EndorsementError) as info:
            await f.get(kds.cert_chain_url(base))
        assert info.value.reason == "endorsement.unavailable"
