"""Measurement check: the evidence's claims against the provisioned reference values and
revocations, judged by the TEE's attestation policy (Rego). The evidence and what the appraisal
rested on are kept (stream REMITS_EVIDENCE) so that the decision can be replayed later."""

from __future__ import annotations

from collections.abc import Sequence

from services.common import StageContext, reject
from shared import schemas
from shared.bus import Publish
from shared.trust.evaluate import PolicyUnavailable, appraise, attestation_policy

STAGE = "measure"


def make_handler(ctx: StageContext):
    assert ctx.trust is not None and ctx.policies is not None, "the measure stage reads the trust buckets"
    trust, policies = ctx.trust, ctx.policies

    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if not isinstance(message, schemas.VerifiedEvidence):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        meta = message.meta
        platform = ctx.platforms.get(meta.tee)
        if platform is None:
            return [reject(meta, STAGE, "tee.unsupported", meta.tee)]
        snapshot = trust.snapshot()
        try:
            policy = attestation_policy(snapshot, meta.tee, policies)
        except PolicyUnavailable as exc:
            return [reject(meta, STAGE, "policy.unavailable", str(exc))]
        now = ctx.clock()
        verdict = appraise(platform, snapshot, policy, message.evidence, message.claims, now)
        record = schemas.EvidenceRecord(
            request_id=meta.request_id,
            tee=meta.tee,
            appraised_at=now,
            evidence=message.evidence,
            claims=message.claims,
            runtime_data_claims=message.runtime_data_claims,
            provenance=verdict.provenance,
            vector=verdict.vector,
            reject=verdict.reject,
        )
        kept = Publish(schemas.evidence_subject(meta.request_id), record, f"{meta.request_id}:evidence")
        if verdict.reject:
            rejection = reject(meta, STAGE, verdict.reject, verdict.detail)
            assert isinstance(rejection.message, schemas.Rejection)
            rejection.message.provenance = verdict.provenance
            return [kept, rejection]
        appraised = schemas.AppraisedEvidence(
            meta=meta,
            runtime_data_claims=message.runtime_data_claims,
            claims=message.claims,
            vector=verdict.vector,
            notes=verdict.notes,
            provenance=verdict.provenance,
        )
        # The appraisal subject: NATS lets only the measure stage publish there.
        return [kept, Publish(schemas.APPRAISAL_SUBJECT, appraised, f"{meta.request_id}:{STAGE}")]

    return handle
