"""A small pipelining Redis client for the hot path: one connection, many requests in flight.

Why not redis-py here: measured on this machine class, redis-py's asyncio client spends 80-120 µs
of CPU per command (pool checkout, retry wrapper, parser layers); every attestation issues about
ten. This client writes each request (or a whole pipeline) in one call, parses replies with
hiredis (Redis's own C parser) and matches them to waiters in order, for about 10-20 µs per
command. It speaks only what REMITS needs: commands, pipelines, scripts (EVALSHA with the NOSCRIPT
fallback), AUTH/SELECT, TLS, pub/sub for change notifications, and Redis Sentinel discovery.

A command that gets no reply within ``command_timeout_s`` fails, and the connection is dropped
(replies are ordered, so one lost reply poisons every later one); the next command reconnects.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Arg = bytes | str | int | float


class RedisError(Exception):
    """An error reply from Redis (e.g. ``NOSCRIPT``, ``WRONGTYPE``, ``NOPERM``)."""


class RedisConnectionError(ConnectionError):
    """The connection failed, closed or stopped answering."""


def _dependency_error() -> None:
    from shared.observability import dependency_error  # imported late: this module stays standalone

    dependency_error("redis")


_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class RedisEndpoint:
    """Where Redis is. With ``sentinels``, ``host``/``port`` are unused: the address of the
    master named ``master_name`` is asked of the sentinels on every (re)connection."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> RedisEndpoint:
        """``redis://`` / ``rediss://``, or ``redis+sentinel://[user:password@]host:port[,host:port...]
        /<master-name>[/<db>][?sentinel_password=...]`` (``rediss+sentinel://``: TLS to the data
        nodes; the sentinels themselves are spoken to in plain TCP)."""
        parts = urlsplit(url)
        if parts.scheme in _SENTINEL_SCHEMES:
            return cls._from_sentinel_url(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis://, rediss:// or redis+sentinel:// URL: {url!r}")
        db_text = parts.path.lstrip("/") or "0"
        if not db_text.isdigit():
            raise ValueError(f"database must be a number in {url!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(db_text),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
        )

    @classmethod
    def _from_sentinel_url(cls, url: str) -> RedisEndpoint:
        # urlsplit cannot take several host:port pairs (its .port fails), so the authority is split here.
        parts = urlsplit(url)
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        username: str | None = None
        password: str | None = None
        if userinfo:
            user_text, colon, password_text = userinfo.partition(":")
            username = unquote(user_text) or None
            password = unquote(password_text) if colon and password_text else None
        sentinels: list[tuple[str, int]] = []
        for item in hostlist.split(","):
            item = item.strip()
            if not item:
                raise ValueError(f"empty sentinel address in {url!r}")
            if item.startswith("["):  # [ipv6]:port
                host, _, rest = item[1:].partition("]")
                port_text = rest[1:] if rest.startswith(":") else ""
            else:
                host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
            port_text = port_text or "26379"
            if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise ValueError(f"bad sentinel address {item!r} in {url!r} (host:port expected)")
            sentinels.append((host, int(port_text)))
        path = [unquote(p) for p in parts.path.split("/")[1:]]
        if path and path[-1] == "":
            path.pop()
        if not path or not path[0] or len(path) > 2:
            raise ValueError(f"a sentinel URL needs /<master-name>[/<db>] after the sentinels: {url!r}")
        if len(path) == 2 and not path[1].isdigit():
            raise ValueError(f"database must be a number in {url!r}")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"sentinel_password"}
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} in {url!r} (only sentinel_password)")
        sentinel_password = query.get("sentinel_password", [""])[-1] or None
        first_host, first_port = sentinels[0]
        return cls(
            host=first_host,
            port=first_port,
            db=int(path[1]) if len(path) == 2 else 0,
            username=username,
            password=password,
            tls=parts.scheme == "rediss+sentinel",
            sentinels=tuple(sentinels),
            master_name=path[0],
            sentinel_password=sentinel_password,
        )

    def describe(self) -> str:
        if self.sentinels:
            addresses = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"master {self.master_name!r} via sentinels {addresses}"
        return f"{self.host}:{self.port}"


