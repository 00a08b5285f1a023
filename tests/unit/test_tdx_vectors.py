"""The real TDX/SGX vectors (tests/data/tdx, copied from shared/vectors/tdx): loaders shared by the
other test_tdx_* modules, and the check that every quote decodes to its expected.json values."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from shared.platforms.tdx import pinned_root_der
from shared.platforms.tdx.abi import (
    INTEL_QE_VENDOR_ID,
    BodyType,
    CertificationDataType,
    EnclaveReport,
    TdReport,
    parse_quote,
)
from shared.platforms.tdx.certs import load_certificates
from shared.platforms.tdx.collateral import Collateral, load_collateral
from shared.platforms.tdx.pck import pck_extension

DATA = Path(__file__).parents[1] / "data/tdx"
QUOTES = DATA / "quotes"
NEG_DIR = DATA / "negative"
CASES = sorted(p.name for p in QUOTES.iterdir())
NEGATIVE: dict[str, Any] = json.loads((NEG_DIR / "expected.json").read_text())
ROOT_DER = pinned_root_der()
# Collateral published without CRLs: these cases can only be checked with require_crls=False.
NO_CRLS = frozenset(c for c in CASES if not (QUOTES / c / "collateral" / "pck_crl.der").exists())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@cache
def expected(case: str) -> dict[str, Any]:
    return json.loads((QUOTES / case / "expected.json").read_text())


@cache
def raw_quote(case: str) -> bytes:
    return (QUOTES / case / "quote.bin").read_bytes()


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@cache
def collateral_dir(directory: Path) -> Collateral:
    return load_collateral(
        tcb_info=(directory / "tcb_info.json").read_bytes(),
        tcb_info_issuer_chain=(directory / "tcb_info_issuer_chain.pem").read_bytes(),
        qe_identity=(directory / "qe_identity.json").read_bytes(),
        qe_identity_issuer_chain=_read(directory / "qe_identity_issuer_chain.pem"),
        pck_crl=_read(directory / "pck_crl.der"),
        pck_crl_issuer_chain=_read(directory / "pck_crl_issuer_chain.pem"),
        root_ca_crl=_read(directory / "root_ca_crl.der"),
    )


def collateral(case: str) -> Collateral:
    return collateral_dir(QUOTES / case / "collateral")


def negative(vector_id: str) -> dict[str, Any]:
    return next(v for v in NEGATIVE["vectors"] if v["id"] == vector_id)


# -- decoding ----------------------------------------------------------------------------------


def test_pinned_root_is_the_vectors_root() -> None:
    assert ROOT_DER == (DATA / "roots/intel_sgx_root_ca.der").read_bytes()
    assert (
        hashlib.sha256(ROOT_DER).hexdigest()
        == json.loads((DATA / "roots/expected.json").read_text())["der_sha256"]
    )


def test_every_case_is_here() -> None:
    assert len(CASES) == 13
    assert sum(expected(c)["tee"] == "sgx" for c in CASES) == 2


_TD_FIELDS = (
    "tee_tcb_svn",
    "mr_seam",
    "mr_signer_seam",
    "seam_attributes",
    "td_attributes",
    "xfam",
    "mr_td",
    "mr_config_id",
    "mr_owner",
    "mr_owner_config",
    "report_data",
)


@pytest.mark.parametrize("case", CASES)
def test_quote_decodes_to_expected_values(case: str) -> None:
    exp = expected(case)
    raw = raw_quote(case)
    assert hashlib.sha256(raw).hexdigest() == exp["quote_sha256"]
    quote = parse_quote(raw)
    assert quote.header.version == exp["quote_version"]
    assert quote.header.tee_type == int(exp["tee_type"], 16)
    assert quote.header.att_key_type == exp["att_key_type"]
    assert quote.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert quote.header.user_data.hex() == exp["header_user_data"]
    assert quote.trailing == exp["trailing_bytes_after_signature_data"]
    assert quote.qe.certification.cert_type == CertificationDataType.PCK_CHAIN
    qe = exp["qe"]
    assert quote.qe.report.isv_prod_id == qe["isv_prod_id"]
    assert quote.qe.report.isv_svn == qe["isv_svn"]
    assert quote.qe.report.mr_signer.hex() == qe["mr_signer"]
    assert quote.qe.report.mr_enclave.hex() == qe["mr_enclave"]
    assert quote.qe.auth_data.hex() == qe["auth_data"]
    body = quote.body
    if exp["tee"] == "tdx":
        assert isinstance(body, TdReport)
        assert quote.outer_cert_type == CertificationDataType.QE_REPORT
        assert (
            quote.body_type
            == {"td_report10": BodyType.TD_REPORT_10, "td_report15": BodyType.TD_REPORT_15}[exp["body_type"]]
        )
        for name in _TD_FIELDS:
            assert getattr(body, name).hex() == exp[name], name
        assert [r.hex() for r in body.rtmrs] == [exp[f"rtmr{i}"] for i in range(4)]
        assert body.debug == exp["td_attributes_decoded"]["debug"]
        assert body.sept_ve_disable == exp["td_attributes_decoded"]["sept_ve_disable"]
        if "tee_tcb_svn_2" in exp:
            assert body.tee_tcb_svn_2 is not None and body.tee_tcb_svn_2.hex() == exp["tee_tcb_svn_2"]
            assert body.mr_service_td is not None and body.mr_service_td.hex() == exp["mr_servicetd"]
        else:
            assert body.tee_tcb_svn_2 is None and body.mr_service_td is None
    else:
        assert isinstance(body, EnclaveReport)
        assert quote.outer_cert_type is None and quote.body_type is BodyType.SGX_ENCLAVE
        for name in ("mr_enclave", "mr_signer", "report_data", "cpu_svn", "attributes"):
            assert getattr(body, name).hex() == exp[name], name
        assert body.isv_prod_id == exp["isv_prod_id"]
        assert body.isv_svn == exp["isv_svn"]
        assert body.misc_select.to_bytes(4, "little").hex() == exp["misc_select"]
        assert body.debug == exp["enclave_debug"]


@pytest.mark.parametrize("case", CASES)
def test_pck_certificate_values(case: str) -> None:
    exp = expected(case)
    chain = load_certificates(parse_quote(raw_quote(case)).qe.certification.data)
    assert len(chain) == 3
    ext = pck_extension(chain[0])
    assert ext.fmspc.hex() == exp["fmspc"]
    assert ext.pce_id.hex() == exp["pce_id"]
    assert len(ext.tcb_components) == 16
    ca = chain[0].issuer.rfc4514_string()
    assert ("Platform CA" in ca) == (exp["pck_ca"] == "platform")
    validity = [chain[0].not_valid_before_utc.isoformat(), chain[0].not_valid_after_utc.isoformat()]
    assert validity == exp["pck_leaf_validity"]
