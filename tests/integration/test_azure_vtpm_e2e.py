"""Azure SNP confidential VMs (paravisor vTPM, ``az-snp-vtpm``) end to end through the HTTP
gateway: a simulated CVM (services.demo.azure_sim: test AMD ARK/ASK, an SNP report committing to
the HCL var data, a software AK signing TPM quotes) verified by the real SNP + vTPM path."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from services.demo.azure_sim import SimulatedAzureCvm, az_snp_vtpm_evidence
from services.demo.client import GuestClient
from services.demo.snp_sim import LocalAmdKds, SimulatedAmd
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = pytest.mark.integration
TEE = "az-snp-vtpm"
MEASUREMENT = hashlib.sha384(b"azure paravisor image").digest()
PCR0 = hashlib.sha256(b"azure guest firmware").digest()


@pytest.fixture(scope="module")
def amd() -> SimulatedAmd:
    return SimulatedAmd.generate("Milan")


@pytest.fixture
async def azure(infra, tmp_path, amd):  # type: ignore[no-untyped-def]
    roots = tmp_path / "snp-roots" / "milan"
    roots.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    for name, cert in (("ark", amd.ark), ("ask", amd.ask), ("asvk", amd.ask)):
        (roots / f"{name}.pem").write_bytes(cert.public_bytes(pem))
    kds = LocalAmdKds(amd)  # serves the CRL; the VCEK travels in the evidence
    await kds.start()
    rs = await start_stack(infra, tmp_path / "data", snp_roots_dir=roots.parent, snp_kds_url=kds.base_url)
    await add_reference_values(rs.stack, TEE, "measurement", [MEASUREMENT.hex()])
    await add_reference_values(rs.stack, TEE, "pcr0", [PCR0.hex()])
    yield rs, kds
    await rs.stack.stop()
    await rs.kds.stop()
    await kds.stop()


Evidence = Callable[[str, dict[str, Any]], dict[str, Any]]


async def attest(url: str, evidence_for: Evidence, client: GuestClient | None = None):  # type: ignore[no-untyped-def]
    client = client or GuestClient.new(url)
    nonce = (await client.auth(TEE)).body["nonce"]
    body = client.attestation_body(nonce, evidence_for(nonce, client.tee_pubkey))
    result = await client.attest(body)
    return client, body, result


async def test_good_azure_cvm_gets_affirming_token_and_secret(azure, amd) -> None:  # type: ignore[no-untyped-def]
    rs, kds = azure
    cvm = SimulatedAzureCvm.create(amd, MEASUREMENT, pcr0=PCR0)
    client, _, result = await attest(rs.url, lambda n, k: az_snp_vtpm_evidence(cvm, n, k))
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(rs.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        annotated = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][TEE]
        assert annotated["snp.measurement"] == MEASUREMENT.hex()
        assert annotated["snp.chip_id"] == cvm.guest.chip_id.hex()
        assert annotated["tpm.pcr.sha256.0"] == PCR0.hex()
        assert annotated["azure.secure_boot"] is True
        assert annotated["snp.crl_checked"] is True
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()
    # The VCEK came with the evidence: the vendor was only asked for its CRL.
    assert kds.request_count[f"/vcek/v1/Milan/{cvm.guest.chip_id.hex()}"] == 0


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("pcr0_mismatch", "measurement.not_in_reference_values"),
        ("unbound", "azure.var_data_binding"),
        ("pcr0", "tpm.pcr_digest_mismatch"),
        ("quote_signature", "tpm.signature_invalid"),
        ("wrong_measurement", "measurement.not_in_reference_values"),
    ],
)
async def test_bad_azure_evidence_is_refused_with_its_reason(azure, amd, case: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    rs, _ = azure
    measurement = b"\x07" * 48 if case == "wrong_measurement" else MEASUREMENT
    pcr0 = hashlib.sha256(b"other firmware").digest() if case == "pcr0_mismatch" else PCR0
    cvm = SimulatedAzureCvm.create(amd, measurement, pcr0=pcr0)
    tamper = case if case in ("unbound", "pcr0", "quote_signature") else ""
    client, _, result = await attest(rs.url, lambda n, k: az_snp_vtpm_evidence(cvm, n, k, tamper=tamper))
    try:
        assert result.status == 401 and result.reason == reason, result.body
        denied = await client.resource(RESOURCE)
        assert denied.status == 401
    finally:
        await client.close()


async def test_replayed_and_foreign_nonces_are_refused_at_intake(azure, amd) -> None:  # type: ignore[no-untyped-def]
    rs, _ = azure
    cvm = SimulatedAzureCvm.create(amd, MEASUREMENT, pcr0=PCR0)
    client, body, first = await attest(rs.url, lambda n, k: az_snp_vtpm_evidence(cvm, n, k))
    assert first.status == 200, first.body
    # Captured evidence, replayed in a fresh session: the nonce was used up.
    attacker = GuestClient.new(rs.url)
    assert (await attacker.auth(TEE)).status == 200
    stolen = await attacker.attest(body)
    assert stolen.status == 401 and stolen.reason == "nonce.replayed"
    await attacker.close()
    await client.close()

    # Evidence bound to another challenge than the one the session was given.
    other = GuestClient.new(rs.url)
    foreign_nonce = (await other.auth(TEE)).body["nonce"]
    guest = GuestClient.new(rs.url)
    nonce = (await guest.auth(TEE)).body["nonce"]
    foreign = guest.attestation_body(nonce, az_snp_vtpm_evidence(cvm, foreign_nonce, guest.tee_pubkey))
    result = await guest.attest(foreign)
    assert result.status == 401 and result.reason == "evidence.report_data_mismatch", result.body
    await guest.close()
    await other.close()
