"""What every stage worker shares: its context, the outcome notification to the waiting gateway,
and the dead-letter path that still gives the caller exactly one (rejected) decision."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared import observability, schemas
from shared.bus import JetStreamPublisher, Publish, StageRunner, parse_route
from shared.busauth import MAC_HEADER, BusAuth
from shared.cache import Store, TtlCache
from shared.config import Settings
from shared.errors import RemitsError
from shared.fetch import EndorsementFetcher
from shared.platforms.base import Platform
from shared.policy.engine import PolicyCache
from shared.telemetry import get_logger
from shared.trust.mirror import TrustMirror

log = get_logger("remits.stage")

T = TypeVar("T")


@dataclass
class StageContext:
    """One component's view of the world: its own NATS and Redis connections (its identity), its
    message key, and the platforms and signing key the process shares."""

    component: str
    settings: Settings
    nc: NATS
    js: JetStreamContext
    store: Store
    platforms: dict[str, Platform]
    signing_key: Any  # ec.EllipticCurvePrivateKey, or an HSM key (shared.custody) that signs inside the token
    fetcher: EndorsementFetcher
    publisher: JetStreamPublisher
    auth: BusAuth | None = None
    # Endorsement documents this process already read, until they expire: a warm chip costs no
    # Redis round trip. (Documents are immutable within their validity; CRLs expire on time.)
    endorsements: TtlCache[tuple[str, str], list[bytes]] = field(default_factory=lambda: TtlCache(200_000))
    # The trust buckets this component reads, mirrored live (measure, release, provision), and
    # the policies compiled from them (once per version).
    trust: TrustMirror | None = None
    policies: PolicyCache | None = None
    # Signature checks run here (settings.crypto_threads; none: inline). The checks release the
    # GIL, so a pool overlaps them with the loop's own work when the process has a core to spare.
    crypto_pool: ThreadPoolExecutor | None = None
    clock: Callable[[], float] = time.time
    # Seals SEV launch sessions (identity, measure and release hold it; elsewhere b"").
    sev_key: bytes = b""
    # Derives and seals IBM SE attestation requests (identity only; elsewhere b"").
    se_key: bytes = b""

    def __post_init__(self) -> None:
        if self.crypto_pool is None and self.settings.crypto_threads > 0:
            self.crypto_pool = ThreadPoolExecutor(max_workers=self.settings.crypto_threads)

    async def run_crypto(self, fn: Callable[..., T], *args: Any) -> T:
        if self.crypto_pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.crypto_pool, fn, *args)


def next_stage(stage: str, message: schemas.StageMessage, from_stage: str) -> Publish:
    """The one way a stage hands work on: subject of the next stage, de-dup id <request>:<stage>."""
    return Publish(schemas.stage_subject(stage), message, f"{message.meta.request_id}:{from_stage}")


def reject(meta: schemas.RequestMeta, stage: str, error: RemitsError | str, detail: str = "") -> Publish:
    if isinstance(error, RemitsError):
        reason, detail = error.reason, error.detail
    else:
        reason = error
    log.info("evidence.rejected", reason=reason, detail=detail)
    rejection = schemas.Rejection(meta=meta, stage=stage, reason=reason, detail=detail)
    return Publish(schemas.REJECTION_SUBJECT, rejection, f"{meta.request_id}:{stage}")


def stage_runner(stage: str, ctx: StageContext, handler: Any, **options: Any) -> StageRunner:
    """A runner for ``stage`` under ``ctx``'s identity: its connection, publisher and key."""
    return StageRunner(
        stage, ctx.nc, ctx.js, handler, make_dead_letter_handler(ctx), ctx.settings,
        publisher=ctx.publisher, auth=ctx.auth, **options,
    )  # fmt: skip


