"""Tenants as pure values: names, how their records are keyed in the shared buckets, how a
request names its tenant, and each tenant's snapshot holding its own records only."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import schemas, tenants
from shared.trust import buckets
from shared.trust.snapshot import build_snapshots

NAMES = st.from_regex(r"[a-z0-9][a-z0-9-]{0,30}", fullmatch=True)


@pytest.mark.parametrize("name", ["default", "team-a", "a", "0", "x" * 31])
def test_valid_names(name: str) -> None:
    assert tenants.check_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "Team", "a.b", "a*", "a>", "a b", "x" * 32, "t=a", "ü"])
def test_invalid_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(tenants.BadTenant) as caught:
        tenants.check_name(name, "extra-params.tenant")
    assert caught.value.field == "extra-params.tenant"
    assert not tenants.is_name(name)


@given(NAMES, st.sampled_from(["attestation.snp", "resource", "snp.measurement.0f", "repo/type/tag", "token_id.abcdefgh"]))
def test_scoped_keys_read_back_as_their_tenant_and_key(tenant: str, key: str) -> None:
    assert tenants.split_key(tenants.scoped_key(tenant, key)) == (tenant, key)


def test_the_default_tenants_keys_are_unprefixed_and_foreign_prefixes_belong_to_nobody() -> None:
    assert tenants.scoped_key("default", "resource") == "resource"
    assert tenants.scoped_key("team-a", "resource") == "t=team-a.resource"
    # A prefix naming no valid tenant (or "default" spelt out) is nobody's: never read.
    for stored in ("t=Team.resource", "t=default.resource", "t=team-a", "t=.x"):
        assert tenants.split_key(stored)[0] == ""
    with pytest.raises(buckets.BadKey):  # a default-tenant resource cannot pose as a tenant's
        buckets.resource_key("t=team-a.x/type/tag")


@pytest.mark.parametrize(
    ("path", "extra", "expected"),
    [
        (None, "", "default"),
        (None, {}, "default"),
        (None, {"tenant": "team-a"}, "team-a"),
        ("team-a", {}, "team-a"),
        ("team-a", {"tenant": "team-a"}, "team-a"),
        ("team-a", "", "team-a"),
        (None, '{"tenant": "team-a"}', "team-a"),  # extra-params sent as a JSON string
        ("team-a", '{"tenant": "team-a"}', "team-a"),
        (None, "opaque", "default"),
        (None, "[1]", "default"),
    ],
)
def test_the_tenant_an_auth_names(path: str | None, extra: object, expected: str) -> None:
    assert tenants.tenant_of_auth(path, extra) == expected


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("team-a", {"tenant": "team-b"}, "extra-params.tenant"),
        (None, {"tenant": 7}, "extra-params.tenant"),
        (None, {"tenant": "A"}, "extra-params.tenant"),
        ("Team.A", {}, "path"),
        ("team-a", '{"tenant": "team-b"}', "extra-params.tenant"),
    ],
)
def test_a_contradicting_or_malformed_tenant_is_refused(path: str | None, extra: object, field: str) -> None:
    with pytest.raises(tenants.BadTenant) as caught:
        tenants.tenant_of_auth(path, extra)
    assert caught.value.field == field


@given(NAMES)
def test_issuers_name_their_tenant(tenant: str) -> None:
    assert tenants.tenant_of_issuer(tenants.issuer(tenant)) == tenant


@pytest.mark.parametrize("iss", ["", "remits/t/", "remits/t/default", "remits/t/A", "someone", None, 3])
def test_foreign_issuers_name_no_tenant(iss: object) -> None:
    assert tenants.tenant_of_issuer(iss) == ""


def _raw(record: msgspec.Struct, revision: int) -> tuple[int, bytes]:
    return revision, schemas.encode_json(record)


def _policy(rego: str) -> schemas.PolicyRecord:
    return schemas.PolicyRecord(id="resource", kind="resource", rego=rego, digest="d")


def test_each_tenant_snapshot_holds_its_own_records_under_its_own_keys() -> None:
    raw = {
        buckets.POLICIES.name: {
            "resource": _raw(_policy("default's"), 1),
            "t=team-a.resource": _raw(_policy("team a's"), 2),
            "t=gone.resource": _raw(_policy("a deleted tenant's"), 3),
        },
        buckets.TENANTS.name: {"team-a": _raw(schemas.TenantRecord(name="team-a", attestations_per_s=5), 4)},
    }
    snapshots = build_snapshots(raw, {})
    assert set(snapshots) == {"default", "team-a"}  # "gone" has records but no tenant record
    assert snapshots["default"].policies["resource"].record.rego == "default's"
    assert snapshots["team-a"].policies["resource"].record.rego == "team a's"
    assert snapshots["team-a"].known and snapshots["default"].known
    record = snapshots["team-a"].tenant_record
    assert record is not None and record.attestations_per_s == 5
    assert snapshots["default"].tenant_record is None
    assert set(snapshots["default"].tenants) == {"team-a"}


def _revoked(kind: str, value: str) -> schemas.RevocationRecord:
    return schemas.RevocationRecord(kind=kind, value=value, reason="test", revoked_at=1.0)  # type: ignore[arg-type]


def test_the_default_tenants_hardware_revocations_hold_for_every_tenant() -> None:
    """A chip or an FMSPC the platform team revokes is revoked under every tenant (their guests run
    on the same machines); a measurement or a token id stays the revoking tenant's matter, and a
    tenant's own revocations never reach the default tenant or another tenant."""
    raw = {
        buckets.REVOCATIONS.name: {
            "chip_id.aa11": _raw(_revoked("chip_id", "aa11"), 1),
            "fmspc.00906ed50000": _raw(_revoked("fmspc", "00906ed50000"), 2),
            "measurement.bb22": _raw(_revoked("measurement", "bb22"), 3),
            "token_id.default-token-1": _raw(_revoked("token_id", "default-token-1"), 4),
            "t=team-a.chip_id.cc33": _raw(_revoked("chip_id", "cc33"), 5),
            "t=team-a.measurement.dd44": _raw(_revoked("measurement", "dd44"), 6),
        },
        buckets.TENANTS.name: {
            "team-a": _raw(schemas.TenantRecord(name="team-a"), 7),
            "team-b": _raw(schemas.TenantRecord(name="team-b"), 8),
        },
    }
    snapshots = build_snapshots(raw, {})
    assert set(snapshots["default"].revocations) == {
        ("chip_id", "aa11"), ("fmspc", "00906ed50000"), ("measurement", "bb22"), ("token_id", "default-token-1"),
    }  # fmt: skip
    assert set(snapshots["team-a"].revocations) == {
        ("chip_id", "aa11"), ("fmspc", "00906ed50000"), ("chip_id", "cc33"), ("measurement", "dd44"),
    }  # fmt: skip
    assert set(snapshots["team-b"].revocations) == {("chip_id", "aa11"), ("fmspc", "00906ed50000")}
    assert snapshots["team-b"].revocations[("chip_id", "aa11")].record.reason == "test"
