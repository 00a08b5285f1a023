"""JetStream helpers: topology setup, publishing with de-duplication ids and trace context,
and the stage runner every worker uses (pull, decode, call the core, publish, then ack).

Two pieces replace nats-py's convenience calls on the hot path, because the bench showed their
per-message cost dominating a stage:
- ``PullConsumer`` keeps a window of pull requests open on the stage's durable consumer and is
  handed messages as they arrive (nats-py's ``fetch`` probes with a no-wait request, then a
  waiting one, and arms a timer per message: several protocol round trips per batch).
- ``JetStreamPublisher`` publishes with a reply token and matches the PubAck to it, so many
  publishes are in flight at once without a timer each; a watchdog fails the ones that never get
  an answer.
The guarantees stay those of the pipeline: a message is acked only after the PubAck of what it
produced, every produced message carries ``Nats-Msg-Id = <request>:<stage>``, and a failed
handler naks for redelivery until ``max_deliver`` turns it into a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared import credentials, observability, schemas
from shared.busauth import MAC_HEADER, BusAuth, Unauthenticated
from shared.config import Settings, nats_urls
from shared.stats import STATS
from shared.telemetry import extract_context, get_logger, inject_headers, is_sampled, tracer

log = get_logger("remits.bus")

# Copies of a message's routing facts (request id, TEE, the gateway subject waiting for the
# outcome), so that a dead-letter handler can answer even for a message it cannot decode. One
# header, "<request id> <tee> <reply subject>": nats-py checks and parses every header name
# character by character, on every publish and every delivery.
ROUTE_HEADER = "Remits-Route"


def route_header(request_id: str, tee: str = "", reply_to: str = "") -> str:
    return f"{request_id} {tee} {reply_to}"


def parse_route(headers: Mapping[str, str] | None) -> tuple[str, str, str]:
    """(request id, tee, reply subject) from a message's route header; empty strings if absent."""
    value = (headers or {}).get(ROUTE_HEADER, "")
    request_id, _, rest = value.partition(" ")
    tee, _, reply_to = rest.partition(" ")
    return request_id, tee, reply_to


_TRACE_HEADERS = ("traceparent", "tracestate")

# Called after the client reconnects: open pull requests may have died with the old connection.
_RECONNECT_HOOKS: weakref.WeakKeyDictionary[NATS, list[Callable[[], None]]] = weakref.WeakKeyDictionary()


def _credential_kwargs(creds: Path | None) -> dict[str, Any]:
    """nats-py's keyword for a credentials file: a NATS .creds file (user JWT and seed) or a bare
    nkey seed, told apart by content."""
    if creds is None:
        return {}
    text = creds.read_text()
    if "BEGIN NATS USER JWT" in text:
        return {"user_credentials": str(creds)}
    return {"nkeys_seed": str(creds)}


async def connect(
    url: str,
    name: str,
    *,
    creds: Path | None = None,
    inbox_prefix: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[NATS, JetStreamContext]:
    nc = NATS()
    refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()

    async def reconnected() -> None:
        for hook in _RECONNECT_HOOKS.get(nc, []):
            hook()

    async def disconnected() -> None:
        if not nc.is_closed:  # our own close() calls this too: not an error
            observability.dependency_error("nats")

    async def on_error(error: Exception) -> None:
        text = str(error)
        certificate = isinstance(error, ssl.SSLError) or "certificate" in text.lower()
        if "Authorization Violation" in text or "authentication" in text.lower() or certificate:
            if not refused.done():
                refused.set_result(error)
        elif "permissions violation" in text.lower():
            # The server refused something outside this component's rights (the permission
            # tables in shared.credentials): a bug or an attack, never routine.
            log.error("bus.permission_denied", component=name, detail=text)
        else:
            log.warning("bus.error", component=name, error=text)

    options: dict[str, Any] = dict(_credential_kwargs(creds))
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    if tls is not None:
        options["tls"] = tls
    servers = nats_urls(url)  # a cluster's seed servers: the client reconnects to any of them
    connecting = asyncio.ensure_future(
        nc.connect(
            servers if len(servers) > 1 else url,
            name=name,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            reconnected_cb=reconnected,
            disconnected_cb=disconnected,
            error_cb=on_error,
            **options,
        )
    )
    # nats-py retries a refused login or an untrusted server certificate forever, as if the
    # connection were lost: wrong credentials or TLS settings must stop a component at start,
    # with the reason, instead.
    await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        with contextlib.suppress(Exception):
            await nc.close()
        raise PermissionError(
            f"NATS at {url} refused the credentials or certificate of {name}: {refused.result()}"
        )
    connecting.result()
    return nc, nc.jetstream(timeout=10)


def on_reconnect(nc: NATS, hook: Callable[[], None]) -> None:
    _RECONNECT_HOOKS.setdefault(nc, []).append(hook)


def _consumer_config(settings: Settings, durable: str, subject: str) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        durable_name=durable,
        filter_subject=subject or None,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        max_deliver=settings.max_deliver,
        ack_wait=settings.ack_wait_s,
        max_ack_pending=settings.max_ack_pending,
    )


