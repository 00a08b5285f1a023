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
from shared.trust.snapshot import TrustSnapshot, build_snapshot

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


async def snapshot_at(
    js: JetStreamContext, revisions: Mapping[str, int], tenant: str = tenants.DEFAULT
) -> TrustSnapshot:
    """``tenant``'s configuration at the given bucket revisions."""
    raw: dict[str, dict[str, tuple[int, bytes]]] = {}
    for name, revision in revisions.items():
        bucket = buckets.BY_NAME.get(name)
        if bucket is not None:
            raw[name] = {}
            for stored, value in (await bucket_at(js, bucket, revision)).items():
                owner, key = tenants.split_key(stored)
                if owner == tenant:
                    raw[name][key] = value
    return build_snapshot(raw, revisions, tenant=tenant)
