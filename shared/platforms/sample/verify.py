"""Pure verification for the sample platform: the trust root and the time are parameters, so the
same code serves the verifier, the demo and tests that move the clock."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shared.errors import ParseError, VerificationError
from shared.platforms.sample.abi import (
    SIGNATURE_COMPONENT_SIZE,
    SampleReport,
    encode_report,
    signed_region,
)
from shared.platforms.sample.pki import DEVICE_ID_OID

CHAIN_INVALID = "endorsement.chain_invalid"
EXPIRED = "endorsement.expired"
UNTRUSTED_ROOT = "endorsement.untrusted_root"
BAD_KEY = "endorsement.bad_key"
DEVICE_MISMATCH = "endorsement.device_mismatch"
SIGNATURE_INVALID = "evidence.signature_invalid"
REPORT_MISMATCH = "evidence.report_mismatch"

_PEM_MARKER = b"-----BEGIN"


def load_cert(der_or_pem: bytes) -> x509.Certificate:
    """One certificate from DER or PEM bytes; ``ParseError("certificate")`` otherwise."""
    if not isinstance(der_or_pem, (bytes, bytearray, memoryview)):
        raise ParseError("certificate", f"expected bytes, got {type(der_or_pem).__name__}")
    data = bytes(der_or_pem)
    try:
        if data.lstrip().startswith(_PEM_MARKER):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ParseError("certificate", f"unreadable certificate: {exc}") from None


def load_chain(pem: bytes) -> tuple[x509.Certificate, x509.Certificate]:
    """``(intermediate, root)`` from the KDS ``cert_chain`` PEM bundle (intermediate first)."""
    if not isinstance(pem, (bytes, bytearray, memoryview)):
        raise ParseError("cert_chain", f"expected bytes, got {type(pem).__name__}")
    try:
        certs = x509.load_pem_x509_certificates(bytes(pem))
    except ValueError as exc:
        raise ParseError("cert_chain", f"unreadable certificate chain: {exc}") from None
    if len(certs) != 2:
        raise ParseError("cert_chain", f"expected 2 certificates, got {len(certs)}")
    return certs[0], certs[1]


def _utc(now: datetime) -> datetime:
    # Naive datetimes are taken as UTC rather than local time: comparing naive with the aware
    # validity bounds would raise TypeError, and local time would silently shift the window.
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _check_issued_by(child: x509.Certificate, issuer: x509.Certificate, check: str) -> None:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise VerificationError(
            check, f"{_subject(child)} is not issued by {_subject(issuer)}: {exc or type(exc).__name__}"
        ) from None


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise VerificationError(CHAIN_INVALID, f"{_subject(cert)}: bad extensions: {exc}") from None


def _check_ca(cert: x509.Certificate) -> None:
    bc = _basic_constraints(cert)
    if bc is None or not bc.ca:
        raise VerificationError(CHAIN_INVALID, f"{_subject(cert)} is not a CA")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return  # keyUsage is optional for CAs; when present it must allow certificate signing
    if not usage.key_cert_sign:
        raise VerificationError(CHAIN_INVALID, f"{_subject(cert)} may not sign certificates")


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise VerificationError(
            EXPIRED, f"{_subject(cert)} not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if now > cert.not_valid_after_utc:
        raise VerificationError(
            EXPIRED, f"{_subject(cert)} expired at {cert.not_valid_after_utc.isoformat()}"
        )


def _same_cert(a: x509.Certificate, b: x509.Certificate) -> bool:
    return a.public_bytes(serialization.Encoding.DER) == b.public_bytes(serialization.Encoding.DER)


def verify_vendor_chain(
    intermediate: x509.Certificate,
    root: x509.Certificate,
    now: datetime,
    *,
    pinned_root: x509.Certificate | None = None,
) -> None:
    """Verify intermediate -> root at ``now``. The same for every device of the vendor, so
    callers may cache the verdict and re-check only the validity windows."""
    at = _utc(now)
    if pinned_root is not None and not _same_cert(root, pinned_root):
        raise VerificationError(UNTRUSTED_ROOT, f"{_subject(root)} is not the pinned root")
    if root.issuer != root.subject:
        raise VerificationError(UNTRUSTED_ROOT, f"{_subject(root)} is not self-signed")
    _check_issued_by(root, root, UNTRUSTED_ROOT)
    # An intermediate that does not chain to the anchor means the endorsement comes from a
    # root we do not trust.
    _check_issued_by(intermediate, root, UNTRUSTED_ROOT)
    _check_ca(root)
    _check_ca(intermediate)
    for cert in (root, intermediate):
        _check_validity(cert, at)


def verify_device_cert(device_cert_der: bytes, intermediate: x509.Certificate, now: datetime) -> x509.Certificate:
    """Verify device cert -> (already verified) intermediate at ``now``; return the device cert."""
    leaf = load_cert(device_cert_der)
    _check_issued_by(leaf, intermediate, CHAIN_INVALID)
    leaf_bc = _basic_constraints(leaf)
    if leaf_bc is None or leaf_bc.ca:
        raise VerificationError(CHAIN_INVALID, "device certificate must be an end-entity (CA=False)")
    _check_validity(leaf, _utc(now))
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(BAD_KEY, "device key must be EC P-384")
    return leaf


def verify_chain(
    device_cert_der: bytes,
    intermediate: x509.Certificate,
    root: x509.Certificate,
    now: datetime,
    *,
    pinned_root: x509.Certificate | None = None,
) -> x509.Certificate:
    """Verify device cert -> intermediate -> root at ``now`` and return the device cert.

    ``root`` is the trust anchor. When it came from the network (the KDS chain), pass the
    configured anchor as ``pinned_root``; the two must then be the identical certificate.
    """
    load_cert(device_cert_der)  # an unreadable leaf is a parse error before any chain check
    verify_vendor_chain(intermediate, root, now, pinned_root=pinned_root)
    return verify_device_cert(device_cert_der, intermediate, now)


def _device_id_of(cert: x509.Certificate) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_oid(DEVICE_ID_OID)
    except x509.ExtensionNotFound:
        raise VerificationError(DEVICE_MISMATCH, "device certificate has no device id extension") from None
    except ValueError as exc:
        raise VerificationError(DEVICE_MISMATCH, f"device certificate extensions: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise VerificationError(DEVICE_MISMATCH, "device id extension has an unexpected form")
    return value.value


def verify_report(raw: bytes, report: SampleReport, device_cert: x509.Certificate) -> None:
    """Check that ``device_cert`` belongs to the reporting device and signed ``raw``.

    ``report`` must be ``parse_report(raw)``: the signature is checked over ``raw`` while policy
    reads ``report``, so a mismatch would let unsigned fields reach policy.
    """
    region = signed_region(raw)  # also rejects non-bytes and wrong sizes with ParseError
    if encode_report(report) != bytes(raw):
        raise VerificationError(REPORT_MISMATCH, "report does not match the raw evidence")
    cert_device_id = _device_id_of(device_cert)
    if cert_device_id != report.device_id:
        raise VerificationError(
            DEVICE_MISMATCH,
            f"certificate is for device {cert_device_id.hex()}, report from {report.device_id.hex()}",
        )
    key = device_cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(BAD_KEY, "device key must be EC P-384")
    r = int.from_bytes(report.signature[:SIGNATURE_COMPONENT_SIZE], "big")
    s = int.from_bytes(report.signature[SIGNATURE_COMPONENT_SIZE:], "big")
    try:
        key.verify(encode_dss_signature(r, s), region, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise VerificationError(SIGNATURE_INVALID, "report signature does not verify") from None
