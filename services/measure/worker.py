"""Measurement check: the evidence's claims against the provisioned reference values and
revocations, judged by the TEE's attestation policy (Rego). The evidence and what the appraisal
rested on are kept (stream REMITS_EVIDENCE) so that the decision can be replayed later."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from services import sevlaunch
from services.common import StageContext, reject
from shared import schemas
from shared.bus import Publish
from shared.errors import RemitsError, VerificationError
from shared.platforms.sev import broker
from shared.trust.evaluate import PolicyUnavailable, appraise, attestation_policy
from shared.trust.snapshot import TrustSnapshot

STAGE = "measure"


async def _sev_launch_claims(
    ctx: StageContext, message: schemas.VerifiedEvidence, snapshot: TrustSnapshot, now: float
) -> dict[str, object]:
    state = await sevlaunch.load_state(ctx, message.meta.session_id)
    if message.claims.get("sev.workload_id") != state.workload_id:
        raise VerificationError("sev.workload_mismatch", "the claims name another workload than the session")
    workload = state.workload_id
    requirements = sevlaunch.requirements(snapshot, workload, now)
    verdict = broker.appraise_launch(
        state,
        message.evidence[:32],
        message.evidence[32:48],
        sevlaunch.launch_digests(snapshot, workload, now),
        requirements,
    )
    # The policy violations are judged by the platform's appraisal and Rego, from these claims.
    return {**verdict.claims, "sev.allow_debug": requirements.allow_debug}


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
        snapshot = trust.snapshot(meta.tenant)
        if not snapshot.known:  # deleted since the guest was admitted, or never created
            return [reject(meta, STAGE, "tenant.unknown", meta.tenant)]
        try:
            policy = attestation_policy(snapshot, meta.tee, policies)
        except PolicyUnavailable as exc:
            return [reject(meta, STAGE, "policy.unavailable", str(exc))]
        now = ctx.clock()
        if meta.tee == sevlaunch.TEE:
            try:  # the launch measurement under the session's TIK, against the workload's digests
                claims = {**message.claims, **await _sev_launch_claims(ctx, message, snapshot, now)}
            except RemitsError as err:
                return [reject(meta, STAGE, err)]
            message = msgspec.structs.replace(message, claims=claims)
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
            tenant=meta.tenant,
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
