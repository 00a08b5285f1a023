"""A worker's live copy of the trust buckets it reads: one ordered JetStream consumer per bucket
(last value per key, then every change as it happens), no polling. Readers take ``snapshot()``,
rebuilt once after each change and swapped in whole."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api

from shared import tenants
from shared.telemetry import get_logger
from shared.trust import buckets
from shared.trust.snapshot import TrustSnapshot, build_snapshots, pick

log = get_logger("remits.trust")
_OPERATION = "KV-Operation"


class TrustMirror:
    def __init__(
        self, js: JetStreamContext, readable: Sequence[buckets.Bucket], check_every_s: float = 2.0
    ) -> None:
        self._js = js
        self._buckets = tuple(readable)
        self._raw: dict[str, dict[str, tuple[int, bytes]]] = {b.name: {} for b in self._buckets}
        # The last revision applied per key, deletions included: a message older than it (from a
        # consumer being replaced) must not bring back a value that was changed or deleted.
        self._applied: dict[str, dict[str, int]] = {b.name: {} for b in self._buckets}
        self._revisions: dict[str, int] = {b.name: 0 for b in self._buckets}
        self._subs: dict[str, object] = {}
        self._version = 0  # bumped by every change
        self._snapshots: dict[str, TrustSnapshot] = {tenants.DEFAULT: TrustSnapshot()}
        self._snapshot_version = 0
        self._listeners: list[Callable[[], None]] = []
        self._check_every_s = check_every_s
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.changed = asyncio.Event()  # set at each change (tests wait on it)

    async def start(self, timeout_s: float = 10.0) -> None:
        """Subscribe to every bucket and return once each one's current content has arrived."""
        for bucket in self._buckets:
            caught_up = asyncio.Event()
            info = await self._js.stream_info(bucket.stream)
            last = info.state.last_seq if info.state.messages else 0
            if last == 0:
                caught_up.set()
            await self._subscribe(bucket, caught_up, last, from_seq=None)
            await asyncio.wait_for(caught_up.wait(), timeout_s)
        if self._check_every_s > 0:
            self._watchdog = asyncio.create_task(self._watch(), name="trust-mirror-watchdog")

    async def _subscribe(
        self, bucket: buckets.Bucket, caught_up: asyncio.Event, last: int, from_seq: int | None
    ) -> None:
        policy: dict[str, object]
        if from_seq is None:  # the current value of every key, then every change
            policy = {"deliver_policy": js_api.DeliverPolicy.LAST_PER_SUBJECT}
        else:  # every change after what this mirror already holds
            policy = {
                "config": js_api.ConsumerConfig(
                    deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=from_seq
                )
            }
        self._subs[bucket.name] = await self._js.subscribe(
            bucket.subjects,
            stream=bucket.stream,
            cb=self._receiver(bucket, caught_up, last),
            ordered_consumer=True,
            inactive_threshold=300.0,
            **policy,  # type: ignore[arg-type]
        )

    async def _watch(self) -> None:
        """Consumers do not survive a restart of the server, and the client's own recovery of an
        ordered consumer can give up for good. A bucket that stays behind its stream for two
        checks in a row is subscribed to again, from the revision after the last one applied."""
        behind: dict[str, int] = {b.name: 0 for b in self._buckets}
        # Stopped by an event, not only by cancellation: nats-py turns a cancellation that lands
        # inside a request into its own TimeoutError, which the loop below would survive.
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._check_every_s)
            if self._closing.is_set():
                return
            for bucket in self._buckets:
                try:
                    info = await self._js.stream_info(bucket.stream)
                    target = info.state.last_seq if info.state.messages else 0
                    if self._revisions[bucket.name] >= target:
                        behind[bucket.name] = 0
                        continue
                    behind[bucket.name] += 1
                    if behind[bucket.name] < 2:
                        continue
                    log.warning(
                        "trust.mirror_resubscribed",
                        bucket=bucket.name,
                        held=self._revisions[bucket.name],
                        stream=target,
                    )
                    old = self._subs.pop(bucket.name, None)
                    if old is not None:
                        with contextlib.suppress(Exception):
                            await old.unsubscribe()  # type: ignore[attr-defined]
                    await self._subscribe(
                        bucket, asyncio.Event(), target, from_seq=self._revisions[bucket.name] + 1
                    )
                    behind[bucket.name] = 0
                except Exception as exc:  # the server is away: try again at the next check
                    log.debug("trust.mirror_check_failed", bucket=bucket.name, error=repr(exc))

    def _receiver(
        self, bucket: buckets.Bucket, caught_up: asyncio.Event, initial_last: int
    ) -> Callable[[Msg], object]:
        prefix = f"$KV.{bucket.name}."

        async def receive(msg: Msg) -> None:
            meta = msg.metadata
            key = msg.subject[len(prefix) :]
            revision = meta.sequence.stream
            if meta.num_pending == 0 or revision >= initial_last:
                caught_up.set()
            applied = self._applied[bucket.name]
            if revision <= applied.get(key, 0):
                return  # replayed by a replacement consumer: already applied
            applied[key] = revision
            operation = (msg.headers or {}).get(_OPERATION, "")
            marker = (msg.headers or {}).get("Nats-Marker-Reason", "")
            raw = self._raw[bucket.name]
            if operation in ("DEL", "PURGE") or marker:
                raw.pop(key, None)
            else:
                raw[key] = (revision, msg.data)
            self._revisions[bucket.name] = max(self._revisions[bucket.name], revision)
            self._version += 1
            self.changed.set()
            for listener in self._listeners:
                listener()

        return receive

    async def caught_up(self, timeout_s: float = 10.0) -> None:
        """Return once this mirror holds every change stored so far (tests and tools that just
        wrote, and want the workers to see it before going on)."""
        targets = {}
        for bucket in self._buckets:
            info = await self._js.stream_info(bucket.stream)
            # A purged bucket keeps its last sequence but has nothing left to deliver.
            targets[bucket.name] = info.state.last_seq if info.state.messages else 0
        deadline = asyncio.get_running_loop().time() + timeout_s
        while any(self._revisions[name] < seq for name, seq in targets.items()):
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"trust mirror behind: {self._revisions} < {targets}")
            await asyncio.sleep(0.01)

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def snapshot(self, tenant: str = tenants.DEFAULT) -> TrustSnapshot:
        """``tenant``'s configuration as of the last change received (built at most once per
        change); a tenant that does not exist gets an empty snapshot that says so (``known``)."""
        if self._snapshot_version != self._version:
            version = self._version
            self._snapshots = build_snapshots(self._raw, self._revisions)
            self._snapshot_version = version
        return pick(self._snapshots, tenant)

    async def stop(self) -> None:
        self._closing.set()
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.wait([self._watchdog], timeout=5)
            self._watchdog = None
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                await sub.unsubscribe()  # type: ignore[attr-defined]
        self._subs.clear()


async def ensure_buckets(js: JetStreamContext, replicas: int = 1, *, resize: bool = True) -> None:
    """Create the trust buckets (the operator's right, at setup); existing ones are kept, with
    their contents, but brought to ``replicas`` copies unless not ``resize``: a bucket is the
    stream KV_<name>, whose replica count JetStream updates in place."""
    from nats.js.errors import BucketNotFoundError

    from shared.bus import patiently

    async def ensure(bucket: buckets.Bucket) -> None:
        try:
            await js.key_value(bucket.name)
        except BucketNotFoundError:
            await js.create_key_value(buckets.kv_config(bucket, replicas))
            return
        config = (await js.stream_info(bucket.stream)).config
        if resize and config.num_replicas != replicas:
            config.num_replicas = replicas
            await js.update_stream(config)

    for bucket in (*buckets.ALL, *buckets.OPERATIONAL):
        await patiently(lambda b=bucket: ensure(b))
