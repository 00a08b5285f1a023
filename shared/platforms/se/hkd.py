"""Host key document (HKD) verification: HKD ← "IBM Z Host Key Signing Service" certificate ←
intermediate CA(s) ← root, with CRLs, all at a caller-given time.

Names are compared as sets of (attribute, value) as s390-tools does: IBM's host-key CRLs carry the
signing key's name with its attributes in another order than the certificate, and a strict
comparison would reject every real CRL. Errors are ``VerificationError`` with ``se.hkd.*`` checks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from shared.errors import VerificationError

IBM_NAME = "International Business Machines Corporation"
IBM_LOCALITIES = ("Poughkeepsie", "Armonk")
IBM_OU_SUFFIX = "Key Signing Service"
_MAX_CHAIN = 5


def _load_certs(blobs: Sequence[bytes], what: str) -> list[x509.Certificate]:
    certs: list[x509.Certificate] = []
    for blob in blobs:
        try:
            if b"-----BEGIN" in blob:
                certs.extend(x509.load_pem_x509_certificates(blob))
            else:
                certs.append(x509.load_der_x509_certificate(blob))
        except (ValueError, TypeError) as exc:
            raise VerificationError("se.hkd.chain", f"unreadable {what} certificate: {exc}") from None
    return certs


def _load_crls(blobs: Sequence[bytes]) -> list[x509.CertificateRevocationList]:
    crls = []
    for blob in blobs:
        try:
            if b"-----BEGIN" in blob:
                crls.append(x509.load_pem_x509_crl(blob))
            else:
                crls.append(x509.load_der_x509_crl(blob))
        except (ValueError, TypeError) as exc:
            raise VerificationError("se.hkd.crl", f"unreadable CRL: {exc}") from None
    return crls


def names_equal(a: x509.Name, b: x509.Name) -> bool:
    return Counter((attr.oid.dotted_string, attr.value) for attr in a) == Counter(
        (attr.oid.dotted_string, attr.value) for attr in b
    )


def _values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(attr.value) for attr in name.get_attributes_for_oid(oid)]


def is_ibm_signing_cert(cert: x509.Certificate) -> bool:
    subject = cert.subject
    ou = _values(subject, NameOID.ORGANIZATIONAL_UNIT_NAME)
    return (
        len(list(subject)) == 6
        and _values(subject, NameOID.COUNTRY_NAME) == ["US"]
        and _values(subject, NameOID.STATE_OR_PROVINCE_NAME) == ["New York"]
        and len(_values(subject, NameOID.LOCALITY_NAME)) == 1
        and _values(subject, NameOID.LOCALITY_NAME)[0] in IBM_LOCALITIES
        and _values(subject, NameOID.ORGANIZATION_NAME) == [IBM_NAME]
        and _values(subject, NameOID.COMMON_NAME) == [IBM_NAME]
        and len(ou) == 1
        and IBM_OU_SUFFIX in ou[0]
    )


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    try:
        # Inside the try: an algorithm cryptography does not know raises on reading these.
        params = cert.signature_algorithm_parameters
        digest = cert.signature_hash_algorithm
        if isinstance(key, rsa.RSAPublicKey) and digest is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, params, digest)  # type: ignore[arg-type]
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, params)  # type: ignore[arg-type]
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except (InvalidSignature, UnsupportedAlgorithm, TypeError, ValueError):
        # A key of the wrong kind for the signature algorithm is a mismatch, not a crash.
        return False
    return True


def _check_validity(cert: x509.Certificate, now: datetime, what: str) -> None:
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise VerificationError(
            "se.hkd.expired",
            f"{what} {_describe(cert)} is valid {cert.not_valid_before_utc.isoformat()} .. "
            f"{cert.not_valid_after_utc.isoformat()}, not at {now.isoformat()}",
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_oid(ExtensionOID.BASIC_CONSTRAINTS).value.ca)
    except x509.ExtensionNotFound:
        return False


def _ski(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_KEY_IDENTIFIER).value.digest
    except x509.ExtensionNotFound:
        return None


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_oid(
            ExtensionOID.AUTHORITY_KEY_IDENTIFIER
        ).value.key_identifier
    except x509.ExtensionNotFound:
        return None


def _chain_to_root(
    leaf: x509.Certificate, pool: list[x509.Certificate], roots: list[x509.Certificate], now: datetime
) -> list[x509.Certificate]:
    """leaf, issuer, ..., root: each link checked for name, signature, CA flag and validity."""
    root_ders = {root.public_bytes(Encoding.DER) for root in roots}
    chain = [leaf]
    current = leaf
    for _ in range(_MAX_CHAIN):
        if current.public_bytes(Encoding.DER) in root_ders:
            return chain
        candidates = [c for c in pool + roots if names_equal(c.subject, current.issuer) and c is not current]
        if not candidates:
            raise VerificationError("se.hkd.chain", f"no issuer for {_describe(current)}")
        issuer = next((c for c in candidates if _signed_by(current, c)), None)
        if issuer is None:
            raise VerificationError("se.hkd.signature", f"{_describe(current)} is not signed by its issuer")
        if not _is_ca(issuer):
            raise VerificationError("se.hkd.chain", f"issuer {_describe(issuer)} is not a CA")
        _check_validity(issuer, now, "CA certificate")
        chain.append(issuer)
        current = issuer
    raise VerificationError("se.hkd.chain", f"no trusted root within {_MAX_CHAIN} certificates")


def _check_crls(
    crls: list[x509.CertificateRevocationList],
    issuers: list[x509.Certificate],
    now: datetime,
) -> None:
    for crl in crls:
        issuer = next(
            (
                c
                for c in issuers
                if names_equal(c.subject, crl.issuer) and crl.is_signature_valid(c.public_key())
            ),
            None,
        )
        if issuer is None:
            if any(names_equal(c.subject, crl.issuer) for c in issuers):
                raise VerificationError(
                    "se.hkd.crl", f"CRL of {crl.issuer.rfc4514_string()} has a bad signature"
                )
            raise VerificationError(
                "se.hkd.crl", f"CRL of {crl.issuer.rfc4514_string()}: issuer not in the chain"
            )
        next_update = crl.next_update_utc
        if next_update is None or not crl.last_update_utc <= now <= next_update:
            raise VerificationError(
                "se.hkd.crl",
                f"CRL of {crl.issuer.rfc4514_string()} is valid {crl.last_update_utc.isoformat()} .. "
                f"{next_update.isoformat() if next_update else '(no next update)'}, not at {now.isoformat()}",
            )


def _check_revoked(cert: x509.Certificate, crls: list[x509.CertificateRevocationList]) -> None:
    for crl in crls:
        if names_equal(crl.issuer, cert.issuer) and crl.get_revoked_certificate_by_serial_number(
            cert.serial_number
        ):
            raise VerificationError(
                "se.hkd.revoked", f"{_describe(cert)} (serial {cert.serial_number:x}) is revoked"
            )


def documents_valid_until(
    hkds: Sequence[bytes], *, intermediates: Sequence[bytes], roots: Sequence[bytes], crls: Sequence[bytes]
) -> datetime:
    """The first moment a verdict of ``verify_host_key_documents`` over these documents may no
    longer hold: the earliest certificate expiry or CRL next update among them."""
    certs = [*_load_certs(hkds, "host key document"), *_load_certs(intermediates, "intermediate")]
    certs += _load_certs(roots, "root")
    ends = [c.not_valid_after_utc for c in certs]
    ends += [crl.next_update_utc for crl in _load_crls(crls) if crl.next_update_utc is not None]
    return min(ends)


def verify_host_key_documents(
    hkds: Sequence[bytes],
    *,
    intermediates: Sequence[bytes],
    roots: Sequence[bytes],
    crls: Sequence[bytes],
    now: datetime,
    require_hkd_crl: bool = True,
) -> list[ec.EllipticCurvePublicKey]:
    """The host public keys of ``hkds`` (PEM or DER), in order, if every one of them verifies.

    ``intermediates`` holds the IBM Z signing certificate and the CA certificates between it and a
    root. Every CRL given must verify and be current; with ``require_hkd_crl`` (default) a CRL from
    the IBM signing key must be among them, since that is where IBM revokes host keys."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if not hkds:
        raise VerificationError("se.hkd.chain", "no host key document")
    hkd_certs = _load_certs(hkds, "host key document")
    pool = _load_certs(intermediates, "intermediate")
    root_certs = _load_certs(roots, "root")
    if not root_certs:
        raise VerificationError("se.hkd.chain", "no root certificate")
    crl_list = _load_crls(crls)

    signers = [c for c in pool if is_ibm_signing_cert(c)]
    if not signers:
        raise VerificationError(
            "se.hkd.subject", "no IBM Z Host Key Signing Service certificate among the intermediates"
        )
    if len(signers) > 1:
        raise VerificationError("se.hkd.subject", "more than one IBM Z signing certificate")
    signer = signers[0]
    _check_validity(signer, now, "IBM Z signing certificate")
    chain = _chain_to_root(signer, [c for c in pool if c is not signer], root_certs, now)

    _check_crls(crl_list, chain, now)
    if require_hkd_crl and not any(names_equal(crl.issuer, signer.subject) for crl in crl_list):
        raise VerificationError("se.hkd.crl", "no CRL from the IBM Z signing key")
    for cert in chain[:-1]:
        _check_revoked(cert, crl_list)

    keys = []
    for hkd in hkd_certs:
        if not names_equal(hkd.issuer, signer.subject):
            raise VerificationError(
                "se.hkd.chain",
                f"host key document issuer {hkd.issuer.rfc4514_string()} is not the IBM signing key",
            )
        aki, ski = _aki(hkd), _ski(signer)
        if aki is not None and ski is not None and aki != ski:
            raise VerificationError(
                "se.hkd.chain", "host key document authority key id is not the IBM signing key's"
            )
        if not _signed_by(hkd, signer):
            raise VerificationError(
                "se.hkd.signature", f"host key document {_describe(hkd)} is not signed by the IBM key"
            )
        _check_validity(hkd, now, "host key document")
        _check_revoked(hkd, crl_list)
        key = hkd.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP521R1):
            raise VerificationError(
                "se.hkd.key", f"host key document {_describe(hkd)} does not hold an EC P-521 key"
            )
        keys.append(key)
    return keys
