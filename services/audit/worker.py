"""Audit consumer: its own durable consumer on the decision stream; one JSON line per decision."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from services.audit.chain import AuditChain, AuditChainError, AuditSigner, AuditTailCorrupt, record_line
from shared import observability, schemas
from shared.bus import JetStreamPublisher, PullConsumer, ack_fields
from shared.busauth import BusAuth, Unauthenticated
from shared.stats import STATS
from shared.telemetry import get_logger

log = get_logger("remits.audit")
_SENDERS = {"decision": frozenset({"decide"}), "admin_event": frozenset({"provision", "admin"})}
_ANY_SENDER = frozenset().union(*_SENDERS.values())
_json = msgspec.json.Encoder()
CHECKPOINT_EVERY_S = 60.0  # a signed checkpoint at least this often while events arrive
FINAL_PUBLISH_S = 2.0


def audit_record(decision: schemas.Decision, stream_seq: int) -> schemas.AuditRecord:
    provenance = decision.provenance
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
        detail=decision.detail,
        token_id=decision.token_id,
        evidence_digest=provenance.evidence_digest if provenance else "",
        policy_id=provenance.policy_id if provenance else "",
        policy_digest=provenance.policy_digest if provenance else "",
        policy_revision=provenance.policy_revision if provenance else 0,
        reference_revisions=dict(provenance.reference_revisions) if provenance else {},
        references=dict(provenance.references) if provenance else {},
        bucket_revisions=dict(provenance.bucket_revisions) if provenance else {},
        revocations=list(provenance.revocations) if provenance else [],
        verifier=provenance.verifier if provenance else "",
        tenant=decision.meta.tenant,
    )


def admin_record(event: schemas.AdminEvent) -> dict[str, Any]:
    record = {
        "actor": event.actor,
        "action": event.action,
        "collection": event.bucket,
        "key": event.key,
        "previous_revision": event.previous_revision,
        "revision": event.revision,
        "at": event.at,
        "summary": event.summary,
    }
    if event.meta.tenant != "default":  # as decisions' records: the default tenant's name is implied
        record["tenant"] = event.meta.tenant
    return record


def event_of(msg: Msg, auth: BusAuth | None) -> tuple[str, dict[str, Any]]:
    """(kind, event) of one message of the decision stream, after checking who sent it."""
    sender = auth.verify(msg.subject, msg.data, msg.headers, accept=_ANY_SENDER) if auth is not None else ""
    message = schemas.decode_stage(msg.data)
    kind = schemas.kind_of(message)
    if auth is not None and sender not in _SENDERS.get(kind, frozenset()):
        raise Unauthenticated(f"{sender!r} may not send {kind} on {msg.subject}")
    if isinstance(message, schemas.Decision):
        return "decision", msgspec.to_builtins(audit_record(message, 0))
    if isinstance(message, schemas.AdminEvent):
        return "admin", admin_record(message)
    raise msgspec.ValidationError(f"not an audit event: {kind}")


def open_chain(log_path: Path, signer: AuditSigner) -> AuditChain:
    """The chain continued from the trail on disk. A last line cut short by a crash was never
    acknowledged (its event comes again), so it is dropped; any other damage stops the consumer."""
    try:
        return AuditChain.resume_file(log_path, signer)
    except AuditTailCorrupt:
        data = log_path.read_bytes()
        if data.endswith(b"\n"):
            raise
        cut = data.rfind(b"\n") + 1
        log.warning("audit.partial_line_dropped", bytes=len(data) - cut)
        with open(log_path, "r+b") as out:
            out.truncate(cut)
        return AuditChain.resume_file(log_path, signer)


async def run_audit(
    nc: NATS,
    log_path: Path,
    stop: asyncio.Event,
    window: int = 512,
    auth: BusAuth | None = None,
    signer: AuditSigner | None = None,
    publisher: JetStreamPublisher | None = None,
    bound: asyncio.Event | None = None,
) -> None:
    """Chain every decision and admin change into ``log_path`` in stream order, each record
    signed; ack only once its line is on disk (fsync), so a crash replays events and never loses
    one. With ``publisher``, each record is also kept on the audit stream. With ``auth``, only
    events from their rightful senders are recorded; anything else is a forgery, logged and dropped.
    ``bound`` is set while its consumer is bound (for readiness probes)."""
    signer = signer or AuditSigner.generate()
    arrived: list[Msg] = []
    wake = asyncio.Event()

    def deliver(msg: Msg) -> None:
        arrived.append(msg)
        wake.set()

    log_path.parent.mkdir(parents=True, exist_ok=True)
    chain = open_chain(log_path, signer)
    if publisher is not None:
        await restore_stream(nc.jetstream(), log_path, chain.index, publisher)
    consumer = PullConsumer(nc, schemas.DECISION_STREAM, "audit", deliver, window=window, expires_s=5.0)
    await consumer.start()
    if bound is not None:
        bound.set()
    times, meter = STATS.stage("audit"), observability.StageMeter("audit")
    lag = asyncio.create_task(observability.watch_lag(nc.jetstream(), schemas.DECISION_STREAM, "audit", times))
    stopping = asyncio.ensure_future(stop.wait())
    last_checkpoint = time.monotonic()
    unsealed = False
    # One append-only file for the worker's lifetime; each batch is a single small write.
    with open(log_path, "ab") as out:  # noqa: ASYNC230
        try:
            while not stop.is_set():
                waking = asyncio.ensure_future(wake.wait())
                await asyncio.wait(
                    {waking, stopping}, return_when=asyncio.FIRST_COMPLETED, timeout=CHECKPOINT_EVERY_S
                )
                waking.cancel()
                wake.clear()
                batch, arrived[:] = list(arrived), []
                started = time.perf_counter()
                records: list[dict[str, Any]] = []
                for msg in batch:
                    stream_seq = ack_fields(msg.reply)[1]
                    if stream_seq <= chain.source_seq:
                        continue  # redelivered after it reached the trail: ack it again below
                    try:
                        kind, event = event_of(msg, auth)
                        if kind == "decision":
                            event["stream_seq"] = stream_seq
                        records.append(chain.append(event, stream_seq, kind))
                    except (
                        Unauthenticated,
                        AuditChainError,
                        msgspec.DecodeError,
                        msgspec.ValidationError,
                        ValueError,
                    ) as exc:
                        log.error("audit.refused", error=repr(exc), stream_seq=stream_seq)
                        await msg.term()
                        consumer.done()
                if records:
                    unsealed = True
                if unsealed and time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY_S:
                    records.append(chain.checkpoint(time.time()))
                    last_checkpoint, unsealed = time.monotonic(), False
                if records:
                    out.write(b"".join(record_line(r) for r in records))
                    out.flush()
                    os.fsync(out.fileno())
                    if publisher is not None:
                        await _keep(publisher, records)
                for msg in batch:
                    if not msg.is_acked:
                        await msg.ack()
                        consumer.done()
                if batch:
                    # A batch is written and acked together: each of its events took that long.
                    seconds = time.perf_counter() - started
                    for _ in batch:
                        times.service.record(seconds * 1000.0)
                        meter.done("ok", seconds)
                    times.processed += len(batch)
        finally:
            if bound is not None:
                bound.clear()
            lag.cancel()
            stopping.cancel()
            await consumer.stop()
            if chain.index and unsealed:
                # A clean stop seals the trail's end with a signed checkpoint.
                final = chain.checkpoint(time.time())
                out.write(record_line(final))
                out.flush()
                os.fsync(out.fileno())
                if publisher is not None:
                    # Best effort and bounded: a stop must not hang on a bus that is going away.
                    # What does not reach the stream now is restored from the file next start.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(_keep(publisher, [final]), FINAL_PUBLISH_S)


async def restore_stream(js: JetStreamContext, log_path: Path, last_index: int, publisher: JetStreamPublisher) -> int:
    """Put on the audit stream the trail's records it lacks (those written just before a crash or
    a stop, whose publication did not finish), so that the stream holds the same unbroken chain as
    the file. Returns how many records were published."""
    try:
        last = await js.get_last_msg(schemas.AUDIT_STREAM, schemas.AUDIT_SUBJECT)
        on_stream = int(msgspec.json.decode(last.data)["i"])
    except nats.js.errors.NotFoundError:
        on_stream = 0
    if on_stream >= last_index:
        return 0
    missing: list[dict[str, Any]] = []
    with open(log_path, "rb") as trail:  # noqa: ASYNC230 -- once, at start, before any event
        for line in trail:
            record = msgspec.json.decode(line)
            if record["i"] > on_stream:
                missing.append(record)
    for start in range(0, len(missing), 256):
        await _keep(publisher, missing[start : start + 256])
    log.info("audit.stream_restored", records=len(missing), from_index=on_stream + 1)
    return len(missing)


async def _keep(publisher: JetStreamPublisher, records: list[dict[str, Any]]) -> None:
    """The same records on the audit stream (de-duplicated by their index)."""
    await asyncio.gather(
        *(
            publisher.publish(
                schemas.AUDIT_SUBJECT, record_line(r), {"Nats-Msg-Id": f"audit:{r['i']}:{r['hash'][:16]}"}
            )
            for r in records
        )
    )


async def tail(
    js: JetStreamContext, stop: asyncio.Event, out: IO[str] = sys.stdout, history: bool = False
) -> None:
    """`remits audit tail`: follow decisions and admin changes live with an ephemeral ordered consumer."""
    policy = js_api.DeliverPolicy.ALL if history else js_api.DeliverPolicy.NEW
    sub = await js.subscribe(
        ">", stream=schemas.DECISION_STREAM, ordered_consumer=True, deliver_policy=policy
    )
    try:
        while not stop.is_set():
            try:
                msg = await sub.next_msg(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            try:
                kind, event = event_of(msg, None)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            event["stream_seq"] = msg.metadata.sequence.stream
            out.write(_json.encode({"kind": kind, **event}).decode() + "\n")
            out.flush()
    finally:
        await sub.unsubscribe()
