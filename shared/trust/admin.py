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

from shared import schemas
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
    def __init__(
        self,
        js: JetStreamContext,
        publisher: JetStreamPublisher,
        keyring: Callable[[], KeyRing] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._publisher = publisher
        self._keyring = keyring
        self._clock = clock
        self._kv: dict[str, Any] = {}

    async def _bucket(self, bucket: buckets.Bucket) -> Any:
        kv = self._kv.get(bucket.name)
        if kv is None:
            kv = self._kv[bucket.name] = await self._js.key_value(bucket.name)
        return kv

    # -- reads (never a secret's value) ------------------------------------------------------
    async def entries(self, bucket: buckets.Bucket) -> list[tuple[str, int, Any]]:
        kv = await self._bucket(bucket)
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError for an empty bucket
            return []
        out = []
        for key in sorted(keys):
            found = await self.entry(bucket, key)
            if found is not None:
                out.append((key, found[0], found[1]))
        return out

    async def entry(
        self, bucket: buckets.Bucket, key: str, revision: int | None = None
    ) -> tuple[int, Any] | None:
        kv = await self._bucket(bucket)
        try:
            entry = await kv.get(key, revision=revision)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.operation in ("DEL", "PURGE"):
            return None
        return entry.revision, msgspec.json.decode(entry.value, type=bucket.record)

    async def history(self, bucket: buckets.Bucket, key: str) -> list[tuple[int, str, Any]]:
        kv = await self._bucket(bucket)
        try:
            entries = await kv.history(key)
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
        kv = await self._bucket(bucket)
        previous = await self._revision(kv, key)
        value = schemas.encode_json(record)
        try:
            revision = await (
                kv.create(key, value) if previous == 0 else kv.update(key, value, last=previous)
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
        previous = await self._revision(kv, key)
        if previous == 0:
            raise AdminError(404, "admin.not_found", f"{bucket.collection}/{key}")
        await kv.delete(key)
        revision = await self._last_revision(kv, key)
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
                request_id=f"admin-{uuid.uuid4().hex}", tee="", reply_to="", submitted_at=now
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
        subject = schemas.admin_subject(change.collection)
        await self._publisher.publish(
            subject,
            schemas.encode(event),
            {"Nats-Msg-Id": f"{change.collection}:{change.key}:{change.revision}"},
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
        sealed = seal(self._keyring(), secret, path.encode())
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
        for key, _revision, record in await self.entries(buckets.RESOURCES):
            if record.sealed.get("kid") == ring.current_kid:
                continue
            record.sealed = rewrap(ring, record.sealed, key.encode())
            await self._write(buckets.RESOURCES, key, record, actor, {"rewrapped_to": ring.current_kid})
            count += 1
        return count

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


_BINDING_LISTS = ("tees", "measurements")


def _check_binding(binding: dict[str, Any]) -> dict[str, Any]:
    """What a token must meet to get the resource; unknown fields are refused (a misspelt
    allow-list must not silently allow everything)."""
    out: dict[str, Any] = {}
    for name, value in binding.items():
        if name in _BINDING_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise AdminError(400, "admin.bad_binding", f"binding.{name}: a list of strings")
            out[name] = [v.lower() for v in value]
        elif name == "allow_sample":
            if not isinstance(value, bool):
                raise AdminError(400, "admin.bad_binding", "binding.allow_sample: true or false")
            out[name] = value
        else:
            raise AdminError(
                400, "admin.bad_binding", f"binding.{name}: unknown (tees, measurements, allow_sample)"
            )
    return out


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
