"""The admin API's requests (below /admin/v1/), answered against the trust configuration.

Every request must carry an admin credential (shared.adminauth); with no admin key configured
the API answers 404 to everything. A refused credential changes nothing: authentication comes
before any read or write. Reads never return a secret's value."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from shared import schemas, tenants
from shared.adminauth import AdminAuthError, AdminKey, AdminKeyError, load_admin_key, verify_admin_token
from shared.kbs.wire import ATTESTED_TEES
from shared.manifest import ManifestError, verify_manifest
from shared.policy.engine import default_policy_source
from shared.trust import buckets
from shared.trust.admin import AdminError, TrustAdmin
from shared.trust.snapshot import TrustSnapshot

KNOWN_TEES = ATTESTED_TEES
_json = msgspec.json.Encoder(order="sorted")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any

    def encode(self) -> schemas.AdminReply:
        return schemas.AdminReply(status=self.status, body=_json.encode(self.body))


def _error(status: int, reason: str, detail: str = "") -> Reply:
    return Reply(status, {"error": reason, "detail": detail})


@functools.lru_cache(maxsize=256)
def _stored_key(pem: str, kid: str) -> AdminKey | None:
    try:
        return load_admin_key(pem.encode(), kid)
    except AdminKeyError:  # an unusable stored key authenticates nobody
        return None


def admin_keys(
    configured: Sequence[AdminKey], snapshot: TrustSnapshot, role: str = "admin"
) -> list[AdminKey]:
    """Configured key files (the root of trust for the API) and keys admins added to the bucket."""
    keys = list(configured) if role == "admin" else []
    for entry in snapshot.admin_keys.values():
        if entry.record.role == role and (key := _stored_key(entry.record.pem, entry.record.kid)) is not None:
            keys.append(key)
    return keys


class AdminApi:
    """Keys given to the service (``configured_keys``, `remits up --admin-key`) are the operator's:
    they act on every tenant and alone manage tenants. Admin keys stored in a tenant act on that
    tenant alone (its requests come as /t/<tenant>/admin/v1/...)."""

    def __init__(
        self,
        admin: TrustAdmin,
        snapshot: Callable[[str], TrustSnapshot],
        configured_keys: Sequence[AdminKey],
        provisioner_keys: Sequence[AdminKey],
        clock: Callable[[], float],
    ) -> None:
        self.admin = admin
        self.snapshot = snapshot
        self.configured_keys = list(configured_keys)
        self.provisioner_keys = list(provisioner_keys)
        self.clock = clock

    async def handle(
        self,
        method: str,
        path: str,
        authorization: str,
        body: bytes,
        query: dict[str, str],
        tenant: str = tenants.DEFAULT,
    ) -> Reply:
        if not tenants.is_name(tenant):
            return _error(404, "tenant.unknown", f"no tenant {tenant!r}")
        snapshot = self.snapshot(tenant)
        own = admin_keys([], snapshot) if snapshot.known else []
        if not self.configured_keys and not own:
            return _error(404, "admin.disabled", "no admin key is configured: the admin API is off")
        now = self.clock()
        operator = True
        try:
            # The operator's keys first; a credential none of them signed may be the tenant's own.
            who = verify_admin_token(authorization or None, self.configured_keys, now=now)
        except AdminAuthError as exc:
            if not own or exc.reason not in ("admin.unknown_key", "admin.bad_signature"):
                return _error(401, exc.reason, str(exc))
            try:
                who = verify_admin_token(authorization or None, own, now=now)
            except AdminAuthError as again:
                return _error(401, again.reason, str(again))
            operator = False
        actor = f"{who.subject} ({who.kid})" if operator else f"{who.subject} ({who.kid}@{tenant})"
        return await self.handle_as(actor, method, path, body, query, tenant=tenant, operator=operator)

    async def handle_as(
        self,
        actor: str,
        method: str,
        path: str,
        body: bytes,
        query: dict[str, str],
        tenant: str = tenants.DEFAULT,
        operator: bool = True,
    ) -> Reply:
        """A request already authenticated as ``actor`` (the admin API after its credential
        check; the operator's own tools with `--local`), on ``tenant``'s records."""
        parts = path.strip("/").split("/")
        try:
            if parts[0] == "tenants":
                if not operator:
                    raise AdminError(403, "admin.forbidden", "only the operator's keys manage tenants")
                return await self._tenants(method, parts[1:], body, actor)
            snapshot = self.snapshot(tenant)
            # The store itself when the mirror does not know the tenant (yet): a tenant created by
            # the request before this one is there, whichever replica wrote it.
            if not snapshot.known and await self.admin.tenant_record(tenant) is None:
                raise AdminError(404, "tenant.unknown", f"no tenant {tenant!r}")
            return await self._route(method, parts, body, query, actor, snapshot, self.admin.for_tenant(tenant))
        except AdminError as exc:
            return _error(exc.status, exc.reason, exc.detail)

    async def _tenants(self, method: str, rest: list[str], body: bytes, actor: str) -> Reply:
        """/admin/v1/tenants: POST {"name", "attestations_per_s"?, "max_resources"?} creates (or
        sets a tenant's quotas), GET lists, GET/DELETE /tenants/<name>."""
        name = rest[0] if rest and rest[0] else ""
        if method == "GET" and not name:
            listed = [_tenant_view(tenants.DEFAULT, None, 0)]
            for key, revision, record in await self.admin.entries(buckets.TENANTS):
                listed.append(_tenant_view(key, record, revision))
            return Reply(200, sorted(listed, key=lambda t: t["name"]))
        if method == "GET":
            if name == tenants.DEFAULT:
                return Reply(200, _tenant_view(name, None, 0))
            found = await self.admin.entry(buckets.TENANTS, name)
            if found is None:
                raise AdminError(404, "tenant.unknown", f"no tenant {name!r}")
            return Reply(200, _tenant_view(name, found[1], found[0]))
        if method == "DELETE" and name:
            change, removed = await self.admin.delete_tenant(name, actor)
            return Reply(200, {**change.as_dict(), "records_removed": removed})
        if method in ("POST", "PUT"):
            doc = _json_object(body)
            target = name or _str(doc, "name")
            change = await self.admin.put_tenant(
                target, actor,
                attestations_per_s=doc.get("attestations_per_s", 0), max_resources=doc.get("max_resources", 0),
            )  # fmt: skip
            return Reply(200, {"name": target, **change.as_dict()})
        raise AdminError(405, "admin.bad_request", f"{method} not allowed on tenants")

    async def _route(
        self,
        method: str,
        parts: list[str],
        body: bytes,
        query: dict[str, str],
        actor: str,
        snapshot: TrustSnapshot,
        admin: TrustAdmin,
    ) -> Reply:
        collection, rest = parts[0], parts[1:]
        if collection == "whoami" and method == "GET" and not rest:
            return Reply(200, {"actor": actor})  # the dashboard's credential check
        if collection == "kbs-resource" and method == "POST" and len(rest) == 3:
            change = await admin.put_resource("/".join(rest), body, actor)
            return Reply(200, {"stored": "/".join(rest), **change.as_dict()})
        bucket = buckets.BY_COLLECTION.get(collection)
        if bucket is None:
            return _error(
                404, "admin.no_such_collection", f"{collection!r}: one of {', '.join(buckets.BY_COLLECTION)}"
            )
        key = self._key(bucket, rest)
        if method == "GET":
            if key and query.get("history"):
                return await self._history(admin, bucket, key)
            return await (self._get(admin, bucket, key) if key else self._list(admin, bucket, snapshot, query))
        if method == "DELETE":
            if not key:
                raise AdminError(405, "admin.bad_request", "DELETE needs a key")
            return Reply(200, (await admin.delete(bucket, key, actor)).as_dict())
        if method in ("PUT", "POST"):
            change = await self._put(admin, snapshot, bucket, rest, body, actor)
            return Reply(200, change)
        return _error(405, "admin.bad_request", f"{method} not allowed")

    @staticmethod
    def _key(bucket: buckets.Bucket, rest: list[str]) -> str:
        if not rest or rest == [""]:
            return ""
        try:
            if bucket is buckets.REFVALS and len(rest) == 3:
                return buckets.refval_key(*rest)
            if bucket is buckets.RESOURCES:
                return buckets.resource_key("/".join(rest))
            if bucket is buckets.REVOCATIONS and len(rest) == 2:
                return buckets.revocation_key(*rest)
            if bucket is buckets.POLICIES and len(rest) == 1:
                return buckets.policy_key(rest[0])
            if bucket is buckets.ADMIN_KEYS and len(rest) == 1:
                return buckets.admin_key_key(rest[0])
        except buckets.BadKey as exc:
            raise AdminError(400, "admin.bad_key", str(exc)) from None
        if bucket is buckets.REFVALS and rest == ["manifest"]:
            return ""
        raise AdminError(404, "admin.bad_key", "/".join(rest))

    # -- reads -----------------------------------------------------------------------------
    async def _list(self, admin: TrustAdmin, bucket: buckets.Bucket, snapshot: TrustSnapshot, query: dict[str, str]) -> Reply:
        entries = await admin.entries(bucket)
        if bucket is buckets.RESOURCES:
            return Reply(200, [key for key, _, _ in entries])  # paths only, never values
        if bucket is buckets.POLICIES:
            stored = {key: (revision, record) for key, revision, record in entries}
            out = [_policy_summary(key, revision, record) for key, (revision, record) in stored.items()]
            for policy_id in (*(f"attestation.{tee}" for tee in KNOWN_TEES), "resource"):
                if policy_id not in stored:
                    out.append({"id": policy_id, "source": "default", "revision": 0})
            return Reply(200, sorted(out, key=lambda p: p["id"]))
        now = self.clock()
        out = []
        for key, revision, record in entries:
            item = {"key": key, "revision": revision, **msgspec.to_builtins(record)}
            if bucket is buckets.REFVALS:
                if query.get("tee") and record.tee != query["tee"]:
                    continue
                if query.get("name") and record.name != query["name"]:
                    continue
                item["expired"] = record.expires_at is not None and record.expires_at <= now
            out.append(item)
        return Reply(200, out)

    async def _get(self, admin: TrustAdmin, bucket: buckets.Bucket, key: str) -> Reply:
        found = await admin.entry(bucket, key)
        if found is None:
            if bucket is buckets.POLICIES:
                try:
                    rego = default_policy_source(key)
                except Exception:
                    return _error(404, "admin.not_found", key)
                return Reply(200, {"id": key, "source": "default", "revision": 0, "rego": rego})
            return _error(404, "admin.not_found", f"{bucket.collection}/{key}")
        revision, record = found
        body = msgspec.to_builtins(record)
        if bucket is buckets.RESOURCES:
            body.pop("sealed", None)
            body["kid"] = record.sealed.get("kid", "")
            body["path"] = key
        return Reply(200, {"key": key, "revision": revision, **body})

    async def _history(self, admin: TrustAdmin, bucket: buckets.Bucket, key: str) -> Reply:
        out = []
        for revision, operation, record in await admin.history(bucket, key):
            item: dict[str, Any] = {"revision": revision, "operation": operation}
            if record is not None and bucket is not buckets.RESOURCES:
                item["record"] = msgspec.to_builtins(record)
            out.append(item)
        return Reply(200, out)

    # -- writes ----------------------------------------------------------------------------
    async def _put(
        self, admin: TrustAdmin, snapshot: TrustSnapshot, bucket: buckets.Bucket, rest: list[str], body: bytes, actor: str
    ) -> dict[str, Any]:
        if bucket is buckets.POLICIES:
            if len(rest) != 1:
                raise AdminError(400, "admin.bad_key", "PUT /admin/v1/policies/<id>")
            rego = body.decode("utf-8", "replace")
            doc = _maybe_json(body)
            if isinstance(doc, dict) and isinstance(doc.get("rego"), str):
                rego = doc["rego"]
            return (await admin.put_policy(rest[0], rego, actor)).as_dict()
        if bucket is buckets.REFVALS and rest == ["manifest"]:
            return await self._import_manifest(admin, snapshot, body, actor)
        doc = _json_object(body)
        if bucket is buckets.REFVALS:
            tee, name, record_id = [*rest, "", "", ""][:3] if rest else ("", "", "")
            tee, name = tee or _str(doc, "tee"), name or _str(doc, "name")
            record_id = record_id or str(doc.get("id", ""))
            values = doc.get("values")
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise AdminError(400, "admin.bad_request", "values: a list of strings")
            expires = doc.get("expires_at")
            if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)):
                raise AdminError(400, "admin.bad_request", "expires_at: unix seconds")
            change = await admin.put_reference_value(
                tee, name, values, actor, record_id=record_id, expires_at=expires,
                source=str(doc.get("source") or "admin-api"),
                inputs=inputs if isinstance(inputs := doc.get("inputs"), dict) else None,
            )  # fmt: skip
            return change.as_dict()
        if bucket is buckets.RESOURCES:
            value = doc.get("value")
            if not isinstance(value, str):
                raise AdminError(400, "admin.bad_request", "value: the secret, base64")
            try:
                secret = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise AdminError(400, "admin.bad_request", "value: not base64") from None
            binding = doc.get("binding", {})
            if not isinstance(binding, dict):
                raise AdminError(400, "admin.bad_binding", "binding: an object")
            return (await admin.put_resource("/".join(rest), secret, actor, binding)).as_dict()
        if bucket is buckets.REVOCATIONS:
            kind, value = [*rest, "", ""][:2] if rest else ("", "")
            kind, value = kind or _str(doc, "kind"), value or _str(doc, "value")
            return (await admin.revoke(kind, value, str(doc.get("reason", "")), actor)).as_dict()
        if bucket is buckets.ADMIN_KEYS:
            pem, role = _str(doc, "pem"), str(doc.get("role", "admin"))
            if role not in ("admin", "provisioner"):
                raise AdminError(400, "admin.bad_request", "role: admin or provisioner")
            try:
                key = load_admin_key(pem.encode(), rest[0] if rest else None)
            except AdminKeyError as exc:
                raise AdminError(400, "admin.bad_key", f"pem: {exc}") from None
            record = schemas.AdminKeyRecord(kid=key.kid, alg=key.alg, pem=key.pem, role=role)  # type: ignore[arg-type]
            return (await admin.put_admin_key(record, actor)).as_dict()
        raise AdminError(405, "admin.bad_request", "not writable")

    async def _import_manifest(
        self, admin: TrustAdmin, snapshot: TrustSnapshot, body: bytes, actor: str
    ) -> dict[str, Any]:
        keys = [*self.provisioner_keys, *admin_keys([], snapshot, role="provisioner")]
        if not keys:
            raise AdminError(400, "admin.no_provisioner_key", "no provisioner key is configured")
        try:
            manifest = verify_manifest(body.strip(), keys, now=self.clock(), tees=KNOWN_TEES)
        except ManifestError as exc:
            raise AdminError(400, exc.reason, str(exc)) from None
        changes = []
        for index, entry in enumerate(manifest.entries):
            change = await admin.put_reference_value(
                entry.tee, entry.name, list(entry.values), actor,
                record_id=f"m{manifest.digest[:12]}{index}",
                expires_at=entry.expires_at,
                source=f"manifest:{manifest.issuer}",
                signature=manifest.signer_kid,
                inputs={"manifest.sha256": manifest.digest, "manifest.iat": manifest.issued_at},
            )  # fmt: skip
            changes.append(change.as_dict())
        return {
            "imported": len(changes),
            "signer": manifest.signer_kid,
            "issuer": manifest.issuer,
            "changes": changes,
        }


def _tenant_view(name: str, record: schemas.TenantRecord | None, revision: int) -> dict[str, Any]:
    view: dict[str, Any] = {"name": name, "revision": revision}
    if record is not None:
        view.update(
            created_by=record.created_by, created_at=record.created_at,
            attestations_per_s=record.attestations_per_s, max_resources=record.max_resources,
        )  # fmt: skip
    return view


def _policy_summary(key: str, revision: int, record: schemas.PolicyRecord) -> dict[str, Any]:
    return {
        "id": key,
        "kind": record.kind,
        "digest": record.digest,
        "revision": revision,
        "updated_by": record.updated_by,
        "updated_at": record.updated_at,
        "source": "stored",
    }


def _maybe_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _json_object(body: bytes) -> dict[str, Any]:
    doc = _maybe_json(body)
    if not isinstance(doc, dict):
        raise AdminError(400, "admin.bad_request", "the body must be a JSON object")
    return doc


def _str(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise AdminError(400, "admin.bad_request", f"{name}: a non-empty string")
    return value
