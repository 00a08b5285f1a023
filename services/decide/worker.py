"""Trust decision: turn the appraisal into a signed EAR token (or a rejection), exactly once per
request, and publish it on remits.decision.<tenant>.<tee>.<status> for auditors. Each tenant's
tokens are signed with its own key and name it as their issuer."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from services.common import StageContext, decision_record, reject
from services.custody import record_signing_key, tenant_signing_backend
from shared import observability, schemas, tenants
from shared.bus import Publish
from shared.config import Settings
from shared.ear import EarSigner, build_ear_claims, status_of
from shared.errors import RemitsError
from shared.telemetry import get_logger
from shared.trust.evaluate import VERIFIER

log = get_logger("remits.decide")

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
        issuer=tenants.issuer(message.meta.tenant),
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


class TenantSigners:
    """One EAR signer per tenant: the default tenant's key, and each other tenant's own (created,
    or found in the HSM, when the tenant first appears), its public half recorded in the tenant's
    durable key set before it signs anything, so release and the JWKS know it first."""

    def __init__(
        self,
        settings: Settings,
        default: EarSigner,
        backend: Callable[[Settings, str], Any] = tenant_signing_backend,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._signers: dict[str, EarSigner] = {tenants.DEFAULT: default}

    def get(self, tenant: str) -> EarSigner:
        signer = self._signers.get(tenant)
        if signer is None:
            key = self._backend(self._settings, tenant)
            record_signing_key(self._settings, key.public_key(), tenant=tenant)
            signer = self._signers[tenant] = EarSigner(key)
        return signer

    def prepare(self, names: Iterable[str]) -> None:
        """Have a key ready for every tenant that exists (its JWKS is published before its first
        token); a key that cannot be had is logged here and refused per decision."""
        for name in names:
            if name not in self._signers:
                try:
                    self.get(name)
                except Exception as exc:
                    log.error("decide.tenant_key_unavailable", tenant=name, error=repr(exc))


def make_handler(ctx: StageContext):
    signers = TenantSigners(
        ctx.settings,
        EarSigner(ctx.signing_key),
        lambda settings, tenant: tenant_signing_backend(settings, tenant, root=ctx.signing_key),
    )
    trust = ctx.trust
    if trust is not None:
        signers.prepare(trust.snapshot().tenants)
        trust.on_change(lambda: signers.prepare(trust.snapshot().tenants))

    def signer_for(message: schemas.AppraisedEvidence | schemas.Rejection) -> EarSigner | schemas.Rejection:
        tenant = message.meta.tenant
        if isinstance(message, schemas.Rejection) or tenant == tenants.DEFAULT:
            return signers.get(tenants.DEFAULT)
        if trust is not None and not trust.snapshot(tenant).known:
            return schemas.Rejection(meta=message.meta, stage=STAGE, reason="tenant.unknown", detail=tenant)
        try:
            return signers.get(tenant)
        except RemitsError as err:
            return schemas.Rejection(meta=message.meta, stage=STAGE, reason=err.reason, detail=err.detail)
        except Exception as exc:  # a key that cannot be had signs nothing: a named refusal
            return schemas.Rejection(meta=message.meta, stage=STAGE, reason="custody.key_unavailable", detail=repr(exc))

    async def handle(message: schemas.StageUnion) -> Sequence[Publish]:
        if not isinstance(message, (schemas.AppraisedEvidence, schemas.Rejection)):
            return [reject(message.meta, STAGE, "bus.unexpected_message", type(message).__name__)]
        signer = signer_for(message)
        if isinstance(signer, schemas.Rejection):
            message, signer = signer, signers.get(tenants.DEFAULT)
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
