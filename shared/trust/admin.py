"""Changes to the trust configuration: every write is a new revision of a KV record, and every
change is published as an admin event (who, what, previous and new revision) on the decision
stream, where the audit consumer chains it with the decisions.

Used by the provision component (behind the admin API) and by `remits ... --local` as the
operator. Callers authenticate the actor first; nothing here checks who is asking."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from shared import schemas, tenants
from shared.bus import JetStreamPublisher
from shared.policy.engine import PolicyError, compile_policy
from shared.sealing import KeyRing, rewrap, seal
from shared.trust import buckets
from shared.trust.appraisal import COMPARED_CLAIMS


class AdminError(Exception):
    """A change refused: ``status`` is the HTTP status the admin API answers with."""

    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.status = status
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Change:
    collection: str
    key: str
    action: str
    previous_revision: int
    revision: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "key": self.key,
            "action": self.action,
            "previous_revision": self.previous_revision,
            "revision": self.revision,
        }


def _record_id(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class TrustAdmin:
    """Reads and changes one tenant's records (``tenant``; ``for_tenant`` gives another's view).
    Keys in and out are keys within the tenant; the buckets hold them under its prefix."""

    def __init__(
        self,
        js: JetStreamContext,
        publisher: JetStreamPublisher,
        keyring: Callable[[], KeyRing] | None = None,
        clock: Callable[[], float] = time.time,
        tenant: str = tenants.DEFAULT,
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._keyring = keyring
        self._clock = clock
        self._kv: dict[str, Any] = {}
        self.tenant = tenants.check_name(tenant)

    def for_tenant(self, tenant: str) -> TrustAdmin:
        view = TrustAdmin(self._js, self._publisher, self._keyring, self._clock, tenant)
        view._kv = self._kv  # one handle per bucket, whichever tenant's view uses it
        return view

    def _stored(self, bucket: buckets.Bucket, key: str) -> str:
        return tenants.scoped_key(self.tenant, key) if bucket in buckets.TENANT_SCOPED else key

    async def _require_tenant(self) -> None:
        """Writes go only to a tenant that exists (a deleted one's records are never read)."""
        if self.tenant != tenants.DEFAULT and await self.tenant_record(self.tenant) is None:
            raise AdminError(404, "tenant.unknown", f"no tenant {self.tenant!r}")

    async def _bucket(self, bucket: buckets.Bucket) -> Any:
        kv = self._kv.get(bucket.name)
        if kv is None:
            kv = self._kv[bucket.name] = await self._js.key_value(bucket.name)
        return kv

    # -- reads (never a secret's value) ------------------------------------------------------
    async def _stored_keys(self, bucket: buckets.Bucket, tenant: str | None = None) -> list[str]:
        """Every key the bucket's stream holds a message of (deleted ones too), of ``tenant`` only
        when given. Read from the stream's subjects, not with nats-py's kv.keys(), whose watcher
        can report "no more keys" before it has delivered them all: a listing, a quota count or a
        tenant's deletion must not miss a record."""
        scope = tenants.key_filter(tenant) if tenant is not None and bucket in buckets.TENANT_SCOPED else ">"
        info = await self._js.stream_info(bucket.stream, subjects_filter=f"$KV.{bucket.name}.{scope}")
        prefix = f"$KV.{bucket.name}."
        return sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))

    async def _candidates(self, bucket: buckets.Bucket) -> list[str]:
        """This tenant's keys of ``bucket`` that may hold a record (every key, for the tenants bucket)."""
        stored = await self._stored_keys(bucket, self.tenant)
        if bucket not in buckets.TENANT_SCOPED:
            return stored
        return [key for owner, key in map(tenants.split_key, stored) if owner == self.tenant]

    async def keys(self, bucket: buckets.Bucket) -> list[str]:
        """This tenant's keys of ``bucket`` that hold a record now."""
        return [key for key, _, _ in await self.entries(bucket)]

    async def entries(self, bucket: buckets.Bucket) -> list[tuple[str, int, Any]]:
        out = []
        for key in await self._candidates(bucket):
            found = await self.entry(bucket, key)
            if found is not None:
                out.append((key, found[0], found[1]))
        return out

    async def entry(
        self, bucket: buckets.Bucket, key: str, revision: int | None = None
    ) -> tuple[int, Any] | None:
        kv = await self._bucket(bucket)
        try:
            entry = await kv.get(self._stored(bucket, key), revision=revision)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None
        return entry.revision, msgspec.json.decode(entry.value, type=bucket.record)

    async def history(self, bucket: buckets.Bucket, key: str) -> list[tuple[int, str, Any]]:
        kv = await self._bucket(bucket)
        try:
            entries = await kv.history(self._stored(bucket, key))
        except Exception:
            return []
        out = []
        for e in entries:
            record = None
            if e.value and e.operation not in ("DEL", "PURGE"):
                record = msgspec.json.decode(e.value, type=bucket.record)
            out.append((e.revision, e.operation or "PUT", record))
        return out

    # -- writes -----------------------------------------------------------------------------
    async def _write(
        self, bucket: buckets.Bucket, key: str, record: msgspec.Struct, actor: str, summary: dict[str, Any]
    ) -> Change:
        await self._require_tenant()
        kv = await self._bucket(bucket)
        stored = self._stored(bucket, key)
        previous = await self._revision(kv, stored)
        value = schemas.encode_json(record)
        try:
            revision = await (
                kv.create(stored, value) if previous == 0 else kv.update(stored, value, last=previous)
            )
        except KeyWrongLastSequenceError:
            raise AdminError(
                409, "admin.conflict", f"{bucket.collection}/{key} changed meanwhile; retry"
            ) from None
        except Exception as exc:
            if "wrong last sequence" in str(exc).lower():
                raise AdminError(
                    409, "admin.conflict", f"{bucket.collection}/{key} changed meanwhile; retry"
                ) from None
            raise
        change = Change(bucket.collection, key, "put", previous, revision)
        await self._event(change, actor, summary)
        return change

    async def _revision(self, kv: Any, key: str) -> int:
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return 0
        return (
            int(entry.revision) if entry.value is not None and entry.operation not in ("DEL", "PURGE") else 0
        )

    async def delete(self, bucket: buckets.Bucket, key: str, actor: str) -> Change:
        kv = await self._bucket(bucket)
        stored = self._stored(bucket, key)
        previous = await self._revision(kv, stored)
        if previous == 0:
            raise AdminError(404, "admin.not_found", f"{bucket.collection}/{key}")
        await kv.delete(stored)
        revision = await self._last_revision(kv, stored)
        change = Change(bucket.collection, key, "delete", previous, revision)
        await self._event(change, actor, {})
        return change

    async def _last_revision(self, kv: Any, key: str) -> int:
        try:
            entry = await kv.get(key)
            return int(entry.revision)
        except KeyNotFoundError as exc:  # a delete marker: nats-py reports its revision here
            entry = getattr(exc, "entry", None)
            return int(entry.revision) if entry is not None else 0

    async def _event(self, change: Change, actor: str, summary: dict[str, Any]) -> None:
        now = self._clock()
        event = schemas.AdminEvent(
            meta=schemas.RequestMeta(
                request_id=f"admin-{uuid.uuid4().hex}", tee="", reply_to="", submitted_at=now, tenant=self.tenant
            ),
            actor=actor,
            action=change.action,
            bucket=change.collection,
            key=change.key,
            previous_revision=change.previous_revision,
            revision=change.revision,
            at=now,
            summary=summary,
        )
        subject = schemas.admin_subject(self.tenant, change.collection)
        await self._publisher.publish(
            subject,
            schemas.encode(event),
            {"Nats-Msg-Id": f"{self.tenant}:{change.collection}:{change.key}:{change.revision}"},
        )

    # -- policies ----------------------------------------------------------------------------
    async def put_policy(self, policy_id: str, rego: str, actor: str) -> Change:
        key = _key(buckets.policy_key, policy_id)
        kind = "resource" if key == "resource" else "attestation"
        try:
            compiled = compile_policy(key, kind, rego)  # refuse what would not run
        except PolicyError as exc:
            raise AdminError(400, "admin.bad_policy", str(exc)) from None
        record = schemas.PolicyRecord(
            id=key, kind=kind, rego=rego, digest=compiled.digest, updated_by=actor, updated_at=self._clock()
        )  # type: ignore[arg-type]
        return await self._write(buckets.POLICIES, key, record, actor, {"digest": compiled.digest})

    # -- reference values --------------------------------------------------------------------
    async def put_reference_value(
        self,
        tee: str,
        name: str,
        values: list[str],
        actor: str,
        *,
        record_id: str = "",
        expires_at: float | None = None,
        source: str = "admin",
        signature: str = "",
        inputs: dict[str, Any] | None = None,
    ) -> Change:
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise AdminError(400, "admin.bad_request", "values: a non-empty list of non-empty strings")
        # Digests are kept in lower case (as the evidence's claims are); parameters as given.
        digest = name in COMPARED_CLAIMS.get(tee, {})
        clean = [v.strip().lower() if digest else v.strip() for v in values]
        if not clean or not all(clean) or any(len(v) > 1024 for v in clean):
            raise AdminError(400, "admin.bad_request", "values: a non-empty list of non-empty strings")
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise AdminError(400, "admin.bad_request", "expires_at is in the past")
        record_id = record_id or _record_id(tee, name, *sorted(clean))
        key = _key(buckets.refval_key, tee, name, record_id)
        record = schemas.ReferenceValueRecord(
            tee=tee,
            name=name,
            values=clean,
            provenance=schemas.Provenance(
                source=source, added_by=actor, added_at=now, signature=signature, inputs=inputs or {}
            ),
            expires_at=expires_at,
        )
        summary = {"tee": tee, "name": name, "values": clean, "expires_at": expires_at, "source": source}
        return await self._write(buckets.REFVALS, key, record, actor, summary)

    # -- resources (secrets: sealed before they leave this function) ---------------------------
    async def put_resource(
        self, path: str, secret: bytes, actor: str, binding: dict[str, Any] | None = None
    ) -> Change:
        key = _key(buckets.resource_key, path)
        if self._keyring is None:
            raise AdminError(503, "admin.no_kek", "this process holds no key-encryption key")
        binding = _check_binding(binding or {})
        await self._check_resource_quota(key)
        # Sealed to the key it is stored under, which names the tenant: a record copied into
        # another tenant's namespace does not open.
        sealed = seal(self._keyring(), secret, self._stored(buckets.RESOURCES, key).encode())
        record = schemas.ResourceRecord(
            sealed=sealed, binding=binding, updated_by=actor, updated_at=self._clock()
        )
        return await self._write(
            buckets.RESOURCES, key, record, actor, {"binding": binding, "kid": sealed["kid"]}
        )

    async def rewrap_resources(self, actor: str) -> int:
        """Re-wrap every resource's data key under the current KEK (after `remits kek rotate`)."""
        if self._keyring is None:
            raise AdminError(503, "admin.no_kek", "this process holds no key-encryption key")
        ring = self._keyring()
        count = 0
        for stored in await self._stored_keys(buckets.RESOURCES):  # every tenant's
            tenant, key = tenants.split_key(stored)
            if not tenant:
                continue
            view = self.for_tenant(tenant)
            found = await view.entry(buckets.RESOURCES, key)
            if found is None or found[1].sealed.get("kid") == ring.current_kid:
                continue
            record = found[1]
            record.sealed = rewrap(ring, record.sealed, stored.encode())
            await view._write(buckets.RESOURCES, key, record, actor, {"rewrapped_to": ring.current_kid})
            count += 1
        return count

    async def _check_resource_quota(self, key: str) -> None:
        record = await self.tenant_record(self.tenant)
        if record is None or record.max_resources <= 0:
            return
        held = await self.keys(buckets.RESOURCES)
        if key not in held and len(held) >= record.max_resources:
            raise AdminError(
                429, "quota.resources", f"tenant {self.tenant!r} stores {len(held)} of {record.max_resources} resources"
            )

    # -- tenants (the operator's) -------------------------------------------------------------
    async def tenant_record(self, name: str) -> schemas.TenantRecord | None:
        found = await self.entry(buckets.TENANTS, name)
        return found[1] if found is not None else None

    async def put_tenant(
        self, name: str, actor: str, *, attestations_per_s: int = 0, max_resources: int = 0
    ) -> Change:
        try:
            tenants.check_name(name, "name")
        except tenants.BadTenant as exc:
            raise AdminError(400, "admin.bad_key", str(exc)) from None
        if name == tenants.DEFAULT:
            raise AdminError(409, "tenant.reserved", "the default tenant always exists")
        for label, value in (("attestations_per_s", attestations_per_s), ("max_resources", max_resources)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise AdminError(400, "admin.bad_request", f"{label}: a whole number >= 0 (0: no limit)")
        existing = await self.tenant_record(name)
        record = schemas.TenantRecord(
            name=name,
            created_by=existing.created_by if existing else actor,
            created_at=existing.created_at if existing else self._clock(),
            attestations_per_s=attestations_per_s,
            max_resources=max_resources,
        )
        summary = {"name": name, "attestations_per_s": attestations_per_s, "max_resources": max_resources}
        return await self.for_tenant(tenants.DEFAULT)._write(buckets.TENANTS, name, record, actor, summary)

    async def delete_tenant(self, name: str, actor: str) -> tuple[Change, int]:
        """The tenant and every record of it (its secrets first): (the change, records removed)."""
        if name == tenants.DEFAULT:
            raise AdminError(409, "tenant.reserved", "the default tenant cannot be deleted")
        if not tenants.is_name(name) or await self.tenant_record(name) is None:
            raise AdminError(404, "tenant.unknown", f"no tenant {name!r}")
        view = self.for_tenant(name)
        removed = 0
        for bucket in (buckets.RESOURCES, *(b for b in buckets.TENANT_SCOPED if b is not buckets.RESOURCES)):
            for key in await view.keys(bucket):
                await view.delete(bucket, key, actor)
                removed += 1
        change = await self.for_tenant(tenants.DEFAULT).delete(buckets.TENANTS, name, actor)
        return change, removed

    # -- revocations -------------------------------------------------------------------------
    async def revoke(self, kind: str, value: str, reason: str, actor: str) -> Change:
        value = value.strip() if kind == "token_id" else value.strip().lower()
        key = _key(buckets.revocation_key, kind, value)
        record = schemas.RevocationRecord(
            kind=kind, value=value, reason=reason or "revoked", revoked_at=self._clock(), revoked_by=actor
        )  # type: ignore[arg-type]
        return await self._write(
            buckets.REVOCATIONS, key, record, actor, {"kind": kind, "value": value, "reason": reason}
        )

    # -- admin and provisioner keys ------------------------------------------------------------
    async def put_admin_key(self, record: schemas.AdminKeyRecord, actor: str) -> Change:
        key = _key(buckets.admin_key_key, record.kid)
        record.added_by, record.added_at = actor, self._clock()
        return await self._write(
            buckets.ADMIN_KEYS, key, record, actor, {"kid": record.kid, "role": record.role}
        )


def _key(make: Callable[..., str], *parts: str) -> str:
    try:
        return make(*parts)
    except buckets.BadKey as exc:
        raise AdminError(400, "admin.bad_key", str(exc)) from None


# What a resource may be bound to: TEE types, launch measurements, init-data digests (the
# workload's identity, as the guest's init-data hashes), and tenants whose tokens may have it.
_BINDING_LISTS = ("tees", "measurements", "init_data", "tenants")


def _check_binding(binding: dict[str, Any]) -> dict[str, Any]:
    """What a token must meet to get the resource; unknown fields are refused (a misspelt
    allow-list must not silently allow everything)."""
    out: dict[str, Any] = {}
    for name, value in binding.items():
        if name in _BINDING_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise AdminError(400, "admin.bad_binding", f"binding.{name}: a list of strings")
            out[name] = [v.lower() for v in value]
            if name == "init_data" and not all(_is_hex(v) for v in out[name]):
                raise AdminError(400, "admin.bad_binding", "binding.init_data: digests in hex")
        elif name == "allow_sample":
            if not isinstance(value, bool):
                raise AdminError(400, "admin.bad_binding", "binding.allow_sample: true or false")
            out[name] = value
        else:
            raise AdminError(
                400, "admin.bad_binding", f"binding.{name}: unknown ({', '.join(_BINDING_LISTS)}, allow_sample)"
            )
    return out


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return len(text) >= 2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
