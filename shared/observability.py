"""Prometheus metrics of this process, and the small HTTP surface that exposes them.

Every metric lives in ``REGISTRY``, one per process, never prometheus-client's global default
registry: `remits up` runs every component in one process and they all count here, so the
gateway's ``/metrics`` shows them all; a `remits worker` serves its own on ``--metrics-port``.

Label values are bounded: stages, TEEs and statuses are fixed sets; rejection reasons are the
stable dotted names of ``shared.errors`` (anything else, or more than ``MAX_REASONS`` distinct
names, is counted as ``other``); vendor answers are grouped into a handful of status classes.

This is separate from ``shared.stats`` (timings collected over NATS by `remits bench`), which
keeps working unchanged; the stage runner records both from the same measurement.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

from shared.telemetry import get_logger

if TYPE_CHECKING:
    from shared.stats import StageTimes

_log = get_logger("remits.observability")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

STAGE_MESSAGES = Counter(
    "remits_stage_messages",
    "Messages a stage finished, by outcome: ok (forwarded and acked), rejected (the stage produced "
    "a rejection), error (handler failed and the message was naked, or it was dead-lettered)",
    ["stage", "outcome"],
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "remits_stage_seconds",
    "Work time of one message in a stage: from dequeue to ack (handler, publishes, PubAcks)",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
DECISIONS = Counter(
    "remits_decisions", "Decisions made (once per request)", ["tee", "status"], registry=REGISTRY
)
REJECTIONS = Counter("remits_rejections", "Rejected decisions by reason", ["reason"], registry=REGISTRY)
CONSUMER_PENDING = Gauge(
    "remits_consumer_pending",
    "Messages in the stream not yet delivered to the durable consumer",
    ["stream", "consumer"],
    registry=REGISTRY,
)
CONSUMER_ACK_PENDING = Gauge(
    "remits_consumer_ack_pending",
    "Messages delivered to the durable consumer and not yet acknowledged",
    ["stream", "consumer"],
    registry=REGISTRY,
)
ENDORSEMENT_CACHE = Counter(
    "remits_endorsement_cache",
    "Endorsement lookups answered from the cache (process or Redis) or not",
    ["result"],
    registry=REGISTRY,
)
VENDOR_FETCHES = Counter(
    "remits_vendor_fetches",
    "HTTP attempts at vendor endorsement servers, by answer (200, 404, 429, 4xx, 5xx, error)",
    ["status"],
    registry=REGISTRY,
)
DEPENDENCY_ERRORS = Counter(
    "remits_dependency_errors",
    "Failures talking to Redis (connection refused, lost or silent) or NATS (disconnects)",
    ["dependency"],
    registry=REGISTRY,
)

MAX_REASONS = 200
_REASON = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
_reasons: set[str] = set()

# How often each stage reads its durable consumer's state into the lag gauges.
LAG_INTERVAL_S = 5.0


def reason_label(reason: str) -> str:
    """A rejection reason as a label: a dotted name, or "other" (bounded cardinality)."""
    if len(reason) > 64 or not _REASON.fullmatch(reason):
        return "other"
    if reason not in _reasons:
        if len(_reasons) >= MAX_REASONS:
            return "other"
        _reasons.add(reason)
    return reason


class StageMeter:
    """One stage's series, looked up once (the runner records per message), and present from
    the start at zero, so that rates work from the first scrape."""

    OUTCOMES = ("ok", "rejected", "error")

    def __init__(self, stage: str) -> None:
        self._messages = {outcome: STAGE_MESSAGES.labels(stage, outcome) for outcome in self.OUTCOMES}
        self._seconds = STAGE_SECONDS.labels(stage)

    def done(self, outcome: str, seconds: float) -> None:
        self._messages[outcome].inc()
        self._seconds.observe(seconds)

    def failed(self) -> None:
        """A message the stage could not handle at all (dead-lettered): counted, not timed."""
        self._messages["error"].inc()


def stage_done(stage: str, outcome: str, seconds: float) -> None:
    StageMeter(stage).done(outcome, seconds)


def decision(tee: str, status: str, reason: str) -> None:
    DECISIONS.labels(tee, status).inc()
    if status == "rejected":
        REJECTIONS.labels(reason_label(reason)).inc()


def endorsement_cache(hit: bool) -> None:
    ENDORSEMENT_CACHE.labels("hit" if hit else "miss").inc()


def vendor_fetch(status: int | None) -> None:
    """One vendor HTTP attempt; ``None`` for no answer (connection error, timeout)."""
    if status is None:
        label = "error"
    elif status in (200, 404, 429):
        label = str(status)
    elif 400 <= status < 500:
        label = "4xx"
    elif status >= 500:
        label = "5xx"
    else:
        label = "other"
    VENDOR_FETCHES.labels(label).inc()


def dependency_error(dependency: str) -> None:
    DEPENDENCY_ERRORS.labels(dependency).inc()


def consumer_lag(stream: str, consumer: str, pending: int, ack_pending: int) -> None:
    CONSUMER_PENDING.labels(stream, consumer).set(pending)
    CONSUMER_ACK_PENDING.labels(stream, consumer).set(ack_pending)


def lag_series(stream: str, consumer: str) -> None:
    """A consumer's lag series, at zero until the first read: a scrape right after a worker says
    "ready" finds them even while that read is still in flight."""
    CONSUMER_PENDING.labels(stream, consumer)
    CONSUMER_ACK_PENDING.labels(stream, consumer)


async def watch_lag(js: Any, stream: str, durable: str, times: StageTimes) -> None:
    """Every ``LAG_INTERVAL_S``, a durable consumer's backlog into the lag gauges and into the
    stage's statistics (which the fleet dashboard collects); until cancelled."""
    lag_series(stream, durable)
    while True:
        try:
            info = await js.consumer_info(stream, durable)
            pending, ack_pending = int(info.num_pending or 0), int(info.num_ack_pending or 0)
            consumer_lag(stream, durable, pending, ack_pending)
            times.pending, times.ack_pending = pending, ack_pending
        except Exception as exc:  # disconnected: the next round tries again
            _log.debug("stage.lag_unreadable", stream=stream, consumer=durable, error=repr(exc))
        await asyncio.sleep(LAG_INTERVAL_S)


def exposition() -> bytes:
    return generate_latest(REGISTRY)


# --- HTTP: /metrics, /healthz, /readyz -------------------------------------------------------

# What is not ready (e.g. ["redis"]); empty when ready.
Readiness = Callable[[], Awaitable[list[str]]]


async def metrics_response(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz_response(request: web.Request) -> web.Response:
    """Liveness: the event loop answers."""
    return web.json_response({"status": "alive"})


def readyz_handler(readiness: Readiness) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def readyz(request: web.Request) -> web.Response:
        failing = await readiness()
        if failing:
            return web.json_response({"status": "not_ready", "failing": failing}, status=503)
        return web.json_response({"status": "ready"})

    return readyz


def routes(readiness: Readiness, *, healthz: bool = True) -> list[web.RouteDef]:
    """``/metrics`` and ``/readyz`` (and ``/healthz`` unless the app has its own)."""
    table = [web.get("/metrics", metrics_response), web.get("/readyz", readyz_handler(readiness))]
    if healthz:
        table.append(web.get("/healthz", healthz_response))
    return table


class MetricsServer:
    """A tiny aiohttp server for a worker's metrics and probes (no extra threads)."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        app = web.Application()
        app.add_routes(routes(self._readiness))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def answers_within(call: Callable[[], Awaitable[object]], timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(call(), timeout_s)
    except Exception:
        return False
    return True
