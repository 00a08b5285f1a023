"""End to end through the HTTP gateway and every stage, on real NATS JetStream and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import pytest

from services.demo.client import GuestClient, sample_evidence
from shared.ear import load_or_create_signing_key, submod_status, tee_pubkey_from_claims, verify_ear
from shared.trust import buckets
from tests.conftest import RESOURCE, SECRET, RunningStack, start_stack

pytestmark = pytest.mark.integration


async def attest_device(rs: RunningStack, device, *, tamper: bool = False):  # type: ignore[no-untyped-def]
    client = GuestClient.new(rs.url)
    auth = await client.auth()
    assert auth.status == 200, auth.body
    nonce = auth.body["nonce"]
    assert len(base64.b64decode(nonce)) == 32
    body = client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey, tamper=tamper))
    result = await client.attest(body)
    return client, body, result


# A test resource policy that allows every token (to reach the "not found" answer).
OPEN_RESOURCE_POLICY = """package remits.resource
import rego.v1

result := {"allow": true, "reason": "ok"}
"""


async def test_good_device_gets_affirming_token_and_its_secret(running: RunningStack) -> None:
    device = running.enroll()
    client, _, result = await attest_device(running, device)
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(running.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        cpu0 = claims["submods"]["cpu0"]
        assert cpu0["ear.trustworthiness-vector"]["executables"] == 2
        assert cpu0["ear.trustworthiness-vector"]["hardware"] == 2
        evidence = cpu0["ear.veraison.annotated-evidence"]
        assert evidence["sample"]["sample.device_id"] == device.device_id.hex()
        assert tee_pubkey_from_claims(claims) == client.tee_pubkey
        assert claims["exp"] - claims["iat"] == running.settings.token_lifetime_s
        # Resource with the session cookie, then again with the bearer token only.
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200, fetched.body
        assert set(fetched.body) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
        assert client.decrypt(fetched.body) == SECRET
        other = GuestClient.new(running.url)
        other.tee_key = client.tee_key
        by_bearer = await other.resource(RESOURCE, token=result.body["token"])
        assert by_bearer.status == 200 and other.decrypt(by_bearer.body) == SECRET
        await other.close()
        # An absent resource is judged as one without a binding: a sample token is refused it as
        # it would be any resource not enabled for the sample TEE (it learns nothing about what
        # exists); a token the policy accepts is told it is not there.
        missing = await client.resource("default/key/absent")
        assert missing.status == 401 and "resource.sample_tee_not_enabled" in missing.body["detail"]
        admin = running.stack.trust_admin
        assert admin is not None
        await admin.put_policy("resource", OPEN_RESOURCE_POLICY, "tests")
        await running.stack.trust_synced()
        missing = await client.resource("default/key/absent")
        assert missing.status == 404 and "resource.not_found" in missing.body["detail"]
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "evidence.signature_invalid"),
        ("unknown_device", "endorsement.not_found"),
        ("wrong_measurement", "measurement.not_in_reference_values"),
        ("debug", "policy.debug"),
    ],
)
async def test_bad_evidence_is_rejected_with_its_reason(running: RunningStack, case: str, reason: str) -> None:
    if case == "unknown_device":
        device = running.enroll(register=False)
    elif case == "wrong_measurement":
        device = running.enroll(measurement=b"\x42" * 48)
    elif case == "debug":
        device = running.enroll(debug=True)
    else:
        device = running.enroll()
    client, _, result = await attest_device(running, device, tamper=(case == "tampered"))
    try:
        assert result.status == 401
        assert result.body["type"].endswith("/AttestationError")
        assert result.reason == reason, result.body
        # No token, so no secret: neither by cookie nor without one.
        denied = await client.resource(RESOURCE)
        assert denied.status == 401 and denied.body["type"].endswith("/TokenNotFound")
    finally:
        await client.close()


async def test_replayed_nonce_is_refused(running: RunningStack) -> None:
    device = running.enroll()
    client, body, first = await attest_device(running, device)
    assert first.status == 200
    again = await client.attest(body)  # same session, same evidence
    assert again.status == 401 and again.reason == "nonce.replayed"
    attacker = GuestClient.new(running.url)
    assert (await attacker.auth()).status == 200
    stolen = await attacker.attest(body)  # captured evidence in a fresh session
    assert stolen.status == 401 and stolen.reason == "nonce.replayed"
    await attacker.close()
    await client.close()


async def test_evidence_bound_to_another_key_is_refused(running: RunningStack) -> None:
    device = running.enroll()
    client = GuestClient.new(running.url)
    nonce = (await client.auth()).body["nonce"]
    other = GuestClient.new(running.url)
    evidence = sample_evidence(device, nonce, other.tee_pubkey)  # bound to a different TEE key
    result = await client.attest(client.attestation_body(nonce, evidence))
    assert result.status == 401 and result.reason == "evidence.report_data_mismatch"
    await client.close()
    await other.close()


async def test_expired_nonce_is_refused(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs = await start_stack(infra, tmp_path / "data", nonce_ttl_s=0.5)
    try:
        device = rs.enroll()
        client = GuestClient.new(rs.url)
        nonce = (await client.auth()).body["nonce"]
        await asyncio.sleep(0.8)
        # The cookie has expired too in the browser sense; send it explicitly like a guest that ignores max-age.
        body = client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey))
        result = await client.attest(body)
        assert result.status == 401 and result.reason == "nonce.expired", result.body
        await client.close()
    finally:
        await rs.stack.stop()
        await rs.kds.stop()


async def test_bad_requests_get_4xx_with_a_reason_and_service_continues(running: RunningStack) -> None:
    url = running.url
    async with aiohttp.ClientSession() as http:
        async def post(path: str, data: bytes, ctype: str = "application/json") -> tuple[int, dict]:
            async with http.post(url + path, data=data, headers={"Content-Type": ctype}) as resp:
                return resp.status, json.loads(await resp.read())

        status, body = await post("/kbs/v0/auth", b"{not json")
        assert status == 400 and "kbs.bad_request" in body["detail"]
        status, body = await post("/kbs/v0/auth", b'{"version":"0.4.0","tee":"sample"}', "text/plain")
        assert status == 415 and "application/json" in body["detail"]
        status, body = await post("/kbs/v0/auth", b'{"version":"0.4.0","tee":"nosuchtee","extra-params":{}}')
        assert status == 400 and "nosuchtee" in body["detail"]
        status, body = await post("/kbs/v0/auth", b'{"version":"0.4.0","tee":"csv","extra-params":{}}')
        assert status == 400 and body["type"].endswith("/UnsupportedTee")
        status, body = await post("/kbs/v0/auth", b'{"version":"0.1.0","tee":"sample","extra-params":{}}')
        assert status == 400
        big = b'{"version":"0.4.0","tee":"sample","extra-params":{"x":"' + b"a" * (1200 * 1024) + b'"}}'
        status, body = await post("/kbs/v0/auth", big)
        assert status == 413 and "larger than" in body["detail"]
        status, body = await post("/kbs/v0/attest", b"{}")
        assert status == 401 and body["type"].endswith("/InvalidSession")
        async with http.get(url + "/kbs/v0/nothing/here") as resp:
            assert resp.status == 404
            assert json.loads(await resp.read())["type"].endswith("/InvalidRequestPath")
    # A session whose attestation body is malformed: 400, and the next good request still works.
    client = GuestClient.new(url)
    await client.auth()
    result = await client._send("POST", "/kbs/v0/attest", json={"runtime-data": {"nonce": 1}})
    assert result.status == 400 and "kbs.bad_request" in result.body["detail"]
    weak = await client._send(
        "POST",
        "/kbs/v0/attest",
        json={"runtime-data": {"nonce": "n", "tee-pubkey": {"kty": "oct", "k": "AAAA"}},
              "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""}},
    )
    assert weak.status == 400 and "kbs.unsupported_tee_pubkey" in weak.body["detail"]
    garbage = await client.attest(client.attestation_body((await client.auth()).body["nonce"], {"report": "!!"}))
    assert garbage.status == 401 and garbage.reason.startswith("parse.evidence")
    await client.close()
    device = running.enroll()
    good_client, _, good = await attest_device(running, device)
    assert good.status == 200
    await good_client.close()


async def test_admin_api_is_off_without_admin_keys(running: RunningStack) -> None:
    # No admin key configured: the admin API is off for everyone, whatever the request carries.
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer x.y.z"}):
            async with http.post(running.url + "/kbs/v0/resource/a/b/c", data=b"x", headers=headers) as resp:
                assert resp.status == 404
                assert json.loads(await resp.read())["error"] == "admin.disabled"
    admin = running.stack.trust_admin
    assert admin is not None
    assert "a/b/c" not in [key for key, _, _ in await admin.entries(buckets.RESOURCES)]


async def test_secret_is_wrapped_to_an_rsa_tee_key(running: RunningStack) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    device = running.enroll()
    client = GuestClient.new(running.url)
    client.tee_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    try:
        nonce = (await client.auth()).body["nonce"]
        result = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
        assert result.status == 200, result.body
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200
        header = json.loads(base64.urlsafe_b64decode(fetched.body["protected"] + "=="))
        assert header["alg"] == "RSA-OAEP-256" and header["enc"] == "A256GCM"
        assert client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()


async def test_audit_tail_follows_decisions_live(running: RunningStack) -> None:
    import io

    from services.audit.worker import tail

    out = io.StringIO()
    stop = asyncio.Event()
    follower = asyncio.create_task(tail(running.stack.js, stop, out))
    await asyncio.sleep(0.3)
    device = running.enroll(register=False)
    client, _, result = await attest_device(running, device)
    await client.close()
    assert result.status == 401
    for _ in range(50):
        if out.getvalue():
            break
        await asyncio.sleep(0.1)
    stop.set()
    await follower
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records and records[-1]["status"] == "rejected"
    assert records[-1]["reason"] == "endorsement.not_found"


async def test_jwks_publishes_the_token_key(running: RunningStack) -> None:
    from joserfc.jwk import ECKey

    device = running.enroll()
    client, _, result = await attest_device(running, device)
    await client.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(running.url + "/.well-known/jwks.json") as resp:
            keys = (await resp.json())["keys"]
    assert len(keys) == 1 and keys[0]["kty"] == "EC" and keys[0]["crv"] == "P-256"
    claims = verify_ear(result.body["token"], keys[0], now=int(time.time()))
    assert submod_status(claims) == "affirming"
    assert ECKey.import_key(keys[0]).as_dict()["x"] == keys[0]["x"]
