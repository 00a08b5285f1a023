"""`remits audit replay`: run a past appraisal again from what was recorded (the evidence and
claims the measure stage kept, and the revisions of the trust buckets it saw) and say whether
the result is the same.

Replayed at the time of the appraisal against the configuration of that time, a decision must
come out the same (anything else means the record or the configuration history was tampered
with, or the verifier changed); with ``current``, against today's policy and reference values at
today's time, it shows what a change of configuration would have decided instead. The evidence's
signature is not checked again: the claims are the ones the identity stage verified then."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec
from nats.js.errors import NotFoundError

from services.runtime import build_platforms
from shared import schemas
from shared.config import Settings
from shared.ear import status_of
from shared.policy.engine import CompiledPolicy, PolicyCache, compile_policy, default_policy
from shared.trust import buckets
from shared.trust.evaluate import PolicyUnavailable, Verdict, appraise, attestation_policy
from shared.trust.history import HistoryIncomplete, snapshot_at
from shared.trust.mirror import TrustMirror
from shared.trust.snapshot import TrustSnapshot


class ReplayError(Exception):
    pass


async def recorded_evidence(js: Any, request_id: str) -> schemas.EvidenceRecord:
    try:
        msg = await js.get_last_msg(schemas.EVIDENCE_STREAM, schemas.evidence_subject(request_id))
    except NotFoundError:
        raise ReplayError(f"no evidence kept for {request_id} (never appraised, or past its retention)") from None
    try:
        record = schemas.decode_evidence_record(msg.data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ReplayError(f"the kept evidence of {request_id} does not decode: {exc}") from None
    if hashlib.sha256(record.evidence).hexdigest() != record.provenance.evidence_digest:
        raise ReplayError("the kept evidence does not match its recorded digest")
    return record


def _policy_then(snapshot: TrustSnapshot, record: schemas.EvidenceRecord) -> CompiledPolicy:
    recorded = record.provenance
    if recorded.policy_revision == 0:
        policy = default_policy(recorded.policy_id)
    else:
        entry = snapshot.policies.get(recorded.policy_id)
        if entry is None or entry.revision != recorded.policy_revision:
            raise ReplayError(f"policy {recorded.policy_id} revision {recorded.policy_revision} is no longer kept")
        policy = compile_policy(recorded.policy_id, entry.record.kind, entry.record.rego, entry.revision)
    if policy.digest != recorded.policy_digest:
        raise ReplayError(
            f"policy {recorded.policy_id}: the text available now (sha256 {policy.digest[:16]}…) is not the one that "
            f"judged (sha256 {recorded.policy_digest[:16]}…)"
        )
    return policy


def _outcome(vector: dict[str, int], reject: str) -> dict[str, Any]:
    if reject:
        return {"status": "rejected", "reason": reject}
    status = status_of(vector)
    return {"status": "rejected" if status == "none" else status, "vector": vector}


def _summary(verdict: Verdict) -> dict[str, Any]:
    return {**_outcome(verdict.vector, verdict.reject), "notes": verdict.notes, "reference": verdict.reference}


async def replay(js: Any, settings: Settings, request_id: str, current: bool = False) -> dict[str, Any]:
    record = await recorded_evidence(js, request_id)
    platform = build_platforms(settings).get(record.tee)
    if platform is None:
        raise ReplayError(f"TEE {record.tee!r} is not supported by this build")
    if current:
        readable = (buckets.POLICIES, buckets.REFVALS, buckets.REVOCATIONS, buckets.TENANTS)
        mirror = TrustMirror(js, readable, check_every_s=0)
        await mirror.start()
        try:
            snapshot = mirror.snapshot(record.tenant)
        finally:
            await mirror.stop()
        try:
            policy = attestation_policy(snapshot, record.tee, PolicyCache())
        except PolicyUnavailable as exc:
            raise ReplayError(str(exc)) from None
        at = time.time()
    else:
        try:
            snapshot = await snapshot_at(js, record.provenance.bucket_revisions, record.tenant)
        except HistoryIncomplete as exc:
            raise ReplayError(str(exc)) from None
        policy = _policy_then(snapshot, record)
        at = record.appraised_at
    verdict = appraise(platform, snapshot, policy, record.evidence, record.claims, at)
    recorded = _outcome(record.vector, record.reject)
    replayed = _summary(verdict)
    differences = [
        f"{name}: recorded {recorded.get(name)!r}, replayed {replayed.get(name)!r}"
        for name in ("status", "reason", "vector")
        if recorded.get(name) != replayed.get(name)
    ]
    return {
        "request_id": request_id,
        "result": "same" if not differences else "different",
        "against": "current" if current else "recorded",
        "appraised_at": record.appraised_at,
        "policy": {"id": policy.id, "digest": policy.digest, "revision": policy.revision},
        "recorded": {**recorded, "provenance": msgspec.to_builtins(record.provenance)},
        "replayed": replayed,
        "differences": differences,
    }
