"""Identity verification: endorsement chain to the pinned vendor root and the evidence signature."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from services.common import StageContext, next_stage, reject
from shared import schemas
from shared.bus import Publish
from shared.errors import RemitsError

STAGE = "identity"


def make_handler(ctx: StageContext):
    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if not isinstance(message, schemas.EndorsedEvidence):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        platform = ctx.platforms.get(message.meta.tee)
        if platform is None:
            return [reject(message.meta, STAGE, "tee.unsupported", message.meta.tee)]
        now = datetime.fromtimestamp(ctx.clock(), tz=UTC)
        try:
            claims = await ctx.run_crypto(
                platform.verify_identity, message.evidence, message.endorsement, now
            )
        except RemitsError as err:
            return [reject(message.meta, STAGE, err)]
        verified = schemas.VerifiedEvidence(
            meta=message.meta,
            runtime_data_claims=message.runtime_data_claims,
            claims=claims,
            evidence=message.evidence,
        )
        return [next_stage("measure", verified, STAGE)]

    return handle
