"""The fleet dashboard's live feed: ``GET /dashboard/v1/feed``, a server-sent-events stream.

While at least one operator watches, this gateway follows the decision subject (core NATS: every
decision the decide stage publishes, its tag checked like any bus message) and asks every REMITS
process for its stage statistics every few seconds. Each viewer is pushed, once a second, the
decisions that arrived since its last push and a summary; the page never polls. Nobody watching
(for ``IDLE_S``) costs nothing: the subscription and the collection stop.

The feed needs the admin credential (``Authorization: Bearer <admin JWT>``). The gateway holds no
admin key: it asks the provision component, as for every admin request, and a stream ends when the
credential expires (or after ``MAX_STREAM_S``), when the page asks the operator again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import msgspec
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.gateway.dashboard.view import FleetView, StageView
from shared import schemas
from shared.busauth import BusAuth, Unauthenticated
from shared.telemetry import get_logger

log = get_logger("remits.dashboard")

PUSH_INTERVAL_S = 1.0
STATS_INTERVAL_S = 2.0
STATS_WINDOW_S = 0.5  # how long answers to one statistics request are gathered
IDLE_S = 300.0  # keep following decisions this long after the last viewer left
MAX_STREAM_S = 900.0
DECISIONS_SUBJECT = "remits.decision.>"

# Whoever gets the page gets nothing else: no inline script, no other origin, no framing.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_STATIC = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}

# (status, JSON body) of the admin API's answer to "who is this credential?"
Authorize = Callable[[str], Awaitable[tuple[int, bytes]]]


def token_expiry(authorization: str) -> float | None:
    """The ``exp`` of a bearer JWT, read without checking it: only called once provision has
    accepted the credential, to end the stream when it lapses."""
    token = authorization.removeprefix("Bearer ").strip()
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


def sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n".encode()


class DashboardFeed:
    def __init__(
        self,
        nc: NATS,
        auth: BusAuth | None,
        authorize: Authorize,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.nc = nc
        self.auth = auth
        self.authorize = authorize
        self.clock = clock
        self.view = FleetView(since=clock())
        self.stages = StageView()
        self.viewers = 0
        self.refused = 0  # decisions dropped as unauthentic or unreadable
        self._sub: Any = None
        self._collector: asyncio.Task[None] | None = None
        self._left_at = 0.0
        self._closing = asyncio.Event()
        self._lock = asyncio.Lock()

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/dashboard", self.page),
            web.get("/dashboard/static/{name}", self.static),
            web.get("/dashboard/v1/feed", self.feed),
        ]

    # -- the page --------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=_asset("index.html"), content_type="text/html", headers=_PAGE_HEADERS)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_asset(name), content_type=_STATIC[name], headers=_PAGE_HEADERS)

    # -- following the fleet ---------------------------------------------------------------
    async def _watch(self) -> None:
        async with self._lock:
            if self._sub is not None:
                return
            self.view = FleetView(since=self.clock())
            self.stages = StageView()
            self._sub = await self.nc.subscribe(DECISIONS_SUBJECT, cb=self._on_decision)
            # The baseline the per-stage figures count from, before the first viewer sees any.
            with contextlib.suppress(Exception):
                self.stages.update(await self._collect())
            self._collector = asyncio.create_task(self._collect_loop(), name="dashboard-stats")
            log.info("dashboard.watching")

    async def _unwatch(self) -> None:
        async with self._lock:
            if self._sub is None:
                return
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
            if self._collector is not None:
                self._collector.cancel()
                self._collector = None
            log.info("dashboard.idle")

    async def _on_decision(self, msg: Msg) -> None:
        try:
            if self.auth is not None:
                self.auth.verify(msg.subject, msg.data, msg.headers, accept=frozenset({"decide"}))
            decision = schemas.decode_decision(msg.data)
        except (Unauthenticated, msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.refused += 1
            log.warning("dashboard.decision_refused", subject=msg.subject, error=repr(exc))
            return
        self.view.add(
            request_id=decision.meta.request_id,
            tee=decision.meta.tee,
            status=decision.status,
            reason=decision.reason,
            detail=decision.detail,
            decided_at=decision.decided_at,
            claims=decision.claims,
            now=self.clock(),
        )

    async def _collect_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                self.stages.update(await self._collect())
            except Exception as exc:  # NATS away: the page keeps the last figures
                log.debug("dashboard.stats_unavailable", error=repr(exc))
            if self.viewers == 0 and self.clock() - self._left_at > IDLE_S:
                asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._unwatch()))
                return

    async def _collect(self) -> list[dict[str, Any]]:
        """Every process's statistics (each answers once; nobody knows how many there are)."""
        inbox = self.nc.new_inbox()
        answers: list[dict[str, Any]] = []

        async def on_answer(msg: Msg) -> None:
            with contextlib.suppress(msgspec.DecodeError):
                answers.append(msgspec.json.decode(msg.data))

        sub = await self.nc.subscribe(inbox, cb=on_answer)
        try:
            await self.nc.publish(schemas.STATS_COLLECT_SUBJECT, b"", reply=inbox)
            await asyncio.sleep(STATS_WINDOW_S)
        finally:
            await sub.unsubscribe()
        return answers

    # -- the stream ------------------------------------------------------------------------
    async def feed(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization", "")
        status, body = await self.authorize(authorization)
        if status != 200:
            return web.Response(status=status, body=body, content_type="application/json")
        actor = str(json.loads(body).get("actor", ""))
        now = self.clock()
        ends_at = min(now + MAX_STREAM_S, token_expiry(authorization) or now + MAX_STREAM_S)
        await self._watch()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        self.viewers += 1
        log.info("dashboard.viewer_joined", actor=actor, viewers=self.viewers)
        try:
            view = self.view
            await response.write(sse("hello", {"actor": actor, "since": view.since, "ends_at": ends_at}))
            last_seq = 0
            while not self._closing.is_set():
                rows = view.rows_after(last_seq)
                if rows:
                    last_seq = rows[-1]["seq"]
                    await response.write(sse("decisions", rows))
                await response.write(sse("summary", self._summary(view)))
                if self.clock() >= ends_at:
                    await response.write(sse("expired", {"detail": "the admin credential has lapsed"}))
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), PUSH_INTERVAL_S)
        except ConnectionError:
            pass  # the page went away
        finally:
            self.viewers -= 1
            self._left_at = self.clock()
            log.info("dashboard.viewer_left", actor=actor, viewers=self.viewers)
        return response

    def _summary(self, view: FleetView) -> dict[str, Any]:
        return {**view.summary(self.clock()), "stages": self.stages.latest, "viewers": self.viewers}

    async def close(self, app: web.Application | None = None) -> None:
        """On shutdown: end every stream (so that the server stops at once) and stop following."""
        self._closing.set()
        await self._unwatch()


@functools.cache
def _asset(name: str) -> bytes:
    return resources.files("services.gateway.dashboard").joinpath("static", name).read_bytes()
