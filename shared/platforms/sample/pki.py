"""Test vendor PKI and simulated devices for the sample platform.

Everything is real P-384 cryptography so the verifier exercises the same code paths as for a
hardware vendor; only the key custody is fake (keys live in memory or unencrypted PEM files).
Pure apart from the explicit ``VendorPKI.save`` / ``VendorPKI.load``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID, ObjectIdentifier

from shared.errors import ParseError
from shared.platforms.sample.abi import (
    DEVICE_ID_SIZE,
    FLAG_DEBUG,
    MEASUREMENT_SIZE,
    REPORT_DATA_SIZE,
    SIGNATURE_COMPONENT_SIZE,
    SIGNATURE_SIZE,
    SIGNED_REGION_END,
    VERSION,
    SampleReport,
    encode_report,
)

DEVICE_ID_OID = ObjectIdentifier("1.3.6.1.4.1.99999.1.1")
ROOT_CN = "REMITS Sample Vendor Root"
INTERMEDIATE_CN = "REMITS Sample Vendor Intermediate"
DEVICE_CN = "REMITS-SAMPLE-DEVICE"
ORGANIZATION = "REMITS Sample Vendor"

ROOT_CERT_FILE = "root.pem"
ROOT_KEY_FILE = "root.key"
INTERMEDIATE_CERT_FILE = "intermediate.pem"
INTERMEDIATE_KEY_FILE = "intermediate.key"

_CURVE = ec.SECP384R1


def _utc(now: datetime) -> datetime:
    # X.509 times have second precision; truncating keeps not_valid_before <= now after encoding.
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(microsecond=0)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_public_key: ec.EllipticCurvePublicKey,
    not_before: datetime,
    validity_days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + timedelta(days=validity_days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False)
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_ec_key(pem: bytes, what: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ParseError(f"pki.{what}", f"unreadable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _CURVE):
        raise ParseError(f"pki.{what}", "expected an EC P-384 private key")
    return key


def _load_cert(pem: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise ParseError(f"pki.{what}", f"unreadable certificate: {exc}") from None


@dataclass(frozen=True)
class VendorPKI:
    """The sample vendor's root and intermediate CAs (both P-384)."""

    root_cert: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate_cert: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(cls, now: datetime, validity_days: int = 3650) -> VendorPKI:
        start = _utc(now)
        root_key = ec.generate_private_key(_CURVE())
        root_name = _name(ROOT_CN)
        root_cert = (
            _builder(root_name, root_name, root_key.public_key(), root_key.public_key(), start, validity_days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .sign(root_key, hashes.SHA384())
        )
        inter_key = ec.generate_private_key(_CURVE())
        inter_cert = (
            _builder(
                _name(INTERMEDIATE_CN),
                root_name,
                inter_key.public_key(),
                root_key.public_key(),
                start,
                validity_days,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .sign(root_key, hashes.SHA384())
        )
        return cls(root_cert, root_key, inter_cert, inter_key)

    def issue_device_cert(
        self,
        device_id: bytes,
        public_key: ec.EllipticCurvePublicKey,
        now: datetime,
        validity_days: int = 365,
    ) -> bytes:
        """DER certificate binding ``public_key`` to ``device_id``, signed by the intermediate."""
        if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_SIZE:
            raise ParseError("pki.device_id", f"device id must be {DEVICE_ID_SIZE} bytes")
        cert = (
            _builder(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE_CN)]),
                self.intermediate_cert.subject,
                public_key,
                self.intermediate_key.public_key(),
                _utc(now),
                validity_days,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_leaf_key_usage(), critical=True)
            # The value is the raw id (not DER-wrapped) so verifiers compare it byte for byte.
            .add_extension(x509.UnrecognizedExtension(DEVICE_ID_OID, device_id), critical=False)
            .sign(self.intermediate_key, hashes.SHA384())
        )
        return cert.public_bytes(serialization.Encoding.DER)

    def chain_pem(self) -> bytes:
        """Intermediate then root, as served by the KDS ``cert_chain`` endpoint."""
        pem = serialization.Encoding.PEM
        return self.intermediate_cert.public_bytes(pem) + self.root_cert.public_bytes(pem)

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write the four PEM files; keys get mode 0600 since they are unencrypted."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / ROOT_CERT_FILE).write_bytes(self.root_cert.public_bytes(serialization.Encoding.PEM))
        (path / INTERMEDIATE_CERT_FILE).write_bytes(
            self.intermediate_cert.public_bytes(serialization.Encoding.PEM)
        )
        for name, key in ((ROOT_KEY_FILE, self.root_key), (INTERMEDIATE_KEY_FILE, self.intermediate_key)):
            target = path / name
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(_private_pem(key))

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> VendorPKI:
        path = Path(directory)
        return cls(
            root_cert=_load_cert((path / ROOT_CERT_FILE).read_bytes(), "root_cert"),
            root_key=_load_ec_key((path / ROOT_KEY_FILE).read_bytes(), "root_key"),
            intermediate_cert=_load_cert((path / INTERMEDIATE_CERT_FILE).read_bytes(), "intermediate_cert"),
            intermediate_key=_load_ec_key((path / INTERMEDIATE_KEY_FILE).read_bytes(), "intermediate_key"),
        )


def _pad_report_data(report_data: bytes) -> bytes:
    if not isinstance(report_data, (bytes, bytearray)):
        raise ParseError("report.report_data", f"expected bytes, got {type(report_data).__name__}")
    if len(report_data) > REPORT_DATA_SIZE:
        raise ParseError("report.report_data", f"at most {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    return bytes(report_data).ljust(REPORT_DATA_SIZE, b"\x00")


@dataclass
class SimulatedDevice:
    """A sample-platform device: an identity, a signing key and the state it reports."""

    device_id: bytes
    private_key: ec.EllipticCurvePrivateKey
    measurement: bytes
    svn: int
    flags: int

    @classmethod
    def create(cls, measurement: bytes, svn: int = 1, debug: bool = False) -> SimulatedDevice:
        if not isinstance(measurement, bytes) or len(measurement) != MEASUREMENT_SIZE:
            raise ParseError("report.measurement", f"measurement must be {MEASUREMENT_SIZE} bytes")
        return cls(
            device_id=os.urandom(DEVICE_ID_SIZE),
            private_key=ec.generate_private_key(_CURVE()),
            measurement=measurement,
            svn=svn,
            flags=FLAG_DEBUG if debug else 0,
        )

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()

    def make_report(self, report_data: bytes) -> bytes:
        """Build and sign a report binding ``report_data`` (zero-padded to 64 bytes)."""
        unsigned = SampleReport(
            version=VERSION,
            flags=self.flags,
            device_id=self.device_id,
            measurement=self.measurement,
            svn=self.svn,
            report_data=_pad_report_data(report_data),
            signature=bytes(SIGNATURE_SIZE),
        )
        region = encode_report(unsigned)[:SIGNED_REGION_END]
        r, s = decode_dss_signature(self.private_key.sign(region, ec.ECDSA(hashes.SHA384())))
        signature = r.to_bytes(SIGNATURE_COMPONENT_SIZE, "big") + s.to_bytes(SIGNATURE_COMPONENT_SIZE, "big")
        return region + signature
