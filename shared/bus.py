"""JetStream helpers: topology setup, publishing with de-duplication ids and trace context,
and the stage runner every worker uses (fetch, decode, call the core, publish, then ack)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared import schemas
from shared.config import Settings
from shared.telemetry import extract_context, get_logger, inject_headers, tracer

log = get_logger("remits.bus")

REQUEST_ID_HEADER = "Remits-Request-Id"
TEE_HEADER = "Remits-Tee"
REPLY_HEADER = "Remits-Reply-To"


async def connect(url: str, name: str) -> tuple[NATS, JetStreamContext]:
    nc = await nats.connect(
        url,
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
    )
    return nc, nc.jetstream(timeout=10)


def _consumer_config(settings: Settings, durable: str, subject: str) -> js_api.ConsumerConfig:
    return js_api.ConsumerConfig(
        durable_name=durable,
        filter_subject=subject,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        deliver_policy=js_api.DeliverPolicy.ALL,
        max_deliver=settings.max_deliver,
        ack_wait=settings.ack_wait_s,
        max_ack_pending=settings.max_ack_pending,
    )


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and durable consumer. Run once by `remits up`/`remits setup`;
    workers only bind, because pull_subscribe would silently ignore a changed config."""
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
            subjects=["remits.decision.>"],
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
    ]
    for config in streams:
        try:
            await js.stream_info(config.name)
            await js.update_stream(config)
        except NotFoundError:
            await js.add_stream(config)
    for stage in schemas.STAGES:
        await _ensure_consumer(
            js, schemas.PIPELINE_STREAM, _consumer_config(settings, stage, schemas.stage_subject(stage))
        )
    audit = _consumer_config(settings, "audit", "remits.decision.>")
    await _ensure_consumer(js, schemas.DECISION_STREAM, audit)


async def _ensure_consumer(js: JetStreamContext, stream: str, config: js_api.ConsumerConfig) -> None:
    # add_consumer on an existing durable updates its mutable fields.
    await js.add_consumer(stream, config=config)


@dataclass(frozen=True)
class Publish:
    subject: str
    message: msgspec.Struct
    msg_id: str


def publish_headers(request_id: str, msg_id: str) -> dict[str, str]:
    headers = {"Nats-Msg-Id": msg_id, REQUEST_ID_HEADER: request_id}
    return inject_headers(headers)


async def publish(js: JetStreamContext, item: Publish, request_id: str) -> None:
    headers = publish_headers(request_id, item.msg_id)
    meta = getattr(item.message, "meta", None)
    if isinstance(meta, schemas.RequestMeta):
        # Copies of routing facts, so a dead-letter handler can answer even an undecodable message.
        headers[TEE_HEADER] = meta.tee
        headers[REPLY_HEADER] = meta.reply_to
    await js.publish(item.subject, schemas.encode(item.message), headers=headers)


Handler = Callable[[schemas.StageUnion], Awaitable[Sequence[Publish]]]
DeadLetterHandler = Callable[[str, bytes, dict[str, str], str, int], Awaitable[None]]


class StageRunner:
    """Runs one stage: binds to the stage's durable pull consumer (shared by all replicas)."""

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
    ) -> None:
        self.stage = stage
        self.nc = nc
        self.js = js
        self.handler = handler
        self.dead_letter = dead_letter
        self.settings = settings
        self.slow = slow
        self._slots = asyncio.Semaphore(settings.stage_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.js.pull_subscribe_bind(durable=self.stage, stream=schemas.PIPELINE_STREAM)
        advisory = await self.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{schemas.PIPELINE_STREAM}.{self.stage}",
            queue=f"remits-dlq-{self.stage}",
            cb=self._on_max_deliveries,
        )
        log.info("stage.started", stage=self.stage)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                free = max(1, min(self.settings.fetch_batch, self._free_slots()))
                fetching = asyncio.ensure_future(sub.fetch(free, timeout=self.settings.fetch_timeout_s))
                # A stop must not wait for a long pull request to expire.
                await asyncio.wait({fetching, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not fetching.done():
                    fetching.cancel()  # anything it was handed is redelivered after ack_wait
                    break
                try:
                    msgs = fetching.result()
                except (TimeoutError, nats.errors.TimeoutError):
                    continue  # idle, not an error
                except (nats.errors.ConnectionClosedError, nats.errors.DrainTimeoutError):
                    break
                except Exception as exc:  # reconnecting server: back off and retry
                    log.warning("stage.fetch_failed", stage=self.stage, error=repr(exc))
                    await asyncio.sleep(0.2)
                    continue
                for msg in msgs:
                    await self._slots.acquire()
                    task = asyncio.create_task(self._process(msg))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
        finally:
            stopping.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)
            await advisory.unsubscribe()
            try:
                await sub.unsubscribe()
            except Exception:  # connection may already be closed
                pass
            log.info("stage.stopped", stage=self.stage, processed=self.processed)

    def _free_slots(self) -> int:
        return self.settings.stage_concurrency - len(self._tasks)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _process(self, msg: Msg) -> None:
        headers = dict(msg.headers or {})
        request_id = headers.get(REQUEST_ID_HEADER, "")
        deliveries = msg.metadata.num_delivered or 1
        with structlog.contextvars.bound_contextvars(
            request_id=request_id, stage=self.stage, delivery=deliveries
        ):
            try:
                message = schemas.decode_stage(msg.data)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("stage.undecodable", error=str(exc))
                await self.dead_letter(self.stage, msg.data, headers, f"bus.undecodable: {exc}", deliveries)
                await msg.term()
                return
            ctx = extract_context(headers)
            with tracer().start_as_current_span(
                f"remits.{self.stage}",
                context=ctx,
                kind=SpanKind.CONSUMER,
                attributes={"remits.request_id": message.meta.request_id, "remits.stage": self.stage},
            ) as span:
                heartbeat = asyncio.create_task(self._heartbeat(msg)) if self.slow else None
                try:
                    outputs = await self.handler(message)
                    for item in outputs:
                        await publish(self.js, item, message.meta.request_id)
                except Exception as exc:
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR))
                    log.error("stage.handler_failed", error=repr(exc), exc_info=True)
                    # Redeliver later; after max_deliver the advisory turns it into a rejection.
                    await msg.nak(delay=min(0.2 * 2 ** (deliveries - 1), 5.0))
                    return
                finally:
                    if heartbeat is not None:
                        heartbeat.cancel()
                await msg.ack()
                self.processed += 1

    async def _heartbeat(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(0.5, self.settings.ack_wait_s / 3))
            await msg.in_progress()

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        try:
            event: dict[str, Any] = json.loads(advisory.data)
            seq = int(event["stream_seq"])
            deliveries = int(event.get("deliveries", 0))
            raw = await self.js.get_msg(schemas.PIPELINE_STREAM, seq)
        except Exception as exc:
            log.error("stage.advisory_unreadable", stage=self.stage, error=repr(exc))
            return
        headers = {k: str(v) for k, v in (raw.headers or {}).items()}
        await self.dead_letter(
            self.stage, raw.data or b"", headers, "pipeline.max_deliveries_exceeded", deliveries
        )
        try:
            await self.js.delete_msg(schemas.PIPELINE_STREAM, seq)
        except Exception as exc:  # already removed by another replica
            log.info("stage.dead_letter_delete_skipped", error=repr(exc))
