"""Redis helpers: KBS sessions, single-use nonces, the endorsement cache, locks, resources,
reference values, decision guards and outcome copies. Key layout lives here and nowhere else."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from enum import Enum

import msgspec
import redis.asyncio as aioredis

_PREFIX = "remits:"

# Atomically take a nonce and remember that it was used, so that a second use is reported as a
# replay rather than as an unknown nonce. The "used" marker outlives the nonce itself.
_CONSUME_NONCE = """
local v = redis.call('GET', KEYS[1])
if not v then
  local used = redis.call('GET', KEYS[2])
  if used then return {'replayed', used} end
  return {'unknown', ''}
end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2] .. '|' .. v, 'EX', ARGV[1])
return {'ok', v}
"""

_RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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


class Store:
    """Thin async facade over one Redis connection pool."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._consume = client.register_script(_CONSUME_NONCE)
        self._unlock = client.register_script(_RELEASE_LOCK)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(aioredis.Redis.from_url(url, max_connections=256))

    async def close(self) -> None:
        await self.redis.aclose()

    # -- sessions and nonces -------------------------------------------------------------
    async def create_session(self, tee: str, ttl_s: float, now: float | None = None) -> Session:
        now = time.time() if now is None else now
        session_id = secrets.token_hex(16)
        nonce = _b64_nonce()
        expires_at = now + ttl_s
        ttl_ms = max(1, int(ttl_s * 1000))
        # The nonce record lives longer than its validity so an expired nonce is reported as
        # "expired" (with its own reason) instead of "unknown".
        grace_ms = ttl_ms + 600_000
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            f"{_PREFIX}session:{session_id}",
            mapping={"tee": tee, "nonce": nonce, "expires_at": repr(expires_at), "state": "pending"},
        )
        pipe.pexpire(f"{_PREFIX}session:{session_id}", grace_ms)
        pipe.set(
            f"{_PREFIX}nonce:{nonce}",
            json.dumps({"session_id": session_id, "expires_at": expires_at}),
            px=grace_ms,
        )
        await pipe.execute()
        return Session(session_id, tee, nonce, expires_at, "pending")

    async def get_session(self, session_id: str) -> Session | None:
        raw = await self.redis.hgetall(f"{_PREFIX}session:{session_id}")
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return Session(
            session_id=session_id,
            tee=fields.get("tee", ""),
            nonce=fields.get("nonce", ""),
            expires_at=float(fields.get("expires_at", "0")),
            state=fields.get("state", "pending"),
            token=fields.get("token", ""),
        )

    async def consume_nonce(
        self, nonce: str, session_id: str, request_id: str, now: float | None = None
    ) -> NonceState:
        """Single use: the first request wins, every other request sees REPLAYED. A redelivery of
        the request that consumed the nonce gets the same answer again (idempotent)."""
        now = time.time() if now is None else now
        state, value = await self._consume(
            keys=[f"{_PREFIX}nonce:{nonce}", f"{_PREFIX}nonce-used:{nonce}"], args=[3600, request_id]
        )
        state = state.decode() if isinstance(state, bytes) else state
        value = value.decode() if isinstance(value, bytes) else value
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
        return NonceState.OK

    async def mark_attested(self, session_id: str, token: str, ttl_s: float) -> None:
        key = f"{_PREFIX}session:{session_id}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping={"state": "attested", "token": token})
        pipe.pexpire(key, max(1, int(ttl_s * 1000)))
        await pipe.execute()

    # -- endorsements --------------------------------------------------------------------
    async def get_endorsement(self, tee: str, key: str) -> list[bytes] | None:
        raw = await self.redis.get(f"{_PREFIX}endorsement:{tee}:{key}")
        return None if raw is None else msgspec.msgpack.decode(raw, type=list[bytes])

    async def put_endorsement(self, tee: str, key: str, chain: list[bytes], ttl_s: int) -> None:
        await self.redis.set(
            f"{_PREFIX}endorsement:{tee}:{key}", msgspec.msgpack.encode(chain), ex=max(1, ttl_s)
        )

    async def acquire_lock(self, name: str, ttl_s: float) -> str | None:
        token = secrets.token_hex(8)
        ok = await self.redis.set(f"{_PREFIX}lock:{name}", token, nx=True, px=max(1, int(ttl_s * 1000)))
        return token if ok else None

    async def release_lock(self, name: str, token: str) -> None:
        await self._unlock(keys=[f"{_PREFIX}lock:{name}"], args=[token])

    # -- resources (secrets; never logged) ----------------------------------------------
    async def put_resource(self, path: str, value: bytes) -> None:
        await self.redis.set(f"{_PREFIX}resource:{path}", value)

    async def get_resource(self, path: str) -> bytes | None:
        return await self.redis.get(f"{_PREFIX}resource:{path}")

    async def delete_resource(self, path: str) -> None:
        await self.redis.delete(f"{_PREFIX}resource:{path}")

    # -- reference values ----------------------------------------------------------------
    async def add_reference_values(self, tee: str, name: str, values: list[str]) -> None:
        if values:
            await self.redis.sadd(f"{_PREFIX}refval:{tee}:{name}", *values)

    async def get_reference_values(self, tee: str, name: str) -> frozenset[str]:
        members = await self.redis.smembers(f"{_PREFIX}refval:{tee}:{name}")
        return frozenset(m.decode() for m in members)

    async def get_reference_value_sets(self, tee: str, names: tuple[str, ...]) -> dict[str, frozenset[str]]:
        """Several named sets in one round trip (every appraisal reads all of its platform's)."""
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.smembers(f"{_PREFIX}refval:{tee}:{name}")
        results = await pipe.execute()
        return {name: frozenset(m.decode() for m in members) for name, members in zip(names, results, strict=True)}

    # -- exactly one decision per request ------------------------------------------------
    async def claim_decision(self, request_id: str, encoded: bytes, ttl_s: int = 86400) -> bytes | None:
        """Store the decision unless one exists; return the earlier one if it does."""
        key = f"{_PREFIX}decision:{request_id}"
        if await self.redis.set(key, encoded, nx=True, ex=ttl_s):
            return None
        return await self.redis.get(key)

    # -- outcomes, so a gateway that missed the notification can still answer -------------
    async def put_outcome(self, request_id: str, encoded: bytes, ttl_s: int = 600) -> None:
        await self.redis.set(f"{_PREFIX}outcome:{request_id}", encoded, ex=ttl_s)

    async def get_outcome(self, request_id: str) -> bytes | None:
        return await self.redis.get(f"{_PREFIX}outcome:{request_id}")


def _b64_nonce() -> str:
    import base64

    return base64.b64encode(secrets.token_bytes(32)).decode()
