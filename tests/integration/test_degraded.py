"""Degraded mode: with Redis or NATS dead or frozen the gateway answers 503 ServiceUnavailable
with Retry-After and the KBS error body within the dependency bound, never a 500 or a hang;
no nonce is issued that could not be checked, and everything recovers by itself."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shared.embedded import EmbeddedInfra, start_embedded
from tests.conftest import RunningStack, start_stack
from tests.integration.test_reliability import attest

pytestmark = pytest.mark.integration
# The default bound (REMITS_DEPENDENCY_TIMEOUT_S 1.5 s) plus the time to notice and answer.
ANSWER_WITHIN_S = 2.5


@pytest.fixture
async def own(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedInfra, RunningStack]]:
    infra = start_embedded(tmp_path / "infra")
    rs = await start_stack(infra, tmp_path / "data")
    try:
        yield infra, rs
    finally:
        for server in (infra.redis, infra.nats):
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)
        await rs.stack.stop()
        await rs.kds.stop()
        infra.stop()


async def timed_auth(url: str) -> tuple[int, dict[str, str], dict, float]:  # type: ignore[type-arg]
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/kbs/v0/auth", json={"version": "0.4.0", "tee": "sample", "extra-params": {}}) as resp:
            body = await resp.json()
            return resp.status, dict(resp.headers), body, time.monotonic() - started


async def recovered(rs: RunningStack, within_s: float = 30.0) -> float:
    """Seconds until a whole attestation succeeds again."""
    started = time.monotonic()
    while True:
        try:
            _, status, _ = await attest(rs, rs.enroll())
        except AssertionError:  # /auth still answers 503: no session yet
            status = 503
        if status == 200:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, "did not recover"
        await asyncio.sleep(0.2)


def assert_unavailable(status: int, headers: dict[str, str], body: dict, elapsed: float) -> None:  # type: ignore[type-arg]
    assert status == 503, body
    assert body["type"].endswith("/ServiceUnavailable")
    assert headers.get("Retry-After") == "2"
    assert elapsed < ANSWER_WITHIN_S, elapsed


@pytest.mark.parametrize("fault", ["sigstop", "sigkill"])
async def test_redis_frozen_or_dead_is_a_prompt_503(own, fault: str) -> None:  # type: ignore[no-untyped-def]
    infra, rs = own
    _, status, _ = await attest(rs, rs.enroll())
    assert status == 200
    if fault == "sigstop":
        infra.redis.proc.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
    else:
        await asyncio.to_thread(infra.redis.kill)
    for _ in range(3):  # every request, not only the first, is answered within the bound
        assert_unavailable(*await timed_auth(rs.url))
    if fault == "sigstop":
        infra.redis.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
    else:
        await asyncio.to_thread(infra.redis.start)
    assert await recovered(rs) < 10


async def test_nats_down_is_a_prompt_503_and_no_nonce_is_issued(own) -> None:  # type: ignore[no-untyped-def]
    infra, rs = own
    _, status, _ = await attest(rs, rs.enroll())
    assert status == 200
    await asyncio.to_thread(infra.nats.stop)
    try:
        for _ in range(20):  # the gateway notices the disconnection
            status, headers, body, elapsed = await timed_auth(rs.url)
            if status == 503:
                break
            await asyncio.sleep(0.1)
        assert_unavailable(status, headers, body, elapsed)
        assert "nonce" not in body
    finally:
        await asyncio.to_thread(infra.nats.start)
    assert await recovered(rs) < 20
