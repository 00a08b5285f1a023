"""TDX end to end through the HTTP gateway: a simulated Intel (test root, PCK chain, signed TCB
Info and QE Identity) behind a local PCS, verified by the real DCAP path."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

from services.demo.client import GuestClient
from services.demo.local_pcs import LocalPcs
from services.demo.tdx_sim import SimulatedIntel, SimulatedTdxPlatform
from shared.ear import load_or_create_signing_key, submod_status, verify_ear
from shared.kbs.binding import expected_report_data
from tests.conftest import RESOURCE, SECRET, add_reference_values, start_stack

pytestmark = pytest.mark.integration
MR_TD = hashlib.sha384(b"td image").digest()


@pytest.fixture(scope="module")
def intel() -> SimulatedIntel:
    return SimulatedIntel.generate()


@pytest.fixture
async def tdx(infra, tmp_path, intel):  # type: ignore[no-untyped-def]
    root = tmp_path / "intel-test-root.pem"
    root.write_bytes(intel.root_pem)
    pcs = LocalPcs.from_simulated(intel, delay_s=0.1)
    await pcs.start()
    rs = await start_stack(infra, tmp_path / "data", dcap_root_ca_path=root, dcap_pcs_url=pcs.base_url)
    await add_reference_values(rs.stack, "tdx", "mr_td", [MR_TD.hex()])
    yield rs, pcs
    await rs.stack.stop()
    await rs.kds.stop()
    await pcs.stop()


async def attest(url: str, machine: SimulatedTdxPlatform, mr_td: bytes = MR_TD):  # type: ignore[no-untyped-def]
    client = GuestClient.new(url)
    nonce = (await client.auth("tdx")).body["nonce"]
    quote = machine.make_quote(expected_report_data(nonce, client.tee_pubkey), mr_td=mr_td, rtmrs=[bytes(48)] * 4)
    result = await client.attest(client.attestation_body(nonce, machine.evidence(quote)))
    return client, result


async def test_fifty_quotes_of_one_platform_cost_pcs_one_fetch_per_document(tdx, intel) -> None:  # type: ignore[no-untyped-def]
    rs, pcs = tdx
    machine = SimulatedTdxPlatform.create(intel)
    results = await asyncio.gather(*(attest(rs.url, machine) for _ in range(50)))
    statuses = [r.status for _, r in results]
    assert statuses == [200] * 50, [r.body for _, r in results if r.status != 200][:2]
    assert pcs.request_count["/tdx/certification/v4/tcb"] == 1
    assert pcs.request_count["/tdx/certification/v4/qe/identity"] == 1
    assert pcs.request_count["/sgx/certification/v4/pckcrl"] == 1
    client, result = results[0]
    key = load_or_create_signing_key(rs.settings.signing_key_path)
    claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
    assert submod_status(claims) == "affirming"
    tdx_claims = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tdx"]
    assert tdx_claims["tdx.tcb_status"] == "UpToDate"
    assert tdx_claims["tdx.quote.body.mr_td"] == MR_TD.hex()
    fetched = await client.resource(RESOURCE)
    assert fetched.status == 200 and client.decrypt(fetched.body) == SECRET
    for c, _ in results:
        await c.close()


async def test_wrong_mr_td_and_unknown_platform_are_rejected(tdx, intel) -> None:  # type: ignore[no-untyped-def]
    rs, _ = tdx
    client, result = await attest(rs.url, SimulatedTdxPlatform.create(intel), mr_td=b"\x01" * 48)
    await client.close()
    assert result.status == 401 and result.reason == "measurement.not_in_reference_values"
    stranger = SimulatedTdxPlatform.create(intel, fmspc=bytes.fromhex("00000000beef"))
    client, result = await attest(rs.url, stranger)
    await client.close()
    assert result.status == 401 and result.reason == "endorsement.not_found"


async def test_full_size_ccel_event_log_is_replayed_through_http(tdx, intel) -> None:  # type: ignore[no-untyped-def]
    """A guest sends the whole 256 KiB CCEL area (events, then 0xFF padding) with its quote."""
    import base64

    from services.demo.tdx_sim import SimEvent, ccel_event_log

    rs, _ = tdx
    log, rtmrs = ccel_event_log([SimEvent(0, b"firmware"), SimEvent(1, b"kernel"), SimEvent(2, b"cmdline")])
    area = log + b"\xff" * (256 * 1024 - len(log))
    machine = SimulatedTdxPlatform.create(intel)
    client = GuestClient.new(rs.url)
    nonce = (await client.auth("tdx")).body["nonce"]
    quote = machine.make_quote(expected_report_data(nonce, client.tee_pubkey), mr_td=MR_TD, rtmrs=list(rtmrs))
    evidence = {"cc_eventlog": base64.b64encode(area).decode(), "quote": base64.b64encode(quote).decode()}
    result = await client.attest(client.attestation_body(nonce, evidence))
    assert result.status == 200, result.body
    key = load_or_create_signing_key(rs.settings.signing_key_path)
    claims = verify_ear(result.body["token"], key.public_key(), now=int(time.time()))
    tdx_claims = claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tdx"]
    assert tdx_claims["tdx.eventlog.replayed"] is True and tdx_claims["tdx.eventlog.event_count"] == 3
    # The same log against a quote with other RTMRs is rejected.
    nonce = (await client.auth("tdx")).body["nonce"]
    quote = machine.make_quote(expected_report_data(nonce, client.tee_pubkey), mr_td=MR_TD, rtmrs=[bytes(48)] * 4)
    evidence = {"cc_eventlog": base64.b64encode(area).decode(), "quote": base64.b64encode(quote).decode()}
    result = await client.attest(client.attestation_body(nonce, evidence))
    await client.close()
    assert result.status == 401 and result.reason == "tdx.rtmr_replay"
