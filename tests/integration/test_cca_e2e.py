"""Arm CCA end to end through the HTTP gateway: realms on simulated CCA platforms (real P-384 CPAK
and RAK signatures), the platform's CPAK fetched by the endorse stage from a local trust-anchor
service once for the whole fleet, every bad kind refused for its own reason."""

from __future__ import annotations

import base64
import time

import pytest

from services.demo.cca_fleet import DEMO_REMS, DEMO_RIM, DEMO_RPV, OTHER_RIM, LocalCcaTaServer
from services.demo.cca_sim import SimulatedCcaPlatform, SimulatedRealm
from services.demo.client import GuestClient
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from shared.kbs.binding import expected_report_data
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def platform() -> SimulatedCcaPlatform:
    return SimulatedCcaPlatform()


@pytest.fixture
async def cca(infra, tmp_path, platform):  # type: ignore[no-untyped-def]
    ta = LocalCcaTaServer()
    ta.enroll(platform)
    await ta.start()
    rs = await start_stack(infra, tmp_path / "data", cca_ta_url=ta.base_url)
    await add_reference_values(rs.stack, "cca", "rim", [DEMO_RIM.hex()])
    await add_reference_values(rs.stack, "cca", "rpv", [DEMO_RPV.hex()])
    yield rs, ta
    await rs.stack.stop()
    await rs.kds.stop()
    await ta.stop()


async def attest(url: str, realm: SimulatedRealm, *, nonce_for_token: str | None = None, **token_options):  # type: ignore[no-untyped-def]
    client = GuestClient.new(url)
    auth = await client.auth("cca")
    assert auth.status == 200, auth.body
    nonce = auth.body["nonce"]
    challenge = expected_report_data(nonce_for_token or nonce, client.tee_pubkey)
    token = realm.token(challenge, **token_options)
    result = await client.attest(client.attestation_body(nonce, {"token": base64.b64encode(token).decode()}))
    return client, result


async def test_realm_gets_affirming_token_with_its_claims_and_the_secret(cca, platform) -> None:  # type: ignore[no-untyped-def]
    rs, ta = cca
    realm = platform.realm(DEMO_RIM, DEMO_REMS, DEMO_RPV)
    for form in ("legacy", "cmw"):
        client, result = await attest(rs.url, realm, form=form)
        try:
            assert result.status == 200, result.body
            key = load_or_create_signing_key(rs.settings.signing_key_path)
            claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
            assert submod_status(claims) == "affirming"
            evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["cca"]
            assert evidence["cca.realm.rim"] == DEMO_RIM.hex()
            assert evidence["cca.realm.rpv"] == DEMO_RPV.hex()
            assert evidence["cca.form"] == form
            assert evidence["cca.platform.instance_id"] == platform.instance_id.hex()
            assert evidence["cca.platform.lifecycle_secured"] is True
            fetched = await client.resource(RESOURCE)
            assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
        finally:
            await client.close()
    # One CPAK, fetched once for every realm of the platform (then cached).
    assert sum(ta.request_count.values()) == 1


async def test_other_rim_is_refused(cca, platform) -> None:  # type: ignore[no-untyped-def]
    rs, _ = cca
    client, result = await attest(rs.url, platform.realm(OTHER_RIM, DEMO_REMS, DEMO_RPV))
    await client.close()
    assert result.status == 401 and result.reason == "measurement.not_in_reference_values", result.body


async def test_broken_rak_binding_is_refused(cca, platform) -> None:  # type: ignore[no-untyped-def]
    rs, _ = cca
    client, result = await attest(rs.url, platform.realm(DEMO_RIM, DEMO_REMS, DEMO_RPV), break_binding=True)
    await client.close()
    assert result.status == 401 and result.reason == "cca.realm.binding", result.body


async def test_platform_nobody_endorsed_is_refused(cca) -> None:  # type: ignore[no-untyped-def]
    rs, _ = cca
    stranger = SimulatedCcaPlatform()
    client, result = await attest(rs.url, stranger.realm(DEMO_RIM, DEMO_REMS, DEMO_RPV))
    await client.close()
    assert result.status == 401 and result.reason == "endorsement.not_found", result.body


async def test_token_bound_to_another_challenge_is_refused(cca, platform) -> None:  # type: ignore[no-untyped-def]
    rs, _ = cca
    client, result = await attest(rs.url, platform.realm(DEMO_RIM, DEMO_REMS, DEMO_RPV), nonce_for_token="another nonce")
    await client.close()
    assert result.status == 401 and result.reason == "evidence.report_data_mismatch", result.body


async def test_bit_flip_in_token_is_refused(cca, platform) -> None:  # type: ignore[no-untyped-def]
    rs, _ = cca
    realm = platform.realm(DEMO_RIM, DEMO_REMS, DEMO_RPV)
    client = GuestClient.new(rs.url)
    try:
        nonce = (await client.auth("cca")).body["nonce"]
        token = bytearray(realm.token(expected_report_data(nonce, client.tee_pubkey)))
        token[-5] ^= 0x01  # inside the realm token's signature
        body = client.attestation_body(nonce, {"token": base64.b64encode(bytes(token)).decode()})
        result = await client.attest(body)
    finally:
        await client.close()
    assert result.status == 401 and result.reason.startswith(("cca.", "parse.")), result.body
