"""Real TDX/SGX quotes through the endorse -> identity -> measure -> decide -> release stages on
real NATS and Redis, with the real collateral provisioned as an offline directory, at each case's
verify_at. (Real quotes carry report_data bound to challenges long gone, so they enter after intake.)"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import uuid
from datetime import datetime
from pathlib import Path

import pytest

from shared import schemas
from shared.bus import Publish
from tests.conftest import add_reference_values, publisher_as, start_stack

pytestmark = pytest.mark.integration
QUOTES = Path(__file__).resolve().parents[1] / "data" / "tdx" / "quotes"


def expected(case: str) -> dict:
    return json.loads((QUOTES / case / "expected.json").read_text())


@pytest.fixture
async def dcap(infra, tmp_path):  # type: ignore[no-untyped-def]
    offline = tmp_path / "collateral"
    for case in ("dcapqvl_tdx_quote", "gotdx_cos113_ccel", "dcapqvl_sgx_quote", "dcapqvl_tdx_quote_outdated"):
        exp = expected(case)
        target = offline / exp["tee"] / exp["fmspc"]
        if not target.exists():
            shutil.copytree(QUOTES / case / "collateral", target, ignore=shutil.ignore_patterns("upstream"))
    rs = await start_stack(
        infra, tmp_path / "data", offline_endorsements_dir=offline, dcap_pcs_url="http://127.0.0.1:9", dcap_require_crls=False
    )
    yield rs
    await rs.stack.stop()
    await rs.kds.stop()


async def run_case(rs, case: str, *, eventlog: bytes | None = None) -> schemas.Outcome:  # type: ignore[no-untyped-def]
    exp = expected(case)
    verify_at = datetime.fromisoformat(exp["verify_at"].replace("Z", "+00:00")).timestamp()
    rs.stack.set_clock(lambda: verify_at)
    platform = rs.stack.platforms[exp["tee"]]
    doc: dict = {"quote": base64.b64encode((QUOTES / case / "quote.bin").read_bytes()).decode()}
    if eventlog is not None:
        doc["cc_eventlog"] = base64.b64encode(eventlog).decode()
    info = platform.parse_evidence(json.dumps(doc).encode())
    reply = f"remits.outcome.test-{uuid.uuid4().hex[:8]}"
    sub = await rs.stack.nc.subscribe(reply)  # the operator listens in place of a gateway
    request_id = uuid.uuid4().hex
    meta = schemas.RequestMeta(request_id=request_id, tee=exp["tee"], reply_to=reply, submitted_at=verify_at)
    message = schemas.ParsedEvidence(
        meta=meta, runtime_data_claims={}, evidence=info.evidence, endorsement_key=info.endorsement_key
    )
    # Real quotes bind long-gone challenges, so they enter where intake would have sent them, as intake.
    nc, publisher = await publisher_as(rs.infra, "intake")
    await publisher.send(Publish(schemas.stage_subject("endorse"), message, f"{request_id}:intake"), request_id)
    outcome = schemas.decode_outcome((await sub.next_msg(timeout=20)).data)
    await sub.unsubscribe()
    await publisher.stop()
    await nc.close()
    return outcome


async def test_up_to_date_tdx_quote_is_affirmed_once_measured(dcap) -> None:  # type: ignore[no-untyped-def]
    case = "dcapqvl_tdx_quote"
    await add_reference_values(dcap.stack, "tdx", "mr_td", [expected(case)["mr_td"]])
    outcome = await run_case(dcap, case)
    assert outcome.status == "affirming", outcome
    assert outcome.token


async def test_ccel_replay_runs_in_the_pipeline(dcap) -> None:  # type: ignore[no-untyped-def]
    case = "gotdx_cos113_ccel"
    await add_reference_values(dcap.stack, "tdx", "mr_td", [expected(case)["mr_td"]])
    log = (QUOTES / case / "ccel" / "ccel_data.dat").read_bytes()
    assert (await run_case(dcap, case, eventlog=log)).status == "affirming"
    tampered = bytearray(log)
    spec_size = struct.unpack_from("<I", log, 28)[0]
    first_event = 32 + spec_size
    tampered[first_event + 14] ^= 0x01  # the first event's SHA-384 digest
    outcome = await run_case(dcap, case, eventlog=bytes(tampered))
    assert outcome.status == "rejected" and outcome.reason == "tdx.rtmr_replay", outcome


async def test_tcb_status_policy_decides(dcap) -> None:  # type: ignore[no-untyped-def]
    sgx = await run_case(dcap, "dcapqvl_sgx_quote")  # ConfigurationAndSWHardeningNeeded
    assert sgx.status == "rejected" and sgx.reason.startswith("policy.sgx.tcb_status"), sgx
    await add_reference_values(dcap.stack, "sgx", "accepted_tcb_status", ["UpToDate", "ConfigurationAndSWHardeningNeeded"])
    accepted = await run_case(dcap, "dcapqvl_sgx_quote")
    assert accepted.status == "warning", accepted  # accepted, but not UpToDate
    unsupported = await run_case(dcap, "dcapqvl_tdx_quote_outdated")  # TcbNotSupported is never acceptable
    assert unsupported.status == "rejected"


async def test_missing_collateral_is_a_rejection_with_reason(dcap) -> None:  # type: ignore[no-untyped-def]
    outcome = await run_case(dcap, "trustee_tdx_quote_6")  # FMSPC not provisioned, PCS unreachable
    assert outcome.status == "rejected"
    assert outcome.reason in {"endorsement.unavailable", "endorsement.not_found", "endorsement.fetch_failed"}, outcome
