"""Policy over verified quotes (all violations at once) and the claims they produce."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from shared.errors import ParseError, VerificationError
from shared.platforms.base import Violation
from shared.platforms.tdx.abi import parse_quote
from shared.platforms.tdx.validate import SgxPolicy, TdxPolicy, claims, validate
from shared.platforms.tdx.verify import VerifiedQuote, verify_quote
from tests.unit.test_tdx_vectors import CASES, NO_CRLS, ROOT_DER, at, collateral, expected, raw_quote


def verified(case: str) -> VerifiedQuote:
    return verify_quote(
        raw_quote(case),
        collateral(case),
        ROOT_DER,
        at(expected(case)["verify_at"]),
        require_crls=case not in NO_CRLS,
    )


def fields(violations: list[Violation]) -> set[str]:
    return {v.field for v in violations}


def test_default_policy_accepts_an_up_to_date_production_td() -> None:
    v = verified("gotdx_cos113_ccel")
    assert validate(v.quote, v, TdxPolicy()) == []


def test_matching_references_accept() -> None:
    case = "trustee_tdx_quote_6"
    v = verified(case)
    td = v.quote.td_report
    policy = TdxPolicy(
        accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate"}),
        mr_td=frozenset({td.mr_td}),
        rtmrs={0: frozenset({td.rtmrs[0]}), 2: frozenset({td.rtmrs[2]})},
        mr_config_id=td.mr_config_id,
        xfam=frozenset({td.xfam}),
        report_data=td.report_data,
        mr_seam=frozenset({td.mr_seam}),
        require_sept_ve_disable=True,
    )
    assert validate(v.quote, v, policy) == []


def test_every_violation_is_reported_together() -> None:
    v = verified("trustee_tdx_quote_4")  # a DEBUG TD
    wrong = bytes(48)
    policy = TdxPolicy(
        mr_td=frozenset({wrong}),
        rtmrs={1: frozenset({wrong}), 3: frozenset()},
        mr_config_id=b"\x01" * 48,
        xfam=frozenset({bytes(8)}),
        report_data=bytes(64),
        require_sept_ve_disable=True,
    )
    found = validate(v.quote, v, policy)
    assert fields(found) == {
        "tdx.td_attributes.debug",
        "tdx.quote.body.mr_td",
        "tdx.quote.body.rtmr_1",
        "tdx.quote.body.rtmr_3",
        "tdx.quote.body.mr_config_id",
        "tdx.quote.body.xfam",
        "tdx.quote.body.report_data",
    }
    by_field = {x.field: x for x in found}
    assert by_field["tdx.quote.body.rtmr_3"].want == "<none configured>"
    assert by_field["tdx.quote.body.mr_td"].got == v.quote.td_report.mr_td.hex()
    assert by_field["tdx.quote.body.mr_config_id"].want == "01" * 48
    assert validate(v.quote, v, replace(policy, allow_debug=True, require_sept_ve_disable=False, mr_td=None))


def test_sept_ve_disable_can_be_required() -> None:
    v = verified("gotdx_spr_e4_v4")  # SEPT_VE_DISABLE clear: dcap-qvl's default policy rejects it
    strict = TdxPolicy(accepted_tcb_statuses=frozenset({"UpToDate"}), require_sept_ve_disable=True)
    assert "tdx.td_attributes.sept_ve_disable" in fields(validate(v.quote, v, strict))
    assert "tdx.td_attributes.sept_ve_disable" not in fields(validate(v.quote, v, TdxPolicy()))


@pytest.mark.parametrize("case", CASES)
def test_tcb_status_policy(case: str) -> None:
    v = verified(case)
    policy = TdxPolicy() if v.tee == "tdx" else SgxPolicy()
    status_field = f"{v.tee}.tcb_status"
    found = validate(v.quote, v, policy)
    assert (status_field in fields(found)) == (expected(case)["tcb_status"] != "UpToDate")
    relaxed = replace(
        policy,
        accepted_tcb_statuses=frozenset({"UpToDate", "OutOfDate", "ConfigurationAndSWHardeningNeeded"}),
        allow_debug=True,
    )
    accepted = status_field not in fields(validate(v.quote, v, relaxed))
    assert accepted == expected(case)["expected"]["accept_under_intel_rule"]


def test_rejected_advisories() -> None:
    v = verified("trustee_az_tdx_vtpm_td_quote")
    policy = TdxPolicy(
        accepted_tcb_statuses=frozenset({"OutOfDate"}), rejected_advisory_ids=frozenset({"INTEL-SA-00982"})
    )
    assert validate(v.quote, v, policy) == [
        Violation("tdx.advisory_ids", "INTEL-SA-00982", "none of: INTEL-SA-00982")
    ]


@pytest.mark.parametrize("status", ["Revoked", "TcbNotSupported", "TdxModuleMismatch", "Fine"])
def test_unacceptable_statuses_cannot_be_configured(status: str) -> None:
    with pytest.raises(ParseError) as info:
        TdxPolicy(accepted_tcb_statuses=frozenset({"UpToDate", status}))
    assert info.value.reason == "config.tdx_policy.accepted_tcb_statuses"


def test_reference_sizes_are_checked() -> None:
    bad: list[Callable[[], TdxPolicy]] = [
        lambda: TdxPolicy(mr_td=frozenset({b"x"})),
        lambda: TdxPolicy(mr_config_id=b"x"),
        lambda: TdxPolicy(report_data=b"x"),
        lambda: TdxPolicy(rtmrs={4: frozenset()}),
    ]
    for make in bad:
        with pytest.raises(ParseError):
            make()
    with pytest.raises(ParseError):
        SgxPolicy(mr_enclave=frozenset({b"x"}))


def test_sgx_policy() -> None:
    v = verified("trustee_occlum_sgx")  # debug enclave, OutOfDate
    report = v.quote.enclave_report
    good = SgxPolicy(
        accepted_tcb_statuses=frozenset({"OutOfDate"}),
        allow_debug=True,
        mr_enclave=frozenset({report.mr_enclave}),
        mr_signer=frozenset({report.mr_signer}),
        isv_prod_id=report.isv_prod_id,
        min_isv_svn=report.isv_svn,
        report_data=report.report_data,
    )
    assert validate(v.quote, v, good) == []
    bad = replace(
        good,
        allow_debug=False,
        mr_enclave=frozenset({bytes(32)}),
        isv_prod_id=7,
        min_isv_svn=3,
        report_data=bytes(64),
    )
    assert fields(validate(v.quote, v, bad)) == {
        "sgx.attributes.debug",
        "sgx.quote.body.mr_enclave",
        "sgx.quote.body.isv_prod_id",
        "sgx.quote.body.isv_svn",
        "sgx.quote.body.report_data",
    }


def test_policy_of_the_other_tee_is_a_violation() -> None:
    v = verified("dcapqvl_sgx_quote")
    assert fields(validate(v.quote, v, TdxPolicy())) == {"tdx.quote.header.tee_type"}


def test_claims_for_tdx() -> None:
    case = "gotdx_quote_v5_sample"
    v = verified(case)
    exp = expected(case)
    out = claims(v.quote, v)
    assert out["tdx.quote.header.version"] == 5
    assert out["tdx.quote.header.tee_type"] == 0x81
    assert out["tdx.quote.body.mr_td"] == exp["mr_td"]
    assert [out[f"tdx.quote.body.rtmr_{i}"] for i in range(4)] == [exp[f"rtmr{i}"] for i in range(4)]
    assert out["tdx.quote.body.mr_config_id"] == exp["mr_config_id"]
    assert out["tdx.quote.body.report_data"] == exp["report_data"]
    assert out["tdx.quote.body.tee_tcb_svn"] == exp["tee_tcb_svn"]
    assert out["tdx.quote.body.xfam"] == exp["xfam"]
    assert out["tdx.quote.body.tee_tcb_svn_2"] == exp["tee_tcb_svn_2"]
    assert out["tdx.quote.body.mr_service_td"] == exp["mr_servicetd"]
    assert out["tdx.td_attributes.debug"] is False
    assert out["tdx.tcb_status"] == "UpToDate"
    assert out["tdx.advisory_ids"] == []
    assert out["tdx.fmspc"] == exp["fmspc"]
    assert all(k.startswith("tdx.") for k in out)
    hexes = [
        value for value in out.values() if isinstance(value, str) and value != "UpToDate" and "T" not in value
    ]
    assert all(value == value.lower() for value in hexes)


def test_claims_for_tdx_10_have_no_td15_fields_and_sgx_uses_its_prefix() -> None:
    v = verified("gotdx_cos113_ccel")
    assert "tdx.quote.body.mr_service_td" not in claims(v.quote, v)
    s = verified("dcapqvl_sgx_quote")
    out = claims(s.quote, s)
    assert all(k.startswith("sgx.") for k in out)
    assert out["sgx.quote.body.mr_enclave"] == expected("dcapqvl_sgx_quote")["mr_enclave"]
    assert out["sgx.tcb_status"] == "ConfigurationAndSWHardeningNeeded"
    assert out["sgx.advisory_ids"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert out["sgx.attributes.debug"] is False


def test_policy_reads_only_the_verified_quote() -> None:
    v = verified("gotdx_cos113_ccel")
    other = parse_quote(raw_quote("dcapqvl_tdx_quote"))
    with pytest.raises(VerificationError):
        claims(other, v)
    with pytest.raises(VerificationError):
        validate(other, v, TdxPolicy())
