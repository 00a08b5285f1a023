"""The AMD endorsement chain ARK -> ASK (or ASVK) -> VEK, checked link by link.

RFC 5280 path building cannot be used: AMD encodes RSASSA-PSS parameters with an explicit trailer
field that ``cryptography``'s verifier does not allow, and VEKs have serial 0 and no AKI/SKI. Each
signature is therefore checked with ``verify_directly_issued_by`` and the CA, key-type and validity
rules are applied here. Trust roots and time are parameters; the result (``VerifiedVek``) holds
everything the per-report checks need and may be cached by the caller until ``not_after``
(re-run it when a newer CRL arrives: a cached result knows nothing of later revocations).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from threading import Lock

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.errors import VerificationError
from shared.platforms.snp import checks
from shared.platforms.snp.certs import (
    AmdRoots,
    VekExtensions,
    VekKind,
    load_certificate,
    parse_vek_extensions,
    pinned_roots,
    product_of_issuer,
    vek_kind,
)
from shared.platforms.snp.fields import Product

AMD_RSA_BITS = 4096


@dataclass(frozen=True, slots=True)
class VerifiedVek:
    """A VEK whose chain to a pinned ARK verified. ``not_before``/``not_after`` bound the whole
    chain (latest start, earliest end): cache it no longer than ``not_after``."""

    product: Product
    kind: VekKind
    certificate: x509.Certificate
    public_key: ec.EllipticCurvePublicKey
    extensions: VekExtensions
    not_before: datetime
    not_after: datetime

    def check_valid_at(self, now: datetime) -> None:
        at = utc(now)
        if not self.not_before <= at <= self.not_after:
            raise VerificationError(
                checks.CERT_VALIDITY,
                f"chain valid {self.not_before.isoformat()} .. {self.not_after.isoformat()}, "
                f"not at {at.isoformat()}",
            )


def utc(now: datetime) -> datetime:
    # Naive datetimes are taken as UTC: comparing naive with aware bounds raises TypeError, and
    # local time would silently shift the validity window.
    if not isinstance(now, datetime):
        raise TypeError(f"now must be a datetime, got {type(now).__name__}")
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def check_issued_by(child: x509.Certificate, issuer: x509.Certificate, check: str) -> None:
    """``issuer`` signed ``child`` (names match and the signature verifies) or ``check`` fails."""
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm) as exc:
        reason = str(exc) or type(exc).__name__
        raise VerificationError(
            check, f"{_subject(child)} not issued by {_subject(issuer)}: {reason}"
        ) from None


def _extension(cert: x509.Certificate, cls: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or malformed extensions
        raise VerificationError(checks.CA_CONSTRAINTS, f"{_subject(cert)}: bad extensions: {exc}") from None


def check_ca(cert: x509.Certificate) -> None:
    """ARK and ASK/ASVK must be CAs allowed to sign certificates and hold RSA-4096 keys."""
    bc = _extension(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise VerificationError(checks.CA_CONSTRAINTS, f"{_subject(cert)} is not a CA")
    usage = _extension(cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.key_cert_sign:
        raise VerificationError(checks.CA_CONSTRAINTS, f"{_subject(cert)} may not sign certificates")
    key = cert.public_key()
    # AMD's PKI is RSA-4096 throughout; anything else under a pinned ARK means AMD changed its PKI,
    # which should be looked at before it is trusted.
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < AMD_RSA_BITS:
        raise VerificationError(checks.KEY_TYPE, f"{_subject(cert)} key is not RSA-{AMD_RSA_BITS}")


def check_ark(ark: x509.Certificate, pinned_ark: x509.Certificate) -> None:
    """The ARK is self-signed and byte-identical to the pinned one."""
    if ark.issuer != ark.subject:
        raise VerificationError(checks.ARK_SELF_SIGNED, f"{_subject(ark)} is not self-issued")
    check_issued_by(ark, ark, checks.ARK_SELF_SIGNED)
    if _der(ark) != _der(pinned_ark):
        raise VerificationError(checks.ARK_NOT_PINNED, f"{_subject(ark)} is not the pinned ARK")
    check_ca(ark)


def check_vek_certificate(vek: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """The VEK is an end-entity EC P-384 key (the report signature algorithm)."""
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise VerificationError(checks.KEY_TYPE, "VEK key is not EC P-384")
    # Real VEKs have no basicConstraints at all; one that claims CA must not be used as a leaf.
    bc = _extension(vek, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise VerificationError(checks.CA_CONSTRAINTS, "VEK claims to be a CA")
    return key


def check_validity(certs: tuple[x509.Certificate, ...], now: datetime) -> tuple[datetime, datetime]:
    """Every cert is valid at ``now``; returns the chain's common window."""
    at = utc(now)
    for cert in certs:
        if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
            raise VerificationError(
                checks.CERT_VALIDITY,
                f"{_subject(cert)} valid {cert.not_valid_before_utc.isoformat()} .. "
                f"{cert.not_valid_after_utc.isoformat()}, not at {at.isoformat()}",
            )
    return (
        max(cert.not_valid_before_utc for cert in certs),
        min(cert.not_valid_after_utc for cert in certs),
    )


def check_crl_signature(crl: x509.CertificateRevocationList, ark: x509.Certificate) -> None:
    """The CRL is the ARK's own (issuer name and signature)."""
    if crl.issuer != ark.subject:
        raise VerificationError(
            checks.CRL_SIGNATURE, f"CRL issued by {crl.issuer.rfc4514_string()}, not the ARK"
        )
    try:
        valid = crl.is_signature_valid(ark.public_key())  # type: ignore[arg-type]
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise VerificationError(checks.CRL_SIGNATURE, f"CRL signature unusable: {exc}") from None
    if not valid:
        raise VerificationError(checks.CRL_SIGNATURE, "CRL signature does not verify under the ARK")


