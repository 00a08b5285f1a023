"""Collateral parsing (signed bytes located exactly, typed values, strictness) and the PCS/PCCS
URL and header helpers."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote as percent_encode

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError
from shared.platforms.tdx import pcs
from shared.platforms.tdx.certs import load_certificates, load_crl, order_chain, to_pem
from shared.platforms.tdx.collateral import (
    load_collateral,
    parse_qe_identity,
    parse_tcb_info,
    split_signed_json,
)
from tests.unit.test_tdx_vectors import CASES, NEG_DIR, QUOTES, collateral, expected

COS = QUOTES / "gotdx_cos113_ccel" / "collateral"


@pytest.mark.parametrize("case", CASES)
def test_collateral_values(case: str) -> None:
    exp = expected(case)["collateral"]
    coll = collateral(case)
    info = coll.tcb_info
    assert info.id == exp["tcb_info"].get("id")
    assert info.version == exp["tcb_info"]["version"]
    assert info.fmspc.hex() == exp["tcb_info"]["fmspc"].lower()
    assert info.pce_id.hex() == exp["tcb_info"]["pceId"]
    assert info.issue_date.isoformat().replace("+00:00", "Z") == exp["tcb_info"]["issueDate"]
    assert info.tcb_evaluation_data_number == exp["tcb_info"]["tcbEvaluationDataNumber"]
    assert all(len(level.sgx_components) == 16 for level in info.tcb_levels)
    assert coll.qe_identity.id == exp["qe_identity"]["id"]
    assert coll.tcb_info_issuer_chain[0].subject.rfc4514_string().endswith("CN=Intel SGX TCB Signing")


def test_signed_bytes_are_the_exact_inner_object() -> None:
    body = (COS / "tcb_info.json").read_bytes()
    signed, signature = split_signed_json(body, "tcbInfo", "tcb_info")
    assert body == b'{"tcbInfo":' + signed + b',"signature":"' + signature.hex().encode() + b'"}'


def test_signed_bytes_survive_whitespace_and_member_order() -> None:
    body = (COS / "tcb_info.json").read_bytes()
    signed, signature = split_signed_json(body, "tcbInfo", "tcb_info")
    reordered = b'\n{ "signature" : "' + signature.hex().encode() + b'" ,\n "tcbInfo" :' + signed + b"\n}\n"
    assert split_signed_json(reordered, "tcbInfo", "tcb_info") == (signed, signature)
    assert parse_tcb_info(reordered).signed_body == signed


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "parse.tcb_info"),
        (b'{"tcbInfo":{},"tcbInfo":{},"signature":"00"}', "parse.tcb_info"),
        (b'{"tcbInfo":{}}', "parse.tcb_info"),
        (b'{"tcbInfo":{},"signature":"zz"}', "parse.tcb_info.signature"),
        (b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'"} trailing', "parse.tcb_info"),
        (b'{"tcbInfo":{},"signature":"' + b"00" * 64 + b'"}', "parse.tcb_info.version"),
        (b"\xff\xfe", "parse.tcb_info"),
    ],
)
def test_malformed_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_tcb_info(body)
    assert info.value.reason == reason


def _resigned(inner: dict[str, object]) -> bytes:
    return json.dumps({"tcbInfo": inner, "signature": "00" * 64}).encode()


def test_typed_values_are_strict() -> None:
    inner = json.loads(split_signed_json((COS / "tcb_info.json").read_bytes(), "tcbInfo", "x")[0])
    for key, value, reason in [
        ("fmspc", "00806F05", "parse.tcb_info.fmspc"),
        ("version", True, "parse.tcb_info.version"),
        ("issueDate", "yesterday", "parse.tcb_info.issueDate"),
        ("issueDate", "2025-10-19T17:48:50", "parse.tcb_info.issueDate"),  # no time zone
        ("id", "TDX2", "parse.tcb_info.id"),
    ]:
        changed = {**inner, key: value}
        with pytest.raises(ParseError) as info:
            parse_tcb_info(_resigned(changed))
        assert info.value.reason == reason, key
    bad_status = json.loads(json.dumps(inner))
    bad_status["tcbLevels"][0]["tcbStatus"] = "Fine"
    with pytest.raises(ParseError, match="unknown status"):
        parse_tcb_info(_resigned(bad_status))
    short = json.loads(json.dumps(inner))
    short["tcbLevels"][0]["tcb"]["sgxtcbcomponents"].pop()
    with pytest.raises(ParseError, match="16 components"):
        parse_tcb_info(_resigned(short))


def test_sgx_v2_components_and_qe_identity() -> None:
    info = collateral("trustee_occlum_sgx").tcb_info
    assert info.id is None and info.version == 2 and not info.is_tdx
    assert info.tcb_levels[0].sgx_components[:6] == (14, 14, 3, 3, 255, 255)
    assert info.tcb_levels[0].tdx_components is None
    qe = parse_qe_identity((QUOTES / "trustee_occlum_sgx/collateral/qe_identity.json").read_bytes())
    assert qe.id == "QE" and qe.isv_prod_id == 1 and qe.mrsigner.hex().startswith("8c4f5775")
    assert qe.tcb_levels[1].advisory_ids == ("INTEL-SA-00615",)


def test_module_identities_are_parsed() -> None:
    info = collateral("gotdx_cos113_ccel").tcb_info
    assert [m.id for m in info.tdx_module_identities] == ["TDX_03", "TDX_01"]
    assert [(lv.isv_svn, lv.status) for lv in info.tdx_module_identities[1].tcb_levels] == [
        (4, "UpToDate"),
        (2, "OutOfDate"),
    ]


def test_root_first_issuer_chains_are_ordered() -> None:
    # Intel's TDX sample ships its chains root first.
    raw = (NEG_DIR / "intel_qvl_sample_tdx/tcbSignChain.pem").read_bytes()
    certs = load_certificates(raw)
    assert certs[0].subject == certs[0].issuer  # root first as served
    ordered = order_chain(certs)
    assert ordered is not None and ordered[0].subject.rfc4514_string().endswith("TCB Signing")
    assert order_chain([certs[1], certs[1]]) is None


def test_crl_encodings() -> None:
    der = (COS / "pck_crl.der").read_bytes()
    crl = load_crl(der)
    assert load_crl(der.hex()).public_bytes(encoding=Encoding.DER) == der
    assert load_crl(crl.public_bytes(encoding=Encoding.PEM)).public_bytes(encoding=Encoding.DER) == der
    with pytest.raises(ParseError):
        load_crl(der[:-5])


def test_qe_identity_chain_defaults_to_the_tcb_info_chain() -> None:
    coll = load_collateral(
        tcb_info=(COS / "tcb_info.json").read_bytes(),
        tcb_info_issuer_chain=(COS / "tcb_info_issuer_chain.pem").read_bytes(),
        qe_identity=(COS / "qe_identity.json").read_bytes(),
    )
    assert coll.qe_identity_issuer_chain == coll.tcb_info_issuer_chain
    assert coll.pck_crl is None and coll.root_ca_crl is None


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_random_bodies_only_raise_parse_error(data: bytes) -> None:
    for parse in (parse_tcb_info, parse_qe_identity):
        try:
            parse(data)
        except ParseError:
            pass


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=4000), st.integers(min_value=0, max_value=255))
def test_mutated_tcb_info_only_raises_parse_error(position: int, value: int) -> None:
    body = bytearray((COS / "tcb_info.json").read_bytes())
    body[position % len(body)] = value
    try:
        parse_tcb_info(bytes(body))
    except ParseError:
        pass


# -- PCS / PCCS --------------------------------------------------------------------------------


def test_pcs_urls() -> None:
    fmspc = bytes.fromhex("00806F050000")
    base = pcs.DEFAULT_BASE_URL
    assert pcs.tcb_info_url(fmspc, "tdx") == f"{base}/tdx/certification/v4/tcb?fmspc=00806f050000"
    assert (
        pcs.tcb_info_url("00A067110000", pcs.Tee.SGX) == f"{base}/sgx/certification/v4/tcb?fmspc=00a067110000"
    )
    assert pcs.qe_identity_url("tdx") == f"{base}/tdx/certification/v4/qe/identity"
    assert (
        pcs.qe_identity_url("sgx", update="early") == f"{base}/sgx/certification/v4/qe/identity?update=early"
    )
    assert (
        pcs.tcb_info_url(fmspc, "tdx", base_url="https://pccs.example:8081/", tcb_evaluation_data_number=17)
        == "https://pccs.example:8081/tdx/certification/v4/tcb?fmspc=00806f050000&tcbEvaluationDataNumber=17"
    )
    assert pcs.pck_crl_url("platform") == f"{base}/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
    assert pcs.pck_crl_url(pcs.PckCa.PROCESSOR).endswith("ca=processor&encoding=der")
    assert pcs.root_ca_crl_url() == "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
    assert (
        pcs.root_ca_crl_url(base_url="https://pccs.example")
        == "https://pccs.example/sgx/certification/v4/rootcacrl"
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: pcs.tcb_info_url(b"\x00" * 5, "tdx"),
        lambda: pcs.tcb_info_url("zz" * 6, "tdx"),
        lambda: pcs.tcb_info_url(b"\x00" * 6, "sev"),
        lambda: pcs.qe_identity_url("tdx", update="late"),
        lambda: pcs.qe_identity_url("tdx", update="early", tcb_evaluation_data_number=3),
        lambda: pcs.pck_crl_url("vendor"),
    ],
)
def test_pcs_url_arguments_are_checked(call: Callable[[], str]) -> None:
    with pytest.raises(ParseError):
        call()


def test_pck_ca_of_issuer() -> None:
    assert pcs.pck_ca_of_issuer("Intel SGX PCK Platform CA") is pcs.PckCa.PLATFORM
    assert pcs.pck_ca_of_issuer("Intel SGX PCK Processor CA") is pcs.PckCa.PROCESSOR
    with pytest.raises(ParseError):
        pcs.pck_ca_of_issuer("Intel SGX Root CA")


def test_issuer_chain_headers() -> None:
    pem = (COS / "tcb_info_issuer_chain.pem").read_bytes()
    encoded = percent_encode(pem.decode(), safe="")
    headers = {"tcb-info-issuer-chain": encoded, "Content-Type": "application/json"}
    chain = pcs.tcb_info_issuer_chain(headers)
    assert chain == to_pem(load_certificates(pem))
    assert pcs.tcb_info_issuer_chain({"SGX-TCB-Info-Issuer-Chain": encoded}) == chain
    assert pcs.qe_identity_issuer_chain({"SGX-Enclave-Identity-Issuer-Chain": encoded}) == chain
    assert pcs.pck_crl_issuer_chain({"SGX-PCK-CRL-Issuer-Chain": encoded}) == chain
    with pytest.raises(ParseError):
        pcs.pck_crl_issuer_chain(headers)
    with pytest.raises(ParseError):
        pcs.issuer_chain_pem("%2D%2D%2D%2D%2DBEGIN%20nonsense")
    coll = load_collateral(
        tcb_info=(COS / "tcb_info.json").read_bytes(),
        tcb_info_issuer_chain=chain,
        qe_identity=(COS / "qe_identity.json").read_bytes(),
    )
    assert coll.tcb_info_issuer_chain == load_certificates(pem)
