"""Secret release (key broker): records attested sessions and releases resources, wrapped as JWE to
the TEE's key, only against a valid, unexpired, affirming token signed by this service.

It has two inputs: decisions, read from the decision stream (the record auditors read), and
resource fetches, core NATS requests from the gateway answered directly (``ResourceResponder``)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.msg import Msg
from opentelemetry.trace import SpanKind

from services.common import StageContext, notify_outcome, outcome_mac, outcome_of, signed
from shared import schemas
from shared.bus import Publish
from shared.busauth import Unauthenticated
from shared.cache import TtlCache
from shared.ear import EarVerifier, submod_status, tee_pubkey_from_claims
from shared.errors import RemitsError, VerificationError
from shared.jwe import wrap_secret
from shared.stats import STATS
from shared.telemetry import extract_context, get_logger, is_sampled, tracer

STAGE = "release"
log = get_logger("remits.release")

RESOURCE_PATH = re.compile(r"^[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class VerifiedToken:
    """What release needs from a token this service signed: its status, the TEE key secrets are
    wrapped to (or why it names none) and the challenge it answers."""

    status: str
    tee_jwk: dict[str, Any] | VerificationError
    eat_nonce: str


class Release:
    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self._verifier = EarVerifier(ctx.signing_key.public_key())
        # Tokens this replica verified, until they expire: the token a guest presents right after
        # attesting is byte for byte the one checked when its decision arrived.
        self._verified: TtlCache[str, VerifiedToken] = TtlCache(100_000)

    def verified_token(self, token: str) -> VerifiedToken:
        entry = self._verified.get(token)
        if entry is None:
            now = self.ctx.clock()
            claims = self._verifier.verify(token, now=int(now))
            tee_jwk: dict[str, Any] | VerificationError
            try:
                tee_jwk = tee_pubkey_from_claims(claims)
            except VerificationError as err:
                tee_jwk = err
            nonce = claims.get("eat_nonce")
            entry = VerifiedToken(submod_status(claims), tee_jwk, nonce if isinstance(nonce, str) else "")
            self._verified.put(token, entry, float(claims["exp"]) - now)
        return entry

    async def handle(self, message: schemas.StageUnion) -> Sequence[Publish]:
        """The stage handler for the decision stream."""
        if isinstance(message, schemas.Decision):
            await self.on_decision(message)
        else:  # only on an open bus: with keys, the runner lets decisions alone through
            outcome = schemas.Outcome(message.meta.request_id, "rejected", "bus.unexpected_message")
            await notify_outcome(self.ctx, message.meta.reply_to, outcome)
        return []

    async def on_decision(self, decision: schemas.Decision) -> None:
        ctx, meta = self.ctx, decision.meta
        if decision.status != "rejected":
            try:
                # Never mark a session attested on a token this service did not sign...
                verified = self.verified_token(decision.token)
                if meta.session_id:
                    # ...nor on one issued for another session's challenge.
                    outcome = outcome_of(decision)
                    data = schemas.encode(outcome)
                    bound = await ctx.store.mark_attested(
                        meta.session_id, decision.token, verified.eat_nonce, ctx.settings.token_lifetime_s,
                        (meta.request_id, data, outcome_mac(ctx, meta.request_id, data)),
                    )  # fmt: skip
                    if bound != "ok":
                        raise VerificationError(f"token.{bound}", "the token does not answer this session's challenge")
                    await notify_outcome(ctx, meta.reply_to, outcome, stored=True)
                    return
            except RemitsError as err:
                log.warning("decision.token_refused", reason=err.reason, detail=err.detail)
                decision = schemas.Decision(
                    meta=meta, status="rejected", decided_at=ctx.clock(), reason=err.reason, detail=err.detail
                )
        await notify_outcome(ctx, meta.reply_to, outcome_of(decision))

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
            verified = self.verified_token(token)
            if verified.status != "affirming":
                return schemas.Outcome(rid, "denied", "policy.status_not_affirming", f"ear.status is {verified.status}")
            tee_jwk = verified.tee_jwk
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
        auth = self._release.ctx.auth
        try:
            if auth is not None:
                auth.verify(msg.subject, msg.data, msg.headers, accept=frozenset({"gateway"}))
            request = schemas.decode_stage(msg.data)
        except Unauthenticated as exc:
            log.warning("resource.unauthenticated", detail=exc.detail)
            await self._reply(msg, schemas.Outcome("", "denied", exc.reason, exc.detail))
            return
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
            data = schemas.encode(outcome)
            await self._release.ctx.nc.publish(msg.reply, data, headers=signed(self._release.ctx, msg.reply, data))
