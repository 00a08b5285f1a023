"""The platform team's hardware revocations (a chip or an FMSPC revoked in the default tenant) hold
for every tenant outside the Rego policies a tenant may replace: the appraisal contraindicates the
hardware, release refuses the token, and a replayed appraisal rebuilds them as they were."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec

from services.release.worker import Release, VerifiedToken
from shared import schemas
from shared.ear import status_of
from shared.platforms.base import Appraisal
from shared.policy.engine import PolicyCache, compile_policy
from shared.trust import buckets, history
from shared.trust.evaluate import PLATFORM_REVOKED, appraise, attestation_policy
from shared.trust.snapshot import TrustSnapshot, build_snapshots

CHIP = "aa11"
AFFIRMING = {"hardware": 2, "executables": 2, "instance-identity": 2}

# A tenant's own policies that ignore input.revocations altogether.
PERMISSIVE_ATTESTATION = """package remits.attestation
result := {"vector": {"hardware": 2, "executables": 2, "instance-identity": 2}, "notes": []}
"""
PERMISSIVE_RESOURCE = """package remits.resource
result := {"allow": true, "reason": "ok"}
"""


def _raw(record: object, revision: int) -> tuple[int, bytes]:
    return revision, msgspec.json.encode(record)


def _policy(policy_id: str, rego: str) -> schemas.PolicyRecord:
    kind = "resource" if policy_id == "resource" else "attestation"
    return schemas.PolicyRecord(id=policy_id, kind=kind, rego=rego, digest="d")  # type: ignore[arg-type]


def _raw_buckets() -> dict[str, dict[str, tuple[int, bytes]]]:
    revoked = schemas.RevocationRecord(kind="chip_id", value=CHIP, reason="key extracted", revoked_at=1.0)  # type: ignore[arg-type]
    return {
        buckets.REVOCATIONS.name: {f"chip_id.{CHIP}": _raw(revoked, 1)},
        buckets.POLICIES.name: {
            "t=team-a.attestation.sample": _raw(_policy("attestation.sample", PERMISSIVE_ATTESTATION), 2),
            "t=team-a.resource": _raw(_policy("resource", PERMISSIVE_RESOURCE), 3),
        },
        buckets.TENANTS.name: {"team-a": _raw(schemas.TenantRecord(name="team-a"), 4)},
    }


REVISIONS = {buckets.REVOCATIONS.name: 1, buckets.POLICIES.name: 3, buckets.TENANTS.name: 4}


@dataclass
class _Platform:
    tee: str = "sample"
    reference_names: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)

    def appraise(self, evidence: bytes, claims: dict[str, Any], references: Any) -> Appraisal:
        return Appraisal(vector=dict(AFFIRMING))


def _appraise(snapshot: TrustSnapshot, device: str = CHIP) -> Any:
    policy = attestation_policy(snapshot, "sample", PolicyCache())
    claims = {"sample.device_id": device, "sample.measurement": "bb22"}
    return appraise(_Platform(), snapshot, policy, b"evidence", claims, 10.0)  # type: ignore[arg-type]


def test_the_inherited_revocations_are_their_own_field() -> None:
    snapshots = build_snapshots(_raw_buckets(), REVISIONS)
    assert set(snapshots["team-a"].platform_revocations) == {("chip_id", CHIP)}
    assert ("chip_id", CHIP) in snapshots["team-a"].revocations  # still the policies' input too
    assert snapshots["default"].platform_revocations == {}
    assert ("chip_id", CHIP) in snapshots["default"].revocations


def test_a_tenants_permissive_attestation_policy_cannot_affirm_a_revoked_chip() -> None:
    team_a = build_snapshots(_raw_buckets(), REVISIONS)["team-a"]
    assert attestation_policy(team_a, "sample", PolicyCache()).revision == 2  # the tenant's own
    verdict = _appraise(team_a)
    assert not verdict.reject
    assert status_of(verdict.vector) == "contraindicated"
    assert verdict.vector["hardware"] == 96
    assert f"{PLATFORM_REVOKED}.chip_id: key extracted" in verdict.notes
    assert verdict.provenance.revocations == [f"chip_id:{CHIP}"]
    assert verdict.provenance.bucket_revisions[buckets.TENANTS.name] == 4
    # Another chip: the tenant's policy decides alone.
    other = _appraise(team_a, device="cc33")
    assert status_of(other.vector) == "affirming" and other.notes == []


def test_the_default_tenants_outcome_is_the_default_policys_own() -> None:
    default = build_snapshots(_raw_buckets(), REVISIONS)["default"]
    verdict = _appraise(default)
    assert status_of(verdict.vector) == "contraindicated"
    assert not any(n.startswith(PLATFORM_REVOKED) for n in verdict.notes)  # the policy's note alone
    assert "revoked.chip_id: key extracted" in verdict.notes


def _release(snapshots: dict[str, TrustSnapshot]) -> Release:
    release = Release.__new__(Release)
    cache = PolicyCache()
    trust = SimpleNamespace(snapshot=lambda tenant: snapshots[tenant])
    release.ctx = SimpleNamespace(trust=trust, policies=cache, clock=lambda: 10.0)  # type: ignore[assignment]
    return release


def _token(tenant: str, device: str = CHIP) -> VerifiedToken:
    return VerifiedToken(
        status="affirming",
        tee_jwk={},
        eat_nonce="n",
        tee="sample",
        claims={"sample.device_id": device, "sample.measurement": "bb22"},
        jti="token-0001",
        iat=1,
        exp=100,
        tenant=tenant,
    )


def test_release_refuses_a_revoked_chip_before_the_tenants_permissive_resource_policy() -> None:
    snapshots = build_snapshots(_raw_buckets(), REVISIONS)
    release = _release(snapshots)
    assert release._judge(_token("team-a"), "repo/key/one") == (False, PLATFORM_REVOKED, None)
    # The tenant's policy alone judges other chips (and allows everything).
    assert release._judge(_token("team-a", device="cc33"), "repo/key/one")[:2] == (True, "ok")
    # The default tenant: its own (default) resource policy decides, as before.
    allowed, reason, _ = release._judge(_token("default"), "repo/key/one")
    assert not allowed and reason != PLATFORM_REVOKED


def test_the_permissive_resource_policy_alone_would_have_released() -> None:
    policy = compile_policy("resource", "resource", PERMISSIVE_RESOURCE)
    assert policy.evaluate({"token": {}, "resource": {}, "revocations": [{"kind": "chip_id"}], "now": 1})["allow"]


def test_a_replayed_snapshot_of_a_tenant_inherits_the_platform_revocations(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """snapshot_at splits the buckets as the mirror does: team-a knows itself and inherits the
    chip revocation, so a past contraindication for it replays the same."""
    raw = _raw_buckets()
    asked: list[tuple[str, int]] = []

    async def bucket_at(js: Any, bucket: buckets.Bucket, revision: int) -> dict[str, tuple[int, bytes]]:
        asked.append((bucket.name, revision))
        return dict(raw.get(bucket.name, {}))

    async def latest(js: Any, bucket: buckets.Bucket) -> int:
        return 9

    monkeypatch.setattr(history, "bucket_at", bucket_at)
    monkeypatch.setattr(history, "_latest", latest)
    snapshot = asyncio.run(history.snapshot_at(None, REVISIONS, "team-a"))  # type: ignore[arg-type]
    assert snapshot.known and snapshot.tenant == "team-a"
    assert set(snapshot.platform_revocations) == {("chip_id", CHIP)}
    assert snapshot.policies["attestation.sample"].revision == 2
    assert status_of(_appraise(snapshot).vector) == "contraindicated"
    # A record of before the tenants bucket was recorded: today's tenants.
    asked.clear()
    older = {k: v for k, v in REVISIONS.items() if k != buckets.TENANTS.name}
    snapshot = asyncio.run(history.snapshot_at(None, older, "team-a"))  # type: ignore[arg-type]
    assert (buckets.TENANTS.name, 9) in asked and snapshot.known
    # A tenant that did not exist: known=False, nothing of it read.
    ghost = asyncio.run(history.snapshot_at(None, REVISIONS, "ghost"))  # type: ignore[arg-type]
    assert not ghost.known and ghost.platform_revocations == {} and ghost.policies == {}
    default = asyncio.run(history.snapshot_at(None, REVISIONS))  # type: ignore[arg-type]
    assert default.known and ("chip_id", CHIP) in default.revocations
