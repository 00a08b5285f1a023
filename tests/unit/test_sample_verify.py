"""Sample platform verification: chain, report signature, device binding, policy and claims."""

from __future__ import annotations

import random
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.errors import ParseError, VerificationError
from shared.platforms.sample.abi import REPORT_SIZE, encode_report, parse_report
from shared.platforms.sample.pki import DEVICE_ID_OID, SimulatedDevice, VendorPKI
from shared.platforms.sample.validate import ReferenceValues, Violation, claims, validate
from shared.platforms.sample.verify import load_cert, load_chain, verify_chain, verify_report

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
GOOD_MEASUREMENT = bytes.fromhex("ab" * 48)
OTHER_MEASUREMENT = bytes.fromhex("cd" * 48)
REPORT_DATA = bytes(range(64))

PKI = VendorPKI.generate(NOW - timedelta(days=1))
OTHER_PKI = VendorPKI.generate(NOW - timedelta(days=1))
DEVICE = SimulatedDevice.create(GOOD_MEASUREMENT, svn=3)
DEVICE_CERT_DER = PKI.issue_device_cert(DEVICE.device_id, DEVICE.public_key, NOW)
RAW = DEVICE.make_report(REPORT_DATA)


def _verify(raw: bytes, cert_der: bytes = DEVICE_CERT_DER, now: datetime = NOW) -> None:
    """Full pipeline as the verifier runs it: parse, chain, report."""
    cert = verify_chain(cert_der, PKI.intermediate_cert, PKI.root_cert, now)
    verify_report(raw, parse_report(raw), cert)


def _check(info: pytest.ExceptionInfo[VerificationError]) -> str:
    return info.value.check


# --- the good path -------------------------------------------------------------------------------


def test_good_device_verifies() -> None:
    cert = verify_chain(DEVICE_CERT_DER, PKI.intermediate_cert, PKI.root_cert, NOW)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "REMITS-SAMPLE-DEVICE"
    assert cert.extensions.get_extension_for_oid(DEVICE_ID_OID).value.value == DEVICE.device_id
    assert cert.extensions.get_extension_for_oid(DEVICE_ID_OID).critical is False
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    report = parse_report(RAW)
    assert verify_report(RAW, report, cert) is None
    assert report.report_data == REPORT_DATA


def test_pki_shape() -> None:
    root, inter = PKI.root_cert, PKI.intermediate_cert
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "REMITS Sample Vendor Root"
    assert (
        inter.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        == "REMITS Sample Vendor Intermediate"
    )
    assert root.issuer == root.subject
    assert inter.issuer == root.subject
    for cert in (root, inter):
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign is True
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    assert root.not_valid_after_utc - root.not_valid_before_utc == timedelta(days=3650)


def test_chain_from_kds_pem_with_pinned_root() -> None:
    intermediate, root = load_chain(PKI.chain_pem())
    assert root == PKI.root_cert and intermediate == PKI.intermediate_cert
    cert = verify_chain(DEVICE_CERT_DER, intermediate, root, NOW, pinned_root=PKI.root_cert)
    assert cert == load_cert(DEVICE_CERT_DER)
    with pytest.raises(VerificationError) as info:
        verify_chain(DEVICE_CERT_DER, intermediate, root, NOW, pinned_root=OTHER_PKI.root_cert)
    assert _check(info) == "endorsement.untrusted_root"


def test_load_cert_pem_der_and_garbage() -> None:
    der_cert = load_cert(DEVICE_CERT_DER)
    pem = der_cert.public_bytes(serialization.Encoding.PEM)
    assert load_cert(pem) == der_cert
    for bad in (b"", b"\x30\x03\x02\x01", b"-----BEGIN CERTIFICATE-----\nzz\n-----END CERTIFICATE-----\n"):
        with pytest.raises(ParseError) as info:
            load_cert(bad)
        assert info.value.reason == "parse.certificate"
    with pytest.raises(ParseError):
        verify_chain(b"not a cert", PKI.intermediate_cert, PKI.root_cert, NOW)
    with pytest.raises(ParseError) as chain_info:
        load_chain(PKI.root_cert.public_bytes(serialization.Encoding.PEM))
    assert chain_info.value.reason == "parse.cert_chain"


