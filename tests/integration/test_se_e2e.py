"""IBM Secure Execution end to end through the HTTP gateway: /auth returns an attestation request
(ARCB) built by identity for the operator's verified host key documents; a simulated Ultravisor
opens it with its host key and answers with the measurement HMAC, which identity recomputes with
the request's own key for the approved image. Exactly one decision per answer, fail closed."""

from __future__ import annotations

import base64
import json
import time

import pytest

from services.demo.client import GuestClient
from services.demo.se_fleet import DEMO_TAGS, OTHER_TAGS, SeFleet, write_se_dir
from services.demo.se_sim import SimulatedHost, SimulatedUltravisor
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from shared.platforms.se.arcb import parse_arcb
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet() -> SeFleet:
    return SeFleet.generate()


@pytest.fixture
async def se(infra, tmp_path, fleet):  # type: ignore[no-untyped-def]
    se_dir = write_se_dir(tmp_path / "se", [fleet.host])
    rs = await start_stack(infra, tmp_path / "data", se_dir=se_dir)
    await add_reference_values(rs.stack, "se", "image_tags", [DEMO_TAGS.to_bytes().hex()])
    yield rs
    await rs.stack.stop()
    await rs.kds.stop()


async def attest(url: str, fleet: SeFleet, guest: SimulatedUltravisor, *, tamper: bool = False):  # type: ignore[no-untyped-def]
    client = GuestClient.new(url)
    auth = await client.auth("se")
    assert auth.status == 200, auth.body
    nonce = auth.body["nonce"]
    evidence = fleet.evidence(guest, nonce, client.tee_pubkey, tamper=tamper, challenge=auth.body)
    body = client.attestation_body(nonce, evidence)
    return client, await client.attest(body), body, auth.body


async def test_guest_gets_affirming_token_with_its_claims_and_the_secret(se, fleet) -> None:  # type: ignore[no-untyped-def]
    guest = fleet.new_guest("good")
    client, result, _, challenge = await attest(se.url, fleet, guest)
    try:
        params = json.loads(challenge["extra-params"])
        assert params["selected-hash-algorithm"] == "sha512"
        assert len(parse_arcb(base64.b64decode(params["request_blob"])).key_slots) == 1
        assert result.status == 200, result.body
        key = load_or_create_signing_key(se.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["se"]
        assert evidence["se.tag"] == DEMO_TAGS.tag.hex()
        assert evidence["se.cuid"] == guest.cuid.hex()
        assert evidence["se.version"] == 256
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["wrong_measurement", "unknown_device", "tampered"])
async def test_bad_guests_are_refused(se, fleet, kind) -> None:  # type: ignore[no-untyped-def]
    guest = fleet.new_guest(kind)
    client, result, _, _ = await attest(se.url, fleet, guest, tamper=kind == "tampered")
    fetched = await client.resource(RESOURCE)
    await client.close()
    assert result.status == 401 and result.reason == "se.measurement", result.body
    assert fetched.status != 200


async def test_answer_replayed_in_a_new_session_is_refused(se, fleet) -> None:  # type: ignore[no-untyped-def]
    guest = fleet.new_guest("good")
    first, result, body, _ = await attest(se.url, fleet, guest)
    await first.close()
    assert result.status == 200
    replay = GuestClient.new(se.url)
    assert (await replay.auth("se")).status == 200
    again = await replay.attest(body)  # the old nonce, the old measurement
    await replay.close()
    assert again.status == 401, again.body


async def test_another_image_approved_later_verifies(se, fleet) -> None:  # type: ignore[no-untyped-def]
    await add_reference_values(se.stack, "se", "image_tags", [DEMO_TAGS.to_bytes().hex(), OTHER_TAGS.to_bytes().hex()])
    client, result, _, _ = await attest(se.url, fleet, SimulatedUltravisor(fleet.host, OTHER_TAGS, bytes(16)))
    await client.close()
    assert result.status == 200, result.body


async def test_without_host_key_documents_no_challenge_is_issued(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rs = await start_stack(infra, tmp_path / "data")
    try:
        client = GuestClient.new(rs.url)
        auth = await client.auth("se")
        await client.close()
        assert auth.status == 401 and auth.reason == "se.unavailable", auth.body
    finally:
        await rs.stack.stop()
        await rs.kds.stop()


async def test_host_key_document_from_another_signer_is_refused(infra, tmp_path, fleet) -> None:  # type: ignore[no-untyped-def]
    impostor = SimulatedHost()  # its own fake IBM chain: the operator's roots do not cover it
    se_dir = write_se_dir(tmp_path / "se", [fleet.host])
    (se_dir / "hkds" / "hkd-impostor.crt").write_bytes(impostor.hkd_pem)
    rs = await start_stack(infra, tmp_path / "data", se_dir=se_dir)
    try:
        client = GuestClient.new(rs.url)
        auth = await client.auth("se")
        await client.close()
        assert auth.status == 401 and auth.reason.startswith("se.hkd."), auth.body
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
