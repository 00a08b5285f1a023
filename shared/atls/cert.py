"""aTLS certificates: building them around a key, and reading back what they claim.

Nothing here is a trust decision. ``read_attestation`` only checks that a certificate is well
formed; whether its evidence or token is genuine and bound to its key is ``verify``'s job.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.atls import oids
from shared.atls.errors import AttestedTlsError
from shared.ear import p256_public_jwk
from shared.errors import ParseError
from shared.jwe import ALG_ECDH
from shared.kbs.binding import canonical_json

FORMAT_VERSION = 1
REPORT_DATA_SIZE = 64
NONCE_MIN = 8
NONCE_MAX = 64
# Curves the KBS JWE layer can wrap to (P-256) plus P-384; the same key serves TLS and, for
# token certificates, is the tee-pubkey resources are wrapped to.
SUPPORTED_CURVES = (ec.SECP256R1, ec.SECP384R1)

Kind = Literal["evidence", "token"]
PublicKey = ec.EllipticCurvePublicKey


def _malformed(detail: str) -> AttestedTlsError:
    return AttestedTlsError("atls.certificate", detail)


# --- the no-trust issuer ------------------------------------------------------------------------


@cache
def issuer_pem() -> bytes:
    """The published no-trust issuer certificate: the only CA every aTLS context trusts."""
    return resources.files("shared.atls").joinpath("issuer.pem").read_bytes()


@cache
def _issuer() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(issuer_pem())
    pem = resources.files("shared.atls").joinpath("issuer-key.pem").read_bytes()
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


# --- binding ------------------------------------------------------------------------------------


def spki_der(public_key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo: the exact bytes the certificate carries for its key."""
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def evidence_binding(spki: bytes, nonce: bytes) -> bytes:
    """report_data of evidence bound to a certificate key: SHA-384(SPKI DER ‖ nonce), zero-padded to
    64 bytes (the report_data size of SNP, TDX and the sample TEE).

    The SPKI has a self-delimiting DER length, so the concatenation is unambiguous."""
    return hashlib.sha384(spki + nonce).digest().ljust(REPORT_DATA_SIZE, b"\x00")


# --- DER OCTET STRING ---------------------------------------------------------------------------


def _der_octet_string(data: bytes) -> bytes:
    n = len(data)
    if n < 0x80:
        return b"\x04" + bytes([n]) + data
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(size)]) + size + data


def _read_der_octet_string(der: bytes) -> bytes:
    """Strict DER: one OCTET STRING, minimal definite length, nothing after it."""
    if len(der) < 2 or der[0] != 0x04:
        raise _malformed("extension value is not a DER OCTET STRING")
    first = der[1]
    if first < 0x80:
        length, start = first, 2
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or len(der) < 2 + count:
            raise _malformed("extension value has a bad DER length")
        length, start = int.from_bytes(der[2 : 2 + count], "big"), 2 + count
        if length < 0x80 or der[2] == 0:
            raise _malformed("extension value length is not minimal DER")
    if start + length != len(der):
        raise _malformed("extension value length does not match its content")
    return der[start:]


# --- building -----------------------------------------------------------------------------------


def _check_key(key: ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, SUPPORTED_CURVES):
        raise AttestedTlsError("atls.key_type", "aTLS keys are EC P-256 or P-384")


def _utc_seconds(now: datetime) -> datetime:
    # X.509 times have second precision; truncating keeps not_before <= now after encoding.
    aware = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return aware.astimezone(UTC).replace(microsecond=0)


