"""The simulated Intel (services/demo/tdx_sim.py): its quotes and collateral go through the real
DCAP verifier -- UpToDate at the current TCB, every deviation surfacing as its named check, status
or policy violation -- and its certificates and documents have Intel's shapes."""

from __future__ import annotations

import hashlib
import json
import struct
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.bench.verify_tdx import run as bench_run
from services.demo.tdx_sim import (
    DEFAULT_FMSPC,
    LATEST_TCB,
    PREVIOUS_QE_SVN,
    PREVIOUS_TCB,
    TD_QE_MRSIGNER,
    PlatformTcb,
    SimEvent,
    SimulatedIntel,
    SimulatedTdxPlatform,
    ccel_event_log,
    raw_sign,
)
from shared.errors import VerificationError
from shared.platforms.tdx import checks, pcs, pinned_root_der
from shared.platforms.tdx.abi import BodyType, parse_quote
from shared.platforms.tdx.collateral import (
    Collateral,
    load_collateral,
    parse_qe_identity,
    parse_tcb_info,
    split_signed_json,
)
from shared.platforms.tdx.crypto import p256_key, verify_raw_signature
from shared.platforms.tdx.eventlog import parse_event_log, replay_rtmrs, verify_rtmrs
from shared.platforms.tdx.pck import pck_extension
from shared.platforms.tdx.validate import TdxPolicy, claims, validate
from shared.platforms.tdx.verify import QuoteVerifier, evaluate_quote, verify_quote

MR_TD = hashlib.sha384(b"simulated TD image").digest()
RTMRS = tuple(hashlib.sha384(b"rtmr %d" % i).digest() for i in range(4))
REPORT_DATA = hashlib.sha512(b"nonce").digest()

# v4 offsets with 32 bytes of QE auth data (notes/tdx.md §3).
BODY = 0x30
MR_TD_AT = BODY + 136
QUOTE_SIGNATURE_AT = 0x27C
ATTESTATION_KEY_AT = 0x2BC
QE_REPORT_AT = 0x302


@pytest.fixture(scope="module")
def intel() -> SimulatedIntel:
    return SimulatedIntel.generate()


@pytest.fixture(scope="module")
def platform(intel: SimulatedIntel) -> SimulatedTdxPlatform:
    return SimulatedTdxPlatform.create(intel)


@pytest.fixture(scope="module")
def collateral(intel: SimulatedIntel) -> Collateral:
    return intel.collateral(DEFAULT_FMSPC)


def quote_of(platform: SimulatedTdxPlatform, **kwargs: object) -> bytes:
    args: dict[str, object] = {"mr_td": MR_TD, "rtmrs": RTMRS}
    args.update(kwargs)
    return platform.make_quote(REPORT_DATA, **args)  # type: ignore[arg-type]


def failure(raw: bytes, coll: Collateral, intel: SimulatedIntel, **kwargs: object) -> str:
    at = kwargs.pop("at", intel.now)
    with pytest.raises(VerificationError) as info:
        verify_quote(raw, coll, intel.root_der, at, **kwargs)  # type: ignore[arg-type]
    return info.value.check


# -- the happy path ----------------------------------------------------------------------------


