"""Redis store semantics against a real redis-server: single-use nonces, locks, decision guard."""

from __future__ import annotations

import asyncio

import pytest

from shared.cache import NonceState, Store
from shared.embedded import EmbeddedInfra

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(infra: EmbeddedInfra):  # type: ignore[no-untyped-def]
    s = Store.from_url(infra.redis_url)
    yield s
    await s.close()


async def test_nonce_is_single_use_and_bound_to_its_session(store: Store) -> None:
    session = await store.create_session("sample", ttl_s=60)
    assert len(session.session_id) == 32
    assert await store.consume_nonce(session.nonce, "other-session", "req-0") is NonceState.WRONG_SESSION
    # The wrong-session attempt burned it: a nonce is never usable twice.
    assert await store.consume_nonce(session.nonce, session.session_id, "req-1") is NonceState.REPLAYED
    fresh = await store.create_session("sample", ttl_s=60)
    assert await store.consume_nonce(fresh.nonce, fresh.session_id, "req-2") is NonceState.OK
    assert await store.consume_nonce(fresh.nonce, fresh.session_id, "req-3") is NonceState.REPLAYED
    # A redelivery of the request that consumed it gets the same answer (idempotent).
    assert await store.consume_nonce(fresh.nonce, fresh.session_id, "req-2") is NonceState.OK
    assert await store.consume_nonce("never-issued", fresh.session_id, "req-4") is NonceState.UNKNOWN


async def test_nonce_expires(store: Store) -> None:
    session = await store.create_session("sample", ttl_s=0.2)
    await asyncio.sleep(0.3)
    assert await store.consume_nonce(session.nonce, session.session_id, "req") is NonceState.EXPIRED


async def test_concurrent_consumers_only_one_wins(store: Store) -> None:
    session = await store.create_session("sample", ttl_s=60)
    results = await asyncio.gather(*(store.consume_nonce(session.nonce, session.session_id, f"r{i}") for i in range(50)))
    assert results.count(NonceState.OK) == 1
    assert results.count(NonceState.REPLAYED) == 49


async def test_session_becomes_attested_only_with_its_own_challenge(store: Store) -> None:
    session = await store.create_session("sample", ttl_s=60)
    other = await store.create_session("sample", ttl_s=60)
    # A token answering another session's challenge changes nothing.
    assert await store.mark_attested(session.session_id, "tok", other.nonce, 60, ("req-x", b"x", "m")) == "nonce_mismatch"
    loaded = await store.get_session(session.session_id)
    assert loaded is not None and loaded.state == "pending" and loaded.token == ""
    assert await store.get_outcome("req-x") is None
    assert await store.mark_attested("0" * 32, "tok", session.nonce, 60, ("req-y", b"y", "m")) == "no_session"
    # Its own: the session holds the token, and the outcome copy (with its tag) is stored with it.
    assert await store.mark_attested(session.session_id, "tok", session.nonce, 60, ("req-1", b"outcome", "tag")) == "ok"
    loaded = await store.get_session(session.session_id)
    assert loaded is not None and loaded.state == "attested" and loaded.token == "tok"
    assert await store.get_outcome("req-1") == (b"outcome", "tag")
    assert await store.get_session("0" * 32) is None


async def test_lock_is_exclusive_and_released_only_by_its_owner(store: Store) -> None:
    token = await store.acquire_lock("fetch:x", 5)
    assert token is not None
    assert await store.acquire_lock("fetch:x", 5) is None
    await store.release_lock("fetch:x", "not-the-owner")
    assert await store.acquire_lock("fetch:x", 5) is None
    await store.release_lock("fetch:x", token)
    assert await store.acquire_lock("fetch:x", 5) is not None


async def test_decision_guard_keeps_the_first(store: Store) -> None:
    assert await store.claim_decision("req-guard", b"first") is None
    assert await store.claim_decision("req-guard", b"second") == b"first"


async def test_endorsement_cache_round_trip(store: Store) -> None:
    await store.put_endorsement("sample", "device:ab", [b"\x30\x82der"], ttl_s=60)
    documents, ttl_s = await store.get_endorsement("sample", "device:ab")
    assert documents == [b"\x30\x82der"] and 55 < ttl_s <= 60
    assert await store.get_endorsement("sample", "device:cd") == (None, 0.0)


async def test_quota_admits_the_allowance_at_once_then_evenly(store: Store) -> None:
    """Four per second: four at once from idle, the fifth told to wait at most a quarter second;
    after that wait one more, not a new second's four (no window edge to burst across). Tried
    again if a loaded machine stretched a step past the margins the assertions need."""
    for attempt in range(5):
        tenant = f"quota-{attempt}"
        started = asyncio.get_running_loop().time()
        burst = [await store.admit(tenant, 4) for _ in range(5)]
        if asyncio.get_running_loop().time() - started > 0.2:
            continue
        assert burst[:4] == [0.0] * 4
        assert 0.05 < burst[4] <= 0.25, burst
        await asyncio.sleep(burst[4] + 0.01)
        started = asyncio.get_running_loop().time()
        after = [await store.admit(tenant, 4) for _ in range(2)]
        if asyncio.get_running_loop().time() - started > 0.2:
            continue
        assert after[0] == 0.0 and 0.05 < after[1] <= 0.25, after
        assert await store.admit("quota-other", 4) == 0.0  # another tenant has its own allowance
        return
    pytest.fail("the machine never ran five Redis calls within 0.2 s")
