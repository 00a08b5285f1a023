"""Redis Sentinel URLs in REMITS's own client: the URL form, and a real failover (a primary, a
replica and one sentinel; the primary is SIGKILLed and the client follows the promotion).

The servers here run without ACL users and without passwords, to keep the set-up small; the
credentials in a sentinel URL are covered by the parsing test."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.embedded import ManagedServer, free_port, redis_server_binary
from shared.resp import RedisConnectionError, RedisEndpoint, RespClient

pytestmark = pytest.mark.integration


def test_sentinel_url_parsing() -> None:
    ep = RedisEndpoint.from_url(
        "redis+sentinel://gate%40way:p%3Ass@10.0.0.1:26379,sentinel-b:26380,[::1]:26381/remits/3?sentinel_password=s%26p"
    )
    assert ep.sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert (ep.master_name, ep.db, ep.username, ep.password, ep.tls) == (
        "remits",
        3,
        "gate@way",
        "p:ss",
        False,
    )
    assert ep.sentinel_password == "s&p"
    assert "sentinel-b:26380" in ep.describe()

    plain = RedisEndpoint.from_url("rediss+sentinel://s1/mymaster")
    assert plain.sentinels == (("s1", 26379),) and plain.master_name == "mymaster"
    assert (plain.db, plain.tls, plain.username, plain.password, plain.sentinel_password) == (
        0,
        True,
        None,
        None,
        None,
    )
    assert RedisEndpoint.from_url("redis+sentinel://:pw@s1:1/m/").password == "pw"
    # Plain URLs are unchanged and carry no sentinels.
    assert RedisEndpoint.from_url("redis://127.0.0.1:7000").sentinels == ()

    bad = {
        "redis+sentinel://s1:26379": "master-name",
        "redis+sentinel://s1:26379/": "master-name",
        "redis+sentinel://s1:26379/m/x": "database",
        "redis+sentinel://s1:26379/m/0/extra": "master-name",
        "redis+sentinel://s1:26379,,s2:1/m": "empty sentinel",
        "redis+sentinel://s1:port/m": "bad sentinel address",
        "redis+sentinel://s1:70000/m": "bad sentinel address",
        "redis+sentinel://s1/m?password=x": "unknown parameter",
        "sentinel://s1/m": "not a redis",
    }
    for url, message in bad.items():
        with pytest.raises(ValueError, match=message):
            RedisEndpoint.from_url(url)


def test_component_credentials_go_into_a_sentinel_url(tmp_path: Path) -> None:
    from shared import credentials

    credentials.ensure_credentials(tmp_path)
    creds = credentials.load(tmp_path, "gateway")
    url = creds.redis_url("redis+sentinel://old:pw@s1:26379,s2:26380/remits/2?sentinel_password=x")
    ep = RedisEndpoint.from_url(url)
    assert ep.sentinels == (("s1", 26379), ("s2", 26380)) and ep.master_name == "remits" and ep.db == 2
    assert (ep.username, ep.password, ep.sentinel_password) == ("gateway", creds.redis_password, "x")


def _redis(workdir: Path, name: str, *extra: str) -> ManagedServer:
    port = free_port()
    data = workdir / name
    data.mkdir(parents=True, exist_ok=True)
    argv = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(data), *extra]  # fmt: skip
    return ManagedServer(name, argv, port, workdir / f"{name}.log")


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[tuple[ManagedServer, ManagedServer, ManagedServer]]:
    primary = _redis(tmp_path, "primary")
    primary.start()
    replica = _redis(tmp_path, "replica", "--replicaof", "127.0.0.1", str(primary.port))
    replica.start()
    sentinel_port = free_port()
    conf = tmp_path / "sentinel.conf"  # the sentinel rewrites its configuration file: it must be writable
    conf.write_text(
        f"port {sentinel_port}\n"
        "bind 127.0.0.1\n"
        f"dir {tmp_path}\n"
        "sentinel resolve-hostnames no\n"
        f"sentinel monitor remits 127.0.0.1 {primary.port} 1\n"
        "sentinel down-after-milliseconds remits 1000\n"
        "sentinel failover-timeout remits 5000\n"
    )
    sentinel = ManagedServer("sentinel", [redis_server_binary(), str(conf), "--sentinel"], sentinel_port,
                             tmp_path / "sentinel.log")  # fmt: skip
    sentinel.start()
    try:
        yield primary, replica, sentinel
    finally:
        for server in (sentinel, replica, primary):
            server.stop()


async def _wait_replicated(client: RespClient, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await client.execute("WAIT", 1, 200) >= 1:
            return
    raise AssertionError("the replica never caught up")


async def test_the_client_follows_a_failover(
    sentinel_set: tuple[ManagedServer, ManagedServer, ManagedServer],
) -> None:
    primary, replica, sentinel = sentinel_set
    client = RespClient.from_url(
        f"redis+sentinel://127.0.0.1:{sentinel.port}/remits/0", connect_timeout_s=2.0, command_timeout_s=2.0
    )
    try:
        assert await client.execute("SET", "k", "before") == b"OK"
        assert await client.execute("GET", "k") == b"before"
        await _wait_replicated(client)
        # A write that must survive a failover (what single use of a nonce needs) waits until a
        # replica has it: WAIT 1 <ms> answers how many replicas acknowledged the write.
        assert await client.execute("SET", "nonce", "used") == b"OK"
        assert await client.execute("WAIT", 1, 1000) == 1

        primary.kill()
        killed = time.monotonic()
        recovered: float | None = None
        while time.monotonic() - killed < 30:
            try:
                if await client.execute("SET", "k", "after") == b"OK":
                    recovered = time.monotonic() - killed
                    break
            except RedisConnectionError:
                await asyncio.sleep(0.05)
        assert recovered is not None, "the client never reached the promoted replica"
        print(f"failover followed in {recovered:.2f}s")
        assert recovered < 15
        # The client now talks to the promoted replica, which kept the replicated write.
        role = await client.execute("ROLE")
        assert role[0] == b"master"
        assert await client.execute("CONFIG", "GET", "port") == [b"port", str(replica.port).encode()]
        assert await client.execute("GET", "nonce") == b"used"
        assert await client.execute("GET", "k") == b"after"
    finally:
        await client.close()


async def test_no_sentinel_answers_is_a_connection_error(tmp_path: Path) -> None:
    client = RespClient.from_url(f"redis+sentinel://127.0.0.1:{free_port()}/remits", connect_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(RedisConnectionError, match="no master"):
        await client.execute("PING")
    assert time.monotonic() - started < 2
    await client.close()


async def test_nonce_consumption_waits_for_the_replica(
    sentinel_set: tuple[ManagedServer, ManagedServer, ManagedServer],
) -> None:
    from shared.cache import NonceState, Store

    _, replica, sentinel = sentinel_set
    store = Store.from_url(f"redis+sentinel://127.0.0.1:{sentinel.port}/remits/0")
    plain = Store.from_url(f"redis://127.0.0.1:{replica.port}/0")
    assert store._wait_for_replica and not plain._wait_for_replica  # the plain path has no WAIT
    try:
        await _wait_replicated(store.client)
        session = await store.create_session("sample", 60)
        assert await store.consume_nonce(session.nonce, session.session_id, "r1") is NonceState.OK
        assert await store.consume_nonce(session.nonce, session.session_id, "r2") is NonceState.REPLAYED
        # Without a replica to acknowledge it, a consumption is not reported as a success.
        replica.stop()
        session = await store.create_session("sample", 60)
        with pytest.raises(RedisConnectionError, match="not acknowledged"):
            await store.consume_nonce(session.nonce, session.session_id, "r3")
    finally:
        await store.close()
        await plain.close()
