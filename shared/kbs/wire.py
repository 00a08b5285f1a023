"""KBS protocol v0 message bodies (the JSON that crosses the wire) and their strict decoding.

Everything here is attacker-controlled input, so the structs reject unknown fields wherever the reference
client sends a fixed set; free-form members (``extra-params``, ``primary_evidence``) stay untyped.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Final, Literal, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.errors import ProtocolError

PROTOCOL_VERSION: Final = "0.4.0"

# TEE names a KBS client may announce; anything else is not a KBS request at all.
KNOWN_TEES: Final = frozenset(
    {
        "snp",
        "tdx",
        "sgx",
        "az-snp-vtpm",
        "az-tdx-vtpm",
        "cca",
        "csv",
        "se",
        "tpm",
        "gcp-vtpm",  # REMITS's name for go-tpm-tools attestations of Google Cloud vTPMs
        "nvidia",
        "hygondcu",
        "sample",
        "sampledevice",
        "sev",  # AMD SEV/SEV-ES launches (kbs-types; the host's VMM is the client)
    }
)
# TEEs this service has a verifier for, in one order everything that lists them uses.
ATTESTED_TEES: Final = ("sample", "snp", "tdx", "sgx", "tpm", "az-snp-vtpm", "az-tdx-vtpm", "gcp-vtpm", "sev", "cca", "se")
SUPPORTED_TEES: Final = frozenset(ATTESTED_TEES)

ERROR_TYPE_PREFIX: Final = "https://github.com/confidential-containers/kbs/errors/"
# Variants the reference server emits; clients switch on them, so keep the same names.
ERROR_VARIANTS: Final = frozenset(
    {
        "AdminAuth",
        "AttestationError",
        "InvalidRequestPath",
        "JweError",
        "PluginNotFound",
        "PluginInternalError",
        "PolicyDeny",
        "ParsePolicyError",
        "PolicyEngine",
        "RvpsError",
        "SerdeError",
        "TokenNotFound",
        "TokenVerifierError",
    }
)

_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")
_EC_CURVES: Final[dict[str, tuple[ec.EllipticCurve, int]]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-521": (ec.SECP521R1(), 66),
}
_RSA_MIN_BITS: Final = 2048
# Upper bound only to keep hostile keys from costing unbounded CPU per request.
_RSA_MAX_BITS: Final = 16384
# Private members must never travel in tee-pubkey; a client sending them is broken.
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


# --- base64url (RFC 7515 §2: no padding) -------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict base64url without padding; raises ValueError on anything else."""
    # Python's decoder silently drops foreign characters, so check the alphabet first.
    if not isinstance(text, str) or _B64URL_RE.fullmatch(text) is None or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except binascii.Error as exc:
        raise ValueError("not unpadded base64url") from exc
    # Reject non-canonical encodings (stray low bits in the last character) so one value has one text.
    if b64url_encode(raw) != text:
        raise ValueError("non-canonical base64url")
    return raw


# --- bodies -------------------------------------------------------------------------------------

ExtraParams = dict[str, Any] | str


