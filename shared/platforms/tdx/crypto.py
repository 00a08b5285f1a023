"""The cryptographic primitives of DCAP verification: raw P-256 ECDSA, certificate links, CRLs.

Every function returns ``None`` on success and a human-readable reason on failure, so the caller
can record each check's outcome separately instead of stopping at the first problem.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shared.platforms.tdx.certs import subject

_COORD = 32
# Certificate links, CRL signatures and document signatures are pure functions of their inputs and
# the same few values recur for every quote of a fleet (one PCK CA, one TCB signing certificate,
# one TCB Info per FMSPC): remembering the verdicts, keyed by the exact bytes, keeps warm quotes to
# the one signature that cannot be cached, the quote's own.
_VERDICTS = 4096


def p256_key_from_raw(raw: bytes) -> ec.EllipticCurvePublicKey | None:
    """A public key from the quote's raw x || y form; ``None`` if it is not a P-256 point."""
    if len(raw) != 2 * _COORD:
        return None
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        return None


def p256_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


@lru_cache(maxsize=_VERDICTS)
def cert_signature_problem(signer: x509.Certificate, signature: bytes, message: bytes) -> str | None:
    """``verify_raw_signature`` by the P-256 key of ``signer``, remembered (signed documents and
    the QE report recur unchanged for every quote of a platform)."""
    key = p256_key(signer)
    if key is None:
        return f"{subject(signer)} has no EC P-256 key"
    return verify_raw_signature(key, signature, message)


def verify_raw_signature(key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> str | None:
    """ECDSA-SHA256 with the raw r || s signature form quotes and PCS documents use."""
    if len(signature) != 2 * _COORD:
        return f"signature is {len(signature)} bytes, expected {2 * _COORD}"
    r = int.from_bytes(signature[:_COORD], "big")
    s = int.from_bytes(signature[_COORD:], "big")
    try:
        key.verify(encode_dss_signature(r, s), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "signature does not verify"
    return None


@lru_cache(maxsize=_VERDICTS)
def issued_by(child: x509.Certificate, issuer: x509.Certificate) -> str | None:
    """Name chaining and signature of one link."""
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        return f"{subject(child)} is not issued by {subject(issuer)}: {exc or type(exc).__name__}"
    return None


def basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def ca_problem(cert: x509.Certificate) -> str | None:
    bc = basic_constraints(cert)
    if bc is None or not bc.ca:
        return f"{subject(cert)} is not a CA"
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        return f"{subject(cert)}: unreadable key usage: {exc}"
    if not usage.key_cert_sign:
        return f"{subject(cert)} may not sign certificates"
    return None


def validity_problem(cert: x509.Certificate, now: datetime) -> str | None:
    if now < cert.not_valid_before_utc:
        return f"{subject(cert)} is not valid before {cert.not_valid_before_utc.isoformat()}"
    if now > cert.not_valid_after_utc:
        return f"{subject(cert)} expired at {cert.not_valid_after_utc.isoformat()}"
    return None


def crl_problem(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str | None:
    """The CRL names ``issuer`` and carries its valid signature (time is checked separately)."""
    # Keyed by exactly what the signature covers plus the signature (a CRL is not hashable).
    key = (crl.tbs_certlist_bytes, crl.signature, issuer)
    if key in _crl_verdicts:
        return _crl_verdicts[key]
    verdict = _crl_problem(crl, issuer)
    if len(_crl_verdicts) >= _VERDICTS:
        _crl_verdicts.clear()
    _crl_verdicts[key] = verdict
    return verdict


_crl_verdicts: dict[tuple[bytes, bytes, x509.Certificate], str | None] = {}


def _crl_problem(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> str | None:
    if crl.issuer != issuer.subject:
        return f"CRL issued by {crl.issuer.rfc4514_string()}, expected {subject(issuer)}"
    key = p256_key(issuer)
    if key is None:
        return f"{subject(issuer)} has no EC P-256 key"
    try:
        valid = crl.is_signature_valid(key)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        return f"CRL signature unreadable: {exc}"
    return None if valid else "CRL signature does not verify"


def revoked_problem(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> str | None:
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    if entry is not None:
        return f"{subject(cert)} (serial {cert.serial_number:x}) revoked at {entry.revocation_date_utc.isoformat()}"
    return None


def crl_window_problem(crl: x509.CertificateRevocationList, now: datetime, name: str) -> str | None:
    if now < crl.last_update_utc:
        return f"{name} not valid before {crl.last_update_utc.isoformat()}"
    next_update = crl.next_update_utc
    if next_update is None:
        return f"{name} has no nextUpdate"
    if now > next_update:
        return f"{name} stale since {next_update.isoformat()}"
    return None
