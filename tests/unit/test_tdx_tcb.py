"""Intel's TCB status rule on synthetic TCB Info (every branch), where it parts from dcap-qvl's
rule on real vectors, and dcap-qvl itself as an independent oracle on the real quotes."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.platforms.tdx.collateral import (
    EnclaveTcbLevel,
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TdxModule,
    TdxModuleIdentity,
)
from shared.platforms.tdx.tcb import TcbStatus, evaluate_tcb, sorted_levels
from shared.platforms.tdx.verify import evaluate_quote
from tests.unit.test_tdx_vectors import (
    CASES,
    NEG_DIR,
    NO_CRLS,
    QUOTES,
    ROOT_DER,
    at,
    collateral,
    expected,
    raw_quote,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SGX = (7, 7, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
SGX_6 = (6, 6, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
SGX_5 = (5, 5, 2, 2, 3, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0)
ZERO16 = (0,) * 16


def tdx(*svns: int) -> tuple[int, ...]:
    return tuple(svns) + (0,) * (16 - len(svns))


def level(
    status: str, sgx: tuple[int, ...] = SGX, pce: int = 11, tdx_c: tuple[int, ...] | None = ZERO16, *ids: str
) -> TcbLevel:
    return TcbLevel(sgx, pce, tdx_c, T0, status, tuple(ids))


def module_identity(major: int, *levels: tuple[int, str]) -> TdxModuleIdentity:
    return TdxModuleIdentity(
        f"TDX_{major:02X}",
        TdxModule(bytes(48), bytes(8), b"\xff" * 8),
        tuple(EnclaveTcbLevel(svn, T0, status, ()) for svn, status in levels),
    )


def info(
    levels: list[TcbLevel], identities: tuple[TdxModuleIdentity, ...] = (), tee: str | None = "TDX"
) -> TcbInfo:
    return TcbInfo(
        id=tee,
        version=3 if tee else 2,
        issue_date=T0,
        next_update=T0,
        fmspc=bytes(6),
        pce_id=bytes(2),
        tcb_type=0,
        tcb_evaluation_data_number=17,
        tdx_module=TdxModule(bytes(48), bytes(8), b"\xff" * 8) if tee == "TDX" else None,
        tdx_module_identities=identities,
        tcb_levels=tuple(levels),
        signed_body=b"{}",
        signature=bytes(64),
    )


def qe(*levels: tuple[int, str, tuple[str, ...]]) -> QeIdentity:
    return QeIdentity(
        id="TD_QE",
        version=2,
        issue_date=T0,
        next_update=T0,
        tcb_evaluation_data_number=17,
        miscselect=bytes(4),
        miscselect_mask=b"\xff" * 4,
        attributes=bytes(16),
        attributes_mask=bytes(16),
        mrsigner=bytes(32),
        isv_prod_id=2,
        tcb_levels=tuple(EnclaveTcbLevel(svn, T0, status, ids) for svn, status, ids in levels),
        signed_body=b"{}",
        signature=bytes(64),
    )


QE_OK = qe((4, "UpToDate", ()))
MODULES = (module_identity(1, (4, "UpToDate"), (2, "OutOfDate")), module_identity(3, (3, "UpToDate")))
TDX_INFO = info(
    [
        level("UpToDate", tdx_c=tdx(5, 0, 7)),
        level("OutOfDate", SGX_6, 11, tdx(3, 0, 6), "INTEL-SA-00960"),
        level("OutOfDate", SGX_5, 5, tdx(3, 0, 5), "INTEL-SA-00106"),
    ],
    MODULES,
)


def run(
    tcb_info: TcbInfo,
    tee_tcb_svn: bytes | None,
    *,
    qe_identity: QeIdentity = QE_OK,
    qe_svn: int = 6,
    components: tuple[int, ...] = SGX,
    pce: int = 11,
    svn_2: bytes | None = None,
) -> TcbStatus:
    return evaluate_tcb(tcb_info, qe_identity, components, pce, qe_svn, tee_tcb_svn, svn_2).status


def svn(*values: int) -> bytes:
    return bytes(values) + bytes(16 - len(values))


# -- level matching ----------------------------------------------------------------------------


def test_module_bytes_are_skipped_when_the_major_version_is_set() -> None:
    # 04 01 07: module SVN 4 < 5 is not compared; TDX_01 rates SVN 4 UpToDate.
    assert run(TDX_INFO, svn(4, 1, 7)) is TcbStatus.UP_TO_DATE
    # Major version 0: all 16 bytes are compared, 4 < 5 drops to the next level.
    assert run(TDX_INFO, svn(4, 0, 7)) is TcbStatus.OUT_OF_DATE


def test_sgx_components_and_pcesvn_select_the_level() -> None:
    assert run(TDX_INFO, svn(5, 0, 7), components=SGX_6) is TcbStatus.OUT_OF_DATE
    assert run(TDX_INFO, svn(5, 0, 7), pce=5) is TcbStatus.OUT_OF_DATE
    assert run(TDX_INFO, svn(5, 0, 7), pce=4) is TcbStatus.TCB_NOT_SUPPORTED
    assert run(TDX_INFO, svn(5, 0, 7), components=(1,) * 16) is TcbStatus.TCB_NOT_SUPPORTED


def test_no_tdx_level_is_not_supported_without_advisories() -> None:
    result = evaluate_tcb(TDX_INFO, QE_OK, SGX, 11, 6, svn(2, 0, 4))
    assert result.status is TcbStatus.TCB_NOT_SUPPORTED
    assert result.sgx_level is not None and result.tdx_level is None
    assert result.advisory_ids == () and result.tcb_date is None


def test_level_order_does_not_depend_on_the_document() -> None:
    levels = list(TDX_INFO.tcb_levels)
    for seed in range(5):
        random.Random(seed).shuffle(levels)
        shuffled = replace(TDX_INFO, tcb_levels=tuple(levels))
        assert sorted_levels(shuffled) == TDX_INFO.tcb_levels
        assert run(shuffled, svn(3, 1, 6), components=SGX_6) is TcbStatus.OUT_OF_DATE


def test_equal_levels_collapse_to_the_first() -> None:
    twice = info([level("SWHardeningNeeded"), level("UpToDate")], tee="SGX")
    assert run(twice, None) is TcbStatus.SW_HARDENING_NEEDED


def test_sgx_status_and_qe_convergence() -> None:
    sgx_info = info([level("ConfigurationNeeded", tdx_c=None)], tee=None)
    assert run(sgx_info, None) is TcbStatus.CONFIGURATION_NEEDED
    old_qe = qe((8, "UpToDate", ()), (6, "OutOfDate", ("INTEL-SA-00615",)))
    result = evaluate_tcb(sgx_info, old_qe, SGX, 11, 6)
    assert result.status is TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    assert result.advisory_ids == ("INTEL-SA-00615",)


# -- module and QE convergence -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "module_svn", "want"),
    [
        ("UpToDate", 4, "UpToDate"),
        ("UpToDate", 3, "OutOfDate"),
        ("SWHardeningNeeded", 3, "OutOfDate"),
        ("ConfigurationNeeded", 3, "OutOfDateConfigurationNeeded"),
        ("ConfigurationAndSWHardeningNeeded", 3, "OutOfDateConfigurationNeeded"),
        ("OutOfDate", 3, "OutOfDate"),
        ("Revoked", 4, "Revoked"),
        ("UpToDate", 1, "TcbNotSupported"),  # below every TDX_01 level
    ],
)
def test_module_status_convergence(platform: str, module_svn: int, want: str) -> None:
    tcb_info = info([level(platform, tdx_c=tdx(0, 0, 7))], MODULES)
    assert run(tcb_info, svn(module_svn, 1, 7)).value == want


def test_revoked_module_and_missing_identity() -> None:
    revoked = info([level("UpToDate")], (module_identity(1, (4, "Revoked")),))
    assert run(revoked, svn(4, 1)) is TcbStatus.REVOKED
    assert run(info([level("UpToDate")], MODULES), svn(9, 2)) is TcbStatus.TDX_MODULE_MISMATCH


@pytest.mark.parametrize(
    ("qe_svn", "want"),
    [(8, "UpToDate"), (6, "OutOfDate"), (5, "Revoked"), (3, "TcbNotSupported")],
)
def test_qe_status_convergence(qe_svn: int, want: str) -> None:
    identity = qe((8, "UpToDate", ()), (6, "OutOfDate", ()), (4, "Revoked", ()))
    assert run(TDX_INFO, svn(5, 1, 7), qe_identity=identity, qe_svn=qe_svn).value == want


def test_qe_not_supported_beats_a_platform_status_but_not_a_missing_level() -> None:
    identity = qe((8, "UpToDate", ()))
    assert run(TDX_INFO, svn(5, 1, 7), qe_identity=identity, qe_svn=1) is TcbStatus.TCB_NOT_SUPPORTED
    assert run(TDX_INFO, svn(9, 2, 7), qe_identity=identity, qe_svn=8) is TcbStatus.TDX_MODULE_MISMATCH


# -- TD 1.5 relaunch ---------------------------------------------------------------------------


def test_relaunch_advised_when_only_the_running_module_is_old() -> None:
    # TEE_TCB_SVN names module SVN 3 (OutOfDate under TDX_01); TEE_TCB_SVN_2 shows SVN 4 installed.
    tcb_info = info([level("UpToDate", tdx_c=tdx(5, 0, 7))], MODULES)
    assert run(tcb_info, svn(3, 1, 7)) is TcbStatus.OUT_OF_DATE
    assert run(tcb_info, svn(3, 1, 7), svn_2=svn(4, 1, 7)) is TcbStatus.TD_RELAUNCH_ADVISED
    assert run(tcb_info, svn(3, 1, 7), svn_2=svn(3, 1, 7)) is TcbStatus.OUT_OF_DATE
    config = info([level("ConfigurationNeeded", tdx_c=tdx(5, 0, 7))], MODULES)
    assert run(config, svn(3, 1, 7), svn_2=svn(4, 1, 7)) is TcbStatus.TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED
    old_qe = qe((8, "UpToDate", ()), (6, "OutOfDate", ()))
    assert run(tcb_info, svn(3, 1, 7), svn_2=svn(4, 1, 7), qe_identity=old_qe) is TcbStatus.OUT_OF_DATE


def test_relaunch_with_an_unversioned_module_compares_the_latest_level() -> None:
    tcb_info = info([level("UpToDate", tdx_c=tdx(5, 0, 7))], MODULES)
    assert run(tcb_info, svn(3, 1, 7), svn_2=svn(5, 0, 7)) is TcbStatus.TD_RELAUNCH_ADVISED
    assert run(tcb_info, svn(3, 1, 7), svn_2=svn(4, 0, 7)) is TcbStatus.OUT_OF_DATE
    assert run(tcb_info, svn(3, 1, 7), svn_2=svn(4, 9, 7)) is TcbStatus.TDX_MODULE_MISMATCH


# -- Intel's rule vs dcap-qvl's, on the real vectors ---------------------------------------------


def _dcap_qvl_9bffe30b_rule(case: str) -> tuple[str, list[str]]:
    """dcap-qvl's rule as the vectors record it (at 9bffe30b): all 16 TEE_TCB_SVN bytes compared
    and no module identity consulted. For these vectors that equals Intel's rule applied to a
    TEE_TCB_SVN whose major-version byte is zero (a zero byte 1 meets every level's byte 1)."""
    quote_eval = evaluate_quote(raw_quote(case), collateral(case), ROOT_DER, at(expected(case)["verify_at"]))
    assert quote_eval.pck is not None
    td = quote_eval.quote.td_report
    tee_tcb_svn = td.tee_tcb_svn[:1] + b"\x00" + td.tee_tcb_svn[2:]
    coll = collateral(case)
    result = evaluate_tcb(
        coll.tcb_info,
        coll.qe_identity,
        quote_eval.pck.tcb_components,
        quote_eval.pck.pce_svn,
        quote_eval.quote.qe.report.isv_svn,
        tee_tcb_svn,
    )
    return result.status.value, list(result.advisory_ids)


@pytest.mark.parametrize("case", [c for c in CASES if "tcb_status_dcap_qvl" in expected(c)])
def test_where_intel_and_dcap_qvl_rules_differ(case: str) -> None:
    exp = expected(case)
    intel = evaluate_quote(raw_quote(case), collateral(case), ROOT_DER, at(exp["verify_at"]))
    assert intel.tcb is not None and intel.tcb.status.value == exp["tcb_status"]
    status, advisories = _dcap_qvl_9bffe30b_rule(case)
    assert status == exp["tcb_status_dcap_qvl"] != exp["tcb_status"]
    assert advisories == exp["expected"]["advisory_ids_dcap_qvl_rule"]


# -- dcap-qvl as an oracle ---------------------------------------------------------------------


def _dcap_collateral(case: str) -> Any:
    """The same collateral in dcap-qvl's form (missing CRLs as empty bytes: dcap-qvl rejects them)."""
    dcap_qvl = pytest.importorskip("dcap_qvl")
    directory = QUOTES / case / "collateral"
    coll = collateral(case)

    def text(name: str, default: str = "") -> str:
        path = directory / name
        return path.read_text() if path.exists() else default

    def raw(name: str) -> bytes:
        path = directory / name
        return path.read_bytes() if path.exists() else b""

    chain = text("tcb_info_issuer_chain.pem")
    return dcap_qvl.QuoteCollateralV3(
        text("pck_crl_issuer_chain.pem"),
        raw("root_ca_crl.der"),
        raw("pck_crl.der"),
        chain,
        coll.tcb_info.signed_body.decode(),
        coll.tcb_info.signature,
        text("qe_identity_issuer_chain.pem", chain),
        coll.qe_identity.signed_body.decode(),
        coll.qe_identity.signature,
    )


@pytest.mark.parametrize("case", CASES)
def test_dcap_qvl_agrees_where_it_gives_a_verdict(case: str) -> None:
    dcap_qvl = pytest.importorskip("dcap_qvl")
    exp = expected(case)
    now = int(at(exp["verify_at"]).timestamp())
    try:
        report = dcap_qvl.verify_with_root_ca(raw_quote(case), _dcap_collateral(case), ROOT_DER, now)
    except ValueError as exc:
        message = str(exc)
        # dcap-qvl errors out where Intel's rule reports a status, and applies its own policy.
        if "No matching TCB level" in message:
            assert (
                exp["tcb_status"] == "TcbNotSupported" or exp.get("tcb_status_dcap_qvl") == "TcbNotSupported"
            )
        elif "Debug mode" in message or "SEPT_VE_DISABLE" in message:
            assert exp["expected"]["dcap_qvl_default_policy_rejects"]
        else:
            assert case in NO_CRLS and "CRL" in message, message
        return
    assert report.status == exp["tcb_status"]
    assert list(report.advisory_ids) == exp["expected"]["advisory_ids_intel_rule"]


@pytest.mark.parametrize("name", sorted(p.name for p in NEG_DIR.glob("gotdx_SPR_E4_*.dat")))
def test_dcap_qvl_rejects_the_mutations_too(name: str) -> None:
    dcap_qvl = pytest.importorskip("dcap_qvl")
    with pytest.raises(ValueError):
        dcap_qvl.verify_with_root_ca(
            (NEG_DIR / name).read_bytes(),
            _dcap_collateral("gotdx_spr_e4_v4"),
            ROOT_DER,
            int(at("2023-07-01T01:00:00Z").timestamp()),
        )
