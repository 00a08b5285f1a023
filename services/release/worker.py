"""Secret release (key broker): records attested sessions and releases resources, wrapped as JWE to
the TEE's key, only against a valid, unexpired, affirming token signed by this service.

It has two inputs: decisions, read from the decision stream (the record auditors read), and
resource fetches, core NATS requests from the gateway answered directly (``ResourceResponder``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from services.common import StageContext, notify_outcome, outcome_of
from shared import schemas
from shared.bus import Publish
from shared.cache import TtlCache
from shared.ear import EarVerifier, submod_status, tee_pubkey_from_claims
from shared.errors import RemitsError, VerificationError
from shared.jwe import wrap_secret
from shared.stats import STATS
from shared.telemetry import extract_context, get_logger, is_sampled, tracer

STAGE = "release"
log = get_logger("remits.release")

RESOURCE_PATH = re.compile(r"^[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}$")


class Release:
    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self._verifier = EarVerifier(ctx.signing_key.public_key())
        # Tokens this replica verified, until they expire: the token a guest presents right after
        # attesting is byte for byte the one checked when its decision arrived. Only what release
        # needs is kept (status, TEE key), not the whole claim set.
        self._verified: TtlCache[str, tuple[str, dict[str, Any] | VerificationError]] = TtlCache(100_000)

    def verified_token(self, token: str) -> tuple[str, dict[str, Any] | VerificationError]:
        """(appraisal status, TEE key) of a token this service signed and that has not expired;
        in place of the key, why the token names none (resources cannot be wrapped to it)."""
        entry = self._verified.get(token)
        if entry is None:
            now = self.ctx.clock()
            claims = self._verifier.verify(token, now=int(now))
            tee_jwk: dict[str, Any] | VerificationError
            try:
                tee_jwk = tee_pubkey_from_claims(claims)
            except VerificationError as err:
                tee_jwk = err
            entry = (submod_status(claims), tee_jwk)
            self._verified.put(token, entry, float(claims["exp"]) - now)
        return entry

    async def handle(self, message: schemas.StageUnion) -> Sequence[Publish]:
        """The stage handler for the decision stream."""
        if isinstance(message, schemas.Decision):
            await self.on_decision(message)
        else:
            await notify_outcome(
                self.ctx,
                message.meta.reply_to,
                schemas.Outcome(message.meta.request_id, "rejected", "bus.unexpected_message"),
            )
        return []

    async def on_decision(self, decision: schemas.Decision) -> None:
        ctx, meta = self.ctx, decision.meta
        if decision.status != "rejected":
            try:
                # Never mark a session attested on a token this service did not sign.
                self.verified_token(decision.token)
            except RemitsError as err:
                log.warning("decision.token_refused", reason=err.reason, detail=err.detail)
                decision = schemas.Decision(
                    meta=meta, status="rejected", decided_at=ctx.clock(), reason=err.reason, detail=err.detail
                )
        outcome = outcome_of(decision)
        encoded = schemas.encode(outcome)
        if decision.status != "rejected" and meta.session_id:
            # The session's token and the gateway's fallback copy of the outcome in one trip.
            await ctx.store.mark_attested(
                meta.session_id, decision.token, ctx.settings.token_lifetime_s, (meta.request_id, encoded)
            )
        else:
            await ctx.store.put_outcome(meta.request_id, encoded)
        await notify_outcome(ctx, meta.reply_to, outcome, stored=True)

    async def resource(self, request: schemas.ResourceRequest) -> schemas.Outcome:
        rid = request.meta.request_id
        if not RESOURCE_PATH.match(request.resource_path):
            return schemas.Outcome(rid, "denied", "resource.bad_path", request.resource_path)
        session, secret = await self.ctx.store.session_and_resource(request.meta.session_id, request.resource_path)
        # An attested session's own token first (the cookie), else the bearer token presented.
        token = session.token if session is not None and session.state == "attested" else request.token
        if not token:
            return schemas.Outcome(rid, "denied", "token.not_found", "attest first, or send Authorization: Bearer <token>")
        try:
            status, tee_jwk = self.verified_token(token)
            if status != "affirming":
                return schemas.Outcome(rid, "denied", "policy.status_not_affirming", f"ear.status is {status}")
            if isinstance(tee_jwk, VerificationError):
                raise tee_jwk
            if secret is None:
                return schemas.Outcome(rid, "not_found", "resource.not_found", request.resource_path)
            jwe = wrap_secret(secret, tee_jwk)
        except RemitsError as err:
            return schemas.Outcome(rid, "denied", err.reason, err.detail)
        log.debug("resource.released", resource=request.resource_path)  # never the value
        return schemas.Outcome(rid, "released", jwe=msgspec.json.encode(jwe))


def make_handler(ctx: StageContext):  # type: ignore[no-untyped-def]
    return Release(ctx).handle


class ResourceResponder:
    """Answers resource fetches on RESOURCE_SUBJECT (a queue group shared by every release
    replica). Over ``limit`` fetches in progress, it answers "unavailable" (the guest retries)
    rather than queueing without bound."""

    def __init__(self, release: Release, limit: int) -> None:
        self._release = release
        self._limit = limit
        self._in_progress: set[asyncio.Task[None]] = set()
        self._sub: Any = None
        self._times = STATS.stage("release.resource")

    async def start(self) -> None:
        nc = self._release.ctx.nc
        self._sub = await nc.subscribe(schemas.RESOURCE_SUBJECT, queue=schemas.RESOURCE_QUEUE, cb=self._on_request)

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:  # the connection may be closed already
                pass
        if self._in_progress:
            await asyncio.wait(self._in_progress, timeout=5)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._in_progress.add(task)
        task.add_done_callback(self._in_progress.discard)

    async def _answer(self, msg: Msg) -> None:
        started = time.monotonic()
        try:
            request = schemas.decode_stage(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reply(msg, schemas.Outcome("", "denied", "bus.undecodable", str(exc)))
            return
        if not isinstance(request, schemas.ResourceRequest):
            await self._reply(msg, schemas.Outcome(request.meta.request_id, "denied", "bus.unexpected_message"))
            return
        if len(self._in_progress) > self._limit:
            await self._reply(msg, schemas.Outcome(request.meta.request_id, "denied", "pipeline.unavailable", "release is busy"))
            return
        try:
            if is_sampled(msg.headers):
                with tracer().start_as_current_span(
                    "remits.release", context=extract_context(msg.headers), kind=SpanKind.CONSUMER,
                    attributes={"remits.request_id": request.meta.request_id, "remits.stage": STAGE},
                ):
                    outcome = await self._release.resource(request)
            else:
                outcome = await self._release.resource(request)
        except Exception as exc:  # Redis unreachable and the like: the guest may retry
            log.error("resource.failed", error=repr(exc))
            outcome = schemas.Outcome(request.meta.request_id, "denied", "pipeline.unavailable", "release failed")
        await self._reply(msg, outcome)
        self._times.processed += 1
        self._times.service.record((time.monotonic() - started) * 1000.0)

    async def _reply(self, msg: Msg, outcome: schemas.Outcome) -> None:
        if msg.reply:
            await self._release.ctx.nc.publish(msg.reply, schemas.encode(outcome))