def check_crl_entries(crl: x509.CertificateRevocationList, intermediate: x509.Certificate, now: datetime) -> None:
    """The CRL is current at ``now`` and does not list the ASK/ASVK.

    The VEK's own serial is not looked up: an ARK CRL only speaks for certificates the ARK issued
    (ASKs/ASVKs), and every VEK has serial 0, so a match would be meaningless.
    """
    at = utc(now)
    next_update = crl.next_update_utc
    if at < crl.last_update_utc or (next_update is not None and at > next_update):
        raise VerificationError(checks.CRL_VALIDITY, f"CRL not current at {at.isoformat()}")
    entry = crl.get_revoked_certificate_by_serial_number(intermediate.serial_number)
    if entry is not None:
        raise VerificationError(
            checks.REVOKED, f"{_subject(intermediate)} (serial {intermediate.serial_number}) is revoked"
        )


def check_crl(
    crl: x509.CertificateRevocationList, ark: x509.Certificate, intermediate: x509.Certificate, now: datetime
) -> None:
    """The CRL is the ARK's, current at ``now``, and does not list the ASK/ASVK."""
    check_crl_signature(crl, ark)
    check_crl_entries(crl, intermediate, now)


# The product's links above the chip -- ARK self-signed and pinned, ASK/ASVK under the ARK, the
# CRL under the ARK -- are the same for every chip and their signatures do not depend on time:
# they are checked once per exact set of bytes (three RSA-4096 checks a new chip need not repeat).
# Validity windows, CRL currency and revocation are checked at every use.
_LINKS_CHECKED: OrderedDict[tuple[bytes, bytes, bytes, bytes], None] = OrderedDict()
_LINKS_LOCK = Lock()
_LINKS_MAX = 64


def check_product_links(
    ark: x509.Certificate,
    intermediate: x509.Certificate,
    pinned_ark: x509.Certificate,
    crl: x509.CertificateRevocationList | None,
) -> None:
    crl_der = crl.public_bytes(serialization.Encoding.DER) if crl is not None else b""
    key = (_der(ark), _der(intermediate), _der(pinned_ark), crl_der)
    with _LINKS_LOCK:
        if key in _LINKS_CHECKED:
            _LINKS_CHECKED.move_to_end(key)
            return
    check_ark(ark, pinned_ark)
    check_issued_by(intermediate, ark, checks.ASK_SIGNED_BY_ARK)
    check_ca(intermediate)
    if crl is not None:
        check_crl_signature(crl, ark)
    with _LINKS_LOCK:
        _LINKS_CHECKED[key] = None
        while len(_LINKS_CHECKED) > _LINKS_MAX:
            _LINKS_CHECKED.popitem(last=False)


def _select_roots(
    roots: AmdRoots | Mapping[Product, AmdRoots], vek: x509.Certificate, product: Product | None
) -> AmdRoots:
    if isinstance(roots, AmdRoots):
        if product is not None and product is not roots.product:
            raise VerificationError(
                checks.PRODUCT_MISMATCH, f"roots are for {roots.product.value}, evidence is {product.value}"
            )
        return roots
    wanted = product if product is not None else product_of_issuer(vek)
    if wanted is None:
        raise VerificationError(checks.PRODUCT_UNKNOWN, "VEK issuer names no known product")
    selected = roots.get(wanted)
    if selected is None:
        raise VerificationError(checks.PRODUCT_UNKNOWN, f"no AMD roots configured for {wanted.value}")
    return selected


def verify_vek_chain(
    vek_der: bytes,
    roots: AmdRoots | Mapping[Product, AmdRoots],
    now: datetime,
    *,
    crl: x509.CertificateRevocationList | None = None,
    product: Product | None = None,
    pinned: Mapping[Product, AmdRoots] | None = None,
) -> VerifiedVek:
    """Verify ARK -> ASK/ASVK -> VEK at ``now`` and return the VEK with its extensions.

    ``roots`` supplies the ARK and intermediates (the pinned set, or a chain fetched from KDS or
    taken from the evidence); either way its ARK must equal the pinned ARK of the product in
    ``pinned`` (default: the roots shipped with REMITS). With a mapping, the product comes from
    ``product`` or else from the VEK issuer name. Raises ``ParseError`` (``parse.vek...``) for an
    unreadable VEK, ``VerificationError`` (``checks``) otherwise.
    """
    vek = load_certificate(vek_der, "vek")
    kind = vek_kind(vek)
    if kind is None:
        raise VerificationError(checks.VEK_KIND, f"{_subject(vek)} is neither a VCEK nor a VLEK")
    selected = _select_roots(roots, vek, product)
    anchors = pinned_roots() if pinned is None else pinned
    pinned_set = anchors.get(selected.product)
    if pinned_set is None:
        raise VerificationError(checks.ARK_NOT_PINNED, f"no pinned ARK for {selected.product.value}")

    intermediate = selected.intermediate(kind)
    check_product_links(selected.ark, intermediate, pinned_set.ark, crl)
    check_issued_by(vek, intermediate, checks.VEK_SIGNED_BY_ASK)
    public_key = check_vek_certificate(vek)
    not_before, not_after = check_validity((selected.ark, intermediate, vek), now)
    if crl is not None:
        check_crl_entries(crl, intermediate, now)
    return VerifiedVek(
        product=selected.product,
        kind=kind,
        certificate=vek,
        public_key=public_key,
        extensions=parse_vek_extensions(vek),
        not_before=not_before,
        not_after=not_after,
    )
