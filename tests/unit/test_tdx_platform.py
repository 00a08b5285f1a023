"""The TDX/SGX pipeline adapter on the real vectors: evidence shapes, the collateral plan, offline
collateral, identity at each case's verify_at, event-log replay, appraisal."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from services.endorse.worker import read_offline
from shared.errors import ParseError, VerificationError
from shared.platforms.tdx import pinned_root_der
from shared.platforms.tdx.platform import DcapPlatform

QUOTES = Path(__file__).resolve().parents[1] / "data" / "tdx" / "quotes"
CASES = sorted(p.name for p in QUOTES.iterdir() if (p / "expected.json").exists())


def expected(case: str) -> dict:
    return json.loads((QUOTES / case / "expected.json").read_text())


def at(case: str) -> datetime:
    return datetime.fromisoformat(expected(case)["verify_at"].replace("Z", "+00:00"))


def offline_dir(tmp_path: Path, case: str) -> Path:
    exp = expected(case)
    target = tmp_path / exp["tee"] / exp["fmspc"]
    shutil.copytree(QUOTES / case / "collateral", target, ignore=shutil.ignore_patterns("upstream"))
    return tmp_path


def platform_for(case: str) -> DcapPlatform:
    return DcapPlatform(expected(case)["tee"], pinned_root_der(), require_crls=False)


def evidence(case: str, *, urlsafe: bool = False, eventlog: bytes | None = None) -> bytes:
    raw = (QUOTES / case / "quote.bin").read_bytes()
    enc = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    doc: dict = {"quote": enc(raw).decode()}
    if eventlog is not None:
        doc["cc_eventlog"] = base64.b64encode(eventlog).decode()
    return json.dumps(doc).encode()


def endorsement(platform: DcapPlatform, info_evidence: bytes, directory: Path) -> list[bytes]:
    docs = [read_offline(directory, platform.tee, r) for r in platform.endorsement_requests(info_evidence, ())]
    return platform.assemble_endorsement(docs, ())


@pytest.mark.parametrize("case", CASES)
def test_every_vector_verifies_through_the_adapter(case: str, tmp_path: Path) -> None:
    exp = expected(case)
    platform = platform_for(case)
    info = platform.parse_evidence(evidence(case, urlsafe=case.endswith("hex")))
    assert info.report_data.hex() == exp["report_data"]
    assert info.endorsement_key.startswith(f"{exp['tee']}:{exp['fmspc']}:")
    claims = platform.verify_identity(info.evidence, endorsement(platform, info.evidence, offline_dir(tmp_path, case)), at(case))
    prefix = exp["tee"]
    assert claims[f"{prefix}.tcb_status"] == exp["tcb_status"]
    if prefix == "tdx":
        assert info.init_data_binding.hex() == exp["mr_config_id"]
    # One second past the window, the same collateral no longer verifies.
    late = datetime.fromisoformat(exp["valid_window"]["not_after"].replace("Z", "+00:00")) + timedelta(seconds=1)
    with pytest.raises(VerificationError):
        platform.verify_identity(info.evidence, endorsement(platform, info.evidence, offline_dir(tmp_path / "late", case)), late)


def test_ccel_event_log_replays_and_becomes_claims(tmp_path: Path) -> None:
    case = "gotdx_cos113_ccel"
    log = (QUOTES / case / "ccel" / "ccel_data.dat").read_bytes()
    platform = platform_for(case)
    info = platform.parse_evidence(evidence(case, eventlog=log))
    claims = platform.verify_identity(info.evidence, endorsement(platform, info.evidence, offline_dir(tmp_path, case)), at(case))
    assert claims["tdx.eventlog.replayed"] is True
    assert claims["tdx.eventlog.event_count"] > 0
    assert {e["rtmr"] for e in claims["tdx.uefi_event_logs"]} <= {0, 1, 2, 3}
    other = platform_for("gotdx_quote_v5_sample")
    info_other = other.parse_evidence(evidence("gotdx_quote_v5_sample", eventlog=log))  # a log of another TD
    with pytest.raises(VerificationError) as err:
        other.verify_identity(
            info_other.evidence,
            endorsement(other, info_other.evidence, offline_dir(tmp_path / "o", "gotdx_quote_v5_sample")),
            at("gotdx_quote_v5_sample"),
        )
    assert err.value.check == "tdx.rtmr_replay"


def test_collateral_plan_uses_pcs_v4_urls() -> None:
    platform = DcapPlatform("tdx", pinned_root_der(), "https://pccs.example:8081")
    info = platform.parse_evidence(evidence("dcapqvl_tdx_quote"))
    plan = platform.endorsement_requests(info.evidence, ())
    urls = [r.url for r in plan]
    assert urls[0] == "https://pccs.example:8081/tdx/certification/v4/tcb?fmspc=b0c06f000000"
    assert urls[1] == "https://pccs.example:8081/tdx/certification/v4/qe/identity"
    assert urls[2] == "https://pccs.example:8081/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
    assert urls[3] == "https://pccs.example:8081/sgx/certification/v4/rootcacrl"
    assert [bool(r.headers) for r in plan] == [True, True, True, False]
    assert not any(r.optional for r in plan)  # CRLs are required by default


def test_tee_mismatch_and_malformed_evidence() -> None:
    with pytest.raises(ParseError):
        DcapPlatform("sgx", pinned_root_der()).parse_evidence(evidence("dcapqvl_tdx_quote"))
    for bad in (b"", b"{}", b'{"quote": 5}', b'"@@@"', b'{"quote": "AAAA"}'):
        with pytest.raises(ParseError):
            DcapPlatform("tdx", pinned_root_der()).parse_evidence(bad)


def test_appraisal_policy_and_vector(tmp_path: Path) -> None:
    case = "dcapqvl_tdx_quote"
    exp = expected(case)
    platform = platform_for(case)
    info = platform.parse_evidence(evidence(case))
    claims = platform.verify_identity(info.evidence, endorsement(platform, info.evidence, offline_dir(tmp_path, case)), at(case))
    ok = platform.appraise(info.evidence, claims, {"mr_td": frozenset({exp["mr_td"]})})
    assert ok.violations == [] and ok.vector["hardware"] == 2 and ok.vector["executables"] == 2
    unmeasured = platform.appraise(info.evidence, claims, {})
    assert unmeasured.vector["executables"] == 33
    bad = platform.appraise(info.evidence, claims, {"mr_td": frozenset({"00" * 48}), "rtmr0": frozenset({"11" * 48})})
    assert {v.field for v in bad.violations} == {"tdx.quote.body.mr_td", "tdx.quote.body.rtmr_0"}
    outdated = dict(claims, **{"tdx.tcb_status": "OutOfDate"})
    refused = platform.appraise(info.evidence, outdated, {})
    assert [v.field for v in refused.violations] == ["tdx.tcb_status"]
    accepted = platform.appraise(info.evidence, outdated, {"accepted_tcb_status": frozenset({"UpToDate", "OutOfDate", "Revoked"})})
    assert accepted.violations == [] and accepted.vector["hardware"] == 32  # warning tier
    revoked = dict(claims, **{"tdx.tcb_status": "Revoked"})
    assert platform.appraise(info.evidence, revoked, {"accepted_tcb_status": frozenset({"Revoked"})}).violations


def test_quote_verifier_warm_path_still_checks_each_quote(tmp_path: Path) -> None:
    from shared.platforms.tdx.verify import QuoteVerifier

    case = "dcapqvl_tdx_quote"
    platform = platform_for(case)
    info = platform.parse_evidence(evidence(case))
    docs = endorsement(platform, info.evidence, offline_dir(tmp_path, case))
    collateral = platform._parse_collateral(docs)
    verifier = QuoteVerifier(collateral, pinned_root_der())
    raw = (QUOTES / case / "quote.bin").read_bytes()
    first = verifier.verify(raw, at(case))
    warm = verifier.verify(raw, at(case))  # served by the remembered chain verdict
    assert (warm.tcb_status, warm.advisory_ids) == (first.tcb_status, first.advisory_ids) == ("UpToDate", ())
    tampered = bytearray(raw)
    tampered[48 + 136] ^= 1  # MRTD, signed by the attestation key
    with pytest.raises(VerificationError) as err:
        verifier.verify(bytes(tampered), at(case))
    assert err.value.check == "tdx.quote_signature"
    late = datetime.fromisoformat(expected(case)["valid_window"]["not_after"].replace("Z", "+00:00")) + timedelta(seconds=1)
    with pytest.raises(VerificationError):  # outside the remembered window: full verification again
        verifier.verify(raw, late)


def test_malformed_integer_reference_values_are_typed_errors(tmp_path: Path) -> None:
    case = "dcapqvl_sgx_quote"
    platform = platform_for(case)
    info = platform.parse_evidence(evidence(case))
    claims = platform.verify_identity(info.evidence, endorsement(platform, info.evidence, offline_dir(tmp_path, case)), at(case))
    with pytest.raises(ParseError) as err:
        platform.appraise(info.evidence, claims, {"min_isv_svn": frozenset({"two"})})
    assert err.value.reason == "config.reference_values.min_isv_svn"