def test_simulated_quote_verifies_up_to_date(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    raw = quote_of(platform)
    verified = verify_quote(raw, collateral, intel.root_der, intel.now)
    assert verified.tcb_status == "UpToDate" and verified.advisory_ids == ()
    assert verified.tee == "tdx" and verified.pck.fmspc == DEFAULT_FMSPC
    assert all(o.passed for o in verified.outcomes), [o for o in verified.outcomes if not o.passed]
    quote = parse_quote(raw)
    assert quote.header.version == 4 and quote.body_type is BodyType.TD_REPORT_10 and quote.trailing == 0
    out = claims(quote, verified)
    assert out["tdx.quote.body.mr_td"] == MR_TD.hex()
    assert [out[f"tdx.quote.body.rtmr_{i}"] for i in range(4)] == [r.hex() for r in RTMRS]
    assert out["tdx.quote.body.report_data"] == REPORT_DATA.hex()
    assert out["tdx.td_attributes.debug"] is False and out["tdx.td_attributes.sept_ve_disable"] is True
    assert out["tdx.qe.isv_svn"] == 4 and out["tdx.fmspc"] == DEFAULT_FMSPC.hex()
    policy = TdxPolicy(mr_td=frozenset({MR_TD}), rtmrs={0: frozenset({RTMRS[0]})}, report_data=REPORT_DATA)
    assert validate(quote, verified, policy) == []


def test_v5_quote_with_td15_body_verifies(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    raw = quote_of(platform, version=5)
    quote = parse_quote(raw)
    assert quote.header.version == 5 and quote.body_type is BodyType.TD_REPORT_15
    assert quote.td_report.tee_tcb_svn_2 == LATEST_TCB.tee_tcb_svn
    verified = verify_quote(raw, collateral, intel.root_der, intel.now)
    assert verified.tcb_status == "UpToDate"
    assert claims(quote, verified)["tdx.quote.body.mr_service_td"] == bytes(48).hex()


def test_quote_layout_matches_intels(platform: SimulatedTdxPlatform) -> None:
    raw = quote_of(platform)
    quote = parse_quote(raw)
    assert raw[QUOTE_SIGNATURE_AT : QUOTE_SIGNATURE_AT + 64] == quote.signature
    assert raw[ATTESTATION_KEY_AT : ATTESTATION_KEY_AT + 64] == quote.attestation_key
    assert raw[QE_REPORT_AT : QE_REPORT_AT + 384] == quote.qe.report.raw
    assert struct.unpack_from("<HI", raw, 0x2FC)[0] == 6 and quote.qe.certification.cert_type == 5
    chain = quote.qe.certification.data
    assert chain.endswith(b"-----END CERTIFICATE-----\n\x00") and chain.count(b"BEGIN CERTIFICATE") == 3
    report = quote.qe.report
    assert report.report_data[:32] == hashlib.sha256(quote.attestation_key + quote.qe.auth_data).digest()
    assert report.report_data[32:] == bytes(32)
    assert report.mr_signer == TD_QE_MRSIGNER and report.isv_prod_id == 2 and report.cpu_svn == LATEST_TCB.cpu_svn


# -- Intel's shapes ----------------------------------------------------------------------------


def _cn(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_pki_has_intels_names_and_extensions(intel: SimulatedIntel, platform: SimulatedTdxPlatform) -> None:
    assert _cn(intel.root.subject) == _cn(intel.root.issuer) == "Intel SGX Root CA"
    assert _cn(intel.pck_ca.subject) == "Intel SGX PCK Platform CA"
    assert _cn(intel.tcb_signing.subject) == "Intel SGX TCB Signing"
    leaf = platform.pck_cert
    assert _cn(leaf.subject) == "Intel SGX PCK Certificate" and leaf.issuer == intel.pck_ca.subject
    assert pcs.pck_ca_of_issuer(_cn(leaf.issuer)) is pcs.PckCa.PLATFORM
    for cert in (intel.root, intel.pck_ca, intel.tcb_signing, leaf):
        assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).critical
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).critical
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert intel.root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert intel.pck_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not intel.tcb_signing.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment and not usage.key_cert_sign

    ext = pck_extension(leaf)
    assert ext.fmspc == DEFAULT_FMSPC and ext.pce_id == b"\x00\x00" and ext.sgx_type == 1
    assert ext.tcb_components == LATEST_TCB.sgx_components and ext.pce_svn == LATEST_TCB.pce_svn
    assert ext.cpu_svn == LATEST_TCB.cpu_svn and len(ext.ppid) == 16
    assert ext.platform_instance_id is not None and ext.dynamic_platform is True and ext.smt_enabled is True


def test_issue_pck_takes_every_extension_value(intel: SimulatedIntel) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    components = (200, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 255)
    cert = intel.issue_pck(
        bytes.fromhex("00112233aabb"),
        key.public_key(),
        sgx_components=components,
        pce_svn=300,
        pce_id=b"\x00\x01",
        ppid=b"\x01" * 16,
        cpu_svn=b"\x02" * 16,
        sgx_type=0,
    )
    ext = pck_extension(cert)
    assert (ext.fmspc, ext.pce_id, ext.ppid, ext.cpu_svn) == (
        bytes.fromhex("00112233aabb"),
        b"\x00\x01",
        b"\x01" * 16,
        b"\x02" * 16,
    )
    assert ext.tcb_components == components and ext.pce_svn == 300 and ext.sgx_type == 0


def test_crls_have_intels_shape(intel: SimulatedIntel) -> None:
    pck_crl = x509.load_der_x509_crl(intel.pck_crl_der())
    root_crl = x509.load_der_x509_crl(intel.root_ca_crl_der())
    assert pck_crl.issuer == intel.pck_ca.subject and root_crl.issuer == intel.root.subject
    assert pck_crl.is_signature_valid(intel.pck_ca.public_key())  # type: ignore[arg-type]
    assert root_crl.is_signature_valid(intel.root.public_key())  # type: ignore[arg-type]
    for crl in (pck_crl, root_crl):
        crl.extensions.get_extension_for_class(x509.CRLNumber)
        crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        assert crl.next_update_utc is not None and crl.last_update_utc <= intel.now < crl.next_update_utc


def test_tcb_info_is_a_pcs_v4_body(intel: SimulatedIntel) -> None:
    body = intel.tcb_info_json(DEFAULT_FMSPC)
    assert body == intel.tcb_info_json(DEFAULT_FMSPC)  # deterministic: cacheable, servable twice
    inner, signature = split_signed_json(body, "tcbInfo", "tcb_info")
    assert body == b'{"tcbInfo":' + inner + b',"signature":"' + signature.hex().encode() + b'"}'
    assert verify_raw_signature(p256_key(intel.tcb_signing), signature, inner) is None  # type: ignore[arg-type]
    doc = json.loads(inner)
    assert list(doc) == [
        "id",
        "version",
        "issueDate",
        "nextUpdate",
        "fmspc",
        "pceId",
        "tcbType",
        "tcbEvaluationDataNumber",
        "tdxModule",
        "tdxModuleIdentities",
        "tcbLevels",
    ]
    assert doc["id"] == "TDX" and doc["version"] == 3 and doc["fmspc"] == DEFAULT_FMSPC.hex().upper()
    assert doc["issueDate"].endswith("Z") and len(doc["issueDate"]) == 20
    assert [m["id"] for m in doc["tdxModuleIdentities"]] == ["TDX_01"]
    level = doc["tcbLevels"][0]
    assert len(level["tcb"]["sgxtcbcomponents"]) == 16 and len(level["tcb"]["tdxtcbcomponents"]) == 16
    assert level["tcb"]["tdxtcbcomponents"][1]["svn"] == 0  # the module major is judged by its identity
    info = parse_tcb_info(body)
    assert info.is_tdx and info.fmspc == DEFAULT_FMSPC and [lv.status for lv in info.tcb_levels] == [
        "UpToDate",
        "OutOfDate",
    ]


def test_sgx_documents(intel: SimulatedIntel) -> None:
    info = parse_tcb_info(intel.tcb_info_json(DEFAULT_FMSPC, tee="sgx"))
    assert info.id == "SGX" and info.tdx_module is None and info.tcb_levels[0].tdx_components is None
    identity = parse_qe_identity(intel.qe_identity_json(tee="sgx"))
    assert identity.id == "QE" and identity.isv_prod_id == 1
    td_identity = parse_qe_identity(intel.qe_identity_json())
    assert td_identity.id == "TD_QE" and td_identity.isv_prod_id == 2 and td_identity.mrsigner == TD_QE_MRSIGNER


def test_collateral_files_use_the_vector_layout(intel: SimulatedIntel, tmp_path: Path) -> None:
    directory = intel.write_collateral_dir(tmp_path / "c", DEFAULT_FMSPC)
    assert sorted(p.name for p in directory.iterdir()) == [
        "pck_crl.der",
        "pck_crl_issuer_chain.pem",
        "qe_identity.json",
        "qe_identity_issuer_chain.pem",
        "root_ca_crl.der",
        "tcb_info.json",
        "tcb_info_issuer_chain.pem",
    ]


# -- what policy sees --------------------------------------------------------------------------


def test_debug_td_verifies_but_policy_rejects_it(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    raw = quote_of(platform, debug=True)
    verified = verify_quote(raw, collateral, intel.root_der, intel.now)
    quote = parse_quote(raw)
    assert claims(quote, verified)["tdx.td_attributes.debug"] is True
    assert [v.field for v in validate(quote, verified, TdxPolicy())] == ["tdx.td_attributes.debug"]
    assert validate(quote, verified, TdxPolicy(allow_debug=True)) == []


def test_wrong_measurements_show_as_violations(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    other = hashlib.sha384(b"another image").digest()
    raw = quote_of(platform, mr_td=other, mr_config_id=b"\x01" * 48, td_attributes=0)
    verified = verify_quote(raw, collateral, intel.root_der, intel.now)
    quote = parse_quote(raw)
    policy = TdxPolicy(
        mr_td=frozenset({MR_TD}),
        rtmrs={2: frozenset({bytes(48)})},
        mr_config_id=bytes(48),
        report_data=bytes(64),
        require_sept_ve_disable=True,
    )
    fields = {v.field for v in validate(quote, verified, policy)}
    assert fields == {
        "tdx.quote.body.mr_td",
        "tdx.quote.body.rtmr_2",
        "tdx.quote.body.mr_config_id",
        "tdx.quote.body.report_data",
        "tdx.td_attributes.sept_ve_disable",
    }


# -- tampering and the PKI ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "check"),
    [
        (MR_TD_AT, checks.QUOTE_SIGNATURE),
        (0x1C, checks.QUOTE_SIGNATURE),  # header user data: the header is signed too
        (BODY + 520, checks.QUOTE_SIGNATURE),  # REPORTDATA
        (QUOTE_SIGNATURE_AT + 5, checks.QUOTE_SIGNATURE),
        (ATTESTATION_KEY_AT + 3, checks.QE_REPORT_DATA_BINDING),
        (QE_REPORT_AT + 70, checks.QE_REPORT_SIGNATURE),  # MRENCLAVE
        (0x0C, checks.QE_VENDOR_IS_INTEL),
    ],
)
def test_tampered_quote_fails_with_its_check(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral, offset: int, check: str
) -> None:
    raw = bytearray(quote_of(platform))
    raw[offset] ^= 0x01
    assert failure(bytes(raw), collateral, intel) == check


def test_revoked_pck_fails() -> None:
    intel = SimulatedIntel.generate()
    platform = SimulatedTdxPlatform.create(intel)
    raw = quote_of(platform)
    verify_quote(raw, intel.collateral(DEFAULT_FMSPC), intel.root_der, intel.now)
    intel.revoke(platform.pck_cert)
    assert failure(raw, intel.collateral(DEFAULT_FMSPC), intel) == checks.PCK_NOT_REVOKED
    other = SimulatedTdxPlatform.create(intel)  # the CRL names one PCK, not the platform's CA
    verify_quote(quote_of(other), intel.collateral(DEFAULT_FMSPC), intel.root_der, intel.now)


def test_revoked_pck_ca_and_tcb_signer_fail() -> None:
    intel = SimulatedIntel.generate()
    raw = quote_of(SimulatedTdxPlatform.create(intel))
    intel.revoke(intel.tcb_signing)
    assert failure(raw, intel.collateral(DEFAULT_FMSPC), intel) == checks.TCB_SIGNING_CERT_NOT_REVOKED
    intel.revoke(intel.pck_ca)
    assert failure(raw, intel.collateral(DEFAULT_FMSPC), intel) == checks.INTERMEDIATE_NOT_REVOKED


def test_tcb_info_signed_by_a_wrong_key(intel: SimulatedIntel, platform: SimulatedTdxPlatform) -> None:
    wrong = ec.generate_private_key(ec.SECP256R1())
    chain = intel.tcb_info_issuer_chain_pem
    coll = load_collateral(
        tcb_info=intel.tcb_info_json(DEFAULT_FMSPC, signing_key=wrong),
        tcb_info_issuer_chain=chain,
        qe_identity=intel.qe_identity_json(),
        pck_crl=intel.pck_crl_der(),
        root_ca_crl=intel.root_ca_crl_der(),
    )
    assert failure(quote_of(platform), coll, intel) == checks.TCB_INFO_SIGNATURE
    coll = load_collateral(
        tcb_info=intel.tcb_info_json(DEFAULT_FMSPC),
        tcb_info_issuer_chain=chain,
        qe_identity=intel.qe_identity_json(signing_key=wrong),
        pck_crl=intel.pck_crl_der(),
        root_ca_crl=intel.root_ca_crl_der(),
    )
    assert failure(quote_of(platform), coll, intel) == checks.QE_IDENTITY_SIGNATURE


def test_a_document_edited_after_signing_fails(intel: SimulatedIntel, platform: SimulatedTdxPlatform) -> None:
    body = intel.tcb_info_json(DEFAULT_FMSPC).replace(b'"tcbStatus":"OutOfDate"', b'"tcbStatus":"UpToDate"')
    coll = load_collateral(
        tcb_info=body,
        tcb_info_issuer_chain=intel.tcb_info_issuer_chain_pem,
        qe_identity=intel.qe_identity_json(),
        pck_crl=intel.pck_crl_der(),
        root_ca_crl=intel.root_ca_crl_der(),
    )
    assert failure(quote_of(platform), coll, intel) == checks.TCB_INFO_SIGNATURE


def test_the_real_intel_root_does_not_vouch_for_the_simulation(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    with pytest.raises(VerificationError) as info:
        verify_quote(quote_of(platform), collateral, pinned_root_der(), intel.now)
    assert info.value.check == checks.ROOT_IS_PINNED_INTEL_ROOT


# -- time --------------------------------------------------------------------------------------


def _with(intel: SimulatedIntel, **docs: bytes) -> Collateral:
    files = {
        "tcb_info": intel.tcb_info_json(DEFAULT_FMSPC),
        "qe_identity": intel.qe_identity_json(),
        "pck_crl": intel.pck_crl_der(),
        "root_ca_crl": intel.root_ca_crl_der(),
    }
    files.update(docs)
    return load_collateral(tcb_info_issuer_chain=intel.tcb_info_issuer_chain_pem, **files)


def test_collateral_outside_its_validity_fails(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    raw = quote_of(platform)
    verified = verify_quote(raw, collateral, intel.root_der, intel.now)
    start, end = verified.valid_window
    assert start <= intel.now <= end and end - start <= timedelta(days=30)
    assert failure(raw, collateral, intel, at=end + timedelta(seconds=1)) == checks.COLLATERAL_FRESH_AT_TIME
    future = intel.now + timedelta(days=1)
    stale = intel.now - timedelta(days=40)
    for docs in (
        {"tcb_info": intel.tcb_info_json(DEFAULT_FMSPC, issue_date=future)},
        {"qe_identity": intel.qe_identity_json(issue_date=stale)},
        {"pck_crl": intel.pck_crl_der(this_update=stale)},
        {"root_ca_crl": intel.root_ca_crl_der(this_update=future)},
    ):
        assert failure(raw, _with(intel, **docs), intel) == checks.COLLATERAL_FRESH_AT_TIME, list(docs)


def test_pck_chain_outside_its_validity_fails(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    raw = quote_of(platform)
    assert failure(raw, collateral, intel, at=intel.now - timedelta(days=2)) == checks.PCK_CHAIN_VALID_AT_TIME
    assert failure(raw, collateral, intel, at=intel.now + timedelta(days=8 * 365)) == checks.PCK_CHAIN_VALID_AT_TIME


# -- TCB status --------------------------------------------------------------------------------


def test_an_older_platform_is_out_of_date(intel: SimulatedIntel, collateral: Collateral) -> None:
    old = SimulatedTdxPlatform.create(intel, tcb=PREVIOUS_TCB)
    verified = verify_quote(quote_of(old), collateral, intel.root_der, intel.now)
    assert verified.tcb_status == "OutOfDate"
    assert verified.advisory_ids == ("INTEL-SA-00960", "INTEL-SA-00982")


def test_qe_svn_feeds_the_status(intel: SimulatedIntel, collateral: Collateral) -> None:
    old_qe = SimulatedTdxPlatform.create(intel, qe_svn=PREVIOUS_QE_SVN)
    assert verify_quote(quote_of(old_qe), collateral, intel.root_der, intel.now).tcb_status == "OutOfDate"
    ancient = SimulatedTdxPlatform.create(intel, qe_svn=1)
    assert verify_quote(quote_of(ancient), collateral, intel.root_der, intel.now).tcb_status == "TcbNotSupported"


def test_an_older_module_alone_is_out_of_date(intel: SimulatedIntel, collateral: Collateral) -> None:
    # Same platform components, module SVN 3 instead of 5: judged by the TDX_01 identity.
    tcb = PlatformTcb(LATEST_TCB.sgx_components, LATEST_TCB.pce_svn, bytes([3, 1, 7]) + bytes(13))
    verified = verify_quote(quote_of(SimulatedTdxPlatform.create(intel, tcb=tcb)), collateral, intel.root_der, intel.now)
    assert verified.tcb_status == "OutOfDate" and verified.tcb.module_status is not None
    assert verified.tcb.module_status.value == "OutOfDate"


def test_an_unknown_module_version_or_another_fmspc_fail(intel: SimulatedIntel, collateral: Collateral) -> None:
    tcb = PlatformTcb(LATEST_TCB.sgx_components, LATEST_TCB.pce_svn, bytes([5, 7, 7]) + bytes(13))
    raw = quote_of(SimulatedTdxPlatform.create(intel, tcb=tcb))
    evaluation = evaluate_quote(raw, collateral, intel.root_der, intel.now)
    assert evaluation.passed(checks.MODULE_MRSIGNER_MATCHES) is False
    assert "TDX_07" in evaluation.outcomes[checks.MODULE_MRSIGNER_MATCHES].detail
    elsewhere = SimulatedTdxPlatform.create(intel, fmspc=bytes.fromhex("30806f040001"))
    assert failure(quote_of(elsewhere), collateral, intel) == checks.FMSPC_MATCHES
    assert verify_quote(
        quote_of(elsewhere), intel.collateral(elsewhere.fmspc), intel.root_der, intel.now
    ).tcb_status == "UpToDate"


# -- event log and evidence --------------------------------------------------------------------


def test_ccel_event_log_replays_to_the_quoted_rtmrs(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    log, rtmrs = ccel_event_log([SimEvent(0, b"firmware"), SimEvent(1, b"kernel"), SimEvent(1, b"initrd"), SimEvent(2, b"cmdline")])
    parsed = parse_event_log(log)
    assert len(parsed.events) == 4 and replay_rtmrs(parsed) == rtmrs and rtmrs[3] == bytes(48)
    raw = quote_of(platform, rtmrs=rtmrs)
    quote = verify_quote(raw, collateral, intel.root_der, intel.now).quote
    verify_rtmrs(parsed, quote.td_report.rtmrs)
    with pytest.raises(VerificationError) as info:
        verify_rtmrs(parsed, RTMRS)
    assert info.value.check == checks.RTMR_REPLAY
    evidence = platform.evidence(raw, log)
    assert set(evidence) == {"cc_eventlog", "quote"} and platform.evidence(raw)["cc_eventlog"] is None


def test_raw_sign_is_rs_and_deterministic(intel: SimulatedIntel) -> None:
    signature = raw_sign(intel.tcb_signing_key, b"message")
    assert len(signature) == 64 and signature == raw_sign(intel.tcb_signing_key, b"message")
    assert verify_raw_signature(intel.tcb_signing_key.public_key(), signature, b"message") is None


# -- the benchmark's warm path -----------------------------------------------------------------


def test_warm_verifier_agrees_with_verify_quote(
    intel: SimulatedIntel, platform: SimulatedTdxPlatform, collateral: Collateral
) -> None:
    warm = QuoteVerifier(collateral, intel.root_der)
    raw = quote_of(platform)
    cold = warm.verify(raw, intel.now)
    hot = warm.verify(quote_of(platform, debug=True), intel.now)  # cache hit: same PCK chain
    assert (hot.tcb_status, hot.pck) == (cold.tcb_status, cold.pck) and hot.quote.td_report.debug
    tampered = bytearray(raw)
    tampered[MR_TD_AT] ^= 1
    with pytest.raises(VerificationError) as info:
        warm.verify(bytes(tampered), intel.now)
    assert info.value.check == checks.QUOTE_SIGNATURE
    with pytest.raises(VerificationError) as info:
        warm.verify(raw, cold.valid_window[1] + timedelta(seconds=1))  # outside the window: full path
    assert info.value.check == checks.COLLATERAL_FRESH_AT_TIME


def test_bench_reports_the_ratio() -> None:
    result = bench_run(iterations=5)
    assert result["tcb_status"] == "UpToDate"
    assert 0 < result["tdx_quote_warm_us"] < result["tdx_quote_cold_us"]
    assert result["warm_over_raw"] == pytest.approx(
        result["tdx_quote_warm_us"] / result["raw_two_ecdsa_p256_verifies_us"], rel=0.05
    )