def _certificate(
    key: ec.EllipticCurvePrivateKey,
    extension: x509.UnrecognizedExtension | None,
    now: datetime,
    lifetime_s: int,
    common_name: str,
) -> bytes:
    _check_key(key)
    if lifetime_s <= 0:
        raise ValueError("certificate lifetime must be positive")
    issuer_cert, issuer_key = _issuer()
    start = _utc_seconds(now)
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(seconds=lifetime_s))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        # Both purposes: the same identity is a server to some peers and a client to others.
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    )
    if extension is not None:
        builder = builder.add_extension(extension, critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_nonce(nonce: bytes) -> None:
    if not isinstance(nonce, bytes) or not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise AttestedTlsError("atls.nonce", f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes")


def make_evidence_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    tee: str,
    evidence: Any,
    nonce: bytes,
    now: datetime,
    lifetime_s: int = 3600,
    common_name: str = "remits-atls",
) -> bytes:
    """PEM certificate for ``key`` carrying ``evidence`` (a KBS primary_evidence JSON value).

    The evidence must already bind the key: its report_data is
    ``evidence_binding(spki_der(key.public_key()), nonce)``. It is not checked here; a peer checks it."""
    _check_nonce(nonce)
    if not isinstance(tee, str) or not tee:
        raise AttestedTlsError("atls.tee", "tee must be a non-empty string")
    payload = canonical_json(
        {"v": FORMAT_VERSION, "tee": tee, "nonce": base64.b64encode(nonce).decode("ascii"), "evidence": evidence}
    )
    extension = x509.UnrecognizedExtension(oids.EVIDENCE, _der_octet_string(payload))
    return _certificate(key, extension, now, lifetime_s, common_name)


def make_token_certificate(
    key: ec.EllipticCurvePrivateKey,
    *,
    token: str,
    now: datetime,
    lifetime_s: int = 3600,
    common_name: str = "remits-atls",
) -> bytes:
    """PEM certificate for ``key`` carrying a REMITS EAR whose tee-pubkey must be ``key``'s public key."""
    if not isinstance(token, str) or not token.isascii() or token.count(".") != 2:
        raise AttestedTlsError("atls.token", "token must be a compact JWS in ASCII")
    extension = x509.UnrecognizedExtension(oids.TOKEN, _der_octet_string(token.encode("ascii")))
    return _certificate(key, extension, now, lifetime_s, common_name)


def make_service_certificate(
    key: ec.EllipticCurvePrivateKey, *, now: datetime, lifetime_s: int = 3600, common_name: str = "remits-atls"
) -> bytes:
    """PEM certificate with no attestation: a service that is not itself attested (the join front)
    but speaks to nodes over the same TLS contexts. Peers learn nothing from it."""
    return _certificate(key, None, now, lifetime_s, common_name)


# --- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attestation:
    """What a certificate claims; ``evidence`` is the primary evidence as canonical JSON bytes."""

    kind: Kind
    public_key: PublicKey
    spki: bytes
    not_before: datetime
    not_after: datetime
    tee: str | None = None
    nonce: bytes | None = None
    evidence: bytes | None = None
    token: str | None = None


def _extension_value(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # duplicate or unparsable extensions
        raise _malformed(f"extensions: {exc}") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise _malformed(f"extension {oid.dotted_string} has an unexpected type")
    return _read_der_octet_string(value.value)


def _read_evidence(content: bytes) -> tuple[str, bytes, bytes]:
    try:
        doc = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _malformed(f"evidence extension is not JSON: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != {"v", "tee", "nonce", "evidence"}:
        raise _malformed('evidence extension must be {"v","tee","nonce","evidence"}')
    if doc["v"] != FORMAT_VERSION or isinstance(doc["v"], bool):
        raise _malformed(f"evidence extension version {doc['v']!r} is not {FORMAT_VERSION}")
    tee, nonce_b64 = doc["tee"], doc["nonce"]
    if not isinstance(tee, str) or not tee or not isinstance(nonce_b64, str):
        raise _malformed("tee and nonce must be strings")
    try:
        nonce = base64.b64decode(nonce_b64, validate=True)
        canonical = canonical_json(doc)
        evidence = canonical_json(doc["evidence"])
    except (binascii.Error, ValueError) as exc:
        raise _malformed(f"evidence extension: {exc}") from None
    except ParseError as exc:
        raise _malformed(f"evidence extension: {exc.detail}") from None
    # One payload, one spelling: the format is defined as canonical JSON.
    if canonical != content:
        raise _malformed("evidence extension is not canonical JSON")
    if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise _malformed(f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes")
    return tee, nonce, evidence


def read_attestation(cert_der: bytes) -> Attestation:
    """What a DER certificate claims; AttestedTlsError("atls.certificate") when it is malformed,
    ("atls.no_attestation") when it carries neither extension."""
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        public_key = cert.public_key()
    except (ValueError, TypeError) as exc:
        raise _malformed(f"not a DER certificate: {exc}") from None
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, SUPPORTED_CURVES):
        raise _malformed("the certificate key is not EC P-256 or P-384")
    evidence_ext = _extension_value(cert, oids.EVIDENCE)
    token_ext = _extension_value(cert, oids.TOKEN)
    common = {
        "public_key": public_key,
        "spki": spki_der(public_key),
        "not_before": cert.not_valid_before_utc,
        "not_after": cert.not_valid_after_utc,
    }
    if evidence_ext is not None and token_ext is not None:
        # One certificate, one claim: which of two would a verifier be accepting?
        raise _malformed("the certificate carries both evidence and a token")
    if evidence_ext is not None:
        tee, nonce, evidence = _read_evidence(evidence_ext)
        return Attestation(kind="evidence", tee=tee, nonce=nonce, evidence=evidence, **common)
    if token_ext is not None:
        try:
            token = token_ext.decode("ascii")
        except UnicodeDecodeError:
            raise _malformed("token extension is not ASCII") from None
        return Attestation(kind="token", token=token, **common)
    raise AttestedTlsError("atls.no_attestation", "the certificate carries no aTLS extension")


def tee_pubkey_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The KBS tee-pubkey JWK of a P-256 certificate key: what a node sends to /attest so that the
    token it gets back can go into a token certificate for the same key."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        # The KBS accepts P-256 (and P-521) tee-pubkeys only, so a P-384 key can never be bound.
        raise AttestedTlsError("atls.key_type", "token certificates need a P-256 key")
    return {**p256_public_jwk(public_key), "alg": ALG_ECDH}
