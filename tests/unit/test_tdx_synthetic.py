"""Checks real data cannot reach, under a synthetic Intel-shaped PKI: the real cos113 quote body,
TCB Info and QE Identity, re-signed by a generated root, PCK CA, PCK leaf (with a hand-encoded SGX
extension), TCB Signing certificate and attestation key. Each test changes one thing under valid
signatures -- revocation, identity, FMSPC, module signer, binding -- and expects its check."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from shared.errors import VerificationError
from shared.platforms.tdx import checks
from shared.platforms.tdx.abi import HEADER_SIZE, TD10_REPORT_SIZE, parse_quote
from shared.platforms.tdx.collateral import Collateral, load_collateral, parse_tcb_info
from shared.platforms.tdx.pck import SGX_EXTENSION_OID, parse_sgx_extension
from shared.platforms.tdx.verify import Evaluation, evaluate_quote, verify_quote
from tests.unit.test_tdx_vectors import QUOTES, raw_quote

CASE = "gotdx_cos113_ccel"
NOW = datetime(2025, 10, 31, 14, 17, 11, tzinfo=UTC)
FMSPC = bytes.fromhex("00806f050000")
COMPONENTS = (7, 7, 2, 2, 3, 1, 0, 3) + (0,) * 8
_PREFIX = (1, 2, 840, 113741, 1, 13, 1)


# -- a little DER ------------------------------------------------------------------------------


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def _oid(*arcs: int) -> bytes:
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _int(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big")
    return _tlv(0x02, raw)


def _pair(suffix: tuple[int, ...], value: bytes) -> bytes:
    return _tlv(0x30, _oid(*_PREFIX, *suffix) + value)


def sgx_extension(fmspc: bytes = FMSPC, pce_id: bytes = b"\x00\x00", pce_svn: int = 11) -> bytes:
    tcb = b"".join(_pair((2, i + 1), _int(svn)) for i, svn in enumerate(COMPONENTS))
    tcb += _pair((2, 17), _int(pce_svn)) + _pair((2, 18), _tlv(0x04, bytes(COMPONENTS)))
    return _tlv(
        0x30,
        _pair((1,), _tlv(0x04, bytes(16)))
        + _pair((2,), _tlv(0x30, tcb))
        + _pair((3,), _tlv(0x04, pce_id))
        + _pair((4,), _tlv(0x04, fmspc))
        + _pair((5,), _tlv(0x0A, b"\x01")),
    )


def test_hand_encoded_extension_round_trips() -> None:
    ext = parse_sgx_extension(sgx_extension())
    assert ext.fmspc == FMSPC and ext.tcb_components == COMPONENTS and ext.pce_svn == 11 and ext.sgx_type == 1


# -- PKI ---------------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test")]
    )


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    serial: int,
    extension: bytes | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2040, 1, 1, tzinfo=UTC))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(SGX_EXTENSION_OID, extension), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(issuer: str, key: ec.EllipticCurvePrivateKey, revoked: list[int]) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(NOW - timedelta(days=10))
        .next_update(NOW + timedelta(days=10))
    )
    for serial in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(days=1))
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _raw_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )[1:]


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


ROOT_CN, CA_CN, LEAF_CN, TCB_CN = (
    "Test SGX Root CA",
    "Intel SGX PCK Platform CA",
    "Intel SGX PCK Certificate",
    "Intel SGX TCB Signing",
)


@dataclass
class World:
    """Everything that may be varied; ``quote()`` and ``collateral()`` assemble the current state."""

    root_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    ca_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    leaf_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    tcb_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    att_key: ec.EllipticCurvePrivateKey = field(default_factory=_key)
    extension: bytes | None = field(default_factory=sgx_extension)
    leaf_cn: str = LEAF_CN
    pck_revoked: list[int] = field(default_factory=list)
    root_revoked: list[int] = field(default_factory=list)
    tcb_info_edit: Callable[[str], str] = lambda text: text
    qe_identity_edit: Callable[[str], str] = lambda text: text
    body_edit: Callable[[bytearray], None] = lambda body: None
    bind: bool = True

    @cached_property
    def root(self) -> x509.Certificate:  # cached: ECDSA signatures differ on every signing
        return _cert(ROOT_CN, self.root_key, ROOT_CN, self.root_key, ca=True, serial=1)

    @cached_property
    def ca(self) -> x509.Certificate:  # cached: ECDSA signatures differ on every signing
        return _cert(CA_CN, self.ca_key, ROOT_CN, self.root_key, ca=True, serial=2)

    @property
    def leaf(self) -> x509.Certificate:
        return _cert(
            self.leaf_cn, self.leaf_key, CA_CN, self.ca_key, ca=False, serial=3, extension=self.extension
        )

    @cached_property
    def tcb_signer(self) -> x509.Certificate:  # cached: ECDSA signatures differ on every signing
        return _cert(TCB_CN, self.tcb_key, ROOT_CN, self.root_key, ca=False, serial=4)

    def root_der(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.DER)

    def quote(self) -> bytes:
        base = raw_quote(CASE)
        real = parse_quote(base)
        body = bytearray(base[HEADER_SIZE : HEADER_SIZE + TD10_REPORT_SIZE])
        self.body_edit(body)
        signed = base[:HEADER_SIZE] + bytes(body)
        att_public = _raw_public(self.att_key)
        auth = real.qe.auth_data
        binding = hashlib.sha256(att_public + auth).digest() if self.bind else bytes(32)
        qe_report = real.qe.report.raw[:320] + binding + bytes(32)
        chain = _pem(self.leaf, self.ca, self.root) + b"\x00"
        inner = (
            qe_report
            + _raw_sign(self.leaf_key, qe_report)
            + struct.pack("<H", len(auth))
            + auth
            + struct.pack("<HI", 5, len(chain))
            + chain
        )
        signature_data = (
            _raw_sign(self.att_key, signed) + att_public + struct.pack("<HI", 6, len(inner)) + inner
        )
        return signed + struct.pack("<I", len(signature_data)) + signature_data

    def _document(self, name: str, key: str, edit: Callable[[str], str]) -> bytes:
        text = (QUOTES / CASE / "collateral" / name).read_text()
        inner = edit(text[text.index("{", 1) : text.rindex(',"signature"')])
        return f'{{"{key}":{inner},"signature":"{_raw_sign(self.tcb_key, inner.encode()).hex()}"}}'.encode()

    def collateral(self) -> Collateral:
        return load_collateral(
            tcb_info=self._document("tcb_info.json", "tcbInfo", self.tcb_info_edit),
            tcb_info_issuer_chain=_pem(self.tcb_signer, self.root),
            qe_identity=self._document("qe_identity.json", "enclaveIdentity", self.qe_identity_edit),
            pck_crl=_crl(CA_CN, self.ca_key, self.pck_revoked),
            root_ca_crl=_crl(ROOT_CN, self.root_key, self.root_revoked),
        )

    def evaluate(self) -> Evaluation:
        return evaluate_quote(self.quote(), self.collateral(), self.root_der(), NOW)

    def failure(self) -> str:
        with pytest.raises(VerificationError) as info:
            verify_quote(self.quote(), self.collateral(), self.root_der(), NOW)
        return info.value.check


@pytest.fixture(scope="module")
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: _key() for name in ("root_key", "ca_key", "leaf_key", "tcb_key", "att_key")}


@pytest.fixture
def world(keys: dict[str, ec.EllipticCurvePrivateKey]) -> World:
    return World(keys["root_key"], keys["ca_key"], keys["leaf_key"], keys["tcb_key"], keys["att_key"])


def test_the_synthetic_world_verifies(world: World) -> None:
    verified = verify_quote(world.quote(), world.collateral(), world.root_der(), NOW)
    assert verified.tcb_status == "UpToDate"  # same as the real cos113 quote under Intel's rule
    assert all(o.passed for o in verified.outcomes)


def test_revoked_pck(world: World) -> None:
    world.pck_revoked = [3]
    assert world.failure() == checks.PCK_NOT_REVOKED


def test_revoked_intermediate(world: World) -> None:
    world.root_revoked = [2]
    assert world.failure() == checks.INTERMEDIATE_NOT_REVOKED


def test_revoked_tcb_signing_certificate(world: World) -> None:
    world.root_revoked = [4]
    assert world.failure() == checks.TCB_SIGNING_CERT_NOT_REVOKED


def test_fmspc_and_pce_id_must_match(world: World) -> None:
    world.extension = sgx_extension(fmspc=bytes.fromhex("00806f050001"), pce_id=b"\x00\x01")
    evaluation = world.evaluate()
    assert evaluation.passed(checks.FMSPC_MATCHES) is False
    assert evaluation.passed(checks.PCEID_MATCHES) is False
    assert world.failure() == checks.FMSPC_MATCHES


def test_pck_without_sgx_extension_or_pck_name(world: World) -> None:
    world.extension = None
    assert world.failure() == checks.PCK_CHAIN_PROFILE
    world.extension = sgx_extension()
    world.leaf_cn = "Some Other Certificate"
    assert world.failure() == checks.PCK_CHAIN_PROFILE


def test_qe_identity_mismatches(world: World) -> None:
    edits = {
        "mrsigner": lambda t: t.replace("DC9E2A7C", "DC9E2A7D"),
        "isvprodid": lambda t: t.replace('"isvprodid":2', '"isvprodid":3'),
        "attributes": lambda t: t.replace('"attributes":"11', '"attributes":"13'),
        "miscselect": lambda t: t.replace('"miscselect":"00000000"', '"miscselect":"00000001"'),
        "id": lambda t: t.replace('"id":"TD_QE"', '"id":"QE"'),
    }
    for name, edit in edits.items():
        world.qe_identity_edit = edit
        evaluation = world.evaluate()
        assert evaluation.passed(checks.QE_IDENTITY_SIGNATURE) is True, name
        assert evaluation.passed(checks.QE_IDENTITY_MATCHES) is False, name


def test_qe_tcb_level_feeds_the_status(world: World) -> None:
    # The QE (ISVSVN 6) below every QE Identity level: TcbNotSupported, not a verification error.
    world.qe_identity_edit = lambda t: t.replace('"isvsvn":4', '"isvsvn":7')
    assert (
        verify_quote(world.quote(), world.collateral(), world.root_der(), NOW).tcb_status == "TcbNotSupported"
    )


def test_module_signer_and_attributes(world: World) -> None:
    def mrsigner(body: bytearray) -> None:
        body[64] = 1

    world.body_edit = mrsigner
    assert world.failure() == checks.MODULE_MRSIGNER_MATCHES

    def seam_attributes(body: bytearray) -> None:
        body[112] = 1

    world.body_edit = seam_attributes
    assert world.failure() == checks.SEAM_ATTRIBUTES_ZERO

    def unknown_module(body: bytearray) -> None:
        body[1] = 0x07  # TDX_07: no such module identity

    world.body_edit = unknown_module
    evaluation = world.evaluate()
    assert evaluation.passed(checks.MODULE_MRSIGNER_MATCHES) is False
    assert "TDX_07" in evaluation.outcomes[checks.MODULE_MRSIGNER_MATCHES].detail


def test_collateral_signed_by_another_certificate_of_the_root(world: World) -> None:
    # The PCK CA is also issued by the root; it must not be able to vouch for TCB Info.
    coll = world.collateral()
    inner = coll.tcb_info.signed_body
    signature = _raw_sign(world.ca_key, inner).hex().encode()
    forged_info = b'{"tcbInfo":' + inner + b',"signature":"' + signature + b'"}'
    forged = replace(coll, tcb_info=parse_tcb_info(forged_info), tcb_info_issuer_chain=(world.ca, world.root))
    evaluation = evaluate_quote(world.quote(), forged, world.root_der(), NOW)
    assert evaluation.passed(checks.TCB_INFO_SIGNATURE) is True  # it is the CA's valid signature...
    assert (
        evaluation.passed(checks.TCB_SIGNING_CERT_SIGNED_BY_PINNED_ROOT) is False
    )  # ...but not a TCB signer


def test_tcb_info_for_another_tee(world: World) -> None:
    world.tcb_info_edit = lambda t: t.replace('"id":"TDX"', '"id":"SGX"')
    assert world.failure() == checks.TCB_INFO_ID_MATCHES_TEE


def test_qe_report_data_must_bind_the_attestation_key(world: World) -> None:
    world.bind = False
    evaluation = world.evaluate()
    assert evaluation.passed(checks.QE_REPORT_SIGNATURE) is True  # the QE signed what it signed
    assert evaluation.passed(checks.QE_REPORT_DATA_BINDING) is False
    assert world.failure() == checks.QE_REPORT_DATA_BINDING


def test_crl_from_an_unrelated_key(world: World, keys: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    coll = world.collateral()
    forged = x509.load_der_x509_crl(_crl(CA_CN, _key(), []))
    evaluation = evaluate_quote(world.quote(), replace(coll, pck_crl=forged), world.root_der(), NOW)
    assert evaluation.passed(checks.PCK_CRL_SIGNATURE) is False
    assert evaluation.passed(checks.PCK_NOT_REVOKED) is None


def _first_platform_level(status: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        at = text.index('"sgxtcbcomponents"')  # past the module identities, into the platform levels
        return text[:at] + text[at:].replace('"tcbStatus":"UpToDate"', f'"tcbStatus":"{status}"', 1)

    return edit


def test_status_follows_the_tcb_info(world: World) -> None:
    world.tcb_info_edit = _first_platform_level("SWHardeningNeeded")
    assert (
        verify_quote(world.quote(), world.collateral(), world.root_der(), NOW).tcb_status
        == "SWHardeningNeeded"
    )
