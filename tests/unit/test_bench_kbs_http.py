"""The benchmark's lean HTTP/1.1 client against a real aiohttp server and against hand-written
servers for the framings and failures aiohttp never produces on demand."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from services.bench.kbs_http import HttpPool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


# -- against aiohttp ------------------------------------------------------------------------------


async def _peer(request: web.Request) -> web.Response:
    return web.Response(text=str(request.transport.get_extra_info("peername")[1]))  # type: ignore[union-attr]


async def _login(request: web.Request) -> web.Response:
    response = web.json_response({"nonce": "n"})
    response.set_cookie("kbs-session-id", "abc123", httponly=True, samesite="Strict")
    return response


async def _echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"length": len(body), "type": request.content_type, "cookie": request.headers.get("Cookie")}
    )


async def _chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for part in (b"first,", b"second,", b"x" * 70000):
        await response.write(part)
        await asyncio.sleep(0.01)  # separate TCP segments: the client reads a body in pieces
    await response.write_eof()
    return response


async def _close(request: web.Request) -> web.Response:
    response = web.Response(text="bye")
    response.force_close()  # Connection: close
    return response


@pytest.fixture
async def server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/peer", _peer)
    app.router.add_post("/login", _login)
    app.router.add_post("/echo", _echo)
    app.router.add_get("/echo-cookie", _echo)
    app.router.add_get("/chunked", _chunked)
    app.router.add_get("/close", _close)
    # A short keep-alive: the server closes idle connections while the test waits.
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=0.3)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_keep_alive_reuses_one_connection_across_sessions(server: str) -> None:
    pool = HttpPool.from_url(server, max_connections=4)
    peers = set()
    for _ in range(3):
        async with pool.session() as http:
            for _ in range(3):
                response = await http.request("GET", "/peer")
                assert response.status == 200
                peers.add(response.body)
    assert len(peers) == 1 and pool.opened == 1
    await pool.close()


async def test_cookie_from_set_cookie_is_sent_back_in_the_session_only(server: str) -> None:
    pool = HttpPool.from_url(server)
    async with pool.session() as http:
        login = await http.request(b"POST", b"/login", b'{"tee":"sample"}')
        assert login.status == 200 and login.json() == {"nonce": "n"}
        assert login.set_cookies[0].startswith("kbs-session-id=abc123;")
        assert http.cookies == {"kbs-session-id": "abc123"}
        echoed = (await http.request(b"POST", b"/echo", b"x" * 1000)).json()
        assert echoed == {"length": 1000, "type": "application/json", "cookie": "kbs-session-id=abc123"}
        assert (await http.request("GET", "/echo-cookie")).json()["cookie"] == "kbs-session-id=abc123"
    async with pool.session() as http:  # the next guest on the same connection starts without it
        assert (await http.request("GET", "/echo-cookie")).json()["cookie"] is None
    assert pool.opened == 1
    await pool.close()


async def test_chunked_response_is_reassembled_and_the_connection_kept(server: str) -> None:
    pool = HttpPool.from_url(server)
    async with pool.session() as http:
        response = await http.request("GET", "/chunked")
        assert response.status == 200 and response.headers["transfer-encoding"] == "chunked"
        assert response.body == b"first,second," + b"x" * 70000
        assert (await http.request("GET", "/peer")).status == 200
    assert pool.opened == 1
    await pool.close()


async def test_connection_close_is_honoured(server: str) -> None:
    pool = HttpPool.from_url(server)
    async with pool.session() as http:
        response = await http.request("GET", "/close")
        assert response.body == b"bye" and response.headers["connection"].lower() == "close"
        assert (await http.request("GET", "/peer")).status == 200  # on a new connection
    assert pool.opened == 2
    await pool.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced(server: str) -> None:
    pool = HttpPool.from_url(server)
    async with pool.session() as http:
        first = (await http.request("GET", "/peer")).body
    await asyncio.sleep(1.0)  # past the server's keep-alive timeout
    async with pool.session() as http:
        response = await http.request("GET", "/peer")
    assert response.status == 200 and response.body != first and pool.opened == 2
    await pool.close()


# -- against hand-written servers -----------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    match = re.search(rb"(?i)content-length: *(\d+)", head)
    if match:
        await reader.readexactly(int(match.group(1)))
    return head


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    servers: list[asyncio.Server] = []
    connections = itertools.count()

    async def start(handler: Handler) -> str:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await handler(reader, writer, next(connections))
            finally:
                writer.close()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 2\r\nX-Any:  value \r\n\r\nok"  # field names are case-insensitive


async def test_request_lost_on_a_kept_alive_connection_is_sent_again(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(OK)
        if number == 0:
            await read_request(reader)  # the second request on the first connection: dropped
            return
        while await read_request(reader):
            writer.write(OK)

    pool = HttpPool.from_url(await raw_server(handler))
    async with pool.session() as http:
        assert (await http.request("POST", "/kbs/v0/auth", b"{}")).body == b"ok"
        assert (await http.request("POST", "/kbs/v0/attest", b"{}")).body == b"ok"
    assert pool.opened == 2
    await pool.close()


async def test_no_retry_on_a_fresh_connection_or_after_part_of_an_answer(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        if number == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\npart")
            await writer.drain()

    pool = HttpPool.from_url(await raw_server(handler))
    with pytest.raises(ConnectionError):
        async with pool.session() as http:
            await http.request("GET", "/")  # closed before answering, on a fresh connection
    with pytest.raises(ConnectionError):
        async with pool.session() as http:
            await http.request("GET", "/")  # closed mid-body
    assert pool.opened == 2
    await pool.close()


async def test_body_delimited_by_close_and_chunks_with_extensions_and_trailers(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        if number == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"the end")
            return
        pieces = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nab",
            b"cd\r\n",
            b"3\r\nefg\r\n0\r\n",
            b"X-Trailer: 1\r\n\r\n",
        ]
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        while await read_request(reader):
            writer.write(OK)

    pool = HttpPool.from_url(await raw_server(handler))
    async with pool.session() as http:
        assert (await http.request("GET", "/")).body == b"until the end"
        assert (await http.request("GET", "/")).body == b"abcdefg"  # a new connection
        assert (await http.request("GET", "/")).body == b"ok"  # the chunked one was kept
    assert pool.opened == 2
    await pool.close()


async def test_no_answer_in_time_is_a_timeout(raw_server) -> None:  # type: ignore[no-untyped-def]
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    pool = HttpPool.from_url(await raw_server(handler), timeout=0.2)
    with pytest.raises(TimeoutError):
        async with pool.session() as http:
            await http.request("GET", "/")
    await pool.close()
