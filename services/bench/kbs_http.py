"""A lean HTTP/1.1 client for the KBS flow of `remits bench` load generators.

The load generators share the machine with the server they measure, so client CPU per request is
taken from the server: aiohttp's client spends ~0.2-0.3 ms per request on features a KBS guest does
not use (redirects, cookie jar policies, tracing, compression, multi-host pools). This client does
the protocol and nothing else: an ``asyncio.Protocol`` per connection (uvloop-compatible), one
request in flight per connection, keep-alive, a bounded pool of connections to one host:port,
Content-Length request bodies, Content-Length, chunked and close-delimited response bodies.

A guest flow leases one connection for its requests (``pool.session()``) and keeps the cookies the
server sets during the flow (``kbs-session-id``). A kept-alive connection that the server closed
while it sat idle is replaced before use; if the server closes it just as a request is sent (no
byte of a response read), the request is sent once more on a new connection -- the server never
saw it. A failure on a fresh connection, or after part of a response, is the caller's to judge.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_MAX_HEAD = 64 * 1024
_NO_BODY_STATUS = frozenset({204, 304})

# How the body of the response being read ends.
_LENGTH, _CHUNKED, _UNTIL_CLOSE, _EMPTY = range(4)
# Where a chunked body is: at a size line, in chunk data, in the trailers.
_SIZE, _DATA, _TRAILER = range(3)


class BadResponse(Exception):
    """The server's bytes are not HTTP/1.1 this client can read."""


def _field_values(lower_head: bytes, source: bytes, name: bytes) -> list[bytes]:
    """The values of one header field, cut from ``source`` (the head, or its lower-case copy).
    Every field line follows a CRLF (the status line comes first), so a search finds exactly the
    lines that start with the name."""
    key = b"\r\n" + name + b":"
    values = []
    start = lower_head.find(key)
    while start >= 0:
        begin = start + len(key)
        end = lower_head.find(b"\r\n", begin)
        end = len(lower_head) if end < 0 else end
        values.append(source[begin:end].strip())
        start = lower_head.find(key, end)
    return values


