"""Google Cloud vTPM end to end through the HTTP gateway: a simulated GCE Shielded VM (test EK/AK CA,
AK certificate with Google's instance-information extension, RSA AK quoting three PCR banks, a
replayable event log) verified by the real gcp-vtpm path, with nothing fetched."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import pytest

from services.demo.client import GuestClient
from services.demo.gcp_sim import Instance, SimulatedGceVm, SimulatedGoogleCa, gcp_vtpm_evidence
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")]
PROJECT = "remits-e2e"


@pytest.fixture(scope="module")
def ca() -> SimulatedGoogleCa:
    return SimulatedGoogleCa.generate()


@pytest.fixture(scope="module")
def vm(ca: SimulatedGoogleCa) -> SimulatedGceVm:
    return SimulatedGceVm.create(ca, Instance(project_id=PROJECT, instance_name="e2e-guest"))


@pytest.fixture
async def gcp(infra, tmp_path, ca, vm):  # type: ignore[no-untyped-def]
    roots = tmp_path / "gcp-roots.pem"
    roots.write_bytes(ca.roots_pem())
    rs = await start_stack(infra, tmp_path / "data", gcp_ak_roots_path=roots)
    await add_reference_values(rs.stack, "gcp-vtpm", "pcr0", [vm.pcr(0).hex()])
    await add_reference_values(rs.stack, "gcp-vtpm", "project_id", [PROJECT])
    yield rs
    await rs.stack.stop()
    await rs.kds.stop()


async def attest(url: str, evidence_for: Callable[[str, dict], bytes]):  # type: ignore[no-untyped-def,type-arg]
    client = GuestClient.new(url)
    nonce = (await client.auth("gcp-vtpm")).body["nonce"]
    evidence = base64.b64encode(evidence_for(nonce, client.tee_pubkey)).decode()
    result = await client.attest(client.attestation_body(nonce, evidence))
    return client, result


async def test_simulated_gce_vm_gets_affirming_token_and_secret(gcp, vm) -> None:  # type: ignore[no-untyped-def]
    client, result = await attest(gcp.url, lambda n, k: gcp_vtpm_evidence(vm, n, k))
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(gcp.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        evidence = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["gcp-vtpm"]
        assert evidence["gcp.project_id"] == PROJECT
        assert evidence["gcp.instance_name"] == "e2e-guest"
        assert evidence["tpm.pcr.sha256.0"] == vm.pcr(0).hex()
        assert evidence["eventlog.secure_boot"] is True
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()


async def test_pcr0_mismatch_is_refused(gcp, ca) -> None:  # type: ignore[no-untyped-def]
    other_firmware = SimulatedGceVm.create(ca, Instance(project_id=PROJECT), firmware=b"unapproved firmware")
    client, result = await attest(gcp.url, lambda n, k: gcp_vtpm_evidence(other_firmware, n, k))
    await client.close()
    assert result.status == 401 and result.reason == "measurement.not_in_reference_values", result.body


async def test_ak_certificate_from_another_ca_is_refused(gcp, vm) -> None:  # type: ignore[no-untyped-def]
    impostor = SimulatedGceVm.create(SimulatedGoogleCa.generate(), Instance(project_id=PROJECT))
    impostor.events, impostor.pcrs = vm.events, vm.pcrs  # the same boot, only the CA differs
    client, result = await attest(gcp.url, lambda n, k: gcp_vtpm_evidence(impostor, n, k))
    await client.close()
    assert result.status == 401 and result.reason == "gcp.ak_cert_chain", result.body


async def test_evidence_bound_to_another_challenge_is_refused(gcp, vm) -> None:  # type: ignore[no-untyped-def]
    client, result = await attest(gcp.url, lambda n, k: gcp_vtpm_evidence(vm, "another nonce", k))
    await client.close()
    assert result.status == 401 and result.reason == "evidence.report_data_mismatch", result.body
