"""Tenants end to end through the HTTP gateway: two teams with conflicting policies and
same-named resources each get their own; a token of one is refused by the other; one team's
admin key can neither read nor change the other's; decisions land on per-tenant subjects;
quotas answer 429 with Retry-After without touching the other tenants."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.demo.client import GuestClient, sample_evidence
from shared import schemas
from shared.adminauth import generate_admin_keypair, sign_admin_token
from shared.ear import EarVerifier, submod_status, token_kid
from shared.kbs.wire import b64url_decode
from tests.conftest import GOOD_MEASUREMENT, RESOURCE, SECRET, RunningStack, start_stack

pytestmark = pytest.mark.integration

BLOCK_ALL = """package remits.attestation
import rego.v1

result := {"vector": {}, "notes": [], "reject": "policy.blocked_for_team_b", "detail": "test"}
"""
SECRET_A, SECRET_B = b"team a's database password", b"team b's signing key"


@pytest.fixture
async def teams(infra, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A stack with an operator key, and tenants team-a and team-b: each with the sample image's
    reference value and a resource at the same path as the default tenant's, its own secret;
    team-b's attestation policy refuses everything."""
    private_pem, public_pem = generate_admin_keypair("EdDSA")
    public = tmp_path / "operator.pub.pem"
    public.write_bytes(public_pem)
    rs = await start_stack(infra, tmp_path / "data", admin_keys=(public,))
    operator = Admin(rs.url, private_pem, "operator")
    for name in ("team-a", "team-b"):
        status, body = await operator.call("POST", "tenants", {"name": name})
        assert status == 200, body
    for tenant, secret in (("team-a", SECRET_A), ("team-b", SECRET_B)):
        status, body = await operator.call(
            "POST", "reference-values", {"tee": "sample", "name": "measurement", "values": [GOOD_MEASUREMENT.hex()]},
            tenant=tenant,
        )  # fmt: skip
        assert status == 200, body
        resource = {"value": base64.b64encode(secret).decode(), "binding": {"allow_sample": True}}
        status, body = await operator.call("PUT", f"resources/{RESOURCE}", resource, tenant=tenant)
        assert status == 200, body
    status, body = await operator.call("PUT", "policies/attestation.sample", BLOCK_ALL, tenant="team-b")
    assert status == 200, body
    await rs.stack.trust_synced()
    yield rs, operator
    await rs.stack.stop()
    await rs.kds.stop()