# --- tampering with the evidence -----------------------------------------------------------------


def _expected_outcome(bit: int) -> str:
    """What flipping ``bit`` (0 = MSB of byte 0) of RAW must produce."""
    offset, mask = bit // 8, 0x80 >> (bit % 8)
    if offset < 0x04:
        return "parse.report.magic"
    if offset < 0x06:
        return "parse.report.version"
    if offset < 0x08:
        # Only bit 0 of the big-endian u16 (last byte, lowest bit) is DEBUG; the rest are reserved.
        return "evidence.signature_invalid" if (offset, mask) == (7, 0x01) else "parse.report.flags"
    if offset < 0x18:
        return "endorsement.device_mismatch"
    if 0x4C <= offset < 0x50 or 0x90 <= offset < 0xB0:
        return "parse.report.reserved"
    return "evidence.signature_invalid"


def _outcome(raw: bytes) -> str:
    try:
        _verify(raw)
    except (ParseError, VerificationError) as exc:
        return exc.reason
    return "accepted"


def _flip(raw: bytes, bit: int) -> bytes:
    buf = bytearray(raw)
    buf[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(buf)


def test_bit_flips_are_rejected_with_the_right_reason() -> None:
    rng = random.Random(20250601)
    bits = set(rng.sample(range(REPORT_SIZE * 8), 200))
    # Make sure every field is hit at least once, whatever the random sample.
    for offset in (0, 4, 6, 7, 8, 0x18, 0x48, 0x4C, 0x50, 0x90, 0xB0, 0xE0, 0x10F):
        bits.add(offset * 8 + 7)
    outcomes = {bit: _outcome(_flip(RAW, bit)) for bit in sorted(bits)}
    assert {bit: _expected_outcome(bit) for bit in outcomes} == outcomes
    assert "accepted" not in outcomes.values()
    assert sum(o == "evidence.signature_invalid" for o in outcomes.values()) > 100


def test_signature_edge_values_rejected() -> None:
    report = parse_report(RAW)
    cert = load_cert(DEVICE_CERT_DER)
    other_signature = parse_report(DEVICE.make_report(b"other")).signature
    for sig in (bytes(96), b"\xff" * 96, RAW[0xB0:0xE0] * 2, other_signature):
        forged = replace(report, signature=sig)
        with pytest.raises(VerificationError) as info:
            verify_report(encode_report(forged), forged, cert)
        assert _check(info) == "evidence.signature_invalid"


def test_report_must_match_raw() -> None:
    other = parse_report(DEVICE.make_report(b"different nonce"))
    with pytest.raises(VerificationError) as info:
        verify_report(RAW, other, load_cert(DEVICE_CERT_DER))
    assert _check(info) == "evidence.report_mismatch"


def test_wrong_device_cert_is_device_mismatch() -> None:
    other = SimulatedDevice.create(GOOD_MEASUREMENT)
    other_der = PKI.issue_device_cert(other.device_id, other.public_key, NOW)
    with pytest.raises(VerificationError) as info:
        _verify(RAW, other_der)
    assert _check(info) == "endorsement.device_mismatch"
    assert DEVICE.device_id.hex() in info.value.detail


def test_cert_for_same_id_but_other_key_is_signature_invalid() -> None:
    impostor_key = ec.generate_private_key(ec.SECP384R1())
    der = PKI.issue_device_cert(DEVICE.device_id, impostor_key.public_key(), NOW)
    with pytest.raises(VerificationError) as info:
        _verify(RAW, der)
    assert _check(info) == "evidence.signature_invalid"


def test_cert_without_device_id_is_device_mismatch() -> None:
    with pytest.raises(VerificationError) as info:
        verify_report(RAW, parse_report(RAW), PKI.intermediate_cert)
    assert _check(info) == "endorsement.device_mismatch"


# --- the endorsement chain -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        NOW + timedelta(days=366),  # leaf expired
        NOW - timedelta(days=2),  # nothing valid yet
        NOW + timedelta(days=3700),  # CAs expired too
    ],
)
def test_outside_validity_is_expired(when: datetime) -> None:
    with pytest.raises(VerificationError) as info:
        verify_chain(DEVICE_CERT_DER, PKI.intermediate_cert, PKI.root_cert, when)
    assert _check(info) == "endorsement.expired"


