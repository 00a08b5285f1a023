"""Pure: one appraisal, from verified claims to the AR4SI vector, under the trust configuration of
one snapshot. The measure stage runs it for every evidence; `remits audit replay` runs it again
over a recorded evidence with the configuration of that time (or today's)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from shared import schemas
from shared.ear import normalize_vector, tier_of
from shared.errors import ParseError, RemitsError
from shared.platforms.base import Platform
from shared.policy.engine import CompiledPolicy, PolicyCache, PolicyError, default_policy
from shared.trust import buckets
from shared.trust.appraisal import (
    check_references,
    matching_revocations,
    platform_revocations,
    revocation_input,
)
from shared.trust.snapshot import Entry, TrustSnapshot

VERIFIER = "remits 0.1.0"
# The claim an inherited platform revocation (a revoked chip or FMSPC) contraindicates, and how
# (the packaged default policies' own treatment of such a revocation).
PLATFORM_REVOKED_CLAIM = "hardware"
CONTRAINDICATED = 96
PLATFORM_REVOKED = "platform.revoked"


@dataclass(frozen=True)
class Verdict:
    vector: dict[str, int]
    notes: list[str]
    provenance: schemas.Appraised
    reference: dict[str, dict[str, str]] = field(default_factory=dict)
    reject: str = ""  # a stable reason when the evidence is refused outright
    detail: str = ""


class PolicyUnavailable(Exception):
    """The operator's policy for a TEE cannot be used (unreadable or not compilable). Never
    replaced by the default: that could be more permissive than what the operator set."""

    def __init__(self, policy_id: str, detail: str) -> None:
        super().__init__(f"{policy_id}: {detail}")
        self.policy_id = policy_id
        self.detail = detail


def attestation_policy(snapshot: TrustSnapshot, tee: str, cache: PolicyCache) -> CompiledPolicy:
    """The policy for ``tee``: the operator's, or the built-in default when none was set."""
    policy_id = f"attestation.{tee}"
    return _policy(snapshot, policy_id, "attestation", cache)


def resource_policy(snapshot: TrustSnapshot, cache: PolicyCache) -> CompiledPolicy:
    return _policy(snapshot, "resource", "resource", cache)


def _policy(snapshot: TrustSnapshot, policy_id: str, kind: str, cache: PolicyCache) -> CompiledPolicy:
    if f"{buckets.POLICIES.name}:{policy_id}" in snapshot.broken:
        raise PolicyUnavailable(policy_id, "the stored record does not decode")
    entry = snapshot.policies.get(policy_id)
    # Either way a policy that cannot be had is a named refusal, never a failing worker (a TEE
    # without a packaged default, or a stored text that does not compile).
    try:
        if entry is None:
            return default_policy(policy_id)
        return cache.get_or_compile(policy_id, kind, entry.record.rego, entry.revision)
    except PolicyError as exc:
        raise PolicyUnavailable(policy_id, str(exc)) from None


def evidence_digest(evidence: bytes) -> str:
    return hashlib.sha256(evidence).hexdigest()


def appraise(
    platform: Platform,
    snapshot: TrustSnapshot,
    policy: CompiledPolicy,
    evidence: bytes,
    claims: dict[str, Any],
    now: float,
) -> Verdict:
    tee = platform.tee
    references = check_references(snapshot, tee, tuple(platform.reference_names), claims, now)
    revoked = matching_revocations(snapshot, tee, claims)
    platform_revoked = platform_revocations(snapshot, tee, claims)
    provenance = schemas.Appraised(
        evidence_digest=evidence_digest(evidence),
        policy_id=policy.id,
        policy_digest=policy.digest,
        policy_revision=policy.revision,
        reference_revisions=references.used,
        references=references.report,
        revocations=[f"{e.record.kind}:{e.record.value}" for e in revoked],
        bucket_revisions={
            name: snapshot.revisions.get(name, 0)
            # The tenants bucket too: which tenants existed decides what revocations they inherited.
            for name in (buckets.POLICIES.name, buckets.REFVALS.name, buckets.REVOCATIONS.name, buckets.TENANTS.name)
        },
        verifier=VERIFIER,
    )
    try:
        appraisal = platform.appraise(evidence, claims, references.effective)
    except RemitsError as err:
        return Verdict({}, [], provenance, references.report, reject=err.reason, detail=err.detail)
    policy_input = {
        "tee": tee,
        "claims": claims,
        "platform_vector": appraisal.vector,
        "violations": [{"field": v.field, "got": v.got, "want": v.want} for v in appraisal.violations],
        "reference": references.report,
        "revocations": revocation_input(revoked),
        "notes": list(appraisal.notes),
    }
    try:
        result = policy.evaluate(policy_input)
    except PolicyError as exc:
        return Verdict(
            {}, [], provenance, references.report, reject="policy.evaluation_failed", detail=str(exc)
        )
    return enforce_platform_revocations(verdict_of(result, provenance, references.report), platform_revoked)


def enforce_platform_revocations(verdict: Verdict, entries: list[Entry[schemas.RevocationRecord]]) -> Verdict:
    """The platform team's revocations a tenant inherits hold whatever the tenant's own policy
    made of ``input.revocations``: a verdict that is not a rejection gets the hardware claim
    contraindicated, as the default policies do, with a note naming each revocation."""
    if not entries or verdict.reject:
        return verdict
    vector = dict(verdict.vector)
    if tier_of(vector.get(PLATFORM_REVOKED_CLAIM, 0)) != "contraindicated":
        vector[PLATFORM_REVOKED_CLAIM] = CONTRAINDICATED
    notes = [*verdict.notes, *(f"{PLATFORM_REVOKED}.{e.record.kind}: {e.record.reason}" for e in entries)]
    return dataclasses.replace(verdict, vector=vector, notes=notes)


def verdict_of(
    result: dict[str, Any], provenance: schemas.Appraised, report: dict[str, dict[str, str]]
) -> Verdict:
    """The policy's result object as a verdict; anything malformed is a rejection (fail closed)."""
    reject = result.get("reject")
    notes = result.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        return Verdict({}, [], provenance, report, reject="policy.bad_result", detail="notes must be strings")
    if reject:
        detail = result.get("detail", "")
        text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)
        return Verdict({}, notes, provenance, report, reject=str(reject), detail=text)
    vector = result.get("vector")
    if not isinstance(vector, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in vector.items()
    ):
        return Verdict(
            {},
            notes,
            provenance,
            report,
            reject="policy.bad_result",
            detail="vector must map claims to integers",
        )
    try:
        normalize_vector(vector)  # unknown claim names or out-of-range values are the policy's error
        for value in vector.values():
            tier_of(value)
    except ParseError as exc:
        return Verdict({}, notes, provenance, report, reject="policy.bad_result", detail=exc.detail)
    return Verdict(dict(vector), notes, provenance, report)
