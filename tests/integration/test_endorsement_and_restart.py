"""Endorsements are fetched once per device fleet-wide; the stack survives a NATS restart."""

from __future__ import annotations

import asyncio

import pytest

from shared.platforms.sample.kds import CHAIN_PATH, DEVICE_PATH
from tests.conftest import RunningStack
from tests.integration.test_reliability import attest

pytestmark = pytest.mark.integration


async def test_one_vendor_fetch_per_device_under_concurrency(running: RunningStack) -> None:
    running.kds.delay_s = 0.2  # a slow vendor makes the concurrent requests overlap for sure
    device = running.enroll()
    results = await asyncio.gather(*(attest(running, device) for _ in range(30)))
    assert [status for _, status, _ in results] == [200] * 30
    assert running.kds.request_count[f"{DEVICE_PATH}{device.device_id.hex()}"] == 1
    assert running.kds.request_count[CHAIN_PATH] == 1
    # Warm: served from Redis, the vendor is not asked again.
    _, status, _ = await attest(running, device)
    assert status == 200
    assert running.kds.request_count[f"{DEVICE_PATH}{device.device_id.hex()}"] == 1


async def test_unknown_device_is_negatively_cached(running: RunningStack) -> None:
    device = running.enroll(register=False)
    results = await asyncio.gather(*(attest(running, device) for _ in range(10)))
    assert {status for _, status, _ in results} == {401}
    assert {body["detail"].split(":")[0] for _, _, body in results} == {"endorsement.not_found"}
    assert running.kds.request_count[f"{DEVICE_PATH}{device.device_id.hex()}"] == 1


async def test_vendor_outage_is_retried_then_served(running: RunningStack) -> None:
    running.kds.fail_next = 2  # two 503s, then the vendor answers
    device = running.enroll()
    _, status, body = await attest(running, device)
    assert status == 200, body


async def test_stack_keeps_serving_after_nats_restart(running: RunningStack, infra) -> None:  # type: ignore[no-untyped-def]
    _, status, _ = await attest(running, running.enroll())
    assert status == 200
    await asyncio.to_thread(infra.nats.stop)
    await asyncio.to_thread(infra.nats.start)  # same port, same JetStream store directory
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            _, status, body = await attest(running, running.enroll())
        except AssertionError:  # /auth answers 503 until the gateway is connected again
            status, body = 503, {}
        if status == 200 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert status == 200, body


async def test_nats_outage_is_a_503_not_a_hang(running: RunningStack, infra) -> None:  # type: ignore[no-untyped-def]
    from services.demo.client import GuestClient, sample_evidence

    device = running.enroll()
    client = GuestClient.new(running.url)
    nonce = (await client.auth()).body["nonce"]
    body = client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey))
    await asyncio.to_thread(infra.nats.stop)
    try:
        result = await asyncio.wait_for(client.attest(body), 40)
        assert result.status == 503, result.body
        assert result.body["type"].endswith("/ServiceUnavailable")
    finally:
        await asyncio.to_thread(infra.nats.start)
        await client.close()


async def test_a_redis_outage_is_a_503_and_the_stack_recovers(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Redis keeps only what may be lost: while it is down guests are told to retry, and once it is
    back (empty) the stack serves again on new connections, without a restart."""
    from services.demo.client import GuestClient
    from shared.embedded import start_embedded
    from tests.conftest import start_stack

    own = start_embedded(tmp_path / "infra")
    rs = await start_stack(own, tmp_path / "data")
    try:
        _, status, _ = await attest(rs, rs.enroll())
        assert status == 200
        await asyncio.to_thread(own.redis.stop)
        client = GuestClient.new(rs.url)
        try:
            auth = await asyncio.wait_for(client.auth(), 30)
            assert auth.status == 503 and auth.body["type"].endswith("/ServiceUnavailable"), auth.body
        finally:
            await client.close()
        await asyncio.to_thread(own.redis.start)
        # The restarted Redis is empty, yet nothing needs provisioning again: reference values and
        # secrets live in JetStream. The running stack serves without being restarted itself.
        _, status, body = await attest(rs, rs.enroll())
        assert status == 200, body
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
        own.stop()