class Admin:
    """Admin API calls signed with one key, on the default tenant or under /t/<tenant>/."""

    def __init__(self, url: str, private_pem: bytes, subject: str, kid: str | None = None) -> None:
        self.url, self.private_pem, self.subject, self.kid = url, private_pem, subject, kid

    async def call(
        self, method: str, path: str, body: Any = None, *, tenant: str = ""
    ) -> tuple[int, Any]:
        token = sign_admin_token(self.private_pem, self.subject, now=time.time(), kid=self.kid)
        prefix = f"/t/{tenant}" if tenant else ""
        data = body.encode() if isinstance(body, str) else (json.dumps(body).encode() if body is not None else b"")
        async with aiohttp.ClientSession() as http:
            async with http.request(
                method, f"{self.url}{prefix}/admin/v1/{path}", data=data, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                return resp.status, json.loads(await resp.read() or b"null")


async def attest(rs: RunningStack, base: str, extra_params: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    device = rs.enroll(GOOD_MEASUREMENT)
    client = GuestClient.new(base)
    challenge = await client.auth(extra_params=extra_params)
    assert challenge.status == 200, challenge.body
    nonce = challenge.body["nonce"]
    result = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
    return client, result


async def jwks(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            return resp.status, json.loads(await resp.read())


def verify_with_jwks(token: str, keys: list[dict[str, str]]) -> dict[str, Any]:
    kid = token_kid(token)
    (jwk,) = [k for k in keys if k["kid"] == kid]
    return EarVerifier(jwk).verify(token, now=int(time.time()))


async def test_each_tenant_gets_its_own_policy_resource_and_signing_key(teams) -> None:  # type: ignore[no-untyped-def]
    rs, _ = teams
    # team-a: its reference value, the default policy, its own secret at the shared path.
    client_a, result = await attest(rs, f"{rs.url}/t/team-a")
    assert result.status == 200, result.body
    token_a = result.body["token"]
    fetched = await client_a.resource(RESOURCE)
    assert fetched.status == 200, fetched.body
    assert client_a.decrypt(fetched.body) == SECRET_A
    # Its token names its tenant as issuer and verifies with its own JWKS, not the default's.
    status, keys_a = await jwks(f"{rs.url}/t/team-a/.well-known/jwks.json")
    assert status == 200
    claims = verify_with_jwks(token_a, keys_a["keys"])
    assert claims["iss"] == "remits/t/team-a" and submod_status(claims) == "affirming"
    _, keys_default = await jwks(f"{rs.url}/.well-known/jwks.json")
    assert token_kid(token_a) not in {k["kid"] for k in keys_default["keys"]}
    _, keys_b = await jwks(f"{rs.url}/t/team-b/.well-known/jwks.json")
    assert {k["kid"] for k in keys_b["keys"]}.isdisjoint({k["kid"] for k in keys_a["keys"]})

    # team-b: the same image, judged by its own (refusing) policy.
    client_b, result = await attest(rs, f"{rs.url}/t/team-b")
    assert result.status == 401 and result.reason == "policy.blocked_for_team_b", result.body
    # The default tenant: the default policy, its own secret at the same path.
    client_d, result = await attest(rs, rs.url)
    assert result.status == 200, result.body
    fetched = await client_d.resource(RESOURCE)
    assert fetched.status == 200 and client_d.decrypt(fetched.body) == SECRET

    # team-a's token opens none of team-b's or the default tenant's resources...
    for base in (f"{rs.url}/t/team-b", f"{rs.url}/t/default"):
        stranger = GuestClient.new(base)
        refused = await stranger.resource(RESOURCE, token=token_a)
        await stranger.close()
        assert refused.status == 401 and refused.reason == "token.wrong_tenant", refused.body
    # ...and on the unprefixed path, only its own tenant's.
    bearer = GuestClient.new(rs.url)
    bearer.tee_key = client_a.tee_key
    own = await bearer.resource(RESOURCE, token=token_a)
    await bearer.close()
    assert own.status == 200 and client_a.decrypt(own.body) == SECRET_A
    for client in (client_a, client_b, client_d):
        await client.close()


async def test_a_guest_names_its_tenant_in_extra_params(teams) -> None:  # type: ignore[no-untyped-def]
    rs, _ = teams
    client, result = await attest(rs, rs.url, {"tenant": "team-a"})
    assert result.status == 200, result.body
    fetched = await client.resource(RESOURCE)  # the session's tenant, on the unprefixed path
    assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET_A
    await client.close()
    # A path and extra-params that disagree, an unknown tenant, a malformed name: refused at /auth.
    for base, extra, status, reason in (
        (f"{rs.url}/t/team-a", {"tenant": "team-b"}, 400, "tenant.invalid"),
        (rs.url, {"tenant": "team-z"}, 404, "tenant.unknown"),
        (f"{rs.url}/t/team-z", None, 404, "tenant.unknown"),
        (rs.url, {"tenant": "Team.A"}, 400, "tenant.invalid"),
    ):
        guest = GuestClient.new(base)
        answer = await guest.auth(extra_params=extra)
        await guest.close()
        assert answer.status == status and answer.reason == reason, (base, extra, answer.body)
    # A session opened for team-a cannot be answered on team-b's path.
    guest = GuestClient.new(f"{rs.url}/t/team-a")
    nonce = (await guest.auth()).body["nonce"]
    device = rs.enroll(GOOD_MEASUREMENT)
    guest.base_url = f"{rs.url}/t/team-b"
    answer = await guest.attest(guest.attestation_body(nonce, sample_evidence(device, nonce, guest.tee_pubkey)))
    await guest.close()
    assert answer.status == 401 and answer.reason == "tenant.mismatch", answer.body


async def test_a_tenants_admin_key_acts_on_that_tenant_alone(teams, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rs, operator = teams
    private_a, public_a = generate_admin_keypair("ES256")
    status, body = await operator.call("PUT", "admin-keys/team-a-admin", {"pem": public_a.decode()}, tenant="team-a")
    assert status == 200, body
    await rs.stack.trust_synced()
    team_a = Admin(rs.url, private_a, "alice", kid="team-a-admin")
    status, listed = await team_a.call("GET", "resources", tenant="team-a")
    assert status == 200 and listed == [RESOURCE]
    status, body = await team_a.call("PUT", "policies/attestation.sample", BLOCK_ALL, tenant="team-a")
    assert status == 200, body
    status, events = await team_a.call("GET", "whoami", tenant="team-a")
    assert events == {"actor": "alice (team-a-admin@team-a)"}
    # Not team-b's, not the default tenant's, and no tenant management.
    for method, path, body, tenant in (
        ("GET", "resources", None, "team-b"),
        ("GET", "policies/attestation.sample", None, "team-b"),
        ("PUT", "policies/attestation.sample", "package remits.attestation", "team-b"),
        ("DELETE", f"resources/{RESOURCE}", None, "team-b"),
        ("GET", "resources", None, ""),
        ("POST", "tenants", {"name": "team-c"}, ""),
    ):
        status, answer = await team_a.call(method, path, body, tenant=tenant)
        assert status == 401 and answer["error"] == "admin.unknown_key", (method, path, tenant, answer)
    status, answer = await team_a.call("POST", "tenants", {"name": "team-c"}, tenant="team-a")
    assert status == 403 and answer["error"] == "admin.forbidden"
    # team-b's policy is untouched (still its own refusal), and team-a's changed.
    status, policy_b = await operator.call("GET", "policies/attestation.sample", tenant="team-b")
    assert status == 200 and "blocked_for_team_b" in policy_b["rego"]
    await rs.stack.trust_synced()
    _, result = await attest(rs, f"{rs.url}/t/team-a")
    assert result.status == 401 and result.reason == "policy.blocked_for_team_b"


async def test_decisions_and_admin_events_are_on_their_tenants_subjects(teams) -> None:  # type: ignore[no-untyped-def]
    rs, operator = teams
    nc, _ = await rs.infra.connect()
    seen: dict[str, list[schemas.Decision]] = {"team-a": [], "team-b": [], "default": []}
    subs = []
    for tenant, box in seen.items():

        async def collect(msg, box=box) -> None:  # type: ignore[no-untyped-def]
            box.append(schemas.decode_decision(msg.data))

        subs.append(await nc.subscribe(f"remits.decision.{tenant}.>", cb=collect))
    admin_events: list[str] = []

    async def on_admin(msg) -> None:  # type: ignore[no-untyped-def]
        admin_events.append(msg.subject)

    subs.append(await nc.subscribe("remits.admin.team-a.>", cb=on_admin))
    await nc.flush()
    try:
        for base in (f"{rs.url}/t/team-a", f"{rs.url}/t/team-b", rs.url):
            client, _ = await attest(rs, base)
            await client.close()
        status, _ = await operator.call("PUT", "revocations/measurement/" + "ab" * 48, {"reason": "t"}, tenant="team-a")
        assert status == 200
        for _ in range(100):
            if all(seen.values()) and admin_events:
                break
            await asyncio.sleep(0.05)
        assert [(d.meta.tenant, d.status) for d in seen["team-a"]] == [("team-a", "affirming")]
        assert [(d.meta.tenant, d.status, d.reason) for d in seen["team-b"]] == [
            ("team-b", "rejected", "policy.blocked_for_team_b")
        ]
        assert [(d.meta.tenant, d.status) for d in seen["default"]] == [("default", "affirming")]
        assert admin_events == ["remits.admin.team-a.revocations"]
    finally:
        for sub in subs:
            await sub.unsubscribe()
        await nc.close()


async def test_quotas_answer_429_and_leave_the_other_tenants_alone(teams) -> None:  # type: ignore[no-untyped-def]
    rs, operator = teams
    status, body = await operator.call(
        "POST", "tenants", {"name": "team-q", "attestations_per_s": 3, "max_resources": 1}
    )
    assert status == 200, body
    await rs.stack.trust_synced()
    body = json.dumps({"version": "0.4.0", "tee": "sample", "extra-params": {}})
    async with aiohttp.ClientSession() as http:

        async def auth(base: str) -> tuple[int, str | None]:
            async with http.post(f"{base}/kbs/v0/auth", data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                return r.status, r.headers.get("Retry-After")

        # From idle, the limit at once and the rest refused (tried again if a loaded machine
        # stretched the burst past a third of a second, which earns one more).
        for _ in range(10):
            await asyncio.sleep(1.1)  # idle: the whole allowance is back
            started = time.monotonic()
            answers = await asyncio.gather(*(auth(f"{rs.url}/t/team-q") for _ in range(8)))
            if time.monotonic() - started < 0.3:
                break
        others = await asyncio.gather(*(auth(f"{rs.url}/t/team-a") for _ in range(8)))
        statuses = sorted(status for status, _ in answers)
        assert statuses.count(200) == 3 and statuses.count(429) == 5, answers
        assert all(retry is not None and int(retry) >= 1 for status, retry in answers if status == 429)
        assert [status for status, _ in others] == [200] * 8  # team-a has no quota, and is not counted
        await asyncio.sleep(1.05)
        assert (await auth(f"{rs.url}/t/team-q"))[0] == 200  # the allowance comes back over time

    # Stored resources: one allowed; replacing it is fine, a second is 429.
    secret = {"value": base64.b64encode(b"q").decode(), "binding": {"allow_sample": True}}
    assert (await operator.call("PUT", "resources/q/key/one", secret, tenant="team-q"))[0] == 200
    assert (await operator.call("PUT", "resources/q/key/one", secret, tenant="team-q"))[0] == 200
    token = sign_admin_token(operator.private_pem, "operator", now=time.time())
    async with aiohttp.ClientSession() as http:
        async with http.put(
            f"{rs.url}/t/team-q/admin/v1/resources/q/key/two", data=json.dumps(secret),
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:  # fmt: skip
            answer = json.loads(await resp.read())
            assert resp.status == 429 and answer["error"] == "quota.resources", answer
            assert int(resp.headers["Retry-After"]) >= 1
    assert (await operator.call("PUT", "resources/q/key/two", secret, tenant="team-a"))[0] == 200


async def test_deleting_a_tenant_removes_its_records_and_voids_its_tokens(teams) -> None:  # type: ignore[no-untyped-def]
    rs, operator = teams
    client, result = await attest(rs, f"{rs.url}/t/team-a")
    assert result.status == 200
    token = result.body["token"]
    status, body = await operator.call("DELETE", "tenants/team-a")
    assert status == 200 and body["records_removed"] == 2, body  # its reference value and resource
    await rs.stack.trust_synced()
    fetched = await client.resource(RESOURCE, token=token)
    await client.close()
    assert fetched.status == 401 and fetched.reason == "tenant.unknown", fetched.body
    status, listed = await operator.call("GET", "tenants")
    assert [t["name"] for t in listed] == ["default", "team-b"]
    assert (await operator.call("GET", "resources", tenant="team-a"))[0] == 404
    # The default tenant cannot be deleted; a new team-a starts empty.
    assert (await operator.call("DELETE", "tenants/default"))[0] == 409
    assert (await operator.call("POST", "tenants", {"name": "team-a"}))[0] == 200
    assert (await operator.call("GET", "resources", tenant="team-a")) == (200, [])


async def test_a_resource_bound_to_init_data_goes_to_that_workload_only(teams) -> None:  # type: ignore[no-untyped-def]
    """binding.init_data names the workload by its init-data digest; the denial names the rule."""
    rs, operator = teams
    toml = 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"policy.rego" = "package agent_policy"\n'
    digest = hashlib.sha256(toml.encode()).hexdigest()
    secret = {"value": base64.b64encode(b"bound").decode(), "binding": {"allow_sample": True, "init_data": [digest]}}
    assert (await operator.call("PUT", "resources/wl/key/bound", secret))[0] == 200
    bad = {"value": "eA==", "binding": {"init_data": ["not hex"]}}
    assert (await operator.call("PUT", "resources/wl/key/bad", bad))[0] == 400
    await rs.stack.trust_synced()
    client, result = await attest(rs, rs.url)  # no init-data: not this workload
    assert result.status == 200
    denied = await client.resource("wl/key/bound")
    await client.close()
    assert denied.status == 401 and denied.reason == "resource.init_data_not_bound", denied.body


async def test_a_token_naming_another_or_no_tenant_as_issuer_opens_nothing(teams) -> None:  # type: ignore[no-untyped-def]
    """The iss only chooses whose keys must have signed: team-a's key signing a token that claims
    team-b is refused, and a made-up tenant is refused before any key of it is derived."""
    from services.custody import derive_tenant_key
    from shared.ear import EarSigner, load_or_create_signing_key

    rs, _ = teams
    client, result = await attest(rs, f"{rs.url}/t/team-a")
    assert result.status == 200
    claims = verify_with_jwks(result.body["token"], (await jwks(f"{rs.url}/t/team-a/.well-known/jwks.json"))[1]["keys"])
    key_a = derive_tenant_key(load_or_create_signing_key(rs.settings.signing_key_path), "team-a")
    await client.close()
    bearer = GuestClient.new(rs.url)  # no session: the bearer token is all it presents
    for iss, reason in (("remits/t/team-b", "token.unknown_kid"), ("remits/t/ghost", "tenant.unknown")):
        forged = EarSigner(key_a).sign({**claims, "iss": iss})
        answer = await bearer.resource(RESOURCE, token=forged)
        assert answer.status == 401 and answer.reason == reason, (iss, answer.body)
    await bearer.close()
    assert not (rs.settings.data_dir / "tenant-keys" / "ghost.keys.json").exists()


async def test_a_chip_the_operator_revokes_is_revoked_for_every_tenant(teams) -> None:  # type: ignore[no-untyped-def]
    """Hardware is shared: a chip revoked in the default tenant (the platform team's) makes that
    chip's guests contraindicated, and their resources refused, under team-a too; a measurement
    team-a revokes stays team-a's matter."""
    rs, operator = teams
    device = rs.enroll(GOOD_MEASUREMENT)

    async def attest_with(base: str) -> tuple[str, int]:
        """(the token's status, the status of a resource request with it)."""
        client = GuestClient.new(base)
        challenge = await client.auth()
        assert challenge.status == 200, challenge.body
        nonce = challenge.body["nonce"]
        result = await client.attest(client.attestation_body(nonce, sample_evidence(device, nonce, client.tee_pubkey)))
        assert result.status == 200, result.body
        token = result.body["token"]
        payload = json.loads(b64url_decode(token.split(".")[1]))
        fetched = await client.resource(RESOURCE)
        await client.close()
        return submod_status(payload), fetched.status

    assert await attest_with(f"{rs.url}/t/team-a") == ("affirming", 200)
    revoked = device
    status, body = await operator.call(
        "POST", "revocations", {"kind": "chip_id", "value": device.device_id.hex(), "reason": "key extracted"}
    )
    assert status == 200, body
    await rs.stack.trust_synced()
    for base in (rs.url, f"{rs.url}/t/team-a"):
        token_status, resource_status = await attest_with(base)
        assert token_status == "contraindicated" and resource_status == 401, base

    # A measurement team-a revokes: team-a's guests only, not the default tenant's.
    device = rs.enroll(GOOD_MEASUREMENT)
    status, body = await operator.call(
        "POST", "revocations", {"kind": "measurement", "value": GOOD_MEASUREMENT.hex(), "reason": "team-a's call"},
        tenant="team-a",
    )  # fmt: skip
    assert status == 200, body
    await rs.stack.trust_synced()
    assert await attest_with(rs.url) == ("affirming", 200)
    token_status, resource_status = await attest_with(f"{rs.url}/t/team-a")
    assert token_status == "contraindicated" and resource_status == 401

    # team-a's own policies, ignoring input.revocations, cannot undo the platform's revocation.
    permissive = {
        "attestation.sample": 'package remits.attestation\nresult := {"vector": {"hardware": 2, '
        '"executables": 2, "instance-identity": 2}, "notes": []}\n',
        "resource": 'package remits.resource\nresult := {"allow": true, "reason": "ok"}\n',
    }
    for policy_id, rego in permissive.items():
        status, body = await operator.call("PUT", f"policies/{policy_id}", rego, tenant="team-a")
        assert status == 200, body
    await rs.stack.trust_synced()
    device = revoked
    token_status, resource_status = await attest_with(f"{rs.url}/t/team-a")
    assert token_status == "contraindicated" and resource_status == 401