@dataclass(slots=True)
class Response:
    status: int
    head: bytes  # status line and header fields, as received
    body: bytes

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """Header fields in order: lower-case names, stripped values."""
        out = []
        for line in self.head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            out.append((name.strip().lower(), value.strip()))
        return out

    @property
    def headers(self) -> dict[str, str]:
        """Header fields by lower-case name (repeats joined with ", "), Set-Cookie excluded."""
        out: dict[str, str] = {}
        for name, value in self.fields:
            if name != b"set-cookie":
                key, text = name.decode("latin-1"), value.decode("latin-1")
                out[key] = f"{out[key]}, {text}" if key in out else text
        return out

    @property
    def set_cookies(self) -> list[str]:
        values = _field_values(self.head.lower(), self.head, b"set-cookie")
        return [value.decode("latin-1") for value in values]

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection(asyncio.Protocol):
    """One TCP connection; reads one response at a time as the bytes arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Response] | None = None
        self.deadline = 0.0  # loop time by which the response in flight must be complete; 0: idle
        self.closed = False
        self.reusable = True  # false once the framing is lost or either side said "close"
        self.served = 0  # responses read: a connection that served none is fresh
        self.received = False  # whether any byte of the current response arrived
        self._reset()

    # -- state ------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._status = 0
        self._head = b""
        self._cookies = False
        self._mode = _EMPTY
        self._length = 0
        self._body_start = 0
        self._keep_alive = True
        self._head_only = False
        self._chunk_state = _SIZE
        self._chunk_pos = 0
        self._chunk_size = 0
        self._chunks: list[bytes] = []
        self.received = False

    @property
    def set_cookie(self) -> bool:
        """Whether the last response set cookies."""
        return self._cookies

    @property
    def usable(self) -> bool:
        return (
            not self.closed
            and self.reusable
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Requests are written whole; never wait for an ACK before sending the next one.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.reusable = False  # bytes nobody asked for: responses no longer line up
            return
        self.received = True
        self._buffer += data
        try:
            self._advance()
        except (BadResponse, ValueError, UnicodeDecodeError) as exc:
            self._fail(exc if isinstance(exc, BadResponse) else BadResponse(str(exc)))
            self._abort()

    def eof_received(self) -> bool:
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            if self._status and self._mode == _UNTIL_CLOSE:
                self._finish(bytes(self._buffer[self._body_start :]))
            else:
                self._fail(ConnectionResetError("server closed the connection"))
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            if exc is None and self._status and self._mode == _UNTIL_CLOSE:
                self._finish(bytes(self._buffer[self._body_start :]))
            else:
                self._fail(exc if isinstance(exc, Exception) else ConnectionResetError("connection lost"))

    # -- one exchange -----------------------------------------------------------------------
    async def exchange(self, data: bytes, *, head_only: bool, limit_s: float) -> Response:
        transport = self.transport
        if transport is None or transport.is_closing() or self.closed:
            raise ConnectionResetError("connection closed")
        self._reset()
        self._buffer.clear()
        self._head_only = head_only
        waiter = self._loop.create_future()
        self._waiter = waiter
        # The pool's watchdog enforces the deadline: a timer per request would cost more (~2.5 µs).
        self.deadline = self._loop.time() + limit_s
        transport.write(data)
        try:
            return await waiter
        except BaseException:
            # Failed or abandoned (cancelled) mid-exchange: a late answer would reach the next
            # request, so this connection serves no other.
            self.reusable = False
            raise
        finally:
            self._waiter = None
            self.deadline = 0.0

    def expire(self) -> None:
        self._fail(TimeoutError("no complete response in time"))
        self._abort()

    def _abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _finish(self, body: bytes) -> None:
        self.served += 1
        if not self._keep_alive:
            self.reusable = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Response(self._status, self._head, body))

    # -- parsing ----------------------------------------------------------------------------
    def _advance(self) -> None:
        if not self._status:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_HEAD:
                    raise BadResponse("response head too large")
                return
            self._parse_head(bytes(self._buffer[:end]))
            self._body_start = end + 4
            if self._status < 200:  # an interim response (100 Continue): the real one follows
                del self._buffer[: self._body_start]
                head_only = self._head_only
                self._reset()
                self._head_only = head_only
                self.received = True
                self._advance()
                return
        if self._mode == _LENGTH:
            stop = self._body_start + self._length
            if len(self._buffer) >= stop:
                if len(self._buffer) > stop:
                    self.reusable = False  # more than was announced
                self._finish(bytes(self._buffer[self._body_start : stop]))
        elif self._mode == _CHUNKED:
            self._advance_chunks()
        elif self._mode == _EMPTY:
            if len(self._buffer) > self._body_start:
                self.reusable = False
            self._finish(b"")
        # _UNTIL_CLOSE: the body ends with the connection (eof_received / connection_lost)

    def _parse_head(self, head: bytes) -> None:
        # Only the fields that frame the body are looked up (a few searches of one lower-case
        # copy); the rest stay bytes until someone asks for them.
        status_line = head.split(b"\r\n", 1)[0]
        version, _, rest = status_line.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(rest) < 3 or not rest[:3].isdigit():
            raise BadResponse(f"not an HTTP/1.x status line: {status_line[:80]!r}")
        self._status = int(rest[:3])
        self._head = head
        lower = head.lower()
        lengths = _field_values(lower, head, b"content-length")
        if len(set(lengths)) > 1:
            raise BadResponse("conflicting Content-Length fields")
        encodings = (
            _field_values(lower, lower, b"transfer-encoding") if b"\r\ntransfer-encoding:" in lower else []
        )
        connection = (
            b",".join(_field_values(lower, lower, b"connection")) if b"\r\nconnection:" in lower else b""
        )
        self._cookies = b"\r\nset-cookie:" in lower
        self._keep_alive = (
            b"close" not in connection if version == b"HTTP/1.1" else b"keep-alive" in connection
        )
        self._mode = self._framing(
            lengths[0] if lengths else None, b",".join(encodings) if encodings else None
        )

    def _framing(self, length: bytes | None, encoding: bytes | None) -> int:
        if self._head_only or self._status in _NO_BODY_STATUS or self._status < 200:
            return _EMPTY
        if encoding is not None:
            if encoding.rsplit(b",", 1)[-1].strip() == b"chunked":
                return _CHUNKED
            self._keep_alive = False  # RFC 9112 §6.3: any other coding ends with the connection
            return _UNTIL_CLOSE
        if length is None:
            self._keep_alive = False
            return _UNTIL_CLOSE
        if not length.isdigit():
            raise BadResponse(f"bad Content-Length {length[:40]!r}")
        self._length = int(length)
        return _LENGTH if self._length else _EMPTY

    def _advance_chunks(self) -> None:
        buf = self._buffer
        pos = max(self._chunk_pos, self._body_start)
        while True:
            if self._chunk_state == _SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size_text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
                if not size_text or any(c not in b"0123456789abcdefABCDEF" for c in size_text):
                    raise BadResponse(f"bad chunk size {size_text[:20]!r}")
                self._chunk_size = int(size_text, 16)
                pos = eol + 2
                self._chunk_state = _DATA if self._chunk_size else _TRAILER
            elif self._chunk_state == _DATA:
                stop = pos + self._chunk_size
                if len(buf) < stop + 2:
                    break
                if buf[stop : stop + 2] != b"\r\n":
                    raise BadResponse("chunk not followed by CRLF")
                self._chunks.append(bytes(buf[pos:stop]))
                pos = stop + 2
                self._chunk_state = _SIZE
            else:  # trailer fields, up to an empty line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                if eol > pos:
                    pos = eol + 2
                    continue
                if len(buf) > eol + 2:
                    self.reusable = False
                self._finish(b"".join(self._chunks))
                return
        self._chunk_pos = pos


class HttpSession:
    """One guest's lease: a connection for its requests and the cookies the server set."""

    __slots__ = ("_conn", "_cookie_line", "_pool", "cookies")

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self._conn: _Connection | None = None
        self.cookies: dict[str, str] = {}
        self._cookie_line = b""

    async def __aenter__(self) -> HttpSession:
        await self._pool._slots.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._pool._give_back(self._conn)
            self._conn = None
        self._pool._slots.release()

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if conn is not None:
            conn.close()
        conn = self._pool._take_idle() or await self._pool._connect()
        self._conn = conn
        return conn

    async def request(
        self,
        method: bytes | str,
        path: bytes | str,
        body: bytes | None = None,
        *,
        content_type: bytes = b"application/json",
    ) -> Response:
        """One request on this session's connection; raises OSError/TimeoutError/BadResponse."""
        method_b = method.encode() if isinstance(method, str) else method
        data = self._pool._request_bytes(
            method_b,
            path.encode() if isinstance(path, str) else path,
            body,
            content_type,
            self._cookie_line,
        )
        conn = await self._connection()
        head_only = method_b == b"HEAD"
        try:
            response = await conn.exchange(data, head_only=head_only, limit_s=self._pool.timeout)
        except ConnectionError:
            if conn.served == 0 or conn.received:
                raise
            # A kept-alive connection closed by the server before a byte of the answer: the
            # request never reached the application, so sending it again is safe.
            conn.close()
            conn = self._conn = await self._pool._connect()
            response = await conn.exchange(data, head_only=head_only, limit_s=self._pool.timeout)
        if conn.set_cookie:
            self._store_cookies(response.set_cookies)
        return response

    def _store_cookies(self, values: list[str]) -> None:
        for value in values:
            pair, _, attributes = value.partition(";")
            name, sep, cookie = pair.partition("=")
            name = name.strip()
            if not sep or not name:
                continue
            if "max-age=0" in attributes.lower().replace(" ", ""):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = cookie.strip()
        header = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        self._cookie_line = f"Cookie: {header}\r\n".encode("latin-1") if header else b""


