"""A simulated IBM Secure Execution host, for the demo and the tests.

``FakeIbmPki`` is an IBM-style PKI made with real cryptography: a root CA, an intermediate CA (the
DigiCert stand-ins), an "IBM Z Host Key Signing Service" certificate with IBM's subject layout, and
CRLs -- the host-key CRL names its issuer with the attributes in another order, as IBM's real one
does. Only the trust anchor differs from IBM's. CA keys are P-384 rather than RSA-4096 so tests stay
fast; the RSA path is covered by the s390-tools vectors.

``SimulatedHost`` is one machine: a P-521 host key and its host key document (HKD).
``SimulatedUltravisor`` plays the UV's Retrieve Attestation Measurement call: it really opens the
ARCB with the host private key (a request for another host fails) and computes measurement and
additional data as the firmware does. Knobs make the bad cases: another image's tags, a tampered
measurement, additional data of the wrong size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.platforms.se import abi
from shared.platforms.se.abi import BootHdrTags
from shared.platforms.se.arcb import open_arcb
from shared.platforms.se.measurement import SeResponse, compute_measurement

VALID_FROM = datetime(2024, 1, 1, tzinfo=UTC)
VALID_UNTIL = datetime(2034, 1, 1, tzinfo=UTC)
SIM_NOW = datetime(2026, 6, 1, tzinfo=UTC)  # inside every simulated validity window

IBM_CORP = "International Business Machines Corporation"


_CRL_ORDER = {
    oid: i
    for i, oid in enumerate(
        (
            NameOID.COUNTRY_NAME,
            NameOID.ORGANIZATION_NAME,
            NameOID.ORGANIZATIONAL_UNIT_NAME,
            NameOID.LOCALITY_NAME,
            NameOID.STATE_OR_PROVINCE_NAME,
            NameOID.COMMON_NAME,
        )
    )
}


def ibm_name(ou: str, locality: str = "Poughkeepsie") -> x509.Name:
    parts = {
        "C": x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        "O": x509.NameAttribute(NameOID.ORGANIZATION_NAME, IBM_CORP),
        "CN": x509.NameAttribute(NameOID.COMMON_NAME, IBM_CORP),
        "ST": x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "New York"),
        "L": x509.NameAttribute(NameOID.LOCALITY_NAME, locality),
        "OU": x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou),
    }
    return x509.Name([parts[k] for k in ("C", "O", "CN", "ST", "L", "OU")])


def _pem(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _cert(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    not_before: datetime = VALID_FROM,
    not_after: datetime = VALID_UNTIL,
    serial: int | None = None,
    key_usage: str = "ca",
    authority: ec.EllipticCurvePublicKey | None = None,
) -> x509.Certificate:
    usage = {
        "ca": dict(digital_signature=False, key_cert_sign=True, crl_sign=True, key_agreement=False),
        "sign": dict(digital_signature=True, key_cert_sign=False, crl_sign=True, key_agreement=False),
        "host": dict(digital_signature=False, key_cert_sign=False, crl_sign=False, key_agreement=True),
    }[key_usage]
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                encipher_only=False,
                decipher_only=False,
                **usage,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority or signer.public_key()),
            critical=False,
        )
        .sign(signer, hashes.SHA384())
    )


class FakeIbmPki:
    """root → intermediate → IBM Z Host Key Signing Service, plus HKDs and CRLs on demand."""

    def __init__(
        self, *, signing_subject: x509.Name | None = None, signing_not_after: datetime = VALID_UNTIL
    ) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.inter_key = ec.generate_private_key(ec.SECP384R1())
        self.signing_key = ec.generate_private_key(ec.SECP384R1())
        root_name = ibm_name("IBM Z Fake Root CA", "Armonk")
        inter_name = ibm_name("IBM Z Fake Intermediate CA", "Armonk")
        self.signing_subject = signing_subject or ibm_name("IBM Z Host Key Signing Service")
        self.root = _cert(root_name, root_name, self.root_key.public_key(), self.root_key, ca=True)
        self.intermediate = _cert(inter_name, root_name, self.inter_key.public_key(), self.root_key, ca=True)
        self.signing_cert = _cert(
            self.signing_subject,
            inter_name,
            self.signing_key.public_key(),
            self.inter_key,
            ca=False,
            key_usage="sign",
            not_after=signing_not_after,
        )

    def issue_hkd(
        self,
        host_key: ec.EllipticCurvePublicKey,
        *,
        not_before: datetime = VALID_FROM,
        not_after: datetime = VALID_UNTIL,
        signer: ec.EllipticCurvePrivateKey | None = None,
        serial: int | None = None,
    ) -> x509.Certificate:
        """``signer`` other than the IBM key makes a document with a bad signature."""
        return _cert(
            ibm_name("IBM Z Host Key", "Armonk"),
            self.signing_subject,
            host_key,
            signer or self.signing_key,
            ca=False,
            key_usage="host",
            not_before=not_before,
            not_after=not_after,
            serial=serial,
            # A forger would copy the real key id: only the signature can tell.
            authority=self.signing_key.public_key(),
        )

    def _crl(
        self,
        issuer: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        revoked: Sequence[int],
        last_update: datetime,
        next_update: datetime,
    ) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer)
            .last_update(last_update)
            .next_update(next_update)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
            )
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(last_update).build()
            )
        return builder.sign(key, hashes.SHA384())

    def host_key_crl(
        self,
        revoked: Sequence[int] = (),
        *,
        last_update: datetime = VALID_FROM,
        next_update: datetime = VALID_UNTIL,
        signer: ec.EllipticCurvePrivateKey | None = None,
    ) -> bytes:
        # IBM's host-key CRL names the signing key with its attributes in another order.
        issuer = x509.Name(sorted(self.signing_subject, key=lambda a: _CRL_ORDER.get(a.oid, len(_CRL_ORDER))))
        return _pem(self._crl(issuer, signer or self.signing_key, revoked, last_update, next_update))

    def intermediate_crl(self, revoked: Sequence[int] = (), *, next_update: datetime = VALID_UNTIL) -> bytes:
        return _pem(self._crl(self.intermediate.subject, self.inter_key, revoked, VALID_FROM, next_update))

    def chain(self, *, crls: Sequence[bytes] | None = None) -> dict[str, list[bytes]]:
        """Keyword arguments for ``verify_host_key_documents`` (besides ``now``)."""
        return {
            "intermediates": [_pem(self.signing_cert), _pem(self.intermediate)],
            "roots": [_pem(self.root)],
            "crls": list(crls) if crls is not None else [self.host_key_crl(), self.intermediate_crl()],
        }


class SimulatedHost:
    """One IBM Z machine: its UV's P-521 host key and the HKD IBM issued for it."""

    def __init__(self, pki: FakeIbmPki | None = None) -> None:
        self.pki = pki or FakeIbmPki()
        self.private_key = ec.generate_private_key(ec.SECP521R1())
        self.public_key = self.private_key.public_key()
        self.hkd = self.pki.issue_hkd(self.public_key)
        self.hkd_pem = _pem(self.hkd)
        self.host_key_hash = abi.host_key_hash(self.public_key)

    def chain(self) -> dict[str, list[bytes]]:
        return self.pki.chain()


