"""Audit consumer: its own durable consumer on the decision stream; one JSON line per decision."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import IO

import msgspec
import nats
from nats.js import JetStreamContext
from nats.js import api as js_api

from shared import schemas
from shared.telemetry import get_logger

log = get_logger("remits.audit")
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


async def run_audit(js: JetStreamContext, log_path: Path, stop: asyncio.Event) -> None:
    sub = await js.pull_subscribe_bind(durable="audit", stream=schemas.DECISION_STREAM)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # One append-only file for the worker's lifetime; each batch is a single small write.
    with open(log_path, "ab") as out:  # noqa: ASYNC230
        while not stop.is_set():
            try:
                msgs = await sub.fetch(256, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:
                if stop.is_set():
                    break
                log.warning("audit.fetch_failed", error=repr(exc))
                await asyncio.sleep(0.2)
                continue
            for msg in msgs:
                try:
                    decision = schemas.decode_decision(msg.data)
                except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                    log.error("audit.undecodable", error=str(exc))
                    await msg.term()
                    continue
                out.write(_json.encode(audit_record(decision, msg.metadata.sequence.stream)) + b"\n")
            out.flush()
            # Ack after the lines are on disk: a crash replays, never loses, a decision.
            for msg in msgs:
                await msg.ack()


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
