"""The key-value buckets holding the trust configuration, their keys, and the NATS rights to
read or change them. Every bucket keeps a history per key, so every change is a revision."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nats.js import api as js_api

from shared import schemas, tenants

HISTORY = 64  # revisions kept per key (the most JetStream allows)


@dataclass(frozen=True)
class Bucket:
    name: str  # the KV bucket (its stream is KV_<name>)
    collection: str  # its name in the admin API (/admin/v1/<collection>) and in admin events
    record: type

    @property
    def stream(self) -> str:
        return f"KV_{self.name}"

    @property
    def subjects(self) -> str:
        return f"$KV.{self.name}.>"


POLICIES = Bucket("remits_policies", "policies", schemas.PolicyRecord)
REFVALS = Bucket("remits_refvals", "reference-values", schemas.ReferenceValueRecord)
RESOURCES = Bucket("remits_resources", "resources", schemas.ResourceRecord)
REVOCATIONS = Bucket("remits_revocations", "revocations", schemas.RevocationRecord)
ADMIN_KEYS = Bucket("remits_admin_keys", "admin-keys", schemas.AdminKeyRecord)
# The tenants (shared.tenants) and their quotas; the operator's alone to change. The others hold
# every tenant's records, each under its tenant's key prefix.
TENANTS = Bucket("remits_tenants", "tenants", schemas.TenantRecord)
ALL: tuple[Bucket, ...] = (POLICIES, REFVALS, RESOURCES, REVOCATIONS, ADMIN_KEYS, TENANTS)
TENANT_SCOPED: tuple[Bucket, ...] = (POLICIES, REFVALS, RESOURCES, REVOCATIONS, ADMIN_KEYS)
# Not trust configuration but durable all the same: confidential clusters' membership, written by
# the join service alone (services/join).
CLUSTERS = Bucket("remits_clusters", "clusters", schemas.ClusterMember)
OPERATIONAL: tuple[Bucket, ...] = (CLUSTERS,)
BY_COLLECTION = {b.collection: b for b in ALL}
BY_NAME = {b.name: b for b in ALL}

# What each component reads (and mirrors): nothing else is visible to it.
READERS: dict[str, tuple[Bucket, ...]] = {
    # The gateway admits a guest only to a tenant that exists, within the tenant's quota.
    "gateway": (TENANTS,),
    # Identity reads a SEV workload's registered guest policy before it opens a launch session.
    "identity": (REFVALS, TENANTS),
    "measure": (POLICIES, REFVALS, REVOCATIONS, TENANTS),
    # Decide holds an EAR signing key per tenant.
    "decide": (TENANTS,),
    "release": (POLICIES, RESOURCES, REVOCATIONS, TENANTS),
    # The join service evicts a cluster member the moment its chip, measurement or token is revoked.
    "join": (REVOCATIONS,),
    "provision": ALL,
}
WRITERS = ("provision",)


def kv_config(bucket: Bucket, replicas: int = 1) -> js_api.KeyValueConfig:
    return js_api.KeyValueConfig(
        bucket=bucket.name,
        history=HISTORY,
        storage=js_api.StorageType.FILE,
        replicas=replicas,
        direct=True,
        description=f"REMITS {bucket.collection}",
    )


def read_rights(bucket: Bucket) -> list[str]:
    """Publish rights to read and watch a bucket: its info, direct gets, and ordered consumers
    (ephemeral, created and deleted by the watcher; they deliver to the reader's private inbox)."""
    stream = bucket.stream
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def write_rights(bucket: Bucket) -> list[str]:
    return [f"$KV.{bucket.name}.>"]


# -- keys --------------------------------------------------------------------------------------
# NATS KV keys are tokens of [-/_=.a-zA-Z0-9]; names below are kept narrower so that a key always
# reads back as the same (tee, name, id) or path.
_TOKEN = re.compile(r"^[a-z0-9_-]{1,64}$")
_NAME = re.compile(r"^[a-z0-9_][a-z0-9_.-]{0,127}$")
_PATH_PART = re.compile(r"^[A-Za-z0-9_=-][A-Za-z0-9_.=-]{0,127}$")
_HEX = re.compile(r"^[0-9a-f]{2,256}$")
REVOCATION_KINDS = ("measurement", "chip_id", "fmspc", "token_id")
# Revocations of hardware, not of a workload: a chip or a TCB level (FMSPC) that the default
# tenant (the platform team's namespace) revokes is revoked for every tenant, whose guests run on
# the same machines. Measurements and token ids stay each tenant's own.
PLATFORM_REVOCATION_KINDS = ("chip_id", "fmspc")


class BadKey(ValueError):
    """A key that does not name a record of its bucket; ``field`` is what was wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def policy_key(policy_id: str) -> str:
    """ "attestation.<tee>" or "resource"."""
    if policy_id == "resource":
        return policy_id
    kind, _, tee = policy_id.partition(".")
    if kind != "attestation" or not _TOKEN.match(tee):
        raise BadKey("policy_id", f"{policy_id!r}: expected attestation.<tee> or resource")
    return policy_id


def refval_key(tee: str, name: str, record_id: str) -> str:
    if not _TOKEN.match(tee):
        raise BadKey("tee", f"{tee!r}: lowercase letters, digits, - and _")
    if not _NAME.match(name):
        raise BadKey("name", f"{name!r}: lowercase letters, digits, ., - and _")
    if not _TOKEN.match(record_id):
        raise BadKey("id", f"{record_id!r}: lowercase letters, digits, - and _")
    return f"{tee}.{name}.{record_id}"


def split_refval_key(key: str) -> tuple[str, str, str]:
    tee, _, rest = key.partition(".")
    name, _, record_id = rest.rpartition(".")
    return tee, name, record_id


def resource_key(path: str) -> str:
    """ "<repository>/<type>/<tag>", as the KBS protocol names a resource."""
    parts = path.split("/")
    if len(parts) != 3 or not all(_PATH_PART.match(p) and ".." not in p for p in parts):
        raise BadKey("resource_path", f"{path!r}: expected <repository>/<type>/<tag>")
    if tenants.reserved_key(path):
        raise BadKey("resource_path", f"{path!r}: a repository may not start with 't=' (tenant keys do)")
    return path


def revocation_key(kind: str, value: str) -> str:
    if kind not in REVOCATION_KINDS:
        raise BadKey("kind", f"{kind!r}: one of {', '.join(REVOCATION_KINDS)}")
    if kind == "token_id":
        if not re.match(r"^[A-Za-z0-9_-]{8,128}$", value):
            raise BadKey("value", "a token id is 8..128 characters of [A-Za-z0-9_-]")
    elif not _HEX.match(value):
        raise BadKey("value", f"{kind} must be lowercase hex")
    return f"{kind}.{value}"


def admin_key_key(kid: str) -> str:
    safe = kid.replace(":", "=")
    if not re.match(r"^[A-Za-z0-9_=-]{1,128}$", safe):
        raise BadKey("kid", f"{kid!r}: letters, digits, -, _, = and :")
    return safe
