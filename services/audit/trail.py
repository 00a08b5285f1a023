"""Reading the chained trail the audit consumer kept on the audit stream."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from nats.js import api as js_api
from nats.js.errors import NotFoundError

from shared import schemas


async def read_audit_stream(js: Any, timeout_s: float = 60.0) -> list[bytes]:
    """Every record line on REMITS_AUDIT, in stream order (an empty list if there is none yet)."""
    try:
        info = await js.stream_info(schemas.AUDIT_STREAM)
    except NotFoundError:
        return []
    last = info.state.last_seq
    if info.state.messages == 0:
        return []
    lines: list[bytes] = []
    done = asyncio.Event()

    async def receive(msg: Any) -> None:
        lines.append(msg.data)
        if msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0:
            done.set()

    sub = await js.subscribe(
        schemas.AUDIT_SUBJECT,
        stream=schemas.AUDIT_STREAM,
        cb=receive,
        ordered_consumer=True,
        deliver_policy=js_api.DeliverPolicy.ALL,
    )
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return lines
