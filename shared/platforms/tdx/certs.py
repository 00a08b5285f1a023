"""Loading certificates, chains and CRLs in the encodings Intel's services and quotes use.

Quotes carry the PCK chain as PEM text (often NUL-terminated); Intel's own sample data puts DER
certificates back to back instead. PCS serves CRLs as DER or PEM, and a PCCS may serve them as hex
text. Every loader raises only ``ParseError``.
"""

from __future__ import annotations

import binascii
import string
import warnings
from collections.abc import Sequence
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.utils import CryptographyDeprecationWarning

from shared.errors import ParseError

_PEM_MARKER = b"-----BEGIN"
# What cryptography raises for malformed input, decoded eagerly or lazily.
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    CryptographyDeprecationWarning,
)
_HEX = frozenset(string.hexdigits.encode())


def _as_bytes(data: object, field: str) -> bytes:
    if isinstance(data, str):
        return data.encode("utf-8", "surrogatepass")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ParseError(field, f"expected bytes or str, got {type(data).__name__}")


def _der_sequence_length(data: bytes, pos: int) -> int:
    """Total size of the DER SEQUENCE starting at ``pos`` (tag, length and content)."""
    if pos + 2 > len(data) or data[pos] != 0x30:
        raise ValueError("not a DER SEQUENCE")
    first = data[pos + 1]
    if first < 0x80:
        return 2 + first
    count = first & 0x7F
    if count == 0 or count > 4 or pos + 2 + count > len(data):
        raise ValueError("bad DER length")
    return 2 + count + int.from_bytes(data[pos + 2 : pos + 2 + count], "big")


def _touch(cert: x509.Certificate) -> None:
    # cryptography decodes names, validity and keys lazily: read them at load time so a malformed
    # field is a ParseError here rather than a ValueError in the middle of verification.
    _ = (cert.subject, cert.issuer, cert.serial_number, cert.not_valid_before_utc, cert.not_valid_after_utc)
    _ = (cert.extensions, cert.signature_hash_algorithm)
    cert.public_key()


def _read_certificates(raw: bytes) -> tuple[x509.Certificate, ...]:
    if raw.lstrip().startswith(_PEM_MARKER):
        # Quotes NUL-terminate the PEM text; only text may be trimmed, never DER.
        return tuple(x509.load_pem_x509_certificates(raw.rstrip(b"\x00").strip()))
    found: list[x509.Certificate] = []
    pos = 0
    while pos < len(raw):
        size = _der_sequence_length(raw, pos)
        found.append(x509.load_der_x509_certificate(raw[pos : pos + size]))
        pos += size
    return tuple(found)


def load_certificates(data: bytes | str, field: str = "certificates") -> tuple[x509.Certificate, ...]:
    """Every certificate in a PEM bundle or in back-to-back DER; at least one."""
    if isinstance(data, (bytes, str)):
        return _load_certificates_cached(data, field)  # the same chains recur for every quote
    return _load_certificates(data, field)


@lru_cache(maxsize=4096)
def _load_certificates_cached(data: bytes | str, field: str) -> tuple[x509.Certificate, ...]:
    return _load_certificates(data, field)


def _load_certificates(data: bytes | str, field: str) -> tuple[x509.Certificate, ...]:
    raw = _as_bytes(data, field)
    try:
        with warnings.catch_warnings():
            # What cryptography only deprecates today (e.g. non-positive serials) is malformed for us.
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            certs = _read_certificates(raw)
            for cert in certs:
                _touch(cert)
    except _DECODE_ERRORS as exc:
        raise ParseError(field, f"unreadable certificate data: {exc}") from None
    if not certs:
        raise ParseError(field, "no certificate found")
    return certs


def load_crl(data: bytes | str, field: str = "crl") -> x509.CertificateRevocationList:
    """One CRL from DER, PEM or hex-encoded DER."""
    raw = _as_bytes(data, field)
    text = raw.strip()  # only for the text forms: DER may legitimately end in whitespace bytes
    try:
        if text.startswith(_PEM_MARKER):
            crl = x509.load_pem_x509_crl(text)
        elif text and all(b in _HEX for b in text):
            crl = x509.load_der_x509_crl(binascii.unhexlify(text))
        else:
            crl = x509.load_der_x509_crl(raw)
        # Decoded lazily by cryptography: read now so a malformed field is a ParseError here,
        # not a ValueError in the middle of verification.
        _ = (crl.issuer, crl.last_update_utc, crl.next_update_utc)
        _ = [(entry.serial_number, entry.revocation_date_utc) for entry in crl]
    except (*_DECODE_ERRORS, binascii.Error) as exc:
        raise ParseError(field, f"unreadable CRL: {exc}") from None
    return crl


def order_chain(certs: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...] | None:
    """The certificates leaf first, following issuer names; ``None`` if they are not one path.

    Quotes and PCS headers list leaf first, Intel's sample data root first; signatures are still
    checked link by link afterwards, ordering only decides which links to check.
    """
    if len(certs) <= 1:
        return tuple(certs)
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    leaves = [c for c in certs if c.subject not in issuers]
    if len(leaves) != 1:
        return None
    ordered = [leaves[0]]
    remaining = [c for c in certs if c is not leaves[0]]
    while remaining:
        current = ordered[-1]
        parents = [c for c in remaining if c.subject == current.issuer]
        if len(parents) != 1:
            return None
        ordered.append(parents[0])
        remaining.remove(parents[0])
    return tuple(ordered)


@lru_cache(maxsize=4096)  # compared on every quote against the pinned root and the signers
def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()