def signed(ctx: StageContext, subject: str, data: bytes) -> dict[str, str] | None:
    """Headers authenticating a core-NATS message (no de-duplication id) as ``ctx``'s component."""
    return None if ctx.auth is None else {MAC_HEADER: ctx.auth.sign(subject, data)}


async def notify_outcome(
    ctx: StageContext, reply_to: str, outcome: schemas.Outcome, *, stored: bool = False
) -> None:
    """Redis first (a gateway that missed the notification reads it there; ``stored`` when the
    caller already wrote it), then the notification."""
    data = schemas.encode(outcome)
    if not stored:
        await ctx.store.put_outcome(outcome.request_id, data, outcome_mac(ctx, outcome.request_id, data))
    if reply_to:
        await ctx.nc.publish(reply_to, data, headers=signed(ctx, reply_to, data))


def outcome_mac(ctx: StageContext, request_id: str, data: bytes) -> str:
    """Authenticates the Redis copy of an outcome, which the gateway reads if it missed the
    notification (Redis is no more trusted than the bus)."""
    return "" if ctx.auth is None else ctx.auth.sign(schemas.outcome_copy_subject(request_id), data)


def decision_record(decision: schemas.Decision) -> Publish:
    """The one publish of a decision: auditors and the release stage both read it there."""
    subject = schemas.decision_subject(decision.meta.tenant, decision.meta.tee, decision.status)
    return Publish(subject, decision, f"{decision.meta.request_id}:decision")


def outcome_of(decision: schemas.Decision) -> schemas.Outcome:
    return schemas.Outcome(
        request_id=decision.meta.request_id,
        status=decision.status,
        reason=decision.reason,
        detail=decision.detail,
        token=decision.token,
    )


def meta_from_headers(headers: dict[str, str]) -> schemas.RequestMeta | None:
    request_id, tee, reply_to = parse_route(headers)
    if not request_id:
        return None
    return schemas.RequestMeta(
        request_id=request_id, tee=tee or "unknown", reply_to=reply_to, submitted_at=0.0
    )


def make_dead_letter_handler(ctx: StageContext) -> Callable[..., Any]:
    async def dead_letter(
        stage: str, data: bytes, headers: dict[str, str], reason: str, deliveries: int
    ) -> None:
        meta = meta_from_headers(headers)
        try:
            decoded = schemas.decode_stage(data)
            meta = decoded.meta
        except Exception:
            decoded = None
        letter = schemas.DeadLetter(
            stage=stage,
            reason=reason,
            subject=schemas.consumer_subject(stage),
            data=data,
            request_id=meta.request_id if meta else "",
            deliveries=deliveries,
        )
        await ctx.publisher.publish(schemas.dlq_subject(stage), schemas.encode(letter))
        log.warning("stage.dead_letter", stage=stage, reason=reason, deliveries=deliveries)
        if meta is None or reason == "bus.unauthenticated":
            return  # nobody to answer (a forged message is answered by nothing): the letter is the record
        if isinstance(decoded, schemas.Decision):
            # The release stage could not act on a decision that stands: answer with it as made.
            await notify_outcome(ctx, meta.reply_to, outcome_of(decoded))
            return
        detail = f"stage {stage} could not process the evidence after {deliveries} deliveries"
        if stage != "decide":
            # Only the decide stage decides: the caller's one (rejected) decision comes from there.
            await ctx.publisher.send(reject(meta, stage, reason, detail), meta.request_id)
            return
        decision = schemas.Decision(
            meta=meta, status="rejected", decided_at=ctx.clock(), reason=reason, detail=detail
        )
        earlier = await ctx.store.claim_decision(meta.request_id, schemas.encode(decision))
        if earlier is not None:
            decision = schemas.decode_decision(earlier)
        else:
            observability.decision(meta.tee, decision.status, decision.reason)
        # Published again if it was decided before (same de-duplication id): the release stage
        # answers the caller from the decision stream either way.
        await ctx.publisher.send(decision_record(decision), meta.request_id)

    return dead_letter
