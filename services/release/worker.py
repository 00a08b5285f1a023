"""Secret release (key broker): records attested sessions and releases resources, wrapped as JWE to
the TEE's key, only against a valid, unexpired, affirming token signed by this service."""

from __future__ import annotations

import re
from collections.abc import Sequence

import msgspec

from services.common import StageContext, notify_outcome
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
        if decision.status != "rejected" and meta.session_id:
            await ctx.store.mark_attested(meta.session_id, decision.token, ctx.settings.token_lifetime_s)
        outcome = schemas.Outcome(
            request_id=meta.request_id,
            status=decision.status,
            reason=decision.reason,
            detail=decision.detail,
            token=decision.token,
        )
        await notify_outcome(ctx, meta.reply_to, outcome)

    async def release(request: schemas.ResourceRequest) -> schemas.Outcome:
        rid = request.meta.request_id
        if not RESOURCE_PATH.match(request.resource_path):
            return schemas.Outcome(rid, "denied", "resource.bad_path", request.resource_path)
        try:
            claims = verify_ear(request.token, trusted_key, now=int(ctx.clock()))
            status = submod_status(claims)
            if status != "affirming":
                return schemas.Outcome(rid, "denied", "policy.status_not_affirming", f"ear.status is {status}")
            tee_jwk = tee_pubkey_from_claims(claims)
            secret = await ctx.store.get_resource(request.resource_path)
            if secret is None:
                return schemas.Outcome(rid, "not_found", "resource.not_found", request.resource_path)
            jwe = wrap_secret(secret, tee_jwk)
        except RemitsError as err:
            return schemas.Outcome(rid, "denied", err.reason, err.detail)
        log.info("resource.released", resource=request.resource_path)  # never the value
        return schemas.Outcome(rid, "released", jwe=msgspec.json.encode(jwe))

    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if isinstance(message, schemas.Decision):
            await on_decision(message)
        elif isinstance(message, schemas.ResourceRequest):
            await notify_outcome(ctx, message.meta.reply_to, await release(message))
        else:
            await notify_outcome(
                ctx,
                message.meta.reply_to,
                schemas.Outcome(message.meta.request_id, "rejected", "bus.unexpected_message"),
            )
        return []

    return handle
