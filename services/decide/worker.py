"""Trust decision: turn the appraisal into a signed EAR token (or a rejection), exactly once per
request, and publish it on remits.decision.<tee>.<status> for auditors."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from services.common import StageContext, decision_record, reject
from shared import observability, schemas
from shared.bus import Publish
from shared.ear import EarSigner, build_ear_claims, status_of
from shared.trust.evaluate import VERIFIER

STAGE = "decide"
POLICY_ID = "remits-default"  # when an appraisal names no policy (none came from the measure stage)


def token_id(request_id: str) -> str:
    """The EAR's jti: derived from the request, so a redelivered appraisal signs the same id."""
    return hashlib.sha256(f"remits-ear|{request_id}".encode()).hexdigest()[:32]


def policy_label(provenance: schemas.Appraised | None) -> str:
    """ear.appraisal-policy-id: the policy and the digest of the exact text that judged."""
    if provenance is None or not provenance.policy_id:
        return POLICY_ID
    return f"{provenance.policy_id}@sha256:{provenance.policy_digest}"


def decide(
    message: schemas.AppraisedEvidence | schemas.Rejection, signer: EarSigner, now: float, lifetime_s: int
) -> schemas.Decision:
    """Pure: the decision for one appraisal or rejection."""
    if isinstance(message, schemas.Rejection):
        return schemas.Decision(
            meta=message.meta,
            status="rejected",
            decided_at=now,
            reason=message.reason,
            detail=f"{message.stage}: {message.detail}" if message.detail else message.stage,
            provenance=message.provenance,
        )
    status = status_of(message.vector)
    annotated = {
        message.meta.tee: message.claims,
        "runtime_data_claims": message.runtime_data_claims,
    }
    claims = build_ear_claims(
        tee=message.meta.tee,
        vector=message.vector,
        annotated_evidence=annotated,
        policy_id=policy_label(message.provenance),
        issued_at=int(now),
        lifetime_s=lifetime_s,
        verifier_build=VERIFIER,
        eat_nonce=nonce if isinstance(nonce := message.runtime_data_claims.get("nonce"), str) else None,
        token_id=(jti := token_id(message.meta.request_id)),
    )
    if status == "none":
        # A vector with no claims at all is not a trust statement: refuse rather than affirm.
        return schemas.Decision(
            meta=message.meta,
            status="rejected",
            decided_at=now,
            reason="policy.no_claims",
            vector=message.vector,
            provenance=message.provenance,
        )
    return schemas.Decision(
        meta=message.meta,
        status=status,  # type: ignore[arg-type]
        decided_at=now,
        reason="; ".join(message.notes),
        token=signer.sign(claims),
        vector=message.vector,
        claims=message.claims,
        token_id=jti,
        provenance=message.provenance,
    )


def make_handler(ctx: StageContext):
    signer = EarSigner(ctx.signing_key)

    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if not isinstance(message, (schemas.AppraisedEvidence, schemas.Rejection)):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        decision = decide(message, signer, ctx.clock(), ctx.settings.token_lifetime_s)
        earlier = await ctx.store.claim_decision(message.meta.request_id, schemas.encode(decision))
        if earlier is not None:
            # A redelivery (or a dead-letter path) decided already: keep that one decision.
            decision = schemas.decode_decision(earlier)
        else:  # counted once per request, by whichever delivery made the decision
            observability.decision(decision.meta.tee, decision.status, decision.reason)
        # The decision stream is both the audit record and the release stage's input.
        return [decision_record(decision)]

    return handle
