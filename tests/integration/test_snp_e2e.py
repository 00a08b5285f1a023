"""SEV-SNP end to end through the HTTP gateway: a simulated AMD vendor (test ARK/ASK, VCEKs with
AMD's extensions, 1184-byte reports) behind a local KDS, verified by the real SNP path."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from services.demo.client import GuestClient, snp_evidence
from services.demo.snp_sim import LocalAmdKds, SimulatedAmd, SimulatedSnpGuest
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from shared.kbs.binding import expected_report_data
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = pytest.mark.integration
MEASUREMENT = hashlib.sha384(b"snp guest image").digest()
DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def amd() -> SimulatedAmd:
    return SimulatedAmd.generate("Milan")


@pytest.fixture
async def snp(infra, tmp_path, amd):  # type: ignore[no-untyped-def]
    roots = tmp_path / "snp-roots" / "milan"
    roots.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    for name, cert in (("ark", amd.ark), ("ask", amd.ask), ("asvk", amd.ask)):
        (roots / f"{name}.pem").write_bytes(cert.public_bytes(pem))
    kds = LocalAmdKds(amd)
    await kds.start()
    rs = await start_stack(infra, tmp_path / "data", snp_roots_dir=roots.parent, snp_kds_url=kds.base_url)
    await add_reference_values(rs.stack, "snp", "measurement", [MEASUREMENT.hex()])
    yield rs, kds
    await rs.stack.stop()
    await rs.kds.stop()
    await kds.stop()


async def attest(url: str, evidence_for, client: GuestClient | None = None):  # type: ignore[no-untyped-def]
    client = client or GuestClient.new(url)
    nonce = (await client.auth("snp")).body["nonce"]
    result = await client.attest(client.attestation_body(nonce, evidence_for(nonce, client.tee_pubkey)))
    return client, result


async def test_good_snp_guest_gets_affirming_token_and_secret(snp) -> None:  # type: ignore[no-untyped-def]
    rs, kds = snp
    guest = SimulatedSnpGuest.create(MEASUREMENT)
    kds.enroll(guest)
    client, result = await attest(rs.url, lambda n, k: snp_evidence(guest, n, k))
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(rs.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        snp_claims = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["snp"]
        assert snp_claims["snp.measurement"] == MEASUREMENT.hex()
        assert snp_claims["snp.chip_id"] == guest.chip_id.hex()
        assert snp_claims["snp.reported_tcb.microcode"] == 222
        assert snp_claims["snp.crl_checked"] is True
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()


async def test_fifty_concurrent_attestations_of_one_chip_cost_kds_one_request(snp) -> None:  # type: ignore[no-untyped-def]
    rs, kds = snp
    guest = SimulatedSnpGuest.create(MEASUREMENT)
    kds.enroll(guest)
    results = await asyncio.gather(*(attest(rs.url, lambda n, k: snp_evidence(guest, n, k)) for _ in range(50)))
    for client, _ in results:
        await client.close()
    assert [r.status for _, r in results] == [200] * 50
    vcek_path = f"/vcek/v1/Milan/{guest.chip_id.hex()}"
    assert kds.request_count[vcek_path] == 1
    assert kds.request_count["/vcek/v1/Milan/crl"] <= 1  # once per test module: it is cached until nextUpdate
    client, again = await attest(rs.url, lambda n, k: snp_evidence(guest, n, k))
    await client.close()
    assert again.status == 200 and kds.request_count[vcek_path] == 1  # served from Redis


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "snp.report_signature"),
        ("unknown_chip", "endorsement.not_found"),
        ("wrong_measurement", "measurement.not_in_reference_values"),
        ("debug", "policy.policy.debug"),
    ],
)
async def test_bad_snp_evidence_is_rejected_with_its_reason(snp, case: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    rs, kds = snp
    guest = SimulatedSnpGuest.create(b"\x07" * 48 if case == "wrong_measurement" else MEASUREMENT, debug=(case == "debug"))
    if case != "unknown_chip":
        kds.enroll(guest)
    client, result = await attest(rs.url, lambda n, k: snp_evidence(guest, n, k, tamper=(case == "tampered")))
    await client.close()
    assert result.status == 401 and result.reason == reason, result.body


async def test_vcek_carried_in_coco_attester_shape_needs_no_kds_fetch(snp) -> None:  # type: ignore[no-untyped-def]
    rs, kds = snp
    guest = SimulatedSnpGuest.create(MEASUREMENT)
    vcek = kds.vendor.issue_vcek(guest.chip_id, guest.tcb, guest.vcek_key.public_key())  # not enrolled at KDS

    def coco_evidence(nonce: str, key: dict) -> dict:  # type: ignore[type-arg]
        raw = guest.make_report(expected_report_data(nonce, key))
        return {"report": base64.b64encode(raw).decode(), "cert_chain": [{"cert_type": "VCEK", "data": list(vcek)}]}

    client, result = await attest(rs.url, coco_evidence)
    await client.close()
    assert result.status == 200, result.body
    assert kds.request_count[f"/vcek/v1/Milan/{guest.chip_id.hex()}"] == 0


async def test_init_data_is_bound_to_host_data(snp) -> None:  # type: ignore[no-untyped-def]
    rs, kds = snp
    toml = 'version = "0.1.0"\nalgorithm = "sha256"\n[data]\n"policy.rego" = "package agent_policy"\n'
    guest = SimulatedSnpGuest.create(MEASUREMENT)
    guest.host_data = hashlib.sha256(toml.encode()).digest()
    kds.enroll(guest)
    for body, status, reason in ((toml, 200, ""), (toml + "# edited\n", 401, "evidence.init_data_mismatch")):
        client = GuestClient.new(rs.url)
        nonce = (await client.auth("snp")).body["nonce"]
        payload = client.attestation_body(nonce, snp_evidence(guest, nonce, client.tee_pubkey))
        payload["init-data"] = {"format": "toml", "body": body}
        result = await client.attest(payload)
        await client.close()
        assert result.status == status, result.body
        assert result.reason == reason or status == 200


async def test_real_hardware_evidence_reaches_the_binding_check(snp) -> None:  # type: ignore[no-untyped-def]
    """Real evidence from a Genoa machine, in the CoCo attester's shape, parses through the
    gateway and fails only because its report_data was bound to another challenge."""
    rs, _ = snp
    evidence = json.loads((DATA / "kbs" / "snp-e2e-evidence.json").read_text())
    client, result = await attest(rs.url, lambda n, k: evidence)
    await client.close()
    assert result.status == 401 and result.reason == "evidence.report_data_mismatch"