class KbsRequest(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    """Client -> ``POST /kbs/v0/auth``."""

    version: str
    tee: str
    extra_params: ExtraParams = ""


class Challenge(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    """Server -> client answer to ``/auth``; ``extra-params`` is always sent, "" unless a TEE needs more."""

    nonce: str
    extra_params: ExtraParams = ""


class RuntimeData(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    nonce: str
    tee_pubkey: dict[str, Any]


class InitData(msgspec.Struct, forbid_unknown_fields=True):
    # The reference server accepts only TOML init-data; other formats are a bad request.
    format: Literal["toml"]
    body: str


class TeeEvidence(msgspec.Struct, forbid_unknown_fields=True):
    # Underscored on the wire, unlike the other bodies.
    primary_evidence: Any
    additional_evidence: str = ""


class Attestation(msgspec.Struct, forbid_unknown_fields=True, rename="kebab"):
    """Client -> ``POST /kbs/v0/attest``."""

    runtime_data: RuntimeData
    tee_evidence: TeeEvidence
    init_data: InitData | None = None


class TokenResponse(msgspec.Struct, forbid_unknown_fields=True):
    token: str


class ErrorBody(msgspec.Struct, forbid_unknown_fields=True):
    type_: str = msgspec.field(name="type")
    detail: str


# --- decoding -----------------------------------------------------------------------------------


_T = TypeVar("_T")


def _decode(body: bytes, typ: type[_T]) -> _T:
    try:
        return msgspec.json.decode(body, type=typ)
    except msgspec.ValidationError as exc:
        # msgspec appends "- at `$.path`" to the message; keep it, it is the useful part.
        raise ProtocolError("kbs.bad_request", f"{typ.__name__}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError("kbs.bad_request", f"{typ.__name__}: {exc}") from exc
    except RecursionError as exc:
        # Deeply nested free-form members exhaust msgspec's depth limit.
        raise ProtocolError("kbs.bad_request", f"{typ.__name__}: JSON nested too deeply") from exc


def decode_request(body: bytes) -> KbsRequest:
    """Parse an ``/auth`` body. The TEE must be a known name; whether it is *supported* is
    :func:`require_supported_tee`'s call, so that the two failures get different reasons."""
    req = _decode(body, KbsRequest)
    if req.version != PROTOCOL_VERSION:
        raise ProtocolError(
            "kbs.bad_request", f"version: expected {PROTOCOL_VERSION!r}, got {req.version!r} - at `$.version`"
        )
    if req.tee not in KNOWN_TEES:
        raise ProtocolError("kbs.bad_request", f"unknown TEE {req.tee!r} - at `$.tee`")
    return req


def require_supported_tee(tee: str) -> str:
    if tee not in SUPPORTED_TEES:
        raise ProtocolError("kbs.unsupported_tee", f"no verifier for TEE {tee!r}")
    return tee


def decode_attestation(body: bytes) -> Attestation:
    """Parse an ``/attest`` body (shape only; the nonce and key are checked by the caller)."""
    return _decode(body, Attestation)


# --- tee-pubkey ---------------------------------------------------------------------------------


def _unsupported(detail: str) -> ProtocolError:
    return ProtocolError("kbs.unsupported_tee_pubkey", detail)


def _b64_member(jwk: dict[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise _unsupported(f"{name}: missing or not a string")
    try:
        return b64url_decode(value)
    except ValueError as exc:
        raise _unsupported(f"{name}: {exc}") from exc


def _check_ec(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    crv = jwk.get("crv")
    if crv not in _EC_CURVES:
        raise _unsupported(f"EC curve {crv!r} not supported")
    curve, size = _EC_CURVES[crv]
    if jwk.get("alg") != "ECDH-ES+A256KW":
        raise _unsupported(f"EC key alg {jwk.get('alg')!r} not supported")
    x, y = _b64_member(jwk, "x"), _b64_member(jwk, "y")
    # RFC 7518 §6.2.1.2: coordinates are exactly the field size, so the length itself is checked.
    if len(x) != size or len(y) != size:
        raise _unsupported(f"{crv} coordinates must be {size} bytes")
    try:
        return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve).public_key()
    except ValueError as exc:
        # Off-curve points enable invalid-curve attacks on ECDH; refuse before any key agreement.
        raise _unsupported(f"{crv} point is not on the curve") from exc


def _check_rsa(jwk: dict[str, Any]) -> rsa.RSAPublicKey:
    # RSA1_5 is deliberately refused (padding-oracle prone) although the reference server tolerates it.
    if jwk.get("alg") != "RSA-OAEP-256":
        raise _unsupported(f"RSA key alg {jwk.get('alg')!r} not supported")
    n = int.from_bytes(_b64_member(jwk, "n"), "big")
    e = int.from_bytes(_b64_member(jwk, "e"), "big")
    if not _RSA_MIN_BITS <= n.bit_length() <= _RSA_MAX_BITS:
        raise _unsupported(f"RSA modulus of {n.bit_length()} bits outside {_RSA_MIN_BITS}..{_RSA_MAX_BITS}")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise _unsupported(f"RSA key rejected: {exc}") from exc


def tee_public_key(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
    """The key a resource can be wrapped to, after every check ``validate_tee_pubkey`` makes."""
    if not isinstance(jwk, dict):
        raise _unsupported("tee-pubkey is not a JSON object")
    private = _PRIVATE_JWK_MEMBERS.intersection(jwk)
    if private:
        raise _unsupported(f"tee-pubkey carries private members {sorted(private)}")
    kty = jwk.get("kty")
    if kty == "EC":
        return _check_ec(jwk)
    if kty == "RSA":
        return _check_rsa(jwk)
    raise _unsupported(f"key type {kty!r} not supported")


def validate_tee_pubkey(jwk: dict[str, Any]) -> dict[str, Any]:
    """Check that ``jwk`` is a key we can wrap resources to; returns it unchanged.

    The JWK is not normalised: report_data binds the exact object the client sent, so callers must keep
    using the original."""
    tee_public_key(jwk)
    return jwk


# --- errors -------------------------------------------------------------------------------------

_VARIANT_RE: Final = re.compile(r"[A-Z][A-Za-z0-9]*")


def error_body(variant: str, detail: str) -> bytes:
    """The problem-details style body KBS clients parse. ``variant`` is a name like ``PolicyDeny``."""
    # Only the shape is enforced: new variants appear upstream, but a typo'd URL would confuse clients.
    if _VARIANT_RE.fullmatch(variant) is None:
        raise ValueError(f"error variant {variant!r} is not an UpperCamelCase name")
    return msgspec.json.encode(ErrorBody(type_=ERROR_TYPE_PREFIX + variant, detail=detail))
