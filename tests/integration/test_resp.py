"""The pipelined Redis client against real redis-server processes: replies in order, errors,
scripts after a restart, reconnection, a frozen server, AUTH, and the change channel."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.embedded import ManagedServer, redis_server
from shared.resp import RedisConnectionError, RedisEndpoint, RedisError, RespClient, Script

pytestmark = pytest.mark.integration


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[ManagedServer]:
    """A redis-server of this test's own, so it can be restarted and frozen."""
    server = redis_server(tmp_path)
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.proc.send_signal(signal.SIGCONT)
    server.stop()


def url(server: ManagedServer, db: int = 0) -> str:
    return f"redis://127.0.0.1:{server.port}/{db}"


def test_endpoint_from_url() -> None:
    ep = RedisEndpoint.from_url("rediss://svc%40x:p%3Ass@redis.example:6380/3")
    assert (ep.host, ep.port, ep.db, ep.username, ep.password, ep.tls) == ("redis.example", 6380, 3, "svc@x", "p:ss", True)
    assert RedisEndpoint.from_url("redis://127.0.0.1:7000") == RedisEndpoint("127.0.0.1", 7000)
    for bad in ("http://x", "redis://h:1/db"):
        with pytest.raises(ValueError):
            RedisEndpoint.from_url(bad)


async def test_commands_pipelines_and_errors(own_redis: ManagedServer) -> None:
    client = RespClient.from_url(url(own_redis, db=2))
    try:
        assert await client.execute("SET", "k", b"\x00bytes\xff") == b"OK"
        # Many requests in flight at once each get their own reply.
        values = await asyncio.gather(*(client.execute("INCR", "n") for _ in range(200)))
        assert sorted(values) == list(range(1, 201))
        got, missing, count = await client.pipeline([("GET", "k"), ("GET", "absent"), ("SCARD", "none")])
        assert (got, missing, count) == (b"\x00bytes\xff", None, 0)
        with pytest.raises(RedisError, match="WRONGTYPE"):
            await client.execute("SADD", "k", "x")
        ok, err = await client.pipeline([("PING",), ("SADD", "k", "x")], raise_errors=False)
        assert ok == b"PONG" and isinstance(err, RedisError)
        # The database in the URL was selected.
        assert await RespClient.from_url(url(own_redis, db=0)).execute("EXISTS", "k") == 0
        assert client.round_trips == 204 and client.commands == 207
    finally:
        await client.close()


async def test_scripts_survive_a_flush_and_a_restart(own_redis: ManagedServer) -> None:
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    client = RespClient.from_url(url(own_redis))
    try:
        assert await client.run_script(script, ["c"], [5]) == 5
        await client.execute("SCRIPT", "FLUSH")
        assert await client.run_script(script, ["c"], [2]) == 7
        own_redis.stop()
        with pytest.raises(RedisConnectionError):
            await client.execute("PING")
        own_redis.start()
        # The next command reconnects; the restarted server knows no script and no data.
        assert await client.run_script(script, ["c"], [1]) == 1
    finally:
        await client.close()


async def test_a_frozen_server_fails_commands_instead_of_hanging(own_redis: ManagedServer) -> None:
    client = RespClient.from_url(url(own_redis), command_timeout_s=0.5)
    try:
        await client.execute("PING")
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)
        with pytest.raises(RedisConnectionError):
            await asyncio.wait_for(client.execute("PING"), 5)
        own_redis.proc.send_signal(signal.SIGCONT)
        assert await client.execute("PING") == b"PONG"
    finally:
        await client.close()


async def test_auth_from_the_url(tmp_path: Path) -> None:
    server = redis_server(tmp_path)
    server.argv += ["--requirepass", "s3cret"]
    server.start()
    try:
        with pytest.raises(RedisError, match="NOAUTH"):
            await RespClient.from_url(url(server)).execute("PING")
        client = RespClient.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert await client.execute("PING") == b"PONG"
        await client.close()
        with pytest.raises(RedisError):
            await RespClient.from_url(f"redis://:wrong@127.0.0.1:{server.port}/0").execute("PING")
    finally:
        server.stop()
