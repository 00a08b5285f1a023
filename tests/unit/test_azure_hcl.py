"""Azure confidential-VM (paravisor/HCL) evidence: the HCL report, its var data and the bindings,
against the real Trustee vectors in tests/data/azure (see the README there)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import ParseError, VerificationError
from shared.platforms.azure.evidence import (
    TEE_SNP,
    TEE_TDX,
    AzureEvidence,
    ak_public_key,
    check_evidence_bindings,
    check_report_type,
    check_td_report_binding,
    check_user_data,
    hardware_report_data,
    hcl_snp_report,
    parse_azure_evidence,
    parse_td_quote,
)
from shared.platforms.azure.hcl import (
    REPORT_TYPE_SNP,
    REPORT_TYPE_TDX,
    VAR_DATA_OFFSET,
    HclReport,
    check_binding,
    parse_hcl_report,
    parse_var_data,
)
from shared.platforms.snp.fields import Product

DATA = Path(__file__).parents[1] / "data/azure"
SNP_DIR = DATA / TEE_SNP
TDX_DIR = DATA / TEE_TDX

EVIDENCE = [
    (TEE_SNP, "evidence-v0.json", 0),
    (TEE_SNP, "evidence-v1.json", 1),
    (TEE_SNP, "evidence-v2.json", 2),
    (TEE_SNP, "evidence-genoa.json", 0),
    (TEE_TDX, "evidence-v0.json", 0),
    (TEE_TDX, "evidence-v1.json", 1),
]
EVIDENCE_IDS = [f"{tee}/{name}" for tee, name, _ in EVIDENCE]
V2_NONCE = bytes.fromhex(
    "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
)


@cache
def values(tee: str) -> dict[str, Any]:
    return json.loads((DATA / tee / "expected.json").read_text())["values"]


@cache
def evidence_bytes(tee: str, name: str) -> bytes:
    return (DATA / tee / name).read_bytes()


@cache
def evidence(tee: str, name: str) -> AzureEvidence:
    return parse_azure_evidence(tee, evidence_bytes(tee, name))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def extra_data(attest: bytes) -> bytes:
    """TPMS_ATTEST.extraData: after magic, type and the qualifiedSigner TPM2B."""
    assert attest[:4] == b"\xffTCG"
    (name_size,) = struct.unpack_from(">H", attest, 6)
    offset = 8 + name_size
    (size,) = struct.unpack_from(">H", attest, offset)
    return attest[offset + 2 : offset + 2 + size]


def v1_with_hcl(tee: str, name: str, hcl: bytes) -> bytes:
    doc = json.loads(evidence_bytes(tee, name))
    doc["hcl_report"] = b64url(hcl)
    return json.dumps(doc).encode()


def flip_in_var_data(raw: bytes, needle: bytes) -> bytes:
    """Change one character inside a JSON string of the var data: still valid JSON, other hash."""
    pos = raw.index(needle, VAR_DATA_OFFSET)
    out = bytearray(raw)
    out[pos] = ord("1") if out[pos] != ord("1") else ord("2")
    return bytes(out)


def reason_of(exc: pytest.ExceptionInfo[Any]) -> str:
    return exc.value.reason


# --- the vectors decode to the manifest's values ----------------------------------------------


@pytest.mark.parametrize(("tee", "name", "version"), EVIDENCE, ids=EVIDENCE_IDS)
def test_evidence_vectors(tee: str, name: str, version: int) -> None:
    ev = evidence(tee, name)
    want = values(tee)[name]
    assert ev.tee == tee and ev.version == version
    assert ev.hcl.report_type == want["hcl_report_type"]
    assert ev.hcl.report_type == (REPORT_TYPE_SNP if tee == TEE_SNP else REPORT_TYPE_TDX)
    digest = hashlib.sha256(ev.hcl.variable_data).hexdigest()
    assert digest == want["var_data_sha256"]
    assert hardware_report_data(ev)[:32].hex() == digest
    assert len(ev.pcrs) == 24 and ev.pcrs[0].hex() == want["pcr00"]
    assert extra_data(ev.quote_message).hex() == want["tpm_quote_extra_data_hex"]
    assert ev.var_data.user_data == bytes.fromhex(want["var_data_user_data"])
    assert ev.var_data.ak_jwk is not None and ev.var_data.ak_jwk["n"]
    assert ev.var_data.ek_jwk is not None
    assert ev.var_data.vm_configuration["tpm-enabled"] is True
    assert ak_public_key(ev.var_data).key_size == 2048
    if tee == TEE_SNP:
        assert ev.vcek_der is not None and ev.td_quote is None
    else:
        assert ev.td_quote == (TDX_DIR / "td-quote.bin").read_bytes() and ev.vcek_der is None
    nonce = extra_data(ev.quote_message)
    check_evidence_bindings(ev, nonce)


@pytest.mark.parametrize(("tee", "name", "version"), EVIDENCE, ids=EVIDENCE_IDS)
def test_quote_signatures_are_bare_rsa_under_the_ak(tee: str, name: str, version: int) -> None:
    """Every shape carries the bare 256-byte RSASSA-PKCS1-v1_5/SHA-256 signature, and the AK
    from the var data verifies it over TPMS_ATTEST."""
    ev = evidence(tee, name)
    assert ev.quote_signature_is_raw and len(ev.quote_signature) == 256
    assert ev.rsa_signature == ev.quote_signature
    assert ev.tpmt_signature[:6] == struct.pack(">HHH", 0x0014, 0x000B, 256)
    assert ev.tpmt_signature[6:] == ev.quote_signature
    ak_public_key(ev.var_data).verify(
        ev.quote_signature, ev.quote_message, padding.PKCS1v15(), hashes.SHA256()
    )


def test_v0_and_v1_share_the_var_data() -> None:
    v0, v1 = evidence(TEE_SNP, "evidence-v0.json"), evidence(TEE_SNP, "evidence-v1.json")
    assert v0.hcl.variable_data == v1.hcl.variable_data
    assert v0.vcek_der == v1.vcek_der
    tdx0, tdx1 = evidence(TEE_TDX, "evidence-v0.json"), evidence(TEE_TDX, "evidence-v1.json")
    assert tdx0.hcl.raw == tdx1.hcl.raw and tdx0.td_quote == tdx1.td_quote


def test_hcl_layout_fields() -> None:
    hcl = evidence(TEE_SNP, "evidence-v1.json").hcl
    assert (hcl.signature, hcl.version, hcl.request_type, hcl.status) == (b"HCLA", 1, 2, 0)
    assert (hcl.igvm_version, hcl.hash_type) == (1, 1)
    assert hcl.variable_data_size == 1110 and hcl.igvm_data_size == 1130
    assert hcl.report_size == VAR_DATA_OFFSET + 1110 and len(hcl.raw) == 2600
    assert len(hcl.hardware_report) == 1184
    assert hcl.variable_data.endswith(b'"}')  # exact: the NUL padding is outside
    tdx = evidence(TEE_TDX, "evidence-v1.json").hcl
    assert tdx.version == 2 and len(tdx.hardware_report) == 1024 and tdx.variable_data_size == 1201


def test_snp_hcl_report_bin() -> None:
    hcl = parse_hcl_report((SNP_DIR / "hcl-report.bin").read_bytes())
    want = values(TEE_SNP)["hcl-report.bin"]
    assert hcl.report_type == want["hcl_report_type"] == REPORT_TYPE_SNP
    assert hcl.variable_data_sha256.hex() == want["var_data_sha256"]
    # A v2 SNP report has no CPUID: the product (Milan, per the manifest) is a caller's hint.
    with pytest.raises(ParseError) as exc:
        hcl_snp_report(hcl)
    assert reason_of(exc) == "parse.report.product"
    report = hcl_snp_report(hcl, Product.MILAN)
    assert report.version == 2
    assert report.report_data[:32].hex() == want["var_data_sha256"]
    check_binding(hcl, report.report_data)
    assert parse_var_data(hcl.variable_data).ak_jwk is not None


def test_tdx_hcl_report_bin() -> None:
    hcl = parse_hcl_report((TDX_DIR / "hcl-report.bin").read_bytes())
    want = values(TEE_TDX)["hcl-report.bin"]
    assert hcl.report_type == want["hcl_report_type"] == REPORT_TYPE_TDX
    assert hcl.variable_data_sha256.hex() == want["var_data_sha256"]
    quote = parse_td_quote((TDX_DIR / "td-quote.bin").read_bytes())
    assert quote.td_report.report_data[:32].hex() == want["var_data_sha256"]
    check_td_report_binding(hcl, quote)
    check_binding(hcl, quote.td_report.report_data)
    # The TDREPORT in the HCL carries the same report_data (REPORTMACSTRUCT offset 128).
    assert hcl.hardware_report[128:192] == quote.td_report.report_data
    assert hcl.raw == evidence(TEE_TDX, "evidence-v1.json").hcl.raw


def test_var_data_trailing_nuls_and_genoa_extras() -> None:
    hcl = evidence(TEE_SNP, "evidence-genoa.json").hcl
    padded = parse_var_data(hcl.variable_data + b"\x00" * 100)
    assert padded.raw == parse_var_data(hcl.variable_data).raw
    assert padded.vm_configuration["tpm-persisted"] is True
    assert "root-cert-thumbprint" in padded.vm_configuration


# --- tampering and mismatches -----------------------------------------------------------------


@pytest.mark.parametrize("tee", [TEE_SNP, TEE_TDX])
def test_flipped_var_data_byte_breaks_the_binding(tee: str) -> None:
    hcl_raw = evidence(tee, "evidence-v1.json").hcl.raw
    tampered = flip_in_var_data(hcl_raw, b"vmUniqueId")
    hcl = parse_hcl_report(tampered)
    with pytest.raises(VerificationError) as exc:
        check_binding(hcl, hardware_report_data(evidence(tee, "evidence-v1.json")))
    assert exc.value.check == "azure.var_data_binding"
    ev = parse_azure_evidence(tee, v1_with_hcl(tee, "evidence-v1.json", tampered))
    with pytest.raises(VerificationError) as exc:
        check_evidence_bindings(ev, None)
    assert exc.value.check == "azure.var_data_binding"


def test_flipped_user_data_digit_breaks_the_binding() -> None:
    hcl_raw = evidence(TEE_SNP, "evidence-v2.json").hcl.raw
    pos = hcl_raw.index(b'"user-data":"', VAR_DATA_OFFSET) + len(b'"user-data":"') + 100
    tampered = bytearray(hcl_raw)
    tampered[pos] = ord("1")
    ev = parse_azure_evidence(TEE_SNP, v1_with_hcl(TEE_SNP, "evidence-v2.json", bytes(tampered)))
    with pytest.raises(VerificationError) as exc:
        check_evidence_bindings(ev, V2_NONCE)
    assert exc.value.check == "azure.var_data_binding"


def test_short_report_data_fails_the_binding() -> None:
    with pytest.raises(VerificationError) as exc:
        check_binding(evidence(TEE_SNP, "evidence-v1.json").hcl, b"\x00" * 31)
    assert exc.value.check == "azure.var_data_binding"


@pytest.mark.parametrize(
    ("length", "field"),
    [
        (0, "hcl.header"),
        (31, "hcl.header"),
        (0x20, "hcl.hardware_report"),
        (0x4BF, "hcl.hardware_report"),
        (0x4C0, "hcl.igvm_request_data"),
        (0x4D3, "hcl.igvm_request_data"),
        (0x4D4, "hcl.variable_data"),
        (0x900, "hcl.variable_data"),
    ],
)
def test_cut_report_names_the_field(length: int, field: str) -> None:
    raw = evidence(TEE_SNP, "evidence-v1.json").hcl.raw
    with pytest.raises(ParseError) as exc:
        parse_hcl_report(raw[:length])
    assert exc.value.field == field
    assert reason_of(exc) == f"parse.azure.{field}"


def test_report_cut_right_after_the_var_data_still_parses() -> None:
    hcl = evidence(TEE_SNP, "evidence-v1.json").hcl
    assert parse_hcl_report(hcl.raw[: hcl.report_size]).variable_data == hcl.variable_data


def _patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "field"),
    [
        (0x00, "<I", 0x41434C49, "hcl.signature"),
        (0x04, "<I", 7, "hcl.version"),
        (0x08, "<I", 0x92B, "hcl.report_size"),
        (0x10, "<I", 1, "hcl.status"),
        (0x14, "<I", 1, "hcl.reserved"),
        (0x4C0, "<I", 0x46B, "hcl.igvm.data_size"),
        (0x4C4, "<I", 2, "hcl.igvm.version"),
        (0x4CC, "<I", 2, "hcl.igvm.hash_type"),
        (0x4D0, "<I", 0x457, "hcl.igvm.data_size"),
        (0x4D0, "<I", 0xFFFFFFEB, "hcl.igvm.data_size"),
        (0xA00, "<B", 1, "hcl.padding"),
    ],
)
def test_inconsistent_header_names_the_field(offset: int, fmt: str, value: int, field: str) -> None:
    raw = evidence(TEE_SNP, "evidence-v1.json").hcl.raw
    with pytest.raises(ParseError) as exc:
        parse_hcl_report(_patch(raw, offset, fmt, value))
    assert exc.value.field == field


def test_tdreport_area_is_checked() -> None:
    raw = evidence(TEE_TDX, "evidence-v1.json").hcl.raw
    with pytest.raises(ParseError) as exc:
        parse_hcl_report(_patch(raw, 0x20 + 1024, "<B", 1))
    assert exc.value.field == "hcl.hardware_report.padding"
    with pytest.raises(ParseError) as exc:
        parse_hcl_report(_patch(raw, 0x20, "<B", 0))
    assert exc.value.field == "hcl.hardware_report.type"


def test_tdreport_must_match_the_td_quote() -> None:
    ev = evidence(TEE_TDX, "evidence-v1.json")
    rtmr3 = 0x20 + 864
    tampered = parse_hcl_report(_patch(ev.hcl.raw, rtmr3, "<B", ev.hcl.raw[rtmr3] ^ 1))
    with pytest.raises(VerificationError) as exc:
        check_td_report_binding(tampered, parse_td_quote(ev.td_quote or b""))
    assert exc.value.check == "azure.td_report_binding" and "rtmr3" in exc.value.detail
    ev2 = parse_azure_evidence(TEE_TDX, v1_with_hcl(TEE_TDX, "evidence-v1.json", tampered.raw))
    with pytest.raises(VerificationError) as exc:
        check_evidence_bindings(ev2, None)
    assert exc.value.check == "azure.td_report_binding"


def test_tdx_evidence_as_snp_is_a_report_type_mismatch() -> None:
    with pytest.raises(VerificationError) as exc:
        parse_azure_evidence(TEE_SNP, evidence_bytes(TEE_TDX, "evidence-v1.json"))
    assert exc.value.check == "azure.report_type"
    with pytest.raises(VerificationError) as exc:
        parse_azure_evidence(TEE_TDX, evidence_bytes(TEE_SNP, "evidence-v1.json"))
    assert exc.value.check == "azure.report_type"
    # SNP shape, but the HCL carries a TDREPORT.
    tdx_hcl = evidence(TEE_TDX, "evidence-v1.json").hcl.raw
    with pytest.raises(VerificationError) as exc:
        parse_azure_evidence(TEE_SNP, v1_with_hcl(TEE_SNP, "evidence-v1.json", tdx_hcl))
    assert exc.value.check == "azure.report_type"
    # v0 names its members per TEE, so the SNP reader does not find its `quote`.
    with pytest.raises(ParseError) as perr:
        parse_azure_evidence(TEE_SNP, evidence_bytes(TEE_TDX, "evidence-v0.json"))
    assert perr.value.field == "evidence.quote"


def test_unknown_report_type_parses_but_fails_the_check() -> None:
    raw = evidence(TEE_SNP, "evidence-v1.json").hcl.raw
    hcl = parse_hcl_report(_patch(raw, 0x4C8, "<I", 3))
    assert hcl.report_type == 3 and len(hcl.hardware_report) == 1184
    for tee in (TEE_SNP, TEE_TDX):
        with pytest.raises(VerificationError) as exc:
            check_report_type(tee, hcl)
        assert exc.value.check == "azure.report_type"
    with pytest.raises(VerificationError) as exc:
        parse_azure_evidence(TEE_SNP, v1_with_hcl(TEE_SNP, "evidence-v1.json", hcl.raw))
    assert exc.value.check == "azure.report_type"


def test_missing_ak() -> None:
    var = evidence(TEE_SNP, "evidence-v1.json").hcl.variable_data.replace(b'"HCLAkPub"', b'"HCLAkPuX"')
    parsed = parse_var_data(var)
    assert parsed.ak_jwk is None and "HCLAkPuX" in parsed.keys
    with pytest.raises(VerificationError) as exc:
        ak_public_key(parsed)
    assert exc.value.check == "azure.ak_missing"


def test_v2_user_data_rule() -> None:
    ev = evidence(TEE_SNP, "evidence-v2.json")
    check_evidence_bindings(ev, V2_NONCE)
    check_user_data(ev.var_data, V2_NONCE[:32])  # "begins with"
    for bad in (
        b"123abc",
        bytes.fromhex("123abc"),
        V2_NONCE[:-1] + b"\x00",
        None,
        b"",
        V2_NONCE + b"\x01" * 17,
    ):
        with pytest.raises(VerificationError) as exc:
            check_evidence_bindings(ev, bad)
        assert exc.value.check == "azure.user_data_mismatch"
    # v0/v1 carry zero user-data: the rule does not apply to them.
    check_evidence_bindings(evidence(TEE_SNP, "evidence-v1.json"), b"challenge")


def test_v2_without_user_data() -> None:
    var = evidence(TEE_SNP, "evidence-v2.json").hcl.variable_data
    doc = json.loads(var)
    del doc["user-data"]
    parsed = parse_var_data(json.dumps(doc).encode())
    assert parsed.user_data is None
    with pytest.raises(VerificationError) as exc:
        check_user_data(parsed, V2_NONCE)
    assert exc.value.check == "azure.user_data_mismatch"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (b'{"keys":[],"keys":[]}', "var_data"),
        (b'{"keys":[{"kid":"HCLAkPub"},{"kid":"HCLAkPub"}]}', "var_data.keys.1.kid"),
        (b'{"keys":{}}', "var_data.keys"),
        (b'{"keys":[1]}', "var_data.keys.0"),
        (b'{"keys":[{"kty":"RSA"}]}', "var_data.keys.0.kid"),
        (b'{"user-data":"0g"}', "var_data.user_data"),
        (b'{"user-data":"00 00"}', "var_data.user_data"),
        (b'{"user-data":"000"}', "var_data.user_data"),
        (b'{"vm-configuration":[]}', "var_data.vm_configuration"),
        (b'{"x":NaN}', "var_data"),
        (b"[]", "var_data"),
        (b"\xff{}", "var_data"),
        (b"\x00\x00", "var_data"),
    ],
)
def test_malformed_var_data(document: bytes, field: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_var_data(document)
    assert exc.value.field == field


@pytest.mark.parametrize(
    ("jwk", "field"),
    [
        ({"kid": "HCLAkPub", "kty": "EC"}, "var_data.keys.HCLAkPub.kty"),
        ({"kid": "HCLAkPub", "kty": "RSA", "e": "AQAB"}, "var_data.keys.HCLAkPub.n"),
        ({"kid": "HCLAkPub", "kty": "RSA", "n": "AQAB", "e": "AQAB=="}, "var_data.keys.HCLAkPub.e"),
        ({"kid": "HCLAkPub", "kty": "RSA", "n": "AQAB", "e": "AQAB"}, "var_data.keys.HCLAkPub"),
    ],
)
def test_malformed_ak(jwk: dict[str, Any], field: str) -> None:
    parsed = parse_var_data(json.dumps({"keys": [jwk]}).encode())
    with pytest.raises(ParseError) as exc:
        ak_public_key(parsed)
    assert exc.value.field == field


def _mutated(tee: str, name: str, edit: Any) -> bytes:
    doc = json.loads(evidence_bytes(tee, name))
    edit(doc)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("tee", "name", "edit", "field"),
    [
        (TEE_SNP, "evidence-v1.json", lambda d: d.update(version=3), "evidence.version"),
        (TEE_SNP, "evidence-v1.json", lambda d: d.update(version=True), "evidence.version"),
        (TEE_SNP, "evidence-v1.json", lambda d: d.update(extra=1), "evidence.extra"),
        (TEE_SNP, "evidence-v1.json", lambda d: d.pop("vcek"), "evidence.vcek"),
        (TEE_SNP, "evidence-v1.json", lambda d: d.update(vcek="AAAA"), "evidence.vcek"),
        (TEE_SNP, "evidence-v1.json", lambda d: d.update(hcl_report="SENMQQ+A"), "evidence.hcl_report"),
        (TEE_SNP, "evidence-v1.json", lambda d: d["tpm_quote"]["pcrs"].pop(), "evidence.tpm_quote.pcrs"),
        (
            TEE_SNP,
            "evidence-v1.json",
            lambda d: d["tpm_quote"]["pcrs"].__setitem__(3, "00"),
            "evidence.tpm_quote.pcrs.3",
        ),
        (
            TEE_SNP,
            "evidence-v1.json",
            lambda d: d["tpm_quote"].update(message="xyz"),
            "evidence.tpm_quote.message",
        ),
        (
            TEE_SNP,
            "evidence-v1.json",
            lambda d: d["tpm_quote"].update(signature=""),
            "evidence.tpm_quote.signature",
        ),
        (TEE_SNP, "evidence-v0.json", lambda d: d["report"].__setitem__(0, True), "evidence.report"),
        (TEE_SNP, "evidence-v0.json", lambda d: d["report"].__setitem__(0, 256), "evidence.report"),
        (
            TEE_SNP,
            "evidence-v0.json",
            lambda d: d.update(vcek="-----BEGIN CERTIFICATE-----"),
            "evidence.vcek",
        ),
        (TEE_SNP, "evidence-v0.json", lambda d: d["quote"].update(pcrs=5), "evidence.quote.pcrs"),
        (TEE_TDX, "evidence-v0.json", lambda d: d.update(td_quote=[]), "evidence.td_quote"),
        (TEE_TDX, "evidence-v1.json", lambda d: d.update(td_quote=5), "evidence.td_quote"),
        (TEE_TDX, "evidence-v1.json", lambda d: d.update(vcek="AAAA"), "evidence.vcek"),
    ],
)
def test_malformed_evidence_names_the_field(tee: str, name: str, edit: Any, field: str) -> None:
    with pytest.raises(ParseError) as exc:
        parse_azure_evidence(tee, _mutated(tee, name, edit))
    assert exc.value.field == field


def test_unknown_tee_and_non_bytes() -> None:
    with pytest.raises(ParseError) as exc:
        parse_azure_evidence("snp", evidence_bytes(TEE_SNP, "evidence-v1.json"))
    assert exc.value.field == "evidence.tee"
    with pytest.raises(ParseError) as exc:
        parse_azure_evidence(TEE_SNP, "{}")  # type: ignore[arg-type]
    assert exc.value.field == "evidence.type"
    with pytest.raises(ParseError) as exc:
        parse_hcl_report("HCLA")  # type: ignore[arg-type]
    assert exc.value.field == "hcl.type"


def test_tpmt_signature_input_is_recognised() -> None:
    ev = evidence(TEE_SNP, "evidence-v1.json")
    doc = json.loads(evidence_bytes(TEE_SNP, "evidence-v1.json"))
    doc["tpm_quote"]["signature"] = ev.tpmt_signature.hex()
    wrapped = parse_azure_evidence(TEE_SNP, json.dumps(doc).encode())
    assert not wrapped.quote_signature_is_raw
    assert wrapped.rsa_signature == ev.quote_signature and wrapped.tpmt_signature == ev.tpmt_signature


# --- random input: only ParseError ------------------------------------------------------------

HCL_SEED = evidence(TEE_TDX, "evidence-v1.json").hcl.raw


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=3000))
def test_hcl_random_bytes(data: bytes) -> None:
    try:
        parse_hcl_report(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.integers(0, len(HCL_SEED) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, 2700),
)
def test_hcl_mutated_vector(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(HCL_SEED)
    for pos, value in edits:
        data[pos] = value
    try:
        hcl = parse_hcl_report(bytes(data[:cut]))
    except ParseError:
        return
    assert isinstance(hcl, HclReport)
    try:
        parse_var_data(hcl.variable_data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.text(max_size=500).map(str.encode)))
def test_var_data_random_bytes(data: bytes) -> None:
    try:
        parse_var_data(data)
    except ParseError:
        pass


VAR_SEED = evidence(TEE_SNP, "evidence-v2.json").hcl.variable_data


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VAR_SEED) - 1), st.integers(0, 255)), max_size=4))
def test_var_data_mutated_vector(edits: list[tuple[int, int]]) -> None:
    data = bytearray(VAR_SEED)
    for pos, value in edits:
        data[pos] = value
    try:
        parsed = parse_var_data(bytes(data))
    except ParseError:
        return
    try:
        ak_public_key(parsed)
    except (ParseError, VerificationError):
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([TEE_SNP, TEE_TDX]), st.binary(max_size=500))
def test_evidence_random_bytes(tee: str, data: bytes) -> None:
    try:
        parse_azure_evidence(tee, data)
    except ParseError:
        pass


# --- chained with the TPM core, when present --------------------------------------------------


@pytest.mark.parametrize(("tee", "name", "version"), EVIDENCE, ids=EVIDENCE_IDS)
def test_ak_from_var_data_verifies_the_quote_with_the_tpm_core(tee: str, name: str, version: int) -> None:
    verify = pytest.importorskip("shared.platforms.tpm.verify")
    ev = evidence(tee, name)
    nonce = bytes.fromhex(values(tee)[name]["tpm_quote_extra_data_hex"])
    ak = verify.load_ak(ev.var_data.ak_jwk)
    claims = verify.verify_quote(ev.quote_message, ev.tpmt_signature, ak, ev.pcr_banks, nonce)
    assert claims.nonce == nonce.hex()
    with pytest.raises(VerificationError) as exc:
        verify.verify_quote(ev.quote_message, ev.tpmt_signature, ak, ev.pcr_banks, nonce + b"x")
    assert exc.value.check == "tpm.nonce_mismatch"
