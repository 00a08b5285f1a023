"""Pure rules of cluster membership, and the durable store of it (JetStream KV ``remits_clusters``,
key ``<cluster>.<node>``): who joined, on what TEE and TCB, when each last attested, who was
evicted and why."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from shared import schemas
from shared.errors import ParseError
from shared.trust import buckets

NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MEMBER = "member"
EVICTED = "evicted"
# Claims that say how current the platform's firmware is, kept with the membership.
_TCB_MARKERS = ("tcb", "svn")


def check_name(value: str, what: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ParseError(what, f"{value!r}: 1-63 lowercase letters, digits and -", prefix="join")
    return value


def member_key(cluster: str, node: str) -> str:
    return f"{check_name(cluster, 'cluster')}.{check_name(node, 'node')}"


def tcb_of(tee_claims: Mapping[str, Any]) -> dict[str, Any]:
    """The TCB/SVN claims of an attestation (e.g. snp.reported_tcb.*, sample.svn, tdx tcb_status)."""
    return {k: v for k, v in tee_claims.items() if any(m in k.lower() for m in _TCB_MARKERS) and not isinstance(v, dict | list)}


def joined(
    previous: schemas.ClusterMember | None, *, cluster: str, node: str, tee: str, ear: str,
    tee_claims: Mapping[str, Any], key_sha256: str, now: float,
) -> schemas.ClusterMember:  # fmt: skip
    """The membership after an affirming (re-)attestation."""
    return schemas.ClusterMember(
        cluster=cluster,
        node=node,
        tee=tee,
        status=MEMBER,
        joined_at=previous.joined_at if previous is not None and previous.status == MEMBER else now,
        last_attested=now,
        ear=ear,
        ear_sha256=hashlib.sha256(ear.encode()).hexdigest(),
        key_sha256=key_sha256,
        tcb=tcb_of(tee_claims),
    )


def evicted(member: schemas.ClusterMember, reason: str, now: float) -> schemas.ClusterMember:
    return msgspec.structs.replace(member, status=EVICTED, reason=reason, evicted_at=now)


def overdue(member: schemas.ClusterMember, now: float, reattest_s: float) -> bool:
    """A member that has not re-attested within two periods (one missed is tolerated)."""
    return member.status == MEMBER and now - member.last_attested > 2 * reattest_s


class MembershipStore:
    """The KV bucket, read and written by the join service alone."""

    def __init__(self, js: Any) -> None:
        self._js = js
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await self._js.key_value(buckets.CLUSTERS.name)
        return self._kv

    async def entry(self, cluster: str, node: str) -> tuple[schemas.ClusterMember, int] | None:
        """The member record and its revision (for ``replace``), or None."""
        from nats.js.errors import KeyNotFoundError

        kv = await self._bucket()
        try:
            entry = await kv.get(member_key(cluster, node))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=schemas.ClusterMember), int(entry.revision)

    async def get(self, cluster: str, node: str) -> schemas.ClusterMember | None:
        found = await self.entry(cluster, node)
        return None if found is None else found[0]

    async def put(self, member: schemas.ClusterMember) -> None:
        kv = await self._bucket()
        await kv.put(member_key(member.cluster, member.node), msgspec.json.encode(member))

    async def write(self, member: schemas.ClusterMember, revision: int) -> int | None:
        """Compare-and-set ``member`` over the record read at ``revision`` (0: there was none):
        the new revision, or None when the record changed since it was read."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = await self._bucket()
        key, value = member_key(member.cluster, member.node), msgspec.json.encode(member)
        try:
            if revision == 0:
                return int(await kv.create(key, value))
            return int(await kv.update(key, value, last=revision))
        except KeyWrongLastSequenceError:
            return None

    async def restore(self, previous: schemas.ClusterMember | None, cluster: str, node: str, revision: int) -> bool:
        """Undo a write made at ``revision``: put ``previous`` back, or delete the record when
        there was none; False (and nothing changed) when the record moved on since."""
        from nats.js.errors import APIError, KeyWrongLastSequenceError

        kv = await self._bucket()
        try:
            if previous is None:
                await kv.delete(member_key(cluster, node), last=revision)
            else:
                await kv.update(member_key(cluster, node), msgspec.json.encode(previous), last=revision)
        except (KeyWrongLastSequenceError, APIError):  # a delete's failed expectation is a bare APIError
            return False
        return True

    async def replace(self, member: schemas.ClusterMember, revision: int) -> bool:
        """Write ``member`` only if its record is still at ``revision``: False when another replica
        (or a re-attestation) changed it since it was read, so that two sweeps never evict one node
        twice, and no sweep overwrites an attestation recorded meanwhile."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = await self._bucket()
        try:
            await kv.update(member_key(member.cluster, member.node), msgspec.json.encode(member), last=revision)
        except KeyWrongLastSequenceError:
            return False
        return True

    async def entries(self, cluster: str) -> list[tuple[schemas.ClusterMember, int]]:
        """Every member record of ``cluster`` with its revision. The keys come from the bucket
        stream's subjects, not nats-py's kv.keys(), whose watcher can report "no more keys" before
        it has delivered them all: a sweep must not miss a member."""
        check_name(cluster, "cluster")
        await self._bucket()
        stream = buckets.CLUSTERS.stream
        prefix = f"$KV.{buckets.CLUSTERS.name}.{cluster}."
        info = await self._js.stream_info(stream, subjects_filter=f"{prefix}>")
        out = []
        for subject in sorted(info.state.subjects or {}):
            found = await self.entry(cluster, subject[len(prefix) :])
            if found is not None:
                out.append(found)
        return out

    async def members(self, cluster: str) -> list[schemas.ClusterMember]:
        return [member for member, _ in await self.entries(cluster)]
