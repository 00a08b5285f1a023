"""HTTP fetcher for vendor endorsements (sample KDS now, AMD KDS later).

Vendor key servers rate-limit and have outages, so transient failures (connection errors,
timeouts, 429, 5xx) are retried with capped exponential backoff plus jitter, while answers that
will not change on retry (404, other 4xx, oversized bodies) fail at once with a stable reason.
"""

from __future__ import annotations

import asyncio
import random
from types import TracebackType
from typing import Self

import aiohttp

from shared import observability
from shared.errors import EndorsementError

MAX_BODY_BYTES = 1024 * 1024
DEFAULT_TIMEOUT_S = 5.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_BASE_S = 0.2
DEFAULT_BACKOFF_MAX_S = 5.0
DEFAULT_RETRY_AFTER_MAX_S = 10.0
_CHUNK = 64 * 1024
_USER_AGENT = "remits-endorsement-fetcher/0.1"


class _Transient(Exception):
    """An attempt failed in a way worth retrying."""

    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after_s = retry_after_s


def _parse_retry_after(value: str | None) -> float | None:
    # Only the delta-seconds form; an HTTP-date falls back to our own backoff, which is safe.
    if value is None or not value.strip().isdigit():
        return None
    return float(int(value.strip()))


class EndorsementFetcher:
    """GETs endorsement documents; one instance (and connection pool) per process is enough."""

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_base_s: float = DEFAULT_BACKOFF_BASE_S,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
        retry_after_max_s: float = DEFAULT_RETRY_AFTER_MAX_S,
        max_body_bytes: int = MAX_BODY_BYTES,
        session: aiohttp.ClientSession | None = None,
        trust_env: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._retry_after_max_s = retry_after_max_s
        self._max_body_bytes = max_body_bytes
        self._session = session
        # A caller-supplied session belongs to the caller; we only close our own.
        self._owns_session = session is None
        self._trust_env = trust_env
        self._rng = rng or random.Random()

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily because a ClientSession must be created inside a running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"User-Agent": _USER_AGENT}, trust_env=self._trust_env
            )
            self._owns_session = True
        return self._session

    def _backoff_s(self, attempt: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self._retry_after_max_s)
        ceiling = min(self._backoff_max_s, self._backoff_base_s * (2 ** (attempt - 1)))
        # "Equal jitter": half fixed so retries never hammer, half random so clients desynchronise.
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    async def _read_body(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        limit = self._max_body_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise EndorsementError(
                "endorsement.too_large", f"{url}: {resp.content_length} bytes exceeds {limit}"
            )
        # Content-Length may be absent or lie (chunked, compressed), so count what is read.
        body = bytearray()
        async for chunk in resp.content.iter_chunked(_CHUNK):
            body += chunk
            if len(body) > limit:
                raise EndorsementError("endorsement.too_large", f"{url}: body exceeds {limit} bytes")
        return bytes(body)

    async def _attempt(self, url: str, keep_headers: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
        async with self._client().get(url) as resp:
            observability.vendor_fetch(resp.status)
            if resp.status == 200:
                kept = {name: resp.headers[name] for name in keep_headers if name in resp.headers}
                return await self._read_body(resp, url), kept
            if resp.status == 404:
                raise EndorsementError("endorsement.not_found", url)
            if resp.status == 429 or resp.status >= 500:
                raise _Transient(f"HTTP {resp.status}", _parse_retry_after(resp.headers.get("Retry-After")))
            raise EndorsementError("endorsement.fetch_failed", f"{url}: HTTP {resp.status}")

    async def get(self, url: str) -> bytes:
        """The body at ``url``; raises ``EndorsementError`` with a stable reason on failure."""
        body, _ = await self.get_with_headers(url)
        return body

    async def get_with_headers(self, url: str, keep_headers: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
        """The body and the named response headers (e.g. Intel's issuer chains) at ``url``."""
        if not isinstance(url, str):
            raise EndorsementError("endorsement.fetch_failed", f"URL must be str, got {type(url).__name__}")
        last = "no attempt made"
        for attempt in range(1, self._attempts + 1):
            retry_after_s: float | None = None
            try:
                async with asyncio.timeout(self._timeout_s):
                    return await self._attempt(url, keep_headers)
            except _Transient as exc:
                last, retry_after_s = exc.detail, exc.retry_after_s
            except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, aiohttp.ClientResponseError) as exc:
                # Bad URL scheme/host or too many redirects: retrying cannot help.
                raise EndorsementError("endorsement.fetch_failed", f"{url}: {exc!r}") from None
            except TimeoutError:
                observability.vendor_fetch(None)
                last = f"timed out after {self._timeout_s}s"
            except aiohttp.ClientError as exc:
                observability.vendor_fetch(None)
                last = repr(exc)
            if attempt < self._attempts:
                await asyncio.sleep(self._backoff_s(attempt, retry_after_s))
        raise EndorsementError(
            "endorsement.unavailable", f"{url}: {self._attempts} attempts failed, last: {last}"
        )

    async def close(self) -> None:
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