# The release stage reads decisions straight from the decision stream (the same record auditors
# read), so the decide stage publishes each decision once.
RELEASE_DECISIONS_DURABLE = "release"


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and durable consumer. Run once by `remits up`/`remits setup`;
    workers only bind, because pull_subscribe would silently ignore a changed config.

    Every stream keeps ``settings.replicas`` copies; an existing stream with another count is
    updated to it (JetStream adds or removes peers and catches new ones up). Durable consumers
    leave their replica count unset, so they follow their stream's, also when it changes."""
    streams = [
        js_api.StreamConfig(
            name=schemas.PIPELINE_STREAM,
            subjects=["remits.stage.>"],
            retention=js_api.RetentionPolicy.WORK_QUEUE,
            storage=js_api.StorageType.FILE,
            duplicate_window=300.0,
            max_age=3600.0,
        ),
        js_api.StreamConfig(
            name=schemas.DECISION_STREAM,
            # Decisions and the admin changes to the trust configuration: one stream, so that
            # the audit consumer chains both in one order.
            subjects=["remits.decision.>", "remits.admin.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            duplicate_window=300.0,
            max_age=30 * 86400.0,
        ),
        js_api.StreamConfig(
            name=schemas.DLQ_STREAM,
            subjects=["remits.dlq.>"],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            max_age=30 * 86400.0,
        ),
        js_api.StreamConfig(
            name=schemas.EVIDENCE_STREAM,
            subjects=[schemas.evidence_subject("*")],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            duplicate_window=300.0,
            max_age=settings.evidence_retention_s,
            max_bytes=settings.evidence_max_bytes,
            max_msgs_per_subject=1,
        ),
        js_api.StreamConfig(
            # The chained, signed audit trail as the audit consumer wrote it (`audit verify --stream`).
            name=schemas.AUDIT_STREAM,
            subjects=[schemas.AUDIT_SUBJECT],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            duplicate_window=300.0,
        ),
    ]
    for config in streams:
        config.num_replicas = settings.replicas
        await patiently(lambda c=config: _ensure_stream(js, c))
    for stage in schemas.STAGES:
        if stage == "release":
            continue  # reads the decision stream (below) and answers resource requests directly
        await _ensure_consumer(
            js, schemas.PIPELINE_STREAM, _consumer_config(settings, stage, schemas.consumer_subject(stage))
        )
    decisions = "remits.decision.>"
    await _ensure_consumer(
        js, schemas.DECISION_STREAM, _consumer_config(settings, RELEASE_DECISIONS_DURABLE, decisions)
    )
    # The audit consumer reads the whole stream: decisions and admin changes.
    await _ensure_consumer(js, schemas.DECISION_STREAM, _consumer_config(settings, "audit", ""))
    # Each tenant audit reader the operator's credentials hold gets its feed (its history).
    if settings.credentials_dir is not None and settings.credentials_dir.is_dir():
        from shared import credentials, tenant_feeds

        await tenant_feeds.ensure(js, credentials.tenant_audit_readers(settings.credentials_dir))


async def _ensure_stream(js: JetStreamContext, config: js_api.StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
        await js.update_stream(config)
    except NotFoundError:
        await js.add_stream(config)


# A JetStream API request to a cluster whose meta layer is still busy (just formed, or a loaded
# machine) can time out although the server will act on it; creating or updating the same stream
# or consumer again is harmless, so the topology is retried for a while before it fails.
_TOPOLOGY_PATIENCE_S = 60.0


# JetStream's own "try again" answers while a cluster settles: the system is temporarily
# unavailable (503, 10008), or a peer is not yet current so a replicated stream finds no
# placement (10005, "no suitable peers").
_TRANSIENT_ERR_CODES = frozenset({10005, 10008})


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, nats.errors.TimeoutError | nats.errors.NoRespondersError):
        return True
    if isinstance(exc, nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        text = (exc.description or "").lower()
        return exc.err_code in _TRANSIENT_ERR_CODES or "no suitable peers" in text or "temporarily" in text
    return False


async def patiently(call: Callable[[], Awaitable[None]]) -> None:
    deadline = time.monotonic() + _TOPOLOGY_PATIENCE_S
    while True:
        try:
            await call()
            return
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.APIError) as exc:
            if not _transient(exc) or time.monotonic() > deadline:
                raise
            log.warning("topology.request_retrying", error=repr(exc))
            await asyncio.sleep(0.5)


async def _ensure_consumer(js: JetStreamContext, stream: str, config: js_api.ConsumerConfig) -> None:
    # add_consumer on an existing durable updates its mutable fields.
    await patiently(lambda: js.add_consumer(stream, config=config))


class QueueResponder:
    """Answers requests on one subject in a queue group (shared by a component's replicas),
    each in a task of its own; ``stop`` lets those in flight finish. Subclasses write ``_answer``."""

    def __init__(self, nc: NATS, subject: str, queue: str) -> None:
        self._nc, self._subject, self._queue = nc, subject, queue
        self._sub: Any = None
        self._in_progress: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._subject, queue=self._queue, cb=self._on_request)
        # Ready means the server has the subscription: a request sent right after must find it.
        await self._nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):  # the connection may be closed already
                await self._sub.unsubscribe()
        if self._in_progress:
            await asyncio.wait(self._in_progress, timeout=5)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._in_progress.add(task)
        task.add_done_callback(self._in_progress.discard)

    async def _answer(self, msg: Msg) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Publish:
    subject: str
    message: msgspec.Struct
    msg_id: str


