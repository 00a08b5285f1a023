"""Secret release (key broker): records attested sessions and releases resources, wrapped as JWE to
the TEE's key, only against a valid, unexpired, affirming token signed by this service.

It has two inputs: decisions, read from the decision stream (the record auditors read), and
resource requests from the gateway on its stage subject."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec

from services.common import StageContext, notify_outcome, outcome_of
from shared import schemas
from shared.bus import Publish
from shared.cache import TtlCache
from shared.ear import EarVerifier, submod_status, tee_pubkey_from_claims
from shared.errors import RemitsError
from shared.jwe import wrap_secret
from shared.telemetry import get_logger

STAGE = "release"
log = get_logger("remits.release")

RESOURCE_PATH = re.compile(r"^[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}$")


def make_handler(ctx: StageContext):
    verifier = EarVerifier(ctx.signing_key.public_key())
    # Tokens this replica verified, until they expire: the token a guest presents right after
    # attesting is byte for byte the one checked when its decision arrived.
    verified: TtlCache[str, dict[str, Any]] = TtlCache(100_000)

    def verified_claims(token: str) -> dict[str, Any]:
        claims = verified.get(token)
        if claims is None:
            now = ctx.clock()
            claims = verifier.verify(token, now=int(now))
            verified.put(token, claims, float(claims["exp"]) - now)
        return claims

    async def on_decision(decision: schemas.Decision) -> None:
        meta = decision.meta
        if decision.status != "rejected":
            try:
                # Never mark a session attested on a token this service did not sign.
                verified_claims(decision.token)
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

    async def release(request: schemas.ResourceRequest) -> schemas.Outcome:
        rid = request.meta.request_id
        if not RESOURCE_PATH.match(request.resource_path):
            return schemas.Outcome(rid, "denied", "resource.bad_path", request.resource_path)
        session, secret = await ctx.store.session_and_resource(request.meta.session_id, request.resource_path)
        # An attested session's own token first (the cookie), else the bearer token presented.
        token = session.token if session is not None and session.state == "attested" else request.token
        if not token:
            return schemas.Outcome(rid, "denied", "token.not_found", "attest first, or send Authorization: Bearer <token>")
        try:
            claims = verified_claims(token)
            status = submod_status(claims)
            if status != "affirming":
                return schemas.Outcome(rid, "denied", "policy.status_not_affirming", f"ear.status is {status}")
            tee_jwk = tee_pubkey_from_claims(claims)
            if secret is None:
                return schemas.Outcome(rid, "not_found", "resource.not_found", request.resource_path)
            jwe = wrap_secret(secret, tee_jwk)
        except RemitsError as err:
            return schemas.Outcome(rid, "denied", err.reason, err.detail)
        log.debug("resource.released", resource=request.resource_path)  # never the value
        return schemas.Outcome(rid, "released", jwe=msgspec.json.encode(jwe))

    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if isinstance(message, schemas.Decision):
            await on_decision(message)
        elif isinstance(message, schemas.ResourceRequest):
            # No Redis copy: a resource fetch that times out is simply asked again by the guest.
            outcome = await release(message)
            await notify_outcome(ctx, message.meta.reply_to, outcome, stored=True)
        else:
            await notify_outcome(
                ctx,
                message.meta.reply_to,
                schemas.Outcome(message.meta.request_id, "rejected", "bus.unexpected_message"),
            )
        return []

    return handle
