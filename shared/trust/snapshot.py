"""An immutable view of the trust configuration at one set of bucket revisions. Workers read a
snapshot per request; a change builds a new one, swapped in whole (never half-updated)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import msgspec

from shared import schemas
from shared import tenants as tenants_
from shared.telemetry import get_logger
from shared.trust import buckets

log = get_logger("remits.trust")
R = TypeVar("R")


@dataclass(frozen=True)
class Entry(Generic[R]):
    key: str
    revision: int
    record: R

    @property
    def ref(self) -> str:
        """How an appraisal names the record it rested on."""
        return f"{self.key}@{self.revision}"


# Raw bucket content: key -> (revision, value bytes). Deleted keys are absent.
RawBucket = Mapping[str, tuple[int, bytes]]


@dataclass(frozen=True)
class TrustSnapshot:
    policies: Mapping[str, Entry[schemas.PolicyRecord]] = field(default_factory=dict)
    # (tee, name) -> every record for that reference name, in key order
    refvals: Mapping[tuple[str, str], tuple[Entry[schemas.ReferenceValueRecord], ...]] = field(
        default_factory=dict
    )
    resources: Mapping[str, Entry[schemas.ResourceRecord]] = field(default_factory=dict)
    revocations: Mapping[tuple[str, str], Entry[schemas.RevocationRecord]] = field(default_factory=dict)
    # The default tenant's hardware revocations (buckets.PLATFORM_REVOCATION_KINDS) as inherited by
    # another tenant: also in ``revocations`` (the policies' input), and kept apart because they
    # are enforced outside the tenant's own policies, which the tenant may replace (empty for the
    # default tenant, whose own policies are the platform team's).
    platform_revocations: Mapping[tuple[str, str], Entry[schemas.RevocationRecord]] = field(default_factory=dict)
    admin_keys: Mapping[str, Entry[schemas.AdminKeyRecord]] = field(default_factory=dict)
    # Every tenant that exists (the same in each tenant's snapshot); the default tenant always does.
    tenants: Mapping[str, Entry[schemas.TenantRecord]] = field(default_factory=dict)
    tenant: str = tenants_.DEFAULT  # whose records the maps above hold (keys within the tenant)
    # Keys whose value did not decode: a broken policy must not silently become the default.
    broken: frozenset[str] = frozenset()
    # The last revision seen of each bucket (by bucket name): what replay rebuilds.
    revisions: Mapping[str, int] = field(default_factory=dict)

    @property
    def known(self) -> bool:
        """Whether this snapshot's tenant exists (the default tenant always does)."""
        return self.tenant == tenants_.DEFAULT or self.tenant in self.tenants

    @property
    def tenant_record(self) -> schemas.TenantRecord | None:
        entry = self.tenants.get(self.tenant)
        return entry.record if entry is not None else None


def _decode(bucket: buckets.Bucket, raw: RawBucket) -> tuple[dict[str, Entry[object]], set[str]]:
    entries: dict[str, Entry[object]] = {}
    broken: set[str] = set()
    for key in sorted(raw):
        revision, value = raw[key]
        try:
            entries[key] = Entry(key, revision, msgspec.json.decode(value, type=bucket.record))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error(
                "trust.record_unreadable", bucket=bucket.name, key=key, revision=revision, error=str(exc)
            )
            broken.add(f"{bucket.name}:{key}")
    return entries, broken


def build_snapshots(raw: Mapping[str, RawBucket], revisions: Mapping[str, int]) -> dict[str, TrustSnapshot]:
    """Pure: each tenant's snapshot of the given raw bucket contents (bucket name -> stored key ->
    value): its records under the keys it names them by. A tenant with records but no tenant
    record (deleted) gets no snapshot: nothing of it is read any more."""
    split: dict[str, dict[str, dict[str, tuple[int, bytes]]]] = {}
    for bucket in buckets.TENANT_SCOPED:
        for stored, value in raw.get(bucket.name, {}).items():
            tenant, key = tenants_.split_key(stored)
            if tenant:
                split.setdefault(tenant, {}).setdefault(bucket.name, {})[key] = value
    tenant_entries, bad = _decode(buckets.TENANTS, raw.get(buckets.TENANTS.name, {}))
    known = {key: entry for key, entry in tenant_entries.items() if tenants_.is_name(key)}
    default = build_snapshot(split.get(tenants_.DEFAULT, {}), revisions, tenants=known, broken=bad)  # type: ignore[arg-type]
    platform = {k: e for k, e in default.revocations.items() if k[0] in buckets.PLATFORM_REVOCATION_KINDS}
    snapshots = {
        tenant: build_snapshot(
            split.get(tenant, {}), revisions, tenant=tenant, tenants=known, broken=bad, inherited=platform  # type: ignore[arg-type]
        )
        for tenant in known
    }
    snapshots[tenants_.DEFAULT] = default
    return snapshots


def pick(snapshots: Mapping[str, TrustSnapshot], tenant: str) -> TrustSnapshot:
    """``tenant``'s snapshot out of build_snapshots' result; a tenant that does not exist gets an
    empty snapshot that says so (``known``)."""
    found = snapshots.get(tenant)
    if found is None:
        default = snapshots[tenants_.DEFAULT]
        return TrustSnapshot(tenants=default.tenants, tenant=tenant, revisions=default.revisions)
    return found


def build_snapshot(
    raw: Mapping[str, RawBucket],
    revisions: Mapping[str, int],
    *,
    tenant: str = tenants_.DEFAULT,
    tenants: Mapping[str, Entry[schemas.TenantRecord]] | None = None,
    broken: set[str] | None = None,
    inherited: Mapping[tuple[str, str], Entry[schemas.RevocationRecord]] | None = None,
) -> TrustSnapshot:
    """Pure: the snapshot of one tenant's raw bucket contents (bucket name -> key -> value);
    ``broken`` names records already found unreadable elsewhere (the tenants bucket's);
    ``inherited``: revocations that hold for this tenant too (the default tenant's hardware ones)."""
    decoded: dict[str, dict[str, Entry[object]]] = {}
    broken = set(broken or ())
    for bucket in buckets.TENANT_SCOPED:
        entries, bad = _decode(bucket, raw.get(bucket.name, {}))
        decoded[bucket.name] = entries
        broken |= bad
    refvals: dict[tuple[str, str], list[Entry[schemas.ReferenceValueRecord]]] = {}
    for entry in decoded[buckets.REFVALS.name].values():
        record = entry.record
        assert isinstance(record, schemas.ReferenceValueRecord)
        refvals.setdefault((record.tee, record.name), []).append(entry)  # type: ignore[arg-type]
    revocations = dict(inherited or {})
    for entry in decoded[buckets.REVOCATIONS.name].values():
        record = entry.record
        assert isinstance(record, schemas.RevocationRecord)
        revocations[(record.kind, record.value)] = entry
    return TrustSnapshot(
        policies=decoded[buckets.POLICIES.name],  # type: ignore[arg-type]
        refvals={k: tuple(v) for k, v in refvals.items()},
        resources=decoded[buckets.RESOURCES.name],  # type: ignore[arg-type]
        revocations=revocations,  # type: ignore[arg-type]
        platform_revocations=dict(inherited or {}),
        admin_keys=decoded[buckets.ADMIN_KEYS.name],  # type: ignore[arg-type]
        tenants=dict(tenants or {}),
        tenant=tenant,
        broken=frozenset(broken),
        revisions=dict(revisions),
    )
