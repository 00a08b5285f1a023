"""Per-process counters and stage timings, answered on request over core NATS.

Every REMITS process subscribes to ``remits.stats.collect`` and ``remits.stats.reset`` (no queue
group, so every process answers). `remits bench` resets them at the start of its measured window
and collects them at the end; an operator can ask the same of a running fleet. Recording costs a
dict lookup and a histogram increment per message; nothing here is secret.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import schemas
from shared.metrics import LogHistogram

COLLECT_SUBJECT = schemas.STATS_COLLECT_SUBJECT
RESET_SUBJECT = schemas.STATS_RESET_SUBJECT


@dataclass
class StageTimes:
    # Time a message waited in its stream before this stage took it (JetStream's store time to
    # dequeue), and time from dequeue to ack (handler, publishes and their acknowledgements).
    wait: LogHistogram = field(default_factory=LogHistogram)
    service: LogHistogram = field(default_factory=LogHistogram)
    processed: int = 0
    # The durable consumer's backlog when last read (every few seconds): a gauge, never reset.
    pending: int = 0
    ack_pending: int = 0


@dataclass
class ProcessStats:
    components: tuple[str, ...] = ()
    stages: dict[str, StageTimes] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    since: float = field(default_factory=time.time)

    def stage(self, name: str) -> StageTimes:
        times = self.stages.get(name)
        if times is None:
            times = self.stages[name] = StageTimes()
        return times

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def reset(self) -> None:
        # In place: runners hold their StageTimes.
        for times in self.stages.values():
            times.wait, times.service, times.processed = LogHistogram(), LogHistogram(), 0
        self.counters.clear()
        self.since = time.time()

    def snapshot(self, extra_counters: dict[str, int]) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "components": list(self.components),
            "since": self.since,
            "at": time.time(),
            "counters": {**self.counters, **extra_counters},
            "stages": {
                name: {
                    "wait": t.wait.to_wire(),
                    "service": t.service.to_wire(),
                    "processed": t.processed,
                    "lag": {"pending": t.pending, "ack_pending": t.ack_pending},
                }
                for name, t in self.stages.items()
            },
        }


STATS = ProcessStats()


class StatsResponder:
    """Answers collect/reset requests for this process. ``counters()`` adds live counters kept
    elsewhere (e.g. the Redis client's round trips, which are never reset there)."""

    def __init__(self, nc: NATS, components: tuple[str, ...], counters: Any) -> None:
        self._nc = nc
        self._counters = counters
        self._base: dict[str, int] = {}
        STATS.components = components
        self._subs: list[Any] = []

    async def start(self) -> None:
        self._subs = [
            await self._nc.subscribe(COLLECT_SUBJECT, cb=self._collect),
            await self._nc.subscribe(RESET_SUBJECT, cb=self._reset),
        ]

    def _live(self) -> dict[str, int]:
        now = self._counters()
        return {k: v - self._base.get(k, 0) for k, v in now.items()}

    async def _collect(self, msg: Msg) -> None:
        if msg.reply:
            await self._nc.publish(msg.reply, msgspec.json.encode(STATS.snapshot(self._live())))

    async def _reset(self, msg: Msg) -> None:
        STATS.reset()
        self._base = self._counters()
        if msg.reply:
            await self._nc.publish(msg.reply, b"{}")

    async def stop(self) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be closed already
                pass
