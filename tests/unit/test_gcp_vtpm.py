"""Google Cloud vTPM evidence: protobuf decoding, AK-certificate chain and instance information.

Real vectors: tests/data/gcp/README.md (GCE Shielded VM, COS 85). Synthetic certificates are made
here with ``cryptography`` to reach the branches the real chain cannot (ECDSA, bad critical
extensions, non-CA issuers, odd instance-information encodings).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ParseError, VerificationError
from shared.platforms.gcp import akcert
from shared.platforms.gcp.akcert import (
    INSTANCE_INFO_OID,
    check_ak_matches,
    parse_instance_info,
    pinned_intermediates,
    pinned_roots,
    verify_ak_cert,
)
from shared.platforms.gcp.attestation import iter_fields, parse_attestation, read_varint
from shared.platforms.tpm.abi import parse_attest, parse_public

DATA = Path(__file__).parents[1] / "data/gcp"
NONCE_PB = (DATA / "gce-cos-85-nonce9009.pb").read_bytes()
NO_NONCE_PB = (DATA / "gce-cos-85-no-nonce.pb").read_bytes()
NOW = datetime(2026, 6, 1, tzinfo=UTC)

ROOT_CN = "tpm_ek_v1_cloud_host_root-signer-0-2018-04-06T10:58:26-07:00 K:1\\, 1:Pw003HsFYO4:0:18"
INTERMEDIATE_CN = "tpm_ek_v1_cloud_host-signer-0-2020-10-22T14:02:08-07:00 K:1\\, 2:HBNpA3TPAbM:0:18"
GOOGLE_SUFFIX = ",OU=Cloud,O=Google LLC,L=Mountain View,ST=California,C=US"

# Google's CNs exceed X.520's 64-character bound; cryptography warns whenever the tests read them.
pytestmark = pytest.mark.filterwarnings("ignore:Attribute's length:UserWarning")


# ---------------------------------------------------------------------------------------------
# tiny protobuf / DER writers for synthetic inputs


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _pb_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _pcrs_msg(hash_alg: int, values: dict[int, bytes]) -> bytes:
    body = _pb_varint(1, hash_alg)
    for index, value in values.items():
        body += _pb_bytes(2, _pb_varint(1, index) + _pb_bytes(2, value))
    return body


def _quote_msg(hash_alg: int = 11, size: int = 32, count: int = 24) -> bytes:
    pcrs = {i: bytes([i]) * size for i in range(count)}
    return (
        _pb_bytes(1, b"\xffTCG\x80\x18")
        + _pb_bytes(2, b"\x00\x14sig")
        + _pb_bytes(3, _pcrs_msg(hash_alg, pcrs))
    )


def _attestation(*extra: bytes, quotes: tuple[bytes, ...] | None = None) -> bytes:
    quotes = (_quote_msg(),) if quotes is None else quotes
    return _pb_bytes(1, b"\x00\x01akpub") + b"".join(_pb_bytes(2, q) for q in quotes) + b"".join(extra)


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def _instance_info(security: bytes | None = None, name: str = "vm-1") -> bytes:
    body = (
        _der(0x0C, b"europe-west4-b")
        + _der_int(1234567890)
        + _der(0x0C, b"my-project")
        + _der_int(987654321)
        + _der(0x0C, name.encode())
    )
    if security is not None:
        body += _der(0xA0, _der(0x30, security))
    return _der(0x30, body)


def _tpms_attest_extra_data(message: bytes) -> bytes:
    # magic u32, type u16, qualifiedSigner TPM2B, extraData TPM2B (all big-endian)
    magic, kind = struct.unpack_from(">IH", message, 0)
    assert (magic, kind) == (0xFF544347, 0x8018)
    (signer_size,) = struct.unpack_from(">H", message, 6)
    offset = 8 + signer_size
    (extra_size,) = struct.unpack_from(">H", message, offset)
    return message[offset + 2 : offset + 2 + extra_size]


# ---------------------------------------------------------------------------------------------
# the real evidence


@pytest.mark.parametrize(("blob", "nonce"), [(NONCE_PB, b"\x90\x09"), (NO_NONCE_PB, b"")])
def test_real_attestation_decodes(blob: bytes, nonce: bytes) -> None:
    att = parse_attestation(blob)
    assert [q.hash_alg for q in att.quotes] == [4, 11, 12]
    assert [q.hash_name for q in att.quotes] == ["sha1", "sha256", "sha384"]
    for quote, size in zip(att.quotes, (20, 32, 48), strict=True):
        assert sorted(quote.pcrs) == list(range(24))
        assert all(len(v) == size for v in quote.pcrs.values())
        assert quote.message.startswith(bytes.fromhex("ff5443478018"))
        assert quote.signature[:4] == bytes.fromhex("0014000b")  # RSASSA, SHA-256
        assert _tpms_attest_extra_data(quote.message) == nonce
        assert parse_attest(quote.message).extra_data == nonce
    assert len(att.ak_pub) == 280 and att.ak_pub[:4] == bytes.fromhex("0001000b")
    assert len(att.event_log) == 23970
    assert att.canonical_event_log == b""
    assert len(att.ak_cert_der) == 1340 and att.ak_cert_der[:2] == b"\x30\x82"
    assert att.intermediate_der == ()


def test_real_top_level_field_numbers() -> None:
    numbers = [f.number for f in iter_fields(NONCE_PB, "attestation")]
    assert numbers == [1, 2, 2, 2, 3, 6]


def test_both_vectors_share_the_ak() -> None:
    a, b = parse_attestation(NONCE_PB), parse_attestation(NO_NONCE_PB)
    assert a.ak_pub == b.ak_pub and a.ak_cert_der == b.ak_cert_der
    assert a.quotes[0].message != b.quotes[0].message


def test_real_quotes_are_signed_by_the_certified_key() -> None:
    att = parse_attestation(NONCE_PB)
    cert = verify_ak_cert(att.ak_cert_der, att.intermediate_der, NOW)
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    for quote in att.quotes:
        (size,) = struct.unpack_from(">H", quote.signature, 4)
        key.verify(quote.signature[6 : 6 + size], quote.message, padding.PKCS1v15(), hashes.SHA256())


# ---------------------------------------------------------------------------------------------
# protobuf reader and decoder strictness


def test_optional_fields_and_unknown_fields() -> None:
    blob = _attestation(
        _pb_bytes(3, b"log"),
        _pb_bytes(4, _pb_bytes(1, b"zone")),  # instance_info: unsigned, ignored
        _pb_bytes(5, b"cel"),
        _pb_bytes(6, b"cert"),
        _pb_bytes(7, b"i1"),
        _pb_bytes(7, b"i2"),
        _pb_varint(99, 7),
        _varint(100 << 3 | 5) + b"\x01\x02\x03\x04",
        _varint(101 << 3 | 1) + b"\x00" * 8,
        _pb_bytes(8, b"snp"),
    )
    att = parse_attestation(blob)
    assert att.event_log == b"log"
    assert att.canonical_event_log == b"cel"
    assert att.ak_cert_der == b"cert"
    assert att.intermediate_der == (b"i1", b"i2")
    assert att.quotes[0].pcrs[5] == b"\x05" * 32


def test_wire_reader_values() -> None:
    data = (
        _pb_varint(1, 300)
        + _varint(2 << 3 | 5)
        + b"\x01\x00\x00\x00"
        + _varint(3 << 3 | 1)
        + b"\x02"
        + b"\x00" * 7
    )
    fields = list(iter_fields(data, "m"))
    assert [(f.number, f.wire_type, f.value) for f in fields] == [(1, 0, 300), (2, 5, 1), (3, 1, 2)]
    assert read_varint(b"\xff" * 9 + b"\x01", 0, "v") == ((1 << 64) - 1, 10)


@pytest.mark.parametrize(
    ("blob", "field"),
    [
        (b"", "attestation.ak_pub"),
        (_pb_bytes(1, b"x"), "attestation.quotes"),
        (_attestation(_pb_bytes(1, b"again")), "attestation.ak_pub"),
        (_attestation(_pb_varint(6, 1)), "attestation.ak_cert"),
        (_attestation(_pb_bytes(6, b"a"), _pb_bytes(6, b"b")), "attestation.ak_cert"),
        (_attestation(quotes=(_quote_msg(), _quote_msg())), "attestation.quotes"),
        (_attestation(quotes=(_quote_msg(hash_alg=5),)), "attestation.quotes[0].pcrs.hash"),
        (_attestation(quotes=(_quote_msg(size=20),)), "attestation.quotes[0].pcrs.pcrs[0].value"),
        (_attestation(quotes=(_quote_msg(count=25),)), "attestation.quotes[0].pcrs.pcrs[24].key"),
        (_attestation(quotes=(_quote_msg(count=0),)), "attestation.quotes[0].pcrs.pcrs"),
        (_attestation(quotes=(_pb_bytes(2, b"sig"),)), "attestation.quotes[0].quote"),
        (_attestation(quotes=(_pb_bytes(1, b"q"),)), "attestation.quotes[0].raw_sig"),
        (_attestation(quotes=(_pb_bytes(1, b"q") + _pb_bytes(2, b"s"),)), "attestation.quotes[0].pcrs"),
        (_pb_bytes(1, b"abc")[:-1], "attestation.1"),
        (b"\x0a\xff", "attestation.1"),
        (b"\x08" + b"\xff" * 10, "attestation.1"),
        (b"\x08" + b"\xff" * 9 + b"\x02", "attestation.1"),
        (b"\x0b", "attestation.1"),  # start group
        (b"\x00", "attestation"),  # field number 0
        (b"\x0d\x01\x02", "attestation.1"),  # truncated fixed32
    ],
)
def test_malformed_attestations(blob: bytes, field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_attestation(blob)
    assert info.value.field == field
    assert info.value.reason == f"parse.gcp.{field}"


def test_duplicate_pcr_index_rejected() -> None:
    pcrs = _pb_varint(1, 11) + _pb_bytes(2, _pb_varint(1, 3) + _pb_bytes(2, b"\x00" * 32)) * 2
    quote = _pb_bytes(1, b"q") + _pb_bytes(2, b"s") + _pb_bytes(3, pcrs)
    with pytest.raises(ParseError, match="appears twice"):
        parse_attestation(_attestation(quotes=(quote,)))


def test_not_bytes_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_attestation("text")  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_parse_error(data: bytes) -> None:
    try:
        list(iter_fields(data, "m"))
    except ParseError:
        pass
    try:
        parse_attestation(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(NONCE_PB) - 1), st.integers(min_value=1, max_value=255))
def test_mutated_real_evidence_only_raises_parse_error(offset: int, xor: int) -> None:
    blob = bytearray(NONCE_PB)
    blob[offset] ^= xor
    for candidate in (bytes(blob), bytes(blob[:offset])):
        try:
            parse_attestation(candidate)
        except ParseError:
            pass


# ---------------------------------------------------------------------------------------------
# AK certificate: real chain


def _real_ak_cert() -> bytes:
    return parse_attestation(NONCE_PB).ak_cert_der


def test_pinned_certificates_load() -> None:
    roots, inters = pinned_roots(), pinned_intermediates()
    assert len(roots) == 2 and len(inters) == 3
    assert all(r.subject == r.issuer for r in roots)


def test_real_chain_and_claims() -> None:
    cert = verify_ak_cert(_real_ak_cert(), (), NOW)
    assert cert.subjects == ("", f"CN={INTERMEDIATE_CN}{GOOGLE_SUFFIX}", f"CN={ROOT_CN}{GOOGLE_SUFFIX}")
    assert cert.chain[-1] in pinned_roots()
    info = cert.instance
    assert info is not None
    assert (info.zone, info.project_id, info.instance_name) == (
        "us-central1-a",
        "google.com:wuale-gcp-testing",
        "cos-test",
    )
    assert (info.project_number, info.instance_id) == (117478743145, 6797026933021542085)
    claims = cert.claims()
    assert claims["gcp.zone"] == "us-central1-a"
    assert claims["gcp.project_id"] == "google.com:wuale-gcp-testing"
    assert claims["gcp.project_number"] == 117478743145
    assert claims["gcp.instance_id"] == "6797026933021542085"
    assert claims["gcp.instance_name"] == "cos-test"
    assert claims["gcp.security.version"] == 0
    assert claims["gcp.security.is_production"] is True
    assert claims["gcp.security.tpm_data_always_encrypted"] is False
    assert claims["gcp.security.suspend_resume_always_disabled"] is False
    assert claims["gcp.security.vmtd_always_disabled"] is False
    assert claims["gcp.security.always_in_yarn"] is False
    assert claims["gcp.ak_cert.not_after"] == "2051-08-24T23:16:05+00:00"
    assert claims["gcp.ak_cert.root"] == f"CN={ROOT_CN}{GOOGLE_SUFFIX}"


def test_real_ak_key_matches_ak_pub() -> None:
    att = parse_attestation(NONCE_PB)
    cert = verify_ak_cert(att.ak_cert_der, att.intermediate_der, NOW)
    check_ak_matches(cert, parse_public(att.ak_pub).key)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(VerificationError) as info:
        check_ak_matches(cert, other)
    assert info.value.check == "gcp.ak_cert_key_mismatch"
    with pytest.raises(VerificationError, match="ak_cert_key_mismatch"):
        check_ak_matches(cert, ec.generate_private_key(ec.SECP256R1()).public_key())


def test_chain_fails_without_its_root() -> None:
    only_new_root = [r for r in pinned_roots() if "EK/AK CA Root" in r.subject.rfc4514_string()]
    with pytest.raises(VerificationError) as info:
        verify_ak_cert(_real_ak_cert(), (), NOW, roots=only_new_root)
    assert info.value.check == "gcp.ak_cert_chain"


def test_chain_needs_its_intermediate() -> None:
    inter2 = next(c for c in pinned_intermediates() if "2020-10-22" in c.subject.rfc4514_string())
    inter3 = next(c for c in pinned_intermediates() if "2021-10-12" in c.subject.rfc4514_string())
    with pytest.raises(VerificationError, match=r"^gcp\.ak_cert_chain"):
        verify_ak_cert(_real_ak_cert(), (), NOW, known_intermediates=[inter3])
    # the same intermediate carried in the evidence instead of the package
    der = inter2.public_bytes(serialization.Encoding.DER)
    cert = verify_ak_cert(_real_ak_cert(), [der], NOW, known_intermediates=[])
    assert len(cert.chain) == 3


@pytest.mark.parametrize(
    "when", [datetime(2051, 8, 25, tzinfo=UTC), datetime(2021, 8, 31, 23, 0, tzinfo=UTC)]
)
def test_outside_validity(when: datetime) -> None:
    with pytest.raises(VerificationError) as info:
        verify_ak_cert(_real_ak_cert(), (), when)
    assert info.value.check == "gcp.ak_cert_expired"
    assert "AK certificate" in info.value.detail


def test_naive_now_is_utc() -> None:
    verify_ak_cert(_real_ak_cert(), (), datetime(2026, 6, 1))


def test_flipped_signature_byte() -> None:
    der = bytearray(_real_ak_cert())
    der[-10] ^= 0x01  # inside the signature BIT STRING, the last element of the certificate
    with pytest.raises(VerificationError) as info:
        verify_ak_cert(bytes(der), (), NOW)
    assert info.value.check == "gcp.ak_cert_chain"


@pytest.mark.parametrize(
    ("ak", "inters", "field"),
    [(b"", (), "ak_cert"), (b"\x30\x03abc", (), "ak_cert"), (None, (b"junk",), "intermediate_certs[0]")],
)
def test_malformed_certificates(ak: bytes | None, inters: tuple[bytes, ...], field: str) -> None:
    with pytest.raises(ParseError) as info:
        verify_ak_cert(_real_ak_cert() if ak is None else ak, inters, NOW)
    assert info.value.field == field


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_certificates_and_instance_info_only_raise_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError):
        verify_ak_cert(data, (), NOW)
    try:
        parse_instance_info(data)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_real_ak_cert_is_refused_cleanly(data: st.DataObject) -> None:
    der = bytearray(_real_ak_cert())
    offset = data.draw(st.integers(min_value=0, max_value=len(der) - 1))
    der[offset] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        accepted = verify_ak_cert(bytes(der), (), NOW)
    except (ParseError, VerificationError):
        return
    # Only the unsigned wrapper may vary (e.g. the BIT STRING's unused-bits octet at offset 1083);
    # the signed content and the signature must be Google's.
    original = x509.load_der_x509_certificate(_real_ak_cert())
    assert accepted.certificate.tbs_certificate_bytes == original.tbs_certificate_bytes
    assert accepted.certificate.signature == original.signature


# ---------------------------------------------------------------------------------------------
# AK certificate: synthetic chains


class _Ca:
    def __init__(self, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *, ca: bool = True) -> None:
        self.key = key
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(NOW - timedelta(days=10))
            .not_valid_after(NOW + timedelta(days=10))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        self.cert = builder.sign(key, hashes.SHA256())

    def issue(
        self, extensions: list[tuple[x509.ExtensionType, bool]], *, key: rsa.RSAPrivateKey | None = None
    ) -> tuple[bytes, rsa.RSAPrivateKey]:
        leaf_key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(leaf_key.public_key())
            .serial_number(2)
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(NOW + timedelta(days=1))
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER), leaf_key


_SAN = x509.SubjectAlternativeName(
    [x509.DirectoryName(x509.Name([x509.NameAttribute(x509.ObjectIdentifier("2.23.133.2.2"), "vTPM")]))]
)


@pytest.fixture(scope="module")
def rsa_ca() -> _Ca:
    return _Ca(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _security(*parts: bytes) -> bytes:
    return b"".join(parts)


def test_synthetic_chain_with_instance_info(rsa_ca: _Ca) -> None:
    security = _security(
        _der(0xA0, _der_int(3)),
        _der(0xA1, b"\x01\x01\xff"),
        _der(0xA3, b"\x01\x01\xff"),
        _der(0xA7, b"\x05\x00"),
    )
    der, key = rsa_ca.issue(
        [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(True, False, False, False, False, False, False, False, False), True),
            (_SAN, True),
            (x509.UnrecognizedExtension(INSTANCE_INFO_OID, _instance_info(security)), False),
        ]
    )
    cert = verify_ak_cert(der, (), NOW, roots=[rsa_ca.cert], known_intermediates=[])
    check_ak_matches(cert, key.public_key())
    claims = cert.claims()
    assert claims["gcp.zone"] == "europe-west4-b"
    assert claims["gcp.project_number"] == 1234567890
    assert claims["gcp.security.version"] == 3
    assert claims["gcp.security.is_production"] is True
    assert claims["gcp.security.suspend_resume_always_disabled"] is True
    assert claims["gcp.security.tpm_data_always_encrypted"] is False


def test_synthetic_without_instance_info_or_security(rsa_ca: _Ca) -> None:
    der, _ = rsa_ca.issue([])
    cert = verify_ak_cert(der, (), NOW, roots=[rsa_ca.cert], known_intermediates=[])
    assert cert.instance is None and "gcp.zone" not in cert.claims()
    der, _ = rsa_ca.issue([(x509.UnrecognizedExtension(INSTANCE_INFO_OID, _instance_info()), False)])
    info = verify_ak_cert(der, (), NOW, roots=[rsa_ca.cert], known_intermediates=[]).instance
    assert info is not None and info.security == akcert.SecurityProperties()


def test_unknown_critical_extension(rsa_ca: _Ca) -> None:
    odd = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    der, _ = rsa_ca.issue([(odd, True)])
    with pytest.raises(VerificationError) as info:
        verify_ak_cert(der, (), NOW, roots=[rsa_ca.cert], known_intermediates=[])
    assert info.value.check == "gcp.ak_cert_unsupported_extension"
    assert "1.3.6.1.4.1.99999.1" in info.value.detail
    der, _ = rsa_ca.issue([(odd, False)])  # the same extension, non-critical, may be ignored
    verify_ak_cert(der, (), NOW, roots=[rsa_ca.cert], known_intermediates=[])


def test_issuer_must_be_a_ca() -> None:
    not_ca = _Ca(rsa.generate_private_key(public_exponent=65537, key_size=2048), ca=False)
    der, _ = not_ca.issue([])
    with pytest.raises(VerificationError, match="not a CA"):
        verify_ak_cert(der, (), NOW, roots=[not_ca.cert], known_intermediates=[])


def test_leaf_must_not_be_a_ca(rsa_ca: _Ca) -> None:
    der, _ = rsa_ca.issue([(x509.BasicConstraints(ca=True, path_length=None), True)])
    with pytest.raises(VerificationError, match=r"^gcp\.ak_cert_chain"):
        verify_ak_cert(der, (), NOW, roots=[rsa_ca.cert], known_intermediates=[])


def test_ecdsa_issuer() -> None:
    ca = _Ca(ec.generate_private_key(ec.SECP384R1()))
    der, _ = ca.issue([])
    assert len(verify_ak_cert(der, (), NOW, roots=[ca.cert], known_intermediates=[]).chain) == 2


def test_real_cert_does_not_chain_to_another_root(rsa_ca: _Ca) -> None:
    with pytest.raises(VerificationError, match=r"^gcp\.ak_cert_chain"):
        verify_ak_cert(_real_ak_cert(), (), NOW, roots=[rsa_ca.cert])


@pytest.mark.parametrize(
    ("value", "field"),
    [
        (_instance_info()[:-1], "ak_cert.instance_info.sequence"),
        (_instance_info() + b"\x00", "ak_cert.instance_info"),
        (_der(0x30, _der(0x0C, b"\xff")), "ak_cert.instance_info.zone"),
        (_der(0x30, _der(0x0C, b"z") + _der(0x02, b"\x00\x01")), "ak_cert.instance_info.project_number"),
        (_der(0x30, _der(0x0C, b"z") + _der(0x02, b"\xff")), "ak_cert.instance_info.project_number"),
        (_der(0x30, _der(0x0C, b"z") + _der(0x02, b"")), "ak_cert.instance_info.project_number"),
        (_der(0x30, _der(0x16, b"z")), "ak_cert.instance_info.zone"),
        (_instance_info(_der(0xA1, b"\x01\x01\x01")), "ak_cert.instance_info.security[1].value"),
        (
            _instance_info(_der(0xA1, b"\x01\x01\xff") + _der(0xA0, _der_int(1))),
            "ak_cert.instance_info.security.tag",
        ),
        (_instance_info(_der(0xA0, _der_int(1) + b"\x00")), "ak_cert.instance_info.security[0]"),
        (b"\x30\x81\x05" + b"z" * 5, "ak_cert.instance_info.sequence"),
    ],
)
def test_malformed_instance_info(value: bytes, field: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_instance_info(value)
    assert info.value.field == field


def test_real_instance_info_bytes() -> None:
    cert = x509.load_der_x509_certificate(_real_ak_cert())
    ext = cert.extensions.get_extension_for_oid(INSTANCE_INFO_OID)
    assert not ext.critical
    info = parse_instance_info(ext.value.value)  # type: ignore[attr-defined]
    assert info.security == akcert.SecurityProperties(security_version=0, is_production=True)