class SimulatedUltravisor:
    """The UV of ``host`` running an SE guest built as ``image_tags``."""

    def __init__(
        self,
        host: SimulatedHost,
        image_tags: BootHdrTags,
        cuid: bytes | None = None,
        *,
        image_phkh: bytes | None = None,
        tamper_measurement: bool = False,
        additional_data: bytes | None = None,
    ) -> None:
        self.host = host
        self.image_tags = image_tags
        self.cuid = (
            cuid if cuid is not None else hashlib.sha256(b"se-sim cuid" + host.host_key_hash).digest()[:16]
        )
        # The image was encrypted for this host unless told otherwise.
        self.image_phkh = image_phkh if image_phkh is not None else host.host_key_hash
        self.tamper_measurement = tamper_measurement
        self.additional_override = additional_data

    def _additional(self, flags: int, attestation_phkh: bytes) -> bytes:
        values = {
            "image_phkh": self.image_phkh,
            "attestation_phkh": attestation_phkh,
            "secret_store_hash": hashlib.sha512(b"\0").digest(),  # no secrets added, store unlocked
            "firmware_state": b"\0" * abi.FIRMWARE_STATE_SIZE,
        }
        return b"".join(values[name] for name, flag, _ in abi.ADDITIONAL_FIELDS if flags & flag)

    def perform(self, arcb: bytes, user_data: bytes = b"") -> SeResponse:
        """Raises ``VerificationError`` (``se.arcb.*``) when this host cannot open the request."""
        if len(user_data) > abi.USER_DATA_MAX:
            raise ValueError(f"user data is at most {abi.USER_DATA_MAX} bytes")
        opened = open_arcb(arcb, self.host.private_key)
        flags = opened.arcb.flags
        if self.additional_override is not None:
            additional = self.additional_override
        else:
            additional = self._additional(flags, opened.phkh)
        nonce = opened.nonce if flags & abi.FLAG_NONCE else None
        measurement = compute_measurement(
            opened.measurement_key, self.image_tags, self.cuid, user_data, nonce, additional
        )
        if self.tamper_measurement:
            measurement = bytes([measurement[0] ^ 1]) + measurement[1:]
        return SeResponse(
            measurement=measurement, additional_data=additional, cuid=self.cuid, user_data=user_data
        )


def random_image_tags(seed: bytes = b"") -> BootHdrTags:
    """Deterministic stand-in tags for an SE image (what ``pvextract-hdr`` would yield)."""
    raw = b"".join(hashlib.sha512(seed + bytes([i])).digest() for i in range(4))
    return BootHdrTags.from_bytes(raw[: abi.BOOT_HDR_TAGS_SIZE])


def expired(days: int = 1) -> datetime:
    """An instant past the simulated validity window."""
    return VALID_UNTIL + timedelta(days=days)
