"""What batched pulls and pipelined publishes could break, on real NATS and Redis: a poison message
inside a batch, a crash between the next stage's PubAck and the ack, and de-duplication."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg

from services.common import make_dead_letter_handler, reject, stage_runner
from shared import schemas
from shared.bus import (
    ROUTE_HEADER,
    JetStreamPublisher,
    Publish,
    StageRunner,
    ack_fields,
    parse_route,
    route_header,
)
from tests.conftest import RunningStack, decisions_on_stream, publisher_as, start_stack

pytestmark = pytest.mark.integration
WITHOUT_MEASURE = ("intake", "endorse", "identity", "decide", "release", "gateway", "audit")


def verified(request_id: str, reply_to: str) -> schemas.VerifiedEvidence:
    meta = schemas.RequestMeta(request_id=request_id, tee="sample", reply_to=reply_to, submitted_at=0.0)
    return schemas.VerifiedEvidence(meta=meta, runtime_data_claims={}, claims={}, evidence=b"\x00" * 8)


async def outcomes_until(sub, wanted: set[str], timeout_s: float) -> dict[str, list[schemas.Outcome]]:  # type: ignore[no-untyped-def]
    got: dict[str, list[schemas.Outcome]] = {}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not wanted <= set(got):
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            break
        try:
            msg = await sub.next_msg(timeout=remaining)
        except (TimeoutError, nats.errors.TimeoutError):
            break
        outcome = schemas.decode_outcome(msg.data)
        got.setdefault(outcome.request_id, []).append(outcome)
    return got


async def decisions_for(rs: RunningStack, request_ids: set[str]) -> Counter[str]:
    """How many decisions each request has on the stream, read as the operator."""
    seen: Counter[str] = Counter()
    for decision in await decisions_on_stream(rs.stack.js):
        if decision.meta.request_id in request_ids:  # type: ignore[attr-defined]
            seen[decision.meta.request_id] += 1  # type: ignore[attr-defined]
    return seen


@contextlib.asynccontextmanager
async def stage_under_test(
    rs: RunningStack, runner: StageRunner, sender: str
) -> AsyncIterator[tuple[JetStreamPublisher, Any, str]]:
    """The runner in place of the stack's own stage, a publisher signing as ``sender`` (the stage
    before it) and the subscription on which the gateway-side outcomes arrive; everything is
    stopped again afterwards."""
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    reply = f"remits.outcome.test-{uuid.uuid4().hex[:8]}"
    sub = await rs.stack.nc.subscribe(reply)
    nc, publisher = await publisher_as(rs.infra, sender)
    try:
        await asyncio.sleep(0.2)  # the runner has bound its consumer
        yield publisher, sub, reply
    finally:
        await publisher.stop()
        await sub.unsubscribe()
        stop.set()
        await task
        await nc.close()
        await rs.stack.stop()
        await rs.kds.stop()


async def test_a_poison_message_in_a_batch_delays_nothing_else(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs = await start_stack(infra, tmp_path / "data", components=WITHOUT_MEASURE, max_deliver=2, ack_wait_s=1.0)
    poison = f"poison-{uuid.uuid4().hex[:8]}"
    calls: Counter[str] = Counter()

    async def measure(message: schemas.StageUnion):  # type: ignore[no-untyped-def]
        calls[message.meta.request_id] += 1
        if message.meta.request_id == poison:
            raise RuntimeError("a bug that this one message triggers")
        return [reject(message.meta, "measure", "test.measured")]

    runner = stage_runner("measure", await rs.stack.attach("measure"), measure)
    async with stage_under_test(rs, runner, sender="identity") as (publisher, sub, reply):
        good = [f"good-{i}-{uuid.uuid4().hex[:6]}" for i in range(40)]
        undecodable = f"undecodable-{uuid.uuid4().hex[:8]}"
        items = [Publish(schemas.stage_subject("measure"), verified(rid, reply), f"{rid}:identity") for rid in good]
        items.insert(20, Publish(schemas.stage_subject("measure"), verified(poison, reply), f"{poison}:identity"))
        # One burst, so the stage is handed them together, the poison in the middle.
        sends = [publisher.send(item, item.message.meta.request_id) for item in items]  # type: ignore[attr-defined]
        sends.append(
            publisher.publish(
                schemas.stage_subject("measure"),
                b"\xc1 not msgpack",
                {"Nats-Msg-Id": f"{undecodable}:identity", ROUTE_HEADER: route_header(undecodable, "sample", reply)},
            )
        )
        await asyncio.gather(*sends)
        got = await outcomes_until(sub, {*good, poison, undecodable}, timeout_s=30)
        assert set(got) == {*good, poison, undecodable}
        assert all(len(outcomes) == 1 for outcomes in got.values()), got
        assert {got[rid][0].reason for rid in good} == {"test.measured"}
        assert got[poison][0].reason == "pipeline.max_deliveries_exceeded"
        assert got[undecodable][0].reason.startswith("bus.undecodable")
        # Every good message was handled once; the poison as often as max_deliver allows.
        assert all(calls[rid] == 1 for rid in good) and calls[poison] == 2
        assert await decisions_for(rs, {*good, poison, undecodable}) == Counter({rid: 1 for rid in [*good, poison, undecodable]})


class CrashesBeforeAck(StageRunner):
    """Dies (as far as JetStream can tell) after the PubAck of its output, before its own ack."""

    def __init__(self, *args, crash_for: str, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.crash_for = crash_for
        self.crashed = 0

    async def _ack(self, msg: Msg) -> None:
        if parse_route(msg.headers)[0] == self.crash_for and ack_fields(msg.reply)[0] == 1:
            self.crashed += 1
            return  # no ack: redelivered after ack_wait, as if the process had died here
        await super()._ack(msg)


@pytest.mark.parametrize("stage", ["measure", "decide"])
async def test_a_crash_between_publish_and_ack_makes_no_second_decision(infra, tmp_path, stage: str) -> None:  # type: ignore[no-untyped-def]
    components = tuple(c for c in (*WITHOUT_MEASURE, "measure") if c != stage)
    rs = await start_stack(infra, tmp_path / "data", components=components, ack_wait_s=1.0)
    request_id = f"crash-{stage}-{uuid.uuid4().hex[:8]}"
    calls = Counter[str]()

    async def measure(message: schemas.StageUnion):  # type: ignore[no-untyped-def]
        calls[message.meta.request_id] += 1
        return [reject(message.meta, "measure", "test.measured")]

    from services.decide.worker import make_handler as decide_handler

    ctx = await rs.stack.attach(stage)
    inner = decide_handler(ctx)

    async def decide(message: schemas.StageUnion):  # type: ignore[no-untyped-def]
        calls[message.meta.request_id] += 1
        return await inner(message)

    runner = CrashesBeforeAck(
        stage, ctx.nc, ctx.js, measure if stage == "measure" else decide, make_dead_letter_handler(ctx), ctx.settings,
        publisher=ctx.publisher, auth=ctx.auth, crash_for=request_id,
    )  # fmt: skip
    async with stage_under_test(rs, runner, sender="identity") as (publisher, sub, reply):
        if stage == "measure":
            await publisher.send(Publish(schemas.stage_subject("measure"), verified(request_id, reply), f"{request_id}:identity"), request_id)
        else:
            meta = verified(request_id, reply).meta
            message = schemas.Rejection(meta=meta, stage="identity", reason="test.rejected")
            await publisher.send(Publish(schemas.REJECTION_SUBJECT, message, f"{request_id}:identity"), request_id)
        got = await outcomes_until(sub, {request_id}, timeout_s=15)
        # Handled twice (the redelivery after the crash), decided and answered once.
        for _ in range(50):
            if calls[request_id] >= 2:
                break
            await asyncio.sleep(0.1)
        assert runner.crashed == 1 and calls[request_id] == 2
        await asyncio.sleep(0.5)  # a second outcome, if there were one, would be here by now
        got = {**got, **await outcomes_until(sub, {"never"}, timeout_s=0.5)}
        assert len(got[request_id]) == 1 and got[request_id][0].status == "rejected"
        assert await decisions_for(rs, {request_id}) == Counter({request_id: 1})


async def test_the_duplicate_window_drops_a_republished_stage_message(running: RunningStack) -> None:
    nc, publisher = await publisher_as(running.infra, "decide")
    js = running.stack.js
    try:
        before = (await js.stream_info(schemas.DECISION_STREAM)).state.last_seq
        meta = schemas.RequestMeta(request_id="dup-" + uuid.uuid4().hex[:8], tee="sample", reply_to="", submitted_at=0.0)
        decision = schemas.Decision(meta=meta, status="rejected", decided_at=0.0, reason="test.dup")
        item = Publish(schemas.decision_subject("default", "sample", "rejected"), decision, f"{meta.request_id}:decision")
        for _ in range(3):  # a stage redelivered twice publishes the same message three times
            await publisher.send(item, meta.request_id)
        assert (await js.stream_info(schemas.DECISION_STREAM)).state.last_seq == before + 1
    finally:
        await publisher.stop()
        await nc.close()
