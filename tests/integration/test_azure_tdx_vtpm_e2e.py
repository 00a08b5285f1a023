"""Azure TDX confidential VMs (paravisor vTPM, ``az-tdx-vtpm``) end to end through the HTTP
gateway: a simulated CVM (services.demo.azure_sim: an HCL report holding the TD's TDREPORT and the
var data, a DCAP TD quote of the same TD committing to SHA-256(var data), a software AK signing
TPM quotes) verified by the real DCAP + vTPM path against a simulated Intel behind a local PCS."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from services.demo.azure_sim import SimulatedAzureTdxCvm, az_tdx_vtpm_evidence
from services.demo.client import GuestClient
from services.demo.local_pcs import LocalPcs
from services.demo.tdx_sim import SimulatedIntel
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = pytest.mark.integration
TEE = "az-tdx-vtpm"
MR_TD = hashlib.sha384(b"azure tdx paravisor image").digest()
PCR0 = hashlib.sha256(b"azure tdx guest firmware").digest()


@pytest.fixture(scope="module")
def intel() -> SimulatedIntel:
    return SimulatedIntel.generate()


@pytest.fixture
async def azure_tdx(infra, tmp_path, intel):  # type: ignore[no-untyped-def]
    root = tmp_path / "intel-test-root.pem"
    root.write_bytes(intel.root_pem)
    pcs = LocalPcs.from_simulated(intel)
    await pcs.start()
    rs = await start_stack(infra, tmp_path / "data", dcap_root_ca_path=root, dcap_pcs_url=pcs.base_url)
    await add_reference_values(rs.stack, TEE, "mr_td", [MR_TD.hex()])
    await add_reference_values(rs.stack, TEE, "pcr0", [PCR0.hex()])
    yield rs, pcs
    await rs.stack.stop()
    await rs.kds.stop()
    await pcs.stop()


Evidence = Callable[[str, dict[str, Any]], dict[str, Any]]


async def attest(url: str, evidence_for: Evidence, client: GuestClient | None = None):  # type: ignore[no-untyped-def]
    client = client or GuestClient.new(url)
    nonce = (await client.auth(TEE)).body["nonce"]
    body = client.attestation_body(nonce, evidence_for(nonce, client.tee_pubkey))
    result = await client.attest(body)
    return client, body, result


async def test_good_azure_tdx_cvm_gets_affirming_token_and_secret(azure_tdx, intel) -> None:  # type: ignore[no-untyped-def]
    rs, pcs = azure_tdx
    cvm = SimulatedAzureTdxCvm.create(intel, MR_TD, pcr0=PCR0)
    client, _, result = await attest(rs.url, lambda n, k: az_tdx_vtpm_evidence(cvm, n, k))
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(rs.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "affirming"
        annotated = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][TEE]
        # The hardware layer: the TD quote, verified against the simulated Intel's collateral.
        assert annotated["tdx.tcb_status"] == "UpToDate"
        assert annotated["tdx.quote.body.mr_td"] == MR_TD.hex()
        # The vTPM layer: the quoted PCRs under the var data's AK.
        assert annotated["tpm.pcr.sha256.0"] == PCR0.hex()
        ak_spki = cvm.ak_key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        assert annotated["tpm.ak.sha256"] == hashlib.sha256(ak_spki).hexdigest()
        # The paravisor: an HCL report of the TDX kind, its var data bound to the TD quote.
        assert annotated["azure.hcl.report_type"] == "tdx"
        assert annotated["azure.hcl.version"] == 2
        assert annotated["azure.secure_boot"] is True
        var_data_sha256 = annotated["azure.var_data.sha256"]
        assert annotated["tdx.quote.body.report_data"] == var_data_sha256 + "00" * 32
        fetched = await client.resource(RESOURCE)
        assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    finally:
        await client.close()
    # One machine's collateral, fetched once (the quote's FMSPC names it).
    assert pcs.request_count["/tdx/certification/v4/tcb"] == 1


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong_mr_td", "measurement.not_in_reference_values"),
        ("pcr0_mismatch", "measurement.not_in_reference_values"),
        ("unbound", "azure.var_data_binding"),
        ("td_report", "azure.td_report_binding"),
        ("pcr0", "tpm.pcr_digest_mismatch"),
        ("quote_signature", "tpm.signature_invalid"),
    ],
)
async def test_bad_azure_tdx_evidence_is_refused_with_its_reason(
    azure_tdx, intel, case: str, reason: str
) -> None:  # type: ignore[no-untyped-def]
    rs, _ = azure_tdx
    mr_td = b"\x07" * 48 if case == "wrong_mr_td" else MR_TD
    pcr0 = hashlib.sha256(b"other firmware").digest() if case == "pcr0_mismatch" else PCR0
    cvm = SimulatedAzureTdxCvm.create(intel, mr_td, pcr0=pcr0)
    tamper = case if case in ("unbound", "td_report", "pcr0", "quote_signature") else ""
    client, _, result = await attest(rs.url, lambda n, k: az_tdx_vtpm_evidence(cvm, n, k, tamper=tamper))
    try:
        assert result.status == 401 and result.reason == reason, result.body
        denied = await client.resource(RESOURCE)
        assert denied.status == 401
    finally:
        await client.close()


async def test_replayed_and_foreign_nonces_are_refused_at_intake(azure_tdx, intel) -> None:  # type: ignore[no-untyped-def]
    rs, _ = azure_tdx
    cvm = SimulatedAzureTdxCvm.create(intel, MR_TD, pcr0=PCR0)
    client, body, first = await attest(rs.url, lambda n, k: az_tdx_vtpm_evidence(cvm, n, k))
    assert first.status == 200, first.body
    # Captured evidence, replayed in a fresh session: the nonce was used up.
    attacker = GuestClient.new(rs.url)
    assert (await attacker.auth(TEE)).status == 200
    stolen = await attacker.attest(body)
    assert stolen.status == 401 and stolen.reason == "nonce.replayed"
    await attacker.close()
    await client.close()

    # Evidence bound to another session's challenge than the one this session was given.
    other = GuestClient.new(rs.url)
    foreign_nonce = (await other.auth(TEE)).body["nonce"]
    guest = GuestClient.new(rs.url)
    nonce = (await guest.auth(TEE)).body["nonce"]
    foreign = guest.attestation_body(nonce, az_tdx_vtpm_evidence(cvm, foreign_nonce, guest.tee_pubkey))
    result = await guest.attest(foreign)
    assert result.status == 401 and result.reason == "evidence.report_data_mismatch", result.body
    denied = await guest.resource(RESOURCE)
    assert denied.status == 401
    await guest.close()
    await other.close()


async def test_an_out_of_date_platform_is_refused_unless_its_status_is_accepted(azure_tdx, intel) -> None:  # type: ignore[no-untyped-def]
    """The hardware layer's TCB verdict reaches the Azure token: a machine at the simulated PCS's
    OutOfDate level is refused by default, and gets a warning token once OutOfDate is accepted."""
    from services.demo.tdx_sim import PREVIOUS_TCB

    rs, _ = azure_tdx
    cvm = SimulatedAzureTdxCvm.create(intel, MR_TD, pcr0=PCR0, tcb=PREVIOUS_TCB)
    client, _, refused = await attest(rs.url, lambda n, k: az_tdx_vtpm_evidence(cvm, n, k))
    await client.close()
    assert refused.status == 401 and refused.reason == "policy.tdx.tcb_status", refused.body
    await add_reference_values(rs.stack, TEE, "accepted_tcb_status", ["UpToDate", "OutOfDate"])
    client, _, result = await attest(rs.url, lambda n, k: az_tdx_vtpm_evidence(cvm, n, k))
    try:
        assert result.status == 200, result.body
        key = load_or_create_signing_key(rs.settings.signing_key_path)
        claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
        assert submod_status(claims) == "warning"
        annotated = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"][TEE]
        assert annotated["tdx.tcb_status"] == "OutOfDate"
    finally:
        await client.close()