def encode_command(args: Sequence[Arg]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bool):
            raise TypeError("booleans are ambiguous as Redis arguments")
        elif isinstance(arg, int):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, on_push: Callable[[Any], None] | None = None) -> None:
        self._reader = hiredis.Reader()
        self._waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._on_push = on_push
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        # Requests written in one turn of the event loop leave in one write (one system call).
        self._out: list[bytes] = []
        self._flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same interface.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._fail(RedisConnectionError(f"protocol error: {exc}"))
                if self.transport is not None:
                    self.transport.close()
                return
            if reply is False:
                return
            if self._on_push is not None:
                self._on_push(reply)
                continue
            if not self._waiters:
                continue  # a reply to a command that was already timed out
            future, _ = self._waiters.popleft()
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RedisError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"connection lost: {exc!r}" if exc else "connection closed"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _fail(self, error: Exception) -> None:
        if self._waiters:  # requests lost with the connection
            _dependency_error()
        while self._waiters:
            future, _ = self._waiters.popleft()
            if not future.done():
                future.set_exception(error)

    def send(self, payload: bytes, count: int) -> list[asyncio.Future[Any]]:
        if self.transport is None or self.transport.is_closing():
            raise RedisConnectionError("not connected")
        now = time.monotonic()
        futures = [self._loop.create_future() for _ in range(count)]
        self._waiters.extend((future, now) for future in futures)
        self._out.append(payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return futures

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def oldest_wait(self, now: float) -> float:
        return now - self._waiters[0][1] if self._waiters else 0.0


class Script:
    """A Lua script run by EVALSHA, loaded again transparently after a server restart."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


class RespClient:
    """One pipelined connection to Redis; safe to share between all tasks of one event loop."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout_s: float = 5.0,
        command_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self._ssl = ssl_context if ssl_context is not None else (ssl.create_default_context() if endpoint.tls else None)
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None
        # Round trips (one per command or pipeline written) and commands sent, for the bench.
        self.round_trips = 0
        self.commands = 0

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RespClient:
        return cls(RedisEndpoint.from_url(url), **kwargs)

    async def _open(self, on_push: Callable[[Any], None] | None = None) -> _Protocol:
        if self.endpoint.sentinels:
            return await self._open_via_sentinel(on_push)
        return await self._open_at(self.endpoint.host, self.endpoint.port, on_push)

    async def _open_at(
        self,
        host: str,
        port: int,
        on_push: Callable[[Any], None] | None = None,
        *,
        check_role: bool = False,
        timeout_s: float | None = None,
    ) -> _Protocol:
        loop = asyncio.get_running_loop()
        ep = self.endpoint
        timeout_s = self._connect_timeout_s if timeout_s is None else timeout_s
        _, protocol = await asyncio.wait_for(
            loop.create_connection(
                lambda: _Protocol(), host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
            ),
            timeout_s,
        )
        setup: list[tuple[Arg, ...]] = []
        if ep.password is not None:
            setup.append(("AUTH", ep.username, ep.password) if ep.username else ("AUTH", ep.password))
        if ep.db:
            setup.append(("SELECT", ep.db))
        if check_role:
            setup.append(("ROLE",))  # in the same write as AUTH/SELECT: no extra round trip
        if setup:
            payload = b"".join(encode_command(cmd) for cmd in setup)
            try:
                replies = await asyncio.wait_for(
                    asyncio.gather(*protocol.send(payload, len(setup)), return_exceptions=True), timeout_s
                )
                for reply in replies[:-1] if check_role else replies:
                    if isinstance(reply, BaseException):
                        raise reply
                if check_role:
                    _require_master(replies[-1], host, port)
            except BaseException:
                assert protocol.transport is not None
                protocol.transport.close()
                raise
        protocol._on_push = on_push
        return protocol

    async def _open_via_sentinel(self, on_push: Callable[[Any], None] | None) -> _Protocol:
        """Ask the sentinels for the master, connect to it and check that it is one (a sentinel can
        still name the old master for a moment during a failover); try again until the connect
        timeout."""
        deadline = time.monotonic() + self._connect_timeout_s
        last: Exception | None = None
        while True:
            try:
                host, port = await self._master_address(deadline)
                remaining = max(0.1, deadline - time.monotonic())
                return await self._open_at(host, port, on_push, check_role=True, timeout_s=remaining)
            except (OSError, TimeoutError, _NotMaster) as exc:
                last = exc
            if time.monotonic() + 0.1 >= deadline:
                raise RedisConnectionError(f"no master for {self.endpoint.describe()}: {last}") from None
            await asyncio.sleep(0.1)

    async def _master_address(self, deadline: float) -> tuple[str, int]:
        """The first answer of ``SENTINEL get-master-addr-by-name``, asking the sentinels in order."""
        ep = self.endpoint
        assert ep.master_name is not None
        loop = asyncio.get_running_loop()
        problems: list[str] = []
        for host, port in ep.sentinels:
            budget = deadline - time.monotonic()
            if budget <= 0:
                break
            # Each sentinel gets at most a second, so one that hangs does not eat the others' time.
            budget = min(budget, 1.0)
            protocol: _Protocol | None = None
            try:
                _, protocol = await asyncio.wait_for(loop.create_connection(_Protocol, host, port), budget)
                commands: list[tuple[Arg, ...]] = []
                if ep.sentinel_password is not None:
                    commands.append(("AUTH", ep.sentinel_password))
                commands.append(("SENTINEL", "get-master-addr-by-name", ep.master_name))
                payload = b"".join(encode_command(cmd) for cmd in commands)
                replies = await asyncio.wait_for(asyncio.gather(*protocol.send(payload, len(commands))), budget)
                answer = replies[-1]
                if isinstance(answer, list) and len(answer) == 2:
                    return _text(answer[0]), int(answer[1])
                problems.append(f"{host}:{port} does not know {ep.master_name!r}")
            except (OSError, TimeoutError, RedisError, ValueError) as exc:
                problems.append(f"{host}:{port}: {exc!r}")
            finally:
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.close()
        raise RedisConnectionError("no sentinel answered: " + "; ".join(problems or ["out of time"]))

    async def _connection(self) -> _Protocol:
        protocol = self._protocol
        if protocol is not None and protocol.transport is not None and not protocol.transport.is_closing():
            return protocol
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            protocol = self._protocol
            if protocol is None or protocol.transport is None or protocol.transport.is_closing():
                try:
                    protocol = await self._open()
                except (OSError, TimeoutError) as exc:
                    _dependency_error()
                    raise RedisConnectionError(f"cannot connect to {self.endpoint.describe()}: {exc!r}") from None
                self._protocol = protocol
                if self._watchdog is None or self._watchdog.done():
                    self._watchdog = asyncio.create_task(self._watch())
            return protocol

    async def _watch(self) -> None:
        """Drop a connection whose oldest request waited too long (Redis stopped, network gone)."""
        # Checked often enough that a dead server is noticed within a quarter second of the bound.
        step = max(0.05, min(0.25, self._command_timeout_s / 4))
        while True:
            await asyncio.sleep(step)
            protocol = self._protocol
            if protocol is None:
                continue
            if protocol.oldest_wait(time.monotonic()) > self._command_timeout_s:
                protocol._fail(RedisConnectionError(f"no reply within {self._command_timeout_s}s"))
                if protocol.transport is not None:
                    protocol.transport.abort()

    async def execute(self, *args: Arg) -> Any:
        protocol = await self._connection()
        (future,) = protocol.send(encode_command(args), 1)
        self.round_trips += 1
        self.commands += 1
        return await future

    async def pipeline(self, commands: Sequence[Sequence[Arg]], *, raise_errors: bool = True) -> list[Any]:
        """Several commands in one write and one wait. Error replies raise (the first one), or are
        returned as ``RedisError`` values when ``raise_errors`` is false."""
        protocol = await self._connection()
        futures = protocol.send(b"".join(encode_command(cmd) for cmd in commands), len(commands))
        self.round_trips += 1
        self.commands += len(commands)
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, RedisConnectionError):
                raise result
            if raise_errors and isinstance(result, RedisError):
                raise result
        return results

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisError as err:
            if not str(err).startswith("NOSCRIPT"):
                raise
        # First use on this server (or after a restart): EVAL loads and runs it.
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
            await asyncio.wait([protocol.closed], timeout=1)

    async def subscribe(
        self, channel: str, on_message: Callable[[bytes], None], stop: asyncio.Event,
        on_state: Callable[[bool], Awaitable[None] | None] | None = None,
    ) -> None:
        """Listen on a pub/sub channel until ``stop`` is set, reconnecting as needed.
        ``on_state(True)`` once subscribed, ``on_state(False)`` whenever the subscription is lost
        (a listener that caches must then stop trusting its cache)."""
        subscribed = asyncio.Event()

        def on_push(reply: Any) -> None:
            if isinstance(reply, list) and len(reply) == 3:
                kind = reply[0]
                if kind == b"message":
                    on_message(reply[2])
                elif kind == b"subscribe":
                    subscribed.set()

        while not stop.is_set():
            protocol: _Protocol | None = None
            try:
                protocol = await self._open(on_push=on_push)
                assert protocol.transport is not None
                subscribed.clear()
                protocol.transport.write(encode_command(("SUBSCRIBE", channel)))
                await asyncio.wait_for(subscribed.wait(), self._connect_timeout_s)
                if on_state is not None:
                    await _maybe_await(on_state(True))
                stopping = asyncio.ensure_future(stop.wait())
                await asyncio.wait({protocol.closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
            except (OSError, TimeoutError, RedisError):
                pass
            finally:
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.close()
                if on_state is not None:
                    await _maybe_await(on_state(False))
            if not stop.is_set():
                await asyncio.sleep(0.5)


class _NotMaster(Exception):
    """The node a sentinel named is not (or no longer) a master."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _require_master(reply: Any, host: str, port: int) -> None:
    if isinstance(reply, RedisError):
        # A user without +role (credentials written before Sentinel support; today's rules grant
        # it): the sentinel's word is taken.
        if str(reply).startswith("NOPERM"):
            return
        raise reply
    if isinstance(reply, BaseException):
        raise reply
    role = _text(reply[0]) if isinstance(reply, list) and reply else repr(reply)
    if role != "master":
        raise _NotMaster(f"{host}:{port} is a {role}, not a master")


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value
