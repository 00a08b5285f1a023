"""Measurement check: the evidence's measurements against the provisioned reference values."""

from __future__ import annotations

import json
from collections.abc import Sequence

from services.common import StageContext, reject
from shared import schemas
from shared.bus import Publish
from shared.errors import RemitsError

STAGE = "measure"
# Violations of these fields mean "this is not an approved image", whatever the TEE.
MEASUREMENT_FIELDS = frozenset({"measurement", "tdx.quote.body.mr_td", "sgx.quote.body.mr_enclave"})


def make_handler(ctx: StageContext):
    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if not isinstance(message, schemas.VerifiedEvidence):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        platform = ctx.platforms.get(message.meta.tee)
        if platform is None:
            return [reject(message.meta, STAGE, "tee.unsupported", message.meta.tee)]
        assert ctx.reference_values is not None
        references = await ctx.reference_values.get(message.meta.tee, tuple(platform.reference_names))
        try:
            appraisal = platform.appraise(message.evidence, message.claims, references)
        except RemitsError as err:
            return [reject(message.meta, STAGE, err)]
        if appraisal.violations:
            fields = [v.field for v in appraisal.violations]
            reason = (
                "measurement.not_in_reference_values"
                if MEASUREMENT_FIELDS & set(fields)
                else f"policy.{fields[0]}"
            )
            detail = json.dumps([{"field": v.field, "got": v.got, "want": v.want} for v in appraisal.violations])
            return [reject(message.meta, STAGE, reason, detail)]
        appraised = schemas.AppraisedEvidence(
            meta=message.meta,
            runtime_data_claims=message.runtime_data_claims,
            claims=message.claims,
            vector=appraisal.vector,
            notes=appraisal.notes,
        )
        # The appraisal subject: NATS lets only the measure stage publish there.
        return [Publish(schemas.APPRAISAL_SUBJECT, appraised, f"{message.meta.request_id}:{STAGE}")]

    return handle
