"""The trust configuration as it was at given bucket revisions, rebuilt from the buckets' kept
history (each key keeps its last buckets.HISTORY revisions): what `remits audit replay` judges a
past evidence against."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from nats.js import JetStreamContext
from nats.js import api as js_api

from shared import tenants
from shared.trust import buckets
from shared.trust.snapshot import TrustSnapshot, build_snapshots, pick

_OPERATION = "KV-Operation"


class HistoryIncomplete(Exception):
    """A revision the past state needs is no longer kept."""


async def bucket_at(
    js: JetStreamContext, bucket: buckets.Bucket, revision: int
) -> dict[str, tuple[int, bytes]]:
    """Key -> (revision, value) of ``bucket`` right after ``revision`` (0: empty)."""
    state: dict[str, tuple[int, bytes]] = {}
    if revision <= 0:
        return state
    info = await js.stream_info(bucket.stream)
    if info.state.first_seq > 1 and info.state.first_seq > revision:
        raise HistoryIncomplete(f"{bucket.name}: revisions before {info.state.first_seq} are no longer kept")
    last = info.state.last_seq
    if last == 0:
        return state
    done = asyncio.Event()
    prefix = f"$KV.{bucket.name}."
    newest_seen: dict[str, int] = {}

    async def receive(msg) -> None:  # type: ignore[no-untyped-def]
        seq = msg.metadata.sequence.stream
        key = msg.subject[len(prefix) :]
        if seq <= revision:
            if (msg.headers or {}).get(_OPERATION) in ("DEL", "PURGE"):
                state.pop(key, None)
            else:
                state[key] = (seq, msg.data)
        newest_seen[key] = seq
        if seq >= min(revision, last) or msg.metadata.num_pending == 0:
            done.set()

    sub = await js.subscribe(
        bucket.subjects,
        stream=bucket.stream,
        cb=receive,
        ordered_consumer=True,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    try:
        await asyncio.wait_for(done.wait(), 30)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return state


async def _latest(js: JetStreamContext, bucket: buckets.Bucket) -> int:
    info = await js.stream_info(bucket.stream)
    return info.state.last_seq if info.state.messages else 0


async def snapshot_at(
    js: JetStreamContext, revisions: Mapping[str, int], tenant: str = tenants.DEFAULT
) -> TrustSnapshot:
    """``tenant``'s configuration at the given bucket revisions, split per tenant exactly as the
    workers' mirror does (build_snapshots): with the platform revocations a tenant inherits. A
    record of before the tenants bucket's revision was recorded is judged with today's tenants."""
    raw: dict[str, dict[str, tuple[int, bytes]]] = {}
    wanted = dict(revisions)
    if buckets.TENANTS.name not in wanted:
        wanted[buckets.TENANTS.name] = await _latest(js, buckets.TENANTS)
    for name, revision in wanted.items():
        bucket = buckets.BY_NAME.get(name)
        if bucket is not None:
            raw[name] = await bucket_at(js, bucket, revision)
    return pick(build_snapshots(raw, revisions), tenant)
