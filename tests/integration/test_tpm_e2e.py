"""Plain TPM 2.0 end to end through the HTTP gateway: a simulated TPM (software AK, real quotes and
a TCG event log) attests; trust comes only from the operator's AK registry (reference value
``tpm``/``ak``) and PCR reference values."""

from __future__ import annotations

import time

import pytest

from services.demo.client import GuestClient
from services.demo.tpm_sim import SimulatedTpm, tpm_evidence
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from shared.trust import buckets
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture
async def rs(infra, tmp_path):  # type: ignore[no-untyped-def]
    running = await start_stack(infra, tmp_path / "data")
    yield running
    await running.stack.stop()
    await running.kds.stop()


def booted_tpm() -> SimulatedTpm:
    tpm = SimulatedTpm.create("rsa")
    tpm.boot()
    return tpm


async def attest(url: str, tpm: SimulatedTpm, client: GuestClient | None = None):  # type: ignore[no-untyped-def]
    client = client or GuestClient.new(url)
    nonce = (await client.auth("tpm")).body["nonce"]
    result = await client.attest(client.attestation_body(nonce, tpm_evidence(tpm, nonce, client.tee_pubkey)))
    return client, result


async def test_registered_tpm_gets_affirming_token_and_secret(rs) -> None:  # type: ignore[no-untyped-def]
    tpm = booted_tpm()
    await add_reference_values(rs.stack, "tpm", "ak", [tpm.ak_fingerprint()])
    await add_reference_values(rs.stack, "tpm", "pcr4", [tpm.pcrs[4].hex()])
    client, result = await attest(rs.url, tpm)
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(rs.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tpm"]
        assert evidence["tpm.ak.sha256"] == tpm.ak_fingerprint()
        assert evidence["eventlog.secure_boot"] is True
        assert evidence["tpm.pcr.sha256.4"] == tpm.pcrs[4].hex()
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()


async def test_unregistered_ak_is_refused(rs) -> None:  # type: ignore[no-untyped-def]
    registered, stranger = booted_tpm(), booted_tpm()
    await add_reference_values(rs.stack, "tpm", "ak", [registered.ak_fingerprint()])
    client, result = await attest(rs.url, stranger)
    await client.close()
    assert result.status == 401 and result.reason == "tpm.ak_not_registered", result.body


async def test_no_registry_at_all_is_refused(rs) -> None:  # type: ignore[no-untyped-def]
    client, result = await attest(rs.url, booted_tpm())
    await client.close()
    assert result.status == 401 and result.reason == "tpm.ak_not_registered", result.body


async def test_deregistered_ak_is_refused_at_once(rs) -> None:  # type: ignore[no-untyped-def]
    tpm = booted_tpm()
    admin = rs.stack.trust_admin
    change = await admin.put_reference_value("tpm", "ak", [tpm.ak_fingerprint()], "tests")
    await rs.stack.trust_synced()
    client, result = await attest(rs.url, tpm)
    await client.close()
    assert result.status == 200, result.body
    await admin.delete(buckets.REFVALS, change.key, "tests")
    await rs.stack.trust_synced()
    client, result = await attest(rs.url, tpm)
    await client.close()
    assert result.status == 401 and result.reason == "tpm.ak_not_registered", result.body


async def test_pcr_reference_mismatch_is_refused(rs) -> None:  # type: ignore[no-untyped-def]
    tpm = booted_tpm()
    await add_reference_values(rs.stack, "tpm", "ak", [tpm.ak_fingerprint()])
    await add_reference_values(rs.stack, "tpm", "pcr7", ["00" * 32])
    client, result = await attest(rs.url, tpm)
    await client.close()
    assert result.status == 401 and result.reason == "measurement.not_in_reference_values", result.body


async def test_quote_bound_to_another_challenge_is_refused(rs) -> None:  # type: ignore[no-untyped-def]
    tpm = booted_tpm()
    await add_reference_values(rs.stack, "tpm", "ak", [tpm.ak_fingerprint()])
    client = GuestClient.new(rs.url)
    nonce = (await client.auth("tpm")).body["nonce"]
    evidence = tpm.evidence_doc(b"\x00" * 64)
    result = await client.attest(client.attestation_body(nonce, evidence))
    await client.close()
    assert result.status == 401 and result.reason == "evidence.report_data_mismatch", result.body
