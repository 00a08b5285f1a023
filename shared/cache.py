"""Redis helpers: KBS sessions, single-use nonces, the endorsement cache, locks, decision guards
and outcome copies: only what may be lost. What an operator provisions (policies, reference
values, secrets, revocations) lives in the JetStream buckets of ``shared.trust``. Key layout
lives here and nowhere else.

Every method is one round trip to Redis (a pipeline or a script counts as one), so the number of
trips an attestation costs can be read off the callers. The in-process ``TtlCache`` lives here too.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

import msgspec

from shared.resp import RedisConnectionError, RespClient, Script

_PREFIX = "remits:"

# Atomically take a nonce and remember that it was used, so that a second use is reported as a
# replay rather than as an unknown nonce. The "used" marker outlives the nonce itself.
_CONSUME_NONCE = Script("""
local v = redis.call('GET', KEYS[1])
if not v then
  local used = redis.call('GET', KEYS[2])
  if used then return {'replayed', used} end
  return {'unknown', ''}
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2] .. '|' .. v, 'EX', ARGV[1])
return {'ok', v}
""")

# The release stage marks a session attested only with a token issued for that session's own
# challenge (the token's eat_nonce is the session's nonce), and writes the gateway's fallback copy
# of the outcome in the same step. Outcome copies are hashes (value and tag), so the release
# stage's Redis user needs no SET, which would let it overwrite secrets.
_MARK_ATTESTED = Script("""
local nonce = redis.call('HGET', KEYS[1], 'nonce')
if not nonce then return 'no_session' end
if nonce ~= ARGV[1] then return 'nonce_mismatch' end
redis.call('HSET', KEYS[1], 'state', 'attested', 'token', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HSET', KEYS[2], 'v', ARGV[4], 'mac', ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 'ok'
""")

# Attestation quotas as a generic cell rate algorithm: one key per tenant holds the theoretical
# arrival time (TAT, µs on the Redis clock, which every gateway shares). A tenant allowed N per
# second may spend N at once from idle, then one every 1/N s: unlike counting per calendar second,
# there is no window edge around which 2N pass within a second. Returns 0 when admitted, else the
# µs until the next attestation would be.
_ADMIT = Script("""
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - tolerance
if wait > 0 then return wait end
local next_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1000)
return 0
""")

# A TPM's (reset count, restart count, clock) only moves forward: compared as a tuple, component
# by component, with the last accepted value kept per attestation key. Equal is accepted (a
# redelivered message is checked again); 1, 2 or 3 names the first component that went back.
_ADVANCE_TPM_CLOCK = Script("""
local cur = redis.call('GET', KEYS[1])
local new = {tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])}
if cur then
  local r, s, c = string.match(cur, '^(%d+):(%d+):(%d+)$')
  if r then
    local old = {tonumber(r), tonumber(s), tonumber(c)}
    for i = 1, 3 do
      if new[i] > old[i] then break end
      if new[i] < old[i] then return i end
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. ARGV[2] .. ':' .. ARGV[3], 'PX', ARGV[4])
return 0
""")

_RELEASE_LOCK = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")


class NonceState(str, Enum):
    OK = "ok"
    REPLAYED = "replayed"
    EXPIRED = "expired"
    UNKNOWN = "unknown"
    WRONG_SESSION = "wrong_session"


@dataclass(frozen=True)
class Session:
    session_id: str
    tee: str
    nonce: str
    expires_at: float
    state: str  # "pending" | "attested"
    token: str = ""
    tenant: str = "default"  # named at /auth; the session's attestation is judged by its configuration


def _session_from_hash(session_id: str, raw: list[bytes] | None) -> Session | None:
    if not raw:
        return None
    fields = {raw[i].decode(): raw[i + 1].decode() for i in range(0, len(raw) - 1, 2)}
    return Session(
        session_id=session_id,
        tee=fields.get("tee", ""),
        nonce=fields.get("nonce", ""),
        expires_at=float(fields.get("expires_at", "0")),
        state=fields.get("state", "pending"),
        token=fields.get("token", ""),
        tenant=fields.get("tenant", "default"),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """The Redis side of REMITS over one pipelined connection (see ``shared.resp``)."""

    # Behind Sentinel, a nonce consumption waits until one replica has it (WAIT 1 <ms>), so that a
    # failover cannot bring the nonce back unused. Not done against a single Redis: no replica.
    REPLICA_WAIT_MS = 1000

    def __init__(self, client: RespClient) -> None:
        self.client = client
        endpoint = getattr(client, "endpoint", None)
        self._wait_for_replica = bool(getattr(endpoint, "sentinels", ()))

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(RespClient.from_url(url))

    async def close(self) -> None:
        await self.client.close()

    # -- sessions and nonces -------------------------------------------------------------
    async def create_session(
        self, tee: str, ttl_s: float, now: float | None = None, tenant: str = "default"
    ) -> Session:
        now = time.time() if now is None else now
        session_id = secrets.token_hex(16)
        nonce = _b64_nonce()
        expires_at = now + ttl_s
        # The records live longer than their validity so an expired nonce is reported as
        # "expired" (with its own reason) instead of "unknown".
        grace_ms = max(1, int(ttl_s * 1000)) + 600_000
        key = f"{_PREFIX}session:{session_id}"
        # Not a transaction: the ids are fresh, so nobody can observe the records half-written.
        await self.client.pipeline(
            [
                (
                    "HSET", key, "tee", tee, "nonce", nonce, "expires_at", repr(expires_at), "state", "pending",
                    "tenant", tenant,
                ),
                ("PEXPIRE", key, grace_ms),
                (
                    "SET", f"{_PREFIX}nonce:{nonce}",
                    json.dumps({"session_id": session_id, "expires_at": expires_at}), "PX", grace_ms,
                ),
            ]
        )
        return Session(session_id, tee, nonce, expires_at, "pending", tenant=tenant)

    async def admit(self, tenant: str, per_second: int) -> float:
        """Count one attestation of ``tenant`` against ``per_second``, fleet-wide (every gateway
        shares the state, timed by the Redis clock): 0 when admitted, else the seconds until the
        next one would be. Up to ``per_second`` at once from idle, then evenly spaced."""
        interval_us = 1_000_000 / per_second
        tolerance_us = interval_us * (per_second - 1)
        wait_us = int(
            await self.client.run_script(
                _ADMIT, [f"{_PREFIX}quota:{tenant}"], [f"{interval_us:.0f}", f"{tolerance_us:.0f}"]
            )
        )
        return max(0.001, wait_us / 1_000_000) if wait_us > 0 else 0.0

    async def get_session(self, session_id: str) -> Session | None:
        return _session_from_hash(session_id, await self.client.execute("HGETALL", f"{_PREFIX}session:{session_id}"))

    async def advance_tpm_clock(
        self, ak_sha256: str, reset_count: int, restart_count: int, clock: int, ttl_s: float
    ) -> int:
        """Record a TPM's clock state unless it goes back; 0 when accepted, else 1 (reset count),
        2 (restart count) or 3 (clock): the first component lower than the last accepted one."""
        raw = await self.client.run_script(
            _ADVANCE_TPM_CLOCK,
            [f"{_PREFIX}tpm-clock:{ak_sha256}"],
            [reset_count, restart_count, clock, int(ttl_s * 1000)],
        )
        return int(raw)

    async def consume_nonce(
        self, nonce: str, session_id: str, request_id: str, now: float | None = None
    ) -> NonceState:
        """Single use: the first request wins, every other request sees REPLAYED. A redelivery of
        the request that consumed the nonce gets the same answer again (idempotent)."""
        now = time.time() if now is None else now
        state_raw, value_raw = await self.client.run_script(
            _CONSUME_NONCE, [f"{_PREFIX}nonce:{nonce}", f"{_PREFIX}nonce-used:{nonce}"], [3600, request_id]
        )
        state, value = _text(state_raw), _text(value_raw)
        if state == "replayed":
            consumer, _, first_record = value.partition("|")
            if consumer != request_id:
                return NonceState.REPLAYED
            value, state = first_record, "ok"
        if state != "ok":
            return NonceState(state)
        record = json.loads(value)
        if record["session_id"] != session_id:
            return NonceState.WRONG_SESSION
        if now > float(record["expires_at"]):
            return NonceState.EXPIRED
        if self._wait_for_replica:
            acknowledged = await self.client.execute("WAIT", 1, self.REPLICA_WAIT_MS)
            if int(acknowledged) < 1:
                # Unreplicated, the consumption could be undone by a failover: fail (the request is
                # delivered again, or refused), never risk a second use.
                raise RedisConnectionError("nonce consumption not acknowledged by a replica")
        return NonceState.OK

    async def mark_attested(
        self, session_id: str, token: str, nonce: str, ttl_s: float, outcome: tuple[str, bytes, str]
    ) -> str:
        """Mark the session attested with ``token`` if the session's nonce is ``nonce`` (the
        token's), and store ``outcome`` (request id, encoded outcome, its tag) as the gateway's
        fallback copy, in one step. Returns "ok", "no_session" or "nonce_mismatch"."""
        request_id, data, mac = outcome
        result = await self.client.run_script(
            _MARK_ATTESTED,
            [f"{_PREFIX}session:{session_id}", f"{_PREFIX}outcome:{request_id}"],
            [nonce, token, max(1, int(ttl_s * 1000)), data, mac, _OUTCOME_TTL_MS],
        )
        return _text(result)

    # -- endorsements --------------------------------------------------------------------
    async def get_endorsement(self, tee: str, key: str) -> tuple[list[bytes] | None, float]:
        """The cached document list (``[]`` caches "the vendor does not know this key") and how
        many seconds it stays valid."""
        raw, pttl = await self.client.pipeline(
            [("GET", f"{_PREFIX}endorsement:{tee}:{key}"), ("PTTL", f"{_PREFIX}endorsement:{tee}:{key}")]
        )
        if raw is None:
            return None, 0.0
        return msgspec.msgpack.decode(raw, type=list[bytes]), max(0.0, int(pttl) / 1000.0)

    async def put_endorsement(self, tee: str, key: str, chain: list[bytes], ttl_s: int) -> None:
        await self.client.execute(
            "SET", f"{_PREFIX}endorsement:{tee}:{key}", msgspec.msgpack.encode(chain), "EX", max(1, ttl_s)
        )

    async def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        ok = await self.client.execute("SET", f"{_PREFIX}lock:{name}", token, "NX", "PX", max(1, int(ttl_s * 1000)))
        return token if ok is not None else None

    async def release_lock(self, name: str, token: str) -> None:
        await self.client.run_script(_RELEASE_LOCK, [f"{_PREFIX}lock:{name}"], [token])

    # -- exactly one decision per request ------------------------------------------------
    async def claim_decision(self, request_id: str, encoded: bytes, ttl_s: int = 86400) -> bytes | None:
        """Store the decision unless one exists; return the earlier one if it does."""
        key = f"{_PREFIX}decision:{request_id}"
        won, stored = await self.client.pipeline([("SET", key, encoded, "NX", "EX", ttl_s), ("GET", key)])
        return None if won is not None else stored

    # -- outcomes, so a gateway that missed the notification can still answer -------------
    async def put_outcome(self, request_id: str, encoded: bytes, mac: str = "") -> None:
        key = f"{_PREFIX}outcome:{request_id}"
        await self.client.pipeline([("HSET", key, "v", encoded, "mac", mac), ("PEXPIRE", key, _OUTCOME_TTL_MS)])

    async def get_outcome(self, request_id: str) -> tuple[bytes, str] | None:
        """The stored outcome and its tag, if any."""
        raw = await self.client.execute("HGETALL", f"{_PREFIX}outcome:{request_id}")
        fields = {raw[i]: raw[i + 1] for i in range(0, len(raw or []) - 1, 2)}
        if b"v" not in fields:
            return None
        return fields[b"v"], fields.get(b"mac", b"").decode()


_OUTCOME_TTL_MS = 600_000


def _b64_nonce() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(32)).decode()


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A bounded in-process cache whose entries expire; least recently used entries go first."""

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[K, tuple[V, float]] = OrderedDict()
        self._max = max_entries
        self._now = time.monotonic

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, expires = entry
        if self._now() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        self._entries[key] = (value, self._now() + ttl_s)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
