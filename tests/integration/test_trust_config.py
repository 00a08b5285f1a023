"""The trust configuration end to end: durable across restarts, changed through the admin API
(authenticated, audited), judged by Rego policies on every replica, revocable; secrets sealed."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import aiohttp
import pytest

from services.demo.client import GuestClient, sample_evidence
from shared import schemas
from shared.adminauth import generate_admin_keypair, sign_admin_token
from shared.ear import submod_status, verify_ear
from shared.trust import buckets
from tests.conftest import GOOD_MEASUREMENT, RESOURCE, SECRET, RunningStack, decisions_on_stream, start_stack

pytestmark = pytest.mark.integration

BLOCK_ALL = """package remits.attestation
import rego.v1

# Test policy: refuse everything, so its effect is visible whichever replica judged.
result := {"vector": {}, "notes": [], "reject": "policy.blocked_by_test", "detail": "test"}
"""


PLANTED = b"planted secret bytes"


@pytest.fixture
def admin_key(tmp_path: Path) -> tuple[bytes, Path]:
    private_pem, public_pem = generate_admin_keypair("EdDSA")
    public = tmp_path / "admin.pub.pem"
    public.write_bytes(public_pem)
    return private_pem, public


async def attest(rs: RunningStack, measurement: bytes = GOOD_MEASUREMENT, device=None):  # type: ignore[no-untyped-def]
    device = device or rs.enroll(measurement)
    client = GuestClient.new(rs.url)
    nonce = (await client.auth()).body["nonce"]
    result = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
    return client, result


def status_of(rs: RunningStack, token: str) -> tuple[str, dict]:  # type: ignore[type-arg]
    from shared.ear import load_or_create_signing_key

    key = load_or_create_signing_key(rs.settings.signing_key_path)
    claims = verify_ear(token, key.public_key(), now=int(time.time()))
    return submod_status(claims), claims


async def admin_call(
    rs: RunningStack, method: str, path: str, *, token: str | None, body: bytes = b""
) -> tuple[int, object]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"{rs.url}/admin/v1/{path}", data=body, headers=headers) as resp:
            return resp.status, json.loads(await resp.read() or b"null")


async def bucket_state(rs: RunningStack) -> dict[str, int]:
    """Last sequence of every trust bucket and of the decision stream (admin events)."""
    js = rs.stack.js
    state = {b.name: (await js.stream_info(b.stream)).state.last_seq for b in buckets.ALL}
    state["events"] = (await js.stream_info(schemas.DECISION_STREAM)).state.last_seq
    return state


async def test_restart_keeps_policy_reference_values_and_resources(infra, tmp_path, admin_key) -> None:  # type: ignore[no-untyped-def]
    private_pem, public = admin_key
    rs = await start_stack(infra, tmp_path / "data", admin_keys=(public,))
    token = sign_admin_token(private_pem, "alice", now=time.time())
    custom = (
        "package remits.attestation\nimport rego.v1\n\n# Operator's copy: the platform's vector, stated again.\n"
        'result := {"vector": input.platform_vector, "notes": ["custom policy"]}\n'
    )
    status, body = await admin_call(rs, "PUT", "policies/attestation.sample", token=token, body=custom.encode())
    assert status == 200, body
    revision = body["revision"]  # type: ignore[index]
    await rs.stack.trust_synced()
    client, result = await attest(rs)
    assert result.status == 200, result.body
    assert (await client.resource(RESOURCE)).status == 200
    await client.close()
    await rs.stack.stop()
    await rs.kds.stop()

    # Both servers go down; Redis (volatile) comes back empty, NATS from its store.
    infra.nats.stop()
    infra.redis.stop()
    infra.nats.start()
    infra.redis.start()

    again = await start_stack(infra, tmp_path / "data", admin_keys=(public,), fresh=False)
    try:
        status, body = await admin_call(again, "GET", "policies/attestation.sample", token=token)
        assert status == 200 and body["revision"] == revision and body["rego"] == custom  # type: ignore[index]
        status, paths = await admin_call(again, "GET", "resources", token=token)
        assert status == 200 and paths == [RESOURCE]
        client, result = await attest(again)
        assert result.status == 200, result.body
        verdict, claims = status_of(again, result.body["token"])
        assert verdict == "affirming"
        assert claims["submods"]["cpu0"]["ear.appraisal-policy-id"].startswith("attestation.sample@sha256:")
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
        await client.close()
    finally:
        await again.stack.stop()
        await again.kds.stop()


async def test_expired_reference_value_does_not_match(running: RunningStack) -> None:
    admin = running.stack.trust_admin
    assert admin is not None
    other = bytes(range(48))
    await admin.put_reference_value("sample", "measurement", [other.hex()], "tests", expires_at=time.time() + 1.0)
    await running.stack.trust_synced()
    client, result = await attest(running, other)
    assert result.status == 200, result.body  # still valid
    await client.close()
    await asyncio.sleep(1.2)
    client, result = await attest(running, other)
    assert result.status == 401 and result.reason == "measurement.reference_expired", result.body
    await client.close()
    # The decision records why no reference value matched.
    decision = (await decisions_on_stream(running.stack.js))[-1]
    assert decision.reason == "measurement.reference_expired"  # type: ignore[attr-defined]
    assert decision.provenance.references["measurement"]["status"] == "expired"  # type: ignore[attr-defined]
    # The unexpired record of the good image still matches.
    client, result = await attest(running)
    assert result.status == 200
    await client.close()


async def test_policy_change_reaches_every_replica_without_restart(running: RunningStack, tmp_path: Path) -> None:
    second = await start_stack(running.infra, tmp_path / "second", components=("measure",), fresh=False)
    try:
        admin = running.stack.trust_admin
        assert admin is not None
        await admin.put_policy("attestation.sample", BLOCK_ALL, "tests")
        await running.stack.trust_synced()
        await second.stack.trust_synced()
        assert running.stack.contexts["measure"].trust.snapshot().policies["attestation.sample"]  # type: ignore[union-attr]
        reasons = []
        for _ in range(6):
            client, result = await attest(running)
            reasons.append(result.reason)
            await client.close()
        assert reasons == ["policy.blocked_by_test"] * 6
        await admin.delete(buckets.POLICIES, "attestation.sample", "tests")
        await running.stack.trust_synced()
        await second.stack.trust_synced()
        for _ in range(4):
            client, result = await attest(running)
            assert result.status == 200, result.body
            await client.close()
    finally:
        await second.stack.stop()
        await second.kds.stop()


async def test_admin_api_is_off_without_keys(running: RunningStack) -> None:
    status, body = await admin_call(running, "GET", "policies", token="x")
    assert status == 404 and body["error"] == "admin.disabled"  # type: ignore[index]
    async with aiohttp.ClientSession() as http:
        async with http.post(running.url + "/kbs/v0/resource/a/b/c", data=b"x") as resp:
            assert resp.status == 404
    assert await running.stack.trust_admin.entry(buckets.RESOURCES, "a/b/c") is None  # type: ignore[union-attr]


async def test_every_admin_auth_failure_changes_nothing(infra, tmp_path, admin_key) -> None:  # type: ignore[no-untyped-def]
    private_pem, public = admin_key
    rs = await start_stack(infra, tmp_path / "data", admin_keys=(public,))
    try:
        now = time.time()
        other_private, _ = generate_admin_keypair("EdDSA")
        good = sign_admin_token(private_pem, "alice", now=now)
        header, payload, _sig = good.split(".")
        unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode() + f".{payload}."
        tampered_payload = base64.urlsafe_b64encode(
            json.dumps({"sub": "mallory", "iat": int(now), "exp": int(now) + 60}).encode()
        ).rstrip(b"=").decode()
        bad_tokens = {
            "missing": None,
            "garbage": "not-a-jwt",
            "alg none": unsigned,
            "wrong key": sign_admin_token(other_private, "alice", now=now),
            "expired": sign_admin_token(private_pem, "alice", now=now - 3600, lifetime_s=60),
            "tampered": f"{header}.{tampered_payload}.{_sig}",
        }
        before = await bucket_state(rs)
        body = json.dumps({"value": base64.b64encode(PLANTED).decode(), "binding": {"allow_sample": True}}).encode()
        for name, token in bad_tokens.items():
            for method, path, data in (
                ("PUT", "policies/attestation.sample", BLOCK_ALL.encode()),
                ("PUT", "resources/evil/key/x", body),
                ("POST", "revocations", b'{"kind":"measurement","value":"' + GOOD_MEASUREMENT.hex().encode() + b'"}'),
                ("DELETE", f"resources/{RESOURCE}", b""),
                ("GET", "resources", b""),
            ):
                status, answer = await admin_call(rs, method, path, token=token, body=data)
                assert status == 401, (name, method, path, answer)
                assert str(answer["error"]).startswith("admin."), answer  # type: ignore[index]
        async with aiohttp.ClientSession() as http:
            async with http.post(rs.url + "/kbs/v0/resource/evil/key/y", data=b"evil") as resp:
                assert resp.status == 401
        assert await bucket_state(rs) == before
        # The good credential does change things, and the change is an audit event.
        status, answer = await admin_call(rs, "PUT", "resources/evil/key/x", token=good, body=body)
        assert status == 200, answer
        after = await bucket_state(rs)
        assert after[buckets.RESOURCES.name] == before[buckets.RESOURCES.name] + 1
        assert after["events"] == before["events"] + 1
        msg = await rs.stack.js.get_last_msg(schemas.DECISION_STREAM, schemas.admin_subject("default", "resources"))
        event = schemas.decode_stage(msg.data)
        assert isinstance(event, schemas.AdminEvent)
        assert event.actor.startswith("alice (") and event.key == "evil/key/x" and event.action == "put"
        assert event.previous_revision == 0 and event.revision == answer["revision"]  # type: ignore[index]
        assert PLANTED not in msg.data and base64.b64encode(PLANTED) not in msg.data
    finally:
        await rs.stack.stop()
        await rs.kds.stop()


async def test_resources_are_denied_for_warning_contraindicated_expired_and_revoked_tokens(running: RunningStack) -> None:
    admin = running.stack.trust_admin
    assert admin is not None
    # Affirming, and fetched: the baseline.
    client, result = await attest(running)
    assert result.status == 200
    token = result.body["token"]
    assert status_of(running, token)[0] == "affirming"
    assert (await client.resource(RESOURCE)).status == 200
    await client.close()

    # Revoked token (by its jti): denied, by cookie and by bearer.
    jti = status_of(running, token)[1]["jti"]
    await admin.revoke("token_id", jti, "leaked", "tests")
    await running.stack.trust_synced()
    bearer = GuestClient.new(running.url)
    denied = await bearer.resource(RESOURCE, token=token)
    assert denied.status == 401 and "token.revoked" in denied.body["detail"], denied.body
    await bearer.close()

    # Expired token: the clock moves past its exp.
    client, result = await attest(running)
    expiring = result.body["token"]
    real = time.time
    running.stack.set_clock(lambda: real() + running.settings.token_lifetime_s + 5)
    try:
        denied = await client.resource(RESOURCE)
        assert denied.status == 401 and "expired" in denied.body["detail"], denied.body
    finally:
        running.stack.set_clock(real)
    await client.close()
    assert expiring

    # Warning: no reference value provisioned for the image -> executables 33.
    for key, _rev, _record in await admin.entries(buckets.REFVALS):
        await admin.delete(buckets.REFVALS, key, "tests")
    await running.stack.trust_synced()
    client, result = await attest(running)
    assert result.status == 200 and status_of(running, result.body["token"])[0] == "warning"
    denied = await client.resource(RESOURCE)
    assert denied.status == 401 and "token.not_affirming" in denied.body["detail"], denied.body
    await client.close()

    # Contraindicated: the measurement is revoked; new attestations say so, with the reason.
    await admin.put_reference_value("sample", "measurement", [GOOD_MEASUREMENT.hex()], "tests")
    await admin.revoke("measurement", GOOD_MEASUREMENT.hex(), "CVE-2026-0001 in the image", "tests")
    await running.stack.trust_synced()
    client, result = await attest(running)
    assert result.status == 200
    verdict, claims = status_of(running, result.body["token"])
    assert verdict == "contraindicated"
    assert claims["submods"]["cpu0"]["ear.trustworthiness-vector"]["executables"] == 96
    denied = await client.resource(RESOURCE)
    assert denied.status == 401 and "token.not_affirming" in denied.body["detail"], denied.body
    await client.close()


async def test_revoking_a_chip_voids_tokens_issued_before(running: RunningStack) -> None:
    admin = running.stack.trust_admin
    assert admin is not None
    device = running.enroll()
    client, result = await attest(running, device=device)
    assert result.status == 200
    assert (await client.resource(RESOURCE)).status == 200
    await admin.revoke("chip_id", device.device_id.hex(), "chip compromised", "tests")
    await running.stack.trust_synced()
    denied = await client.resource(RESOURCE)  # the same, earlier token
    assert denied.status == 401 and "token.revoked" in denied.body["detail"], denied.body
    await client.close()
    client, result = await attest(running, device=device)
    assert result.status == 200
    verdict, claims = status_of(running, result.body["token"])
    assert verdict == "contraindicated" and claims["submods"]["cpu0"]["ear.trustworthiness-vector"]["hardware"] == 96
    await client.close()


async def test_replicas_follow_changes_made_after_a_nats_restart(tmp_path: Path) -> None:
    """The mirrors' consumers do not outlive the server: after a restart they must find their
    place again and see the next change, without a restart of the workers."""
    from shared.embedded import start_embedded

    own = start_embedded(tmp_path / "infra")
    rs = await start_stack(own, tmp_path / "data")
    try:
        client, result = await attest(rs)
        assert result.status == 200
        await client.close()
        await asyncio.to_thread(own.nats.stop)
        await asyncio.to_thread(own.nats.start)
        admin = rs.stack.trust_admin
        assert admin is not None
        for _ in range(100):  # the operator's own connection comes back first
            try:
                await admin.put_policy("attestation.sample", BLOCK_ALL, "tests")
                break
            except Exception:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the admin connection never came back")
        for ctx in rs.stack.contexts.values():  # within a few checks of the watchdog
            if ctx.trust is not None:
                await ctx.trust.caught_up(timeout_s=30)
        client, result = await attest(rs)
        assert result.status == 401 and result.reason == "policy.blocked_by_test", result.body
        await client.close()
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
        own.stop()
