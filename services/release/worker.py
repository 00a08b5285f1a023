"""Secret release (key broker): records attested sessions and releases resources, wrapped as JWE to
the TEE's key, only against a valid, unexpired, affirming token signed by this service.

It has two inputs: decisions, read from the decision stream (the record auditors read), and
resource requests from the gateway on its stage subject."""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from services.common import StageContext, notify_outcome, outcome_of
from shared import schemas
from shared.bus import Publish
from shared.ear import submod_status, tee_pubkey_from_claims, verify_ear
from shared.errors import RemitsError
from shared.jwe import wrap_secret
from shared.telemetry import get_logger

STAGE = "release"
log = get_logger("remits.release")

RESOURCE_PATH = re.compile(r"^[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}/[A-Za-z0-9_.-]{1,128}$")


def make_handler(ctx: StageContext):
    trusted_key = ctx.signing_key.public_key()

    async def on_decision(decision: schemas.Decision) -> None:
        meta = decision.meta
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
            claims = verify_ear(token, trusted_key, now=int(ctx.clock()))
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
