"""Audit consumer: its own durable consumer on the decision stream; one JSON line per decision."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import IO

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from shared import schemas
from shared.bus import PullConsumer, ack_fields
from shared.busauth import BusAuth, Unauthenticated
from shared.telemetry import get_logger

log = get_logger("remits.audit")
_FROM_DECIDE = frozenset({"decide"})
_json = msgspec.json.Encoder()


def audit_record(decision: schemas.Decision, stream_seq: int) -> schemas.AuditRecord:
    return schemas.AuditRecord(
        request_id=decision.meta.request_id,
        tee=decision.meta.tee,
        status=decision.status,
        reason=decision.reason,
        decided_at=decision.decided_at,
        session_id=decision.meta.session_id,
        token=decision.token,
        vector=decision.vector,
        stream_seq=stream_seq,
    )


async def run_audit(
    nc: NATS, log_path: Path, stop: asyncio.Event, window: int = 512, auth: BusAuth | None = None
) -> None:
    """Append every decision to ``log_path``; ack only once its line is on disk, so a crash
    replays decisions and never loses one. With ``auth``, only decisions the decide stage tagged
    are recorded; anything else on the decision stream is a forgery, logged and dropped."""
    arrived: list[Msg] = []
    wake = asyncio.Event()

    def deliver(msg: Msg) -> None:
        arrived.append(msg)
        wake.set()

    consumer = PullConsumer(nc, schemas.DECISION_STREAM, "audit", deliver, window=window, expires_s=5.0)
    await consumer.start()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stopping = asyncio.ensure_future(stop.wait())
    # One append-only file for the worker's lifetime; each batch is a single small write.
    with open(log_path, "ab") as out:  # noqa: ASYNC230
        try:
            while not stop.is_set():
                waking = asyncio.ensure_future(wake.wait())
                await asyncio.wait({waking, stopping}, return_when=asyncio.FIRST_COMPLETED)
                waking.cancel()
                wake.clear()
                batch, arrived[:] = list(arrived), []
                if not batch:
                    continue
                lines = []
                for msg in batch:
                    try:
                        if auth is not None:
                            auth.verify(msg.subject, msg.data, msg.headers, accept=_FROM_DECIDE)
                        decision = schemas.decode_decision(msg.data)
                        stream_seq = ack_fields(msg.reply)[1]
                    except (Unauthenticated, msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
                        log.error("audit.refused", error=repr(exc))
                        await msg.term()
                        consumer.done()
                        continue
                    lines.append(_json.encode(audit_record(decision, stream_seq)) + b"\n")
                out.write(b"".join(lines))
                out.flush()
                for msg in batch:
                    if not msg.is_acked:
                        await msg.ack()
                        consumer.done()
        finally:
            stopping.cancel()
            await consumer.stop()


async def tail(js: JetStreamContext, stop: asyncio.Event, out: IO[str] = sys.stdout, history: bool = False) -> None:
    """`remits audit tail`: follow decisions live with an ephemeral ordered consumer."""
    policy = js_api.DeliverPolicy.ALL if history else js_api.DeliverPolicy.NEW
    sub = await js.subscribe("remits.decision.>", ordered_consumer=True, deliver_policy=policy)
    try:
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            decision = schemas.decode_decision(msg.data)
            record = audit_record(decision, msg.metadata.sequence.stream)
            out.write(_json.encode(record).decode() + "\n")
            out.flush()
    finally:
        await sub.unsubscribe()