def test_validity_edges_and_naive_now() -> None:
    leaf = load_cert(DEVICE_CERT_DER)
    assert leaf.not_valid_after_utc == NOW + timedelta(days=365)
    verify_chain(DEVICE_CERT_DER, PKI.intermediate_cert, PKI.root_cert, leaf.not_valid_after_utc)
    naive = (NOW + timedelta(days=1)).replace(tzinfo=None)
    assert verify_chain(DEVICE_CERT_DER, PKI.intermediate_cert, PKI.root_cert, naive) == leaf
    with pytest.raises(VerificationError):
        verify_chain(
            DEVICE_CERT_DER,
            PKI.intermediate_cert,
            PKI.root_cert,
            leaf.not_valid_after_utc + timedelta(seconds=1),
        )


def test_chain_to_another_root() -> None:
    foreign_der = OTHER_PKI.issue_device_cert(DEVICE.device_id, DEVICE.public_key, NOW)
    # Foreign leaf against our chain: the leaf -> intermediate link breaks.
    with pytest.raises(VerificationError) as info:
        verify_chain(foreign_der, PKI.intermediate_cert, PKI.root_cert, NOW)
    assert _check(info) == "endorsement.chain_invalid"
    # Foreign intermediate presented with our pinned root: not rooted in what we trust.
    with pytest.raises(VerificationError) as info:
        verify_chain(foreign_der, OTHER_PKI.intermediate_cert, PKI.root_cert, NOW)
    assert _check(info) == "endorsement.untrusted_root"
    # A complete foreign chain is internally consistent, so only pinning catches it.
    assert verify_chain(foreign_der, OTHER_PKI.intermediate_cert, OTHER_PKI.root_cert, NOW)
    with pytest.raises(VerificationError) as info:
        verify_chain(
            foreign_der, OTHER_PKI.intermediate_cert, OTHER_PKI.root_cert, NOW, pinned_root=PKI.root_cert
        )
    assert _check(info) == "endorsement.untrusted_root"


def test_root_that_is_not_self_signed_is_untrusted() -> None:
    with pytest.raises(VerificationError) as info:
        verify_chain(DEVICE_CERT_DER, PKI.intermediate_cert, PKI.intermediate_cert, NOW)
    assert _check(info) == "endorsement.untrusted_root"


def test_non_ca_intermediate_is_chain_invalid() -> None:
    # An end-entity cert signed by the real root must not be able to act as an intermediate.
    fake_key = ec.generate_private_key(ec.SECP384R1())
    fake_inter = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a CA")]))
        .issuer_name(PKI.root_cert.subject)
        .public_key(fake_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(PKI.root_key, hashes.SHA384())
    )
    fake_pki = replace(PKI, intermediate_cert=fake_inter, intermediate_key=fake_key)
    der = fake_pki.issue_device_cert(DEVICE.device_id, DEVICE.public_key, NOW)
    with pytest.raises(VerificationError) as info:
        verify_chain(der, fake_inter, PKI.root_cert, NOW)
    assert _check(info) == "endorsement.chain_invalid"


def test_leaf_that_is_a_ca_is_chain_invalid() -> None:
    with pytest.raises(VerificationError) as info:
        verify_chain(
            PKI.intermediate_cert.public_bytes(serialization.Encoding.DER),
            PKI.root_cert,
            PKI.root_cert,
            NOW,
        )
    assert _check(info) == "endorsement.chain_invalid"


def test_p256_device_key_is_bad_key() -> None:
    weak = ec.generate_private_key(ec.SECP256R1())
    der = PKI.issue_device_cert(DEVICE.device_id, weak.public_key(), NOW)
    with pytest.raises(VerificationError) as info:
        verify_chain(der, PKI.intermediate_cert, PKI.root_cert, NOW)
    assert _check(info) == "endorsement.bad_key"
    with pytest.raises(VerificationError) as info:
        verify_report(RAW, parse_report(RAW), load_cert(der))
    assert _check(info) == "endorsement.bad_key"