class HttpPool:
    """Keep-alive connections to one ``host:port``, at most ``max_connections`` leased at once."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 100,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.opened = 0  # connections opened over the pool's life (reuse shows as a small number)
        self._open: set[_Connection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._host_line = f"Host: {host}:{port}\r\n".encode()
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> HttpPool:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"need an http://host:port URL, got {url!r}")
        return cls(parts.hostname, parts.port or 80, **kwargs)

    def session(self) -> HttpSession:
        return HttpSession(self)

    def _request_bytes(
        self, method: bytes, path: bytes, body: bytes | None, content_type: bytes, cookie: bytes
    ) -> bytes:
        if body is None:
            return b"%s %s HTTP/1.1\r\n%s%s\r\n" % (method, path, self._host_line, cookie)
        return b"%s %s HTTP/1.1\r\n%sContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
            method, path, self._host_line, content_type, len(body), cookie, body,
        )  # fmt: skip

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: _Connection(loop), self.host, self.port), self.connect_timeout
        )
        self.opened += 1
        self._open.add(conn)
        if self._watchdog is None:
            self._watchdog = asyncio.ensure_future(self._expire_late())
        return conn

    async def _expire_late(self) -> None:
        """Fail requests past their deadline; forget closed connections."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            now = loop.time()
            for conn in list(self._open):
                if conn.closed:
                    self._open.discard(conn)
                elif conn.deadline and conn.deadline < now:
                    conn.expire()

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the least likely to have timed out
            if conn.usable:
                return conn
            conn.close()
        return None

    def _give_back(self, conn: _Connection) -> None:
        if conn.usable:
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._idle:
            self._idle.pop().close()
        await asyncio.sleep(0)  # let the transports finish closing