def publish_headers(item: Publish, request_id: str) -> dict[str, str]:
    meta = getattr(item.message, "meta", None)
    tee, reply_to = (meta.tee, meta.reply_to) if isinstance(meta, schemas.RequestMeta) else ("", "")
    return {"Nats-Msg-Id": item.msg_id, ROUTE_HEADER: route_header(request_id, tee, reply_to)}


class PublishError(Exception):
    """JetStream did not store a message (no stream, an API error, or no answer in time)."""


class StreamUnavailable(PublishError):
    """Nothing stored the message, for now: no server had interest in the subject ("no
    responders": e.g. the stream's leader is lost and no other replica is elected yet), or
    JetStream answered 503. Publishing it again, with its de-duplication id, is safe."""


# A publish that meets a stream without a leader tries again until this long after its first
# attempt (and at least until the publisher's timeout): a JetStream leader election after the loss
# of a node takes several seconds (the Raft election timeout is 4-9 s).
RETRY_UNAVAILABLE_S = 15.0
# How long a message out of deliveries is retried for its dead letter and rejection.
DEAD_LETTER_RETRY_S = 60.0


class JetStreamPublisher:
    """Publishes to JetStream and awaits each PubAck without a timer per message."""

    def __init__(self, nc: NATS, timeout_s: float = 10.0, auth: BusAuth | None = None) -> None:
        self._nc = nc
        self._timeout_s = timeout_s
        self._auth = auth  # signs every message with this component's key
        self._pending: dict[str, tuple[asyncio.Future[None], float]] = {}
        self._tokens = itertools.count()
        self._prefix = ""
        self._sub: Any = None
        self._watchdog: asyncio.Task[None] | None = None
        self.published = 0

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_ack)
        self._watchdog = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection may be closed already
                pass
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(PublishError("publisher stopped"))
        self._pending.clear()

    async def _on_ack(self, msg: Msg) -> None:
        entry = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if entry is None or entry[0].done():
            return
        future = entry[0]
        data = msg.data
        if data.startswith(b'{"stream"'):
            future.set_result(None)
        elif msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(StreamUnavailable(f"no stream stores {msg.subject!r} (no responders)"))
        else:
            try:
                error = json.loads(data).get("error")
            except ValueError:
                error = data[:200]
            if isinstance(error, dict) and error.get("code") == 503:
                future.set_exception(StreamUnavailable(f"JetStream unavailable: {error}"))
            elif error:
                future.set_exception(PublishError(f"JetStream refused the message: {error}"))
            else:
                future.set_result(None)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(max(0.1, self._timeout_s / 4))
            deadline = time.monotonic() - self._timeout_s
            late = [token for token, (_, sent) in self._pending.items() if sent < deadline]
            for token in late:
                future, _ = self._pending.pop(token)
                if not future.done():
                    future.set_exception(PublishError(f"no PubAck within {self._timeout_s}s"))

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> None:
        """Store one message; with a key, tagged as this component's (over its subject, its
        de-duplication id and its payload). While nothing stores it for now (StreamUnavailable:
        the stream has no leader), the same message (same de-duplication id) is sent again, for
        up to ``RETRY_UNAVAILABLE_S``; any other failure is raised at once."""
        if self._auth is not None:
            headers = dict(headers or {})
            headers[MAC_HEADER] = self._auth.sign(subject, payload, headers.get("Nats-Msg-Id", ""))
        deadline = time.monotonic() + max(RETRY_UNAVAILABLE_S, self._timeout_s)
        delay = 0.05
        while True:
            try:
                await self._publish_once(subject, payload, headers)
                return
            except StreamUnavailable:
                if time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _publish_once(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        token = str(next(self._tokens))
        future = asyncio.get_running_loop().create_future()
        self._pending[token] = (future, time.monotonic())
        try:
            await self._nc.publish(subject, payload, reply=self._prefix + token, headers=headers)
        except BaseException:
            self._pending.pop(token, None)
            raise
        self.published += 1
        await future

    async def send(self, item: Publish, request_id: str, extra_headers: dict[str, str] | None = None) -> None:
        """A stage message with its de-duplication id, request id, routing copies and tag."""
        headers = publish_headers(item, request_id)
        if extra_headers:
            headers.update(extra_headers)
        else:
            inject_headers(headers)
        await self.publish(item.subject, schemas.encode(item.message), headers)


def ack_fields(reply: str) -> tuple[int, int, int]:
    """(deliveries, stream sequence, store time in ns) from a JetStream ACK subject, which is
    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>`` or, with a domain and
    account hash, the same after two more tokens (plus a trailing token)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[4]), int(tokens[5]), int(tokens[7])
    if len(tokens) >= 11:
        return int(tokens[6]), int(tokens[7]), int(tokens[9])
    raise ValueError(f"not a JetStream ACK subject: {reply!r}")


class PullConsumer:
    """Keeps up to ``window`` messages requested from one durable consumer, and hands each message
    to ``deliver`` as it arrives. The owner calls ``done()`` when a message is finished (acked,
    naked or termed), which opens room for the next pull request."""

    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        deliver: Callable[[Msg], None],
        *,
        window: int = 128,
        expires_s: float = 5.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._deliver = deliver
        self._window = max(1, window)
        self._expires_s = max(0.2, expires_s)
        self._inbox = ""
        self._sub: Any = None
        # Open pull requests, oldest first: [deadline, messages still owed]. The server serves
        # them in order, so a delivered message is owed by the oldest one.
        self._requests: deque[list[float]] = deque()
        self._owed = 0
        self._in_hand = 0
        self._wake = asyncio.Event()
        self._stopped = False
        self._backoff_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox, cb=self._on_msg, pending_msgs_limit=-1, pending_bytes_limit=-1
        )
        on_reconnect(self._nc, self.reset)
        self._tasks = [asyncio.create_task(self._pull_loop()), asyncio.create_task(self._watch())]
        self._wake.set()

    def reset(self) -> None:
        """Forget every open request (after a reconnect they may be gone) and ask again."""
        self._requests.clear()
        self._owed = 0
        self._wake.set()

    def done(self) -> None:
        self._in_hand -= 1
        if self._free() * 2 >= self._window:
            self._wake.set()

    def _free(self) -> int:
        return self._window - self._owed - self._in_hand

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:
            self._on_status(msg)
            return
        if self._requests:
            oldest = self._requests[0]
            oldest[1] -= 1
            if oldest[1] <= 0:
                self._requests.popleft()
        # Never below zero: a delivery no open request accounts for (one dropped by the watchdog
        # that was served after all) must not let the window grow past its size.
        self._owed = max(0, self._owed - 1)
        self._in_hand += 1
        if self._stopped:
            await msg.nak()  # let another replica have it now rather than after ack_wait
            self._in_hand -= 1
            return
        self._deliver(msg)

    def _on_status(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status", "")
        if status == "100":
            return  # idle heartbeat
        # 408 (request expired) or 409 (refused: consumer deleted, too many waiting...): the
        # oldest request is over; what it still owed will not come.
        if self._requests:
            _, owed = self._requests.popleft()
            self._owed = max(0, self._owed - int(owed))
        if status == "409":
            log.warning(
                "bus.pull_refused",
                subject=self._next_subject,
                detail=(msg.headers or {}).get("Description", ""),
            )
            self._backoff_until = time.monotonic() + 0.5
        self._wake.set()

    async def _pull_loop(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            delay = self._backoff_until - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            free = self._free()
            # Ask in large batches (half the window or more), and always when nothing is open.
            if free <= 0 or (free * 2 < self._window and self._requests):
                continue
            request = json.dumps({"batch": free, "expires": int(self._expires_s * 1e9)}).encode()
            try:
                await self._nc.publish(self._next_subject, request, reply=self._inbox)
            except Exception as exc:  # disconnected: the reconnect hook or the watchdog asks again
                log.warning("bus.pull_failed", error=repr(exc))
                await asyncio.sleep(0.2)
                self._wake.set()
                continue
            self._requests.append([time.monotonic() + self._expires_s, float(free)])
            self._owed += free

    async def _watch(self) -> None:
        """A request whose expiry notice never came (connection lost, server restarted) is dropped."""
        while not self._stopped:
            await asyncio.sleep(min(1.0, self._expires_s / 2))
            late = time.monotonic() - 1.0
            while self._requests and self._requests[0][0] < late:
                _, owed = self._requests.popleft()
                self._owed = max(0, self._owed - int(owed))
                self._wake.set()
            if not self._requests:
                self._wake.set()

    async def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection may be closed already
                pass


Handler = Callable[[schemas.StageUnion], Awaitable[Sequence[Publish]]]
DeadLetterHandler = Callable[[str, bytes, dict[str, str], str, int], Awaitable[None]]


def _is_rejection(message: msgspec.Struct) -> bool:
    """A stage's output that rejects the request (a Rejection, or a rejected Decision)."""
    return isinstance(message, schemas.Rejection) or getattr(message, "status", None) == "rejected"


class StageRunner:
    """Runs one stage: binds to the stage's durable consumer (shared by all replicas) and handles
    up to ``stage_concurrency`` messages at once."""

    def __init__(
        self,
        stage: str,
        nc: NATS,
        js: JetStreamContext,
        handler: Handler,
        dead_letter: DeadLetterHandler,
        settings: Settings,
        *,
        slow: bool = False,
        publisher: JetStreamPublisher | None = None,
        stream: str = schemas.PIPELINE_STREAM,
        durable: str | None = None,
        auth: BusAuth | None = None,
    ) -> None:
        self.stage = stage
        # With a key, only messages of the kinds this stage takes, tagged by the senders allowed
        # to send them (shared.credentials.EXPECTS), are handled; anything else is dead-lettered.
        self.auth = auth
        self._expects = credentials.EXPECTS.get(stage, {})
        self.nc = nc
        self.js = js
        self.handler = handler
        self.dead_letter = dead_letter
        self.settings = settings
        self.slow = slow
        self.stream = stream
        self.durable = durable or stage
        self._publisher = publisher
        self._owns_publisher = publisher is None
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog: deque[Msg] = deque()
        self._consumer: PullConsumer | None = None
        self._times = STATS.stage(stage)
        self._meter = observability.StageMeter(stage)
        self.processed = 0
        self._running = False
        self._letters: set[asyncio.Task[None]] = set()  # exhausted messages being dead-lettered

    @property
    def bound(self) -> bool:
        """Pulling from its durable consumer (for readiness probes)."""
        return self._running and self._consumer is not None

    async def _watch_lag(self) -> None:
        """Every few seconds, the durable consumer's backlog into the lag gauges and stats."""
        await observability.watch_lag(self.js, self.stream, self.durable, self._times)

    async def run(self, stop: asyncio.Event) -> None:
        if self._publisher is None:
            self._publisher = JetStreamPublisher(self.nc, auth=self.auth)
            await self._publisher.start()
        # Fails at once if the durable does not exist (topology not set up), as binding did.
        await self.js.consumer_info(self.stream, self.durable)
        self._consumer = PullConsumer(
            self.nc,
            self.stream,
            self.durable,
            self._accept,
            window=self.settings.stage_concurrency,
            expires_s=self.settings.fetch_timeout_s,
        )
        await self._consumer.start()
        advisory = await self.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.durable}",
            queue=f"remits-dlq-{self.stream}-{self.durable}",
            cb=self._on_max_deliveries,
        )
        log.info("stage.started", stage=self.stage)
        observability.lag_series(self.stream, self.durable)
        self._running = True
        lag = asyncio.create_task(self._watch_lag())
        try:
            await stop.wait()
        finally:
            self._running = False
            lag.cancel()
            await self._consumer.stop()
            for msg in self._backlog:  # never started: another replica may take them now
                try:
                    await msg.nak()
                except Exception:
                    pass
            self._backlog.clear()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)
            await advisory.unsubscribe()
            if self._letters:
                await asyncio.wait(self._letters, timeout=5)
            if self._owns_publisher and self._publisher is not None:
                await self._publisher.stop()
            log.info("stage.stopped", stage=self.stage, processed=self.processed)

    def _accept(self, msg: Msg) -> None:
        if len(self._tasks) < self.settings.stage_concurrency:
            self._spawn(msg)
        else:
            self._backlog.append(msg)

    def _spawn(self, msg: Msg) -> None:
        task = asyncio.create_task(self._process(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        assert self._consumer is not None
        self._consumer.done()
        if self._backlog:
            self._spawn(self._backlog.popleft())

    async def _process(self, msg: Msg) -> None:
        started = time.monotonic()
        headers = msg.headers or {}
        request_id = parse_route(headers)[0]
        try:
            deliveries, _, stored_ns = ack_fields(msg.reply)
        except ValueError:
            deliveries, stored_ns = 1, 0
        if stored_ns:
            self._times.wait.record(max(0.0, time.time() * 1000.0 - stored_ns / 1e6))
        # Each message runs in its own task, so these bindings end with it.
        structlog.contextvars.bind_contextvars(request_id=request_id, stage=self.stage, delivery=deliveries)
        try:
            sender = self.auth.verify(msg.subject, msg.data, headers) if self.auth is not None else ""
            message = schemas.decode_stage(msg.data)
            if self.auth is not None and sender not in self._expects.get(schemas.kind_of(message), ()):
                raise Unauthenticated(f"{self.stage} does not take {schemas.kind_of(message)} from {sender}")
        except Unauthenticated as exc:
            log.warning("stage.unauthenticated", detail=exc.detail)
            await self.dead_letter(self.stage, msg.data, dict(headers), exc.reason, deliveries)
            await msg.term()
            self._meter.failed()
            return
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("stage.undecodable", error=str(exc))
            await self.dead_letter(self.stage, msg.data, dict(headers), f"bus.undecodable: {exc}", deliveries)
            await msg.term()
            self._meter.failed()
            return
        if is_sampled(headers):
            with tracer().start_as_current_span(
                f"remits.{self.stage}",
                context=extract_context(headers),
                kind=SpanKind.CONSUMER,
                attributes={"remits.request_id": message.meta.request_id, "remits.stage": self.stage},
            ) as span:
                outcome = await self._handle(msg, message, deliveries, None, span)
        else:
            # Not traced: pass the caller's trace headers on untouched (if any).
            forward = {name: headers[name] for name in _TRACE_HEADERS if name in headers}
            outcome = await self._handle(msg, message, deliveries, forward, None)
        elapsed_s = time.monotonic() - started
        if outcome != "error":
            self.processed += 1
            self._times.processed += 1
            self._times.service.record(elapsed_s * 1000.0)
        self._meter.done(outcome, elapsed_s)

    async def _handle(
        self,
        msg: Msg,
        message: schemas.StageUnion,
        deliveries: int,
        forward: dict[str, str] | None,
        span: Any,
    ) -> str:
        """Handle, publish what came out, ack: "ok", "rejected" (a rejection came out) or "error"."""
        assert self._publisher is not None
        heartbeat = asyncio.create_task(self._heartbeat(msg)) if self.slow else None
        try:
            outputs = await self.handler(message)
            request_id = message.meta.request_id
            if len(outputs) == 1:
                await self._publisher.send(outputs[0], request_id, forward)
            elif outputs:
                await asyncio.gather(*(self._publisher.send(item, request_id, forward) for item in outputs))
        except Exception as exc:
            if span is not None:
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            log.error("stage.handler_failed", error=repr(exc), exc_info=True)
            # Redeliver later; after max_deliver the advisory turns it into a rejection.
            await msg.nak(delay=min(0.2 * 2 ** (deliveries - 1), 5.0))
            return "error"
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
        await self._ack(msg)
        return "rejected" if any(_is_rejection(item.message) for item in outputs) else "ok"

    async def _ack(self, msg: Msg) -> None:
        """Only after every PubAck of what the message produced (tests override it to crash here)."""
        await msg.ack()

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.settings.ack_wait_s / 3))
            await msg.in_progress()

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        # Each in a task of its own: one that waits (a stream without a leader, a slow answer)
        # must not hold up the next advisory.
        task = asyncio.create_task(self._dead_letter_exhausted(advisory.data))
        self._letters.add(task)
        task.add_done_callback(self._letters.discard)

    async def _dead_letter_exhausted(self, data: bytes) -> None:
        """A message out of deliveries: its dead letter, and the caller's one (rejected)
        decision. The consumer will not deliver it again, so this is its last chance to be
        answered: tried again while the bus cannot take it (e.g. during a leader election)."""
        try:
            event: dict[str, Any] = json.loads(data)
            seq = int(event["stream_seq"])
            deliveries = int(event.get("deliveries", 0))
        except Exception as exc:
            log.error("stage.advisory_unreadable", stage=self.stage, error=repr(exc))
            return
        deadline = time.monotonic() + DEAD_LETTER_RETRY_S
        delay = 0.2
        while True:
            try:
                raw = await self.js.get_msg(self.stream, seq)
                headers = {k: str(v) for k, v in (raw.headers or {}).items()}
                await self.dead_letter(
                    self.stage, raw.data or b"", headers, "pipeline.max_deliveries_exceeded", deliveries
                )
                break
            except NotFoundError:  # acknowledged after all, or removed: nothing to answer
                log.info("stage.dead_letter_gone", stage=self.stage, seq=seq)
                return
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.error("stage.dead_letter_failed", stage=self.stage, seq=seq, error=repr(exc))
                    return
                log.warning("stage.dead_letter_retry", stage=self.stage, seq=seq, error=repr(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        # The exhausted message itself stays where it is (the consumer will not deliver it again)
        # until the stream's max_age: deleting it would take a right over every stage's
        # messages, which no stage holds.


async def publish(js: JetStreamContext, item: Publish, request_id: str) -> None:
    """One stage message through nats-py's own request/reply publish (tools and tests; the
    stages and the gateway use ``JetStreamPublisher``)."""
    headers = inject_headers(publish_headers(item, request_id))
    await js.publish(item.subject, schemas.encode(item.message), headers=headers)