# --- PKI persistence and device inputs -----------------------------------------------------------


def test_pki_save_load_round_trip(tmp_path: Path) -> None:
    PKI.save(tmp_path / "pki")
    names = sorted(p.name for p in (tmp_path / "pki").iterdir())
    assert names == ["intermediate.key", "intermediate.pem", "root.key", "root.pem"]
    assert stat.S_IMODE((tmp_path / "pki" / "root.key").stat().st_mode) == 0o600
    loaded = VendorPKI.load(tmp_path / "pki")
    assert loaded.root_cert == PKI.root_cert
    assert loaded.intermediate_cert == PKI.intermediate_cert
    assert loaded.root_key.private_numbers() == PKI.root_key.private_numbers()
    der = loaded.issue_device_cert(DEVICE.device_id, DEVICE.public_key, NOW)
    assert (
        verify_chain(der, PKI.intermediate_cert, PKI.root_cert, NOW).issuer == PKI.intermediate_cert.subject
    )


def test_pki_load_rejects_wrong_key(tmp_path: Path) -> None:
    PKI.save(tmp_path)
    (tmp_path / "root.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ParseError) as info:
        VendorPKI.load(tmp_path)
    assert info.value.reason == "parse.pki.root_key"


def test_make_report_pads_and_limits_report_data() -> None:
    assert parse_report(DEVICE.make_report(b"")).report_data == bytes(64)
    assert parse_report(DEVICE.make_report(b"\x01" * 64)).report_data == b"\x01" * 64
    with pytest.raises(ParseError) as info:
        DEVICE.make_report(b"\x01" * 65)
    assert info.value.reason == "parse.report.report_data"
    with pytest.raises(ParseError):
        SimulatedDevice.create(b"\x00" * 32)


def test_devices_are_distinct() -> None:
    other = SimulatedDevice.create(GOOD_MEASUREMENT)
    assert other.device_id != DEVICE.device_id and len(other.device_id) == 16
    assert other.flags == 0 and other.svn == 1
    assert SimulatedDevice.create(GOOD_MEASUREMENT, debug=True).flags == 1


# --- policy and claims ---------------------------------------------------------------------------


def test_validate_accepts_matching_report() -> None:
    refs = ReferenceValues(frozenset({GOOD_MEASUREMENT, OTHER_MEASUREMENT}), min_svn=3)
    assert validate(parse_report(RAW), refs) == []


def test_validate_reports_all_violations_together() -> None:
    bad = SimulatedDevice.create(OTHER_MEASUREMENT, svn=1, debug=True)
    report = parse_report(bad.make_report(b""))
    refs = ReferenceValues(frozenset({GOOD_MEASUREMENT}), min_svn=2)
    assert validate(report, refs) == [
        Violation("measurement", "cd" * 48, "one of: " + "ab" * 48),
        Violation("svn", "1", ">= 2"),
        Violation("debug", "true", "false"),
    ]
    relaxed = ReferenceValues(frozenset({OTHER_MEASUREMENT}), min_svn=1, allow_debug=True)
    assert validate(report, relaxed) == []


def test_validate_with_no_reference_measurements() -> None:
    violations = validate(parse_report(RAW), ReferenceValues(frozenset()))
    assert violations == [Violation("measurement", "ab" * 48, "one of: <none configured>")]


def test_claims_values() -> None:
    assert claims(parse_report(RAW)) == {
        "sample.device_id": DEVICE.device_id.hex(),
        "sample.measurement": "ab" * 48,
        "sample.svn": 3,
        "sample.debug": False,
        "sample.report_data": REPORT_DATA.hex(),
    }
    debug_claims = claims(parse_report(SimulatedDevice.create(GOOD_MEASUREMENT, debug=True).make_report(b"")))
    assert debug_claims["sample.debug"] is True
    assert debug_claims["sample.report_data"] == "00" * 64
