"""A small local aiohttp key server for the sample vendor, used by the demo and tests.

It serves real DER device certificates and the PEM chain, and can be made slow (``delay_s``) or
flaky (``fail_next`` 503 answers) to exercise the fetcher's timeout and retry paths.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web

from shared.errors import ParseError
from shared.platforms.sample.kds import CHAIN_PATH, DEVICE_PATH, parse_device_cert_url

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class LocalEndorsementServer:
    """Serves ``GET /sample/v1/device/<hex>`` (DER) and ``GET /sample/v1/cert_chain`` (PEM)."""

    def __init__(
        self,
        certs: dict[bytes, bytes],
        chain_pem: bytes,
        *,
        delay_s: float = 0.0,
        fail_next: int = 0,
        retry_after_s: int | None = None,
        device_dir: Path | None = None,
    ) -> None:
        self._certs = dict(certs)
        # Certificates enrolled after start (`remits sample enroll`) are read from here on a miss.
        self._device_dir = device_dir
        self._chain_pem = chain_pem
        self.delay_s = delay_s
        self.fail_next = fail_next
        # Sent with the simulated 503s, to test that clients honour (and cap) Retry-After.
        self.retry_after_s = retry_after_s
        self.request_count: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    def add_device(self, device_id: bytes, der: bytes) -> None:
        self._certs[bytes(device_id)] = der

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("server not started")
        return self._base_url

    @web.middleware
    async def _instrument(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        # Count before failing or delaying so tests see every attempt a client made.
        self.request_count[request.path] += 1
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self.fail_next > 0:
            self.fail_next -= 1
            headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
            return web.Response(status=503, text="simulated outage", headers=headers)
        return await handler(request)

    async def _device(self, request: web.Request) -> web.Response:
        try:
            device_id = parse_device_cert_url(request.path)
        except ParseError as exc:
            return web.Response(status=400, text=exc.detail)
        der = self._certs.get(device_id)
        if der is None and self._device_dir is not None:
            path = self._device_dir / f"{device_id.hex()}.der"
            if path.is_file():
                der = path.read_bytes()
        if der is None:
            return web.Response(status=404, text="unknown device")
        return web.Response(body=der, content_type="application/pkix-cert")

    async def _chain(self, request: web.Request) -> web.Response:
        return web.Response(body=self._chain_pem, content_type="application/x-pem-file")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start listening (``port=0`` picks a free port) and return the base URL."""
        if self._runner is not None:
            return self.base_url
        app = web.Application(middlewares=[self._instrument])
        app.router.add_get(DEVICE_PATH + "{device_hex}", self._device)
        app.router.add_get(CHAIN_PATH, self._chain)
        # Short shutdown timeout: with delay_s set, abandoned slow requests must not hold up stop().
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._runner = runner
        self._base_url = f"http://{url_host}:{bound_port}"
        return self._base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._base_url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
