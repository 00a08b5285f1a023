"""Quote verification against the real vectors: every quote at its verify_at (Intel-rule status,
advisories, every expected step), the validity window edges, each negative vector at its named
check, bit flips of everything signed, and Intel's sample data under its own test root."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ParseError, VerificationError
from shared.platforms.tdx import checks
from shared.platforms.tdx.abi import parse_quote
from shared.platforms.tdx.collateral import (
    Collateral,
    TcbLevel,
    load_collateral,
    parse_qe_identity,
    parse_tcb_info,
)
from shared.platforms.tdx.tcb import TcbEvaluation
from shared.platforms.tdx.verify import Evaluation, VerifiedQuote, evaluate_quote, verify_quote
from tests.unit.test_tdx_vectors import (
    CASES,
    NEG_DIR,
    NEGATIVE,
    NO_CRLS,
    QUOTES,
    ROOT_DER,
    at,
    collateral,
    collateral_dir,
    expected,
    raw_quote,
)

# Vector names that are not our check names (see checks.py).
_ALIAS = {"tcb_info_signature_by_its_own_chain": "tcb_info_signature"}
# What may fail first when the clock leaves a case's valid window.
EXPIRY_CHECKS = {
    checks.COLLATERAL_FRESH_AT_TIME,
    checks.PCK_CHAIN_VALID_AT_TIME,
    checks.TCB_SIGNING_CERT_VALID_AT_TIME,
}


def _name(vector_name: str) -> str:
    return "tdx." + _ALIAS.get(vector_name, vector_name)


def _verify(case: str, when: str | None = None, *, require_crls: bool | None = None) -> VerifiedQuote:
    moment = at(when or expected(case)["verify_at"])
    crls = case not in NO_CRLS if require_crls is None else require_crls
    return verify_quote(raw_quote(case), collateral(case), ROOT_DER, moment, require_crls=crls)


def _expected_levels(verified_tcb: TcbEvaluation) -> dict[str, object]:
    def status(level: TcbLevel | None) -> str | None:
        return level.status if level is not None else None

    return {
        "sgx_level_status": status(verified_tcb.sgx_level),
        "tdx_level_status": status(verified_tcb.tdx_level),
        "tdx_module_status": verified_tcb.module_status.value if verified_tcb.module_status else None,
        "qe_status": verified_tcb.qe_status.value if verified_tcb.qe_status else None,
        "tcb_date": verified_tcb.tcb_date.isoformat().replace("+00:00", "Z")
        if verified_tcb.tcb_date
        else None,
    }


# -- positive cases ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_quote_verifies_at_verify_at_with_intel_rule_status(case: str) -> None:
    exp = expected(case)
    verified = _verify(case)
    assert verified.tee == exp["tee"]
    assert verified.tcb_status == exp["tcb_status"] == exp["expected"]["tcb_status_intel_rule"]
    assert list(verified.advisory_ids) == exp["expected"]["advisory_ids_intel_rule"]
    assert _expected_levels(verified.tcb) == exp["expected"]["tcb_levels_intel_rule"]
    assert verified.pck.fmspc.hex() == exp["fmspc"]


@pytest.mark.parametrize("case", CASES)
def test_every_expected_step_passes(case: str) -> None:
    exp = expected(case)["expected"]
    evaluation = evaluate_quote(raw_quote(case), collateral(case), ROOT_DER, at(expected(case)["verify_at"]))
    for name, want in {**exp["steps"], **exp["collateral_checks"]}.items():
        assert evaluation.passed(_name(name)) is want, (name, evaluation.outcomes[_name(name)])


@pytest.mark.parametrize("case", CASES)
def test_valid_window_matches_and_its_edges(case: str) -> None:
    window = expected(case)["valid_window"]
    start, end = at(window["not_before"]), at(window["not_after"])
    assert _verify(case).valid_window == (start, end)
    _verify(case, window["not_before"])
    _verify(case, window["not_after"])
    for outside in (start - timedelta(seconds=1), end + timedelta(seconds=1)):
        with pytest.raises(VerificationError) as info:
            _verify(case, outside.isoformat())
        assert info.value.check in EXPIRY_CHECKS


@pytest.mark.parametrize("case", sorted(NO_CRLS))
def test_missing_crls_fail_unless_explicitly_allowed(case: str) -> None:
    with pytest.raises(VerificationError) as info:
        _verify(case, require_crls=True)
    assert info.value.check == checks.ROOT_CRL_SIGNATURE
    evaluation = evaluate_quote(
        raw_quote(case), collateral(case), ROOT_DER, at(expected(case)["verify_at"]), require_crls=False
    )
    for name in (checks.ROOT_CRL_SIGNATURE, checks.PCK_CRL_SIGNATURE, checks.PCK_NOT_REVOKED):
        assert evaluation.passed(name) is None


def test_naive_time_is_utc() -> None:
    case = "dcapqvl_tdx_quote"
    moment = at(expected(case)["verify_at"])
    naive = verify_quote(raw_quote(case), collateral(case), ROOT_DER, moment.replace(tzinfo=None))
    assert naive.tcb_status == _verify(case).tcb_status


def test_every_check_name_is_reported_in_order() -> None:
    evaluation = evaluate_quote(
        raw_quote("gotdx_cos113_ccel"), collateral("gotdx_cos113_ccel"), ROOT_DER, at("2025-10-31T14:17:11Z")
    )
    assert tuple(evaluation.outcomes) == checks.ORDER
    assert all(o.passed for o in evaluation.outcomes.values())


# -- negative vectors --------------------------------------------------------------------------


def _evaluate_vector(vector: dict[str, Any]) -> tuple[Evaluation, bytes, Collateral, datetime]:
    inputs = vector["inputs"]
    quote = (NEG_DIR / inputs["quote"]).resolve().read_bytes()
    if "collateral" in inputs:
        coll = collateral_dir((NEG_DIR / inputs["collateral"]).resolve())
    else:
        coll = collateral("gotdx_spr_e4_v4")  # the quote the mutations were made from
    moment = at(inputs["verify_at"])
    return evaluate_quote(quote, coll, ROOT_DER, moment), quote, coll, moment


QUOTE_VECTORS = [
    v["id"]
    for v in NEGATIVE["vectors"]
    if v["kind"] in ("quote", "procedure") and v["must_fail"] != ["parse"]
]


@pytest.mark.parametrize("vector_id", QUOTE_VECTORS)
def test_negative_vector_fails_at_its_check_only(vector_id: str) -> None:
    vector = next(v for v in NEGATIVE["vectors"] if v["id"] == vector_id)
    evaluation, quote, coll, moment = _evaluate_vector(vector)
    for name in vector["must_fail"]:
        assert evaluation.passed(_name(name)) is False, (name, evaluation.outcomes[_name(name)])
    for name in vector["must_pass"]:
        assert evaluation.passed(_name(name)) is True, (name, evaluation.outcomes[_name(name)])
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, coll, ROOT_DER, moment)
    if vector["kind"] == "quote":
        assert info.value.check in {_name(n) for n in vector["must_fail"]}


def _intel_sample(kind: str) -> tuple[bytes, Collateral, bytes, bytes]:
    base = NEG_DIR / f"intel_qvl_sample_{kind}"
    coll = load_collateral(
        tcb_info=(base / "tcbInfo.json").read_bytes(),
        tcb_info_issuer_chain=(base / "tcbSignChain.pem").read_bytes(),
        qe_identity=(base / "qeIdentity.json").read_bytes(),
        pck_crl=(base / "intermediateCaCrl.der").read_bytes(),
        root_ca_crl=(base / "rootCaCrl.der").read_bytes(),
    )
    chain = (base / "pckCert.pem").read_bytes() + (base / "pckSignChain.pem").read_bytes()
    return (base / "quote.dat").read_bytes(), coll, chain, (base / "trustedRootCaCert.pem").read_bytes()


SAMPLE_TIME = at("2022-06-01T00:00:00Z")  # inside every validity period of both samples


@pytest.mark.parametrize("kind", ["sgx", "tdx"])
def test_intel_sample_signed_by_a_test_root_is_rejected(kind: str) -> None:
    vector = next(v for v in NEGATIVE["vectors"] if v["id"] == f"intel_qvl_sample_{kind}")
    quote, coll, chain, _test_root = _intel_sample(kind)
    evaluation = evaluate_quote(quote, coll, ROOT_DER, SAMPLE_TIME, pck_chain=chain)
    for name in vector["must_fail"]:
        assert evaluation.passed(_name(name)) is False, name
    for name in vector["must_pass"]:
        if name != "parse":
            assert evaluation.passed(_name(name)) is True, (name, evaluation.outcomes[_name(name)])
    with pytest.raises(VerificationError) as info:
        verify_quote(quote, coll, ROOT_DER, SAMPLE_TIME, pck_chain=chain)
    assert info.value.check == checks.ROOT_IS_PINNED_INTEL_ROOT


def test_sgx_sample_needs_a_supplied_chain() -> None:
    quote, coll, _chain, _root = _intel_sample("sgx")
    assert parse_quote(quote).qe.certification.cert_type == 1  # PPID only
    evaluation = evaluate_quote(quote, coll, ROOT_DER, SAMPLE_TIME)
    assert evaluation.passed(checks.PCK_CHAIN_PARSES) is False
    assert evaluation.passed(checks.QE_REPORT_SIGNATURE) is None


def test_sgx_sample_under_its_own_root_verifies() -> None:
    # Internally consistent: pinning the sample's own root is the only change needed to accept
    # it, so everything that rejects it above is the pin.
    quote, coll, chain, test_root = _intel_sample("sgx")
    verified = verify_quote(quote, coll, test_root, SAMPLE_TIME, pck_chain=chain)
    assert verified.tcb_status == "UpToDate"
    assert all(o.passed is not False for o in verified.outcomes)


def test_tdx_sample_der_chain_in_quote_is_used() -> None:
    quote, coll, _chain, test_root = _intel_sample("tdx")
    evaluation = evaluate_quote(quote, coll, test_root, SAMPLE_TIME)  # type 5 with DER certificates
    assert evaluation.passed(checks.PCK_CHAIN_PARSES) is True
    assert evaluation.passed(checks.QE_REPORT_SIGNATURE) is True
    assert evaluation.passed(checks.PCK_NOT_REVOKED) is True
    # The sample's TEE_TCB_SVN names module major version 0xC1, which its TCB Info does not
    # describe, and its QE Identity names another MRSIGNER than its QE report.
    assert {o.name for o in evaluation.failures} == {
        checks.MODULE_MRSIGNER_MATCHES,
        checks.SEAM_ATTRIBUTES_ZERO,
        checks.QE_IDENTITY_MATCHES,
    }


# -- mixed-up inputs ---------------------------------------------------------------------------


def test_collateral_for_another_tee_is_rejected() -> None:
    # SGX collateral for a TDX quote, same time window.
    tdx_case, sgx_case = "dcapqvl_tdx_quote", "dcapqvl_sgx_quote"
    evaluation = evaluate_quote(
        raw_quote(tdx_case), collateral(sgx_case), ROOT_DER, at(expected(sgx_case)["verify_at"])
    )
    assert evaluation.passed(checks.TCB_INFO_ID_MATCHES_TEE) is False
    assert evaluation.passed(checks.QE_IDENTITY_MATCHES) is False
    assert evaluation.passed(checks.QUOTE_SIGNATURE) is True


def test_pck_crl_of_the_other_ca_is_rejected() -> None:
    # dcapqvl_sgx_quote's PCK comes from the Processor CA; the TDX case's CRL is the Platform CA's.
    case = "dcapqvl_sgx_quote"
    coll = replace(collateral(case), pck_crl=collateral("dcapqvl_tdx_quote").pck_crl)
    evaluation = evaluate_quote(raw_quote(case), coll, ROOT_DER, at(expected(case)["verify_at"]))
    assert evaluation.passed(checks.PCK_CRL_SIGNATURE) is False
    assert evaluation.passed(checks.PCK_NOT_REVOKED) is None


def test_wrong_pinned_root_rejects_everything_chained_to_it() -> None:
    _quote, _coll, _chain, test_root = _intel_sample("tdx")
    case = "dcapqvl_tdx_quote"
    evaluation = evaluate_quote(raw_quote(case), collateral(case), test_root, at(expected(case)["verify_at"]))
    failed = {o.name for o in evaluation.failures}
    assert {
        checks.ROOT_IS_PINNED_INTEL_ROOT,
        checks.INTERMEDIATE_SIGNED_BY_PINNED_ROOT,
        checks.TCB_SIGNING_CERT_SIGNED_BY_PINNED_ROOT,
        checks.ROOT_CRL_SIGNATURE,
    } <= failed
    # A CRL is only trusted from an intermediate that chains to the pinned root.
    assert evaluation.passed(checks.PCK_CRL_SIGNATURE) is None


# -- bit flips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_bit_flips_in_the_signed_quote_are_rejected(case: str) -> None:
    raw = raw_quote(case)
    quote = parse_quote(raw)
    rng = random.Random(case)
    signed_end = len(quote.signed_data)
    moment = at(expected(case)["verify_at"])
    positions = sorted({*rng.sample(range(signed_end), 24), 0x1C, signed_end - 1})
    for position in positions:
        data = bytearray(raw)
        data[position] ^= 1 << rng.randrange(8)
        try:
            evaluation = evaluate_quote(bytes(data), collateral(case), ROOT_DER, moment)
        except ParseError:
            continue  # header/descriptor flips may make the quote unreadable: also a rejection
        # Other checks may object first (module signer, QE vendor...); the signature always does.
        assert evaluation.passed(checks.QUOTE_SIGNATURE) is False, position
        with pytest.raises(VerificationError):
            verify_quote(bytes(data), collateral(case), ROOT_DER, moment, require_crls=case not in NO_CRLS)


@pytest.mark.parametrize("case", ["gotdx_cos113_ccel", "dcapqvl_sgx_quote", "gotdx_quote_v5_sample"])
def test_bit_flips_in_signature_data_are_rejected(case: str) -> None:
    raw = raw_quote(case)
    quote = parse_quote(raw)
    start = len(quote.signed_data) + 4  # after signature_data_len
    end = len(raw) - quote.trailing
    rng = random.Random(case)
    for position in rng.sample(range(start, end), 60):
        data = bytearray(raw)
        data[position] ^= 1 << rng.randrange(8)
        with pytest.raises((ParseError, VerificationError)):
            verify_quote(bytes(data), collateral(case), ROOT_DER, at(expected(case)["verify_at"]))


def _flip_document(path: Path) -> list[bytes]:
    """Copies of a PCS body with one digit changed inside the signed object (JSON stays valid)."""
    body = path.read_bytes()
    start = body.index(b"{", 1)
    end = body.rindex(b',"signature"')
    out = []
    for pos in range(start, end):
        if body[pos : pos + 1].isdigit():
            digit = (int(body[pos : pos + 1]) + 1) % 10
            out.append(body[:pos] + str(digit).encode() + body[pos + 1 :])
    return out


@pytest.mark.parametrize("case", ["gotdx_cos113_ccel", "dcapqvl_sgx_quote"])
def test_changed_collateral_documents_are_rejected(case: str) -> None:
    base = collateral(case)
    rng = random.Random(case)
    moment = at(expected(case)["verify_at"])
    tcb_bodies = _flip_document(QUOTES / case / "collateral/tcb_info.json")
    for body in rng.sample(tcb_bodies, 15):
        try:
            changed = replace(base, tcb_info=parse_tcb_info(body))
        except ParseError:
            continue
        evaluation = evaluate_quote(raw_quote(case), changed, ROOT_DER, moment)
        assert evaluation.passed(checks.TCB_INFO_SIGNATURE) is False
    qe_bodies = _flip_document(QUOTES / case / "collateral/qe_identity.json")
    for body in rng.sample(qe_bodies, 10):
        try:
            changed = replace(base, qe_identity=parse_qe_identity(body))
        except ParseError:
            continue
        evaluation = evaluate_quote(raw_quote(case), changed, ROOT_DER, moment)
        assert evaluation.passed(checks.QE_IDENTITY_SIGNATURE) is False


def test_negative_expected_check_names_are_all_known() -> None:
    known = set(checks.ALL)
    for name in NEGATIVE["check_names"]:
        if name != "parse":
            assert _name(name) in known, name
    for case in CASES:
        exp = expected(case)["expected"]
        for name in {**exp["steps"], **exp["collateral_checks"]}:
            assert _name(name) in known, name


def test_manifest_of_negative_vectors_is_consistent() -> None:
    ids = {v["id"] for v in NEGATIVE["vectors"]}
    assert len(ids) == len(NEGATIVE["vectors"]) == 15
    assert json.loads((NEG_DIR / "expected.json").read_text()) == NEGATIVE


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=-\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["gotdx_cos113_ccel", "dcapqvl_sgx_quote", "gotdx_quote_v5_sample"]),
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), st.sampled_from(_B64)),
        min_size=1,
        max_size=3,
    ),
)
def test_mangled_certificate_chains_only_raise_parse_error_or_fail_checks(
    case: str, edits: list[tuple[float, int]]
) -> None:
    # Certificates inside the quote are decoded lazily by cryptography; whatever the damage, the
    # result is a ParseError or a failed check, never another exception.
    raw = bytearray(raw_quote(case))
    quote = parse_quote(bytes(raw))
    end = len(raw) - quote.trailing
    start = end - len(quote.qe.certification.data)
    for where, value in edits:
        raw[start + int(where * (end - start))] = value
    try:
        evaluation = evaluate_quote(bytes(raw), collateral(case), ROOT_DER, at(expected(case)["verify_at"]))
    except ParseError:
        return
    assert tuple(evaluation.outcomes) == checks.ORDER
