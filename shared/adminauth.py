"""Credentials for the admin HTTP API (``/admin/v1/...``): short-lived JWTs signed by an operator.

A request carries ``Authorization: Bearer <JWT>``, signed with Ed25519 (``EdDSA``) or P-256
(``ES256``) by a key whose public half is configured (``--admin-key FILE``, ``REMITS_ADMIN_KEYS``);
with no key configured the admin API is off. The same keys and the same compact-JWS check serve the
signed reference-value manifests (``shared.manifest``), whose signers are "provisioner" keys.

Everything here is pure: the caller passes the time, so that tests and replays decide alike.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import msgspec
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwa import EdDSAAlgorithm, ESAlgorithm, JWSAlgModel
from joserfc.jwk import ECKey, OKPKey
from joserfc.registry import JWS_HEADER_REGISTRY, HeaderRegistryDict

from shared.errors import RemitsError

Alg = Literal["EdDSA", "ES256"]
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey

_MAX_TOKEN_PAYLOAD = 4096  # an admin token's claims are a few hundred bytes
_MAX_SUBJECT = 256


class AdminKeyError(RemitsError):
    """A configured key that cannot be used: ``admin.key_unreadable``, ``admin.key_malformed`` or
    ``admin.key_unsupported``; ``field`` names the file (or ``pem``/``kid``/``alg``)."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(reason, f"{field}: {detail}")
        self.field = field


class AdminAuthError(RemitsError):
    """An admin credential refused. ``reason`` is one of ``admin.missing_credential``,
    ``admin.malformed``, ``admin.bad_alg``, ``admin.unknown_key``, ``admin.bad_signature``,
    ``admin.expired``, ``admin.not_yet_valid``, ``admin.iat_in_future``, ``admin.lifetime_too_long``,
    ``admin.missing_claim``; ``field`` is the part at fault (``authorization``, ``jws``, ``header``,
    ``alg``, ``kid``, ``signature``, or a claim's name)."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.field = field


class JwsRefused(Exception):
    """Why a compact JWS was refused, before its caller gives that a meaning: ``kind`` is one of
    ``malformed``, ``bad_alg``, ``unknown_key``, ``bad_signature``; ``field`` the part at fault."""

    def __init__(self, kind: str, field: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.field = field
        self.detail = detail


# -- keys ---------------------------------------------------------------------------------------


def _alg_of(key: object) -> Alg:
    if isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        return "EdDSA"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return "ES256"
        raise AdminKeyError("admin.key_unsupported", "pem", f"EC curve {key.curve.name}; only P-256 (ES256)")
    raise AdminKeyError("admin.key_unsupported", "pem", f"{type(key).__name__}; only Ed25519 or P-256")


def default_kid(public_key: PublicKey) -> str:
    """A key's id when none is given: it names the key itself, so it cannot point at another."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


@dataclass(frozen=True)
class AdminKey:
    """A public key trusted to sign admin tokens (or manifests). ``pem`` is its SubjectPublicKeyInfo
    PEM, kept for records; verification uses ``public_key``."""

    kid: str
    alg: Alg
    public_key: PublicKey
    pem: str
    jwk: OKPKey | ECKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if _alg_of(self.public_key) != self.alg:
            raise AdminKeyError("admin.key_unsupported", "alg", f"{self.alg} does not fit this key")
        if not self.kid:
            raise AdminKeyError("admin.key_malformed", "kid", "empty key id")
        pem = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        jwk = OKPKey.import_key(pem) if self.alg == "EdDSA" else ECKey.import_key(pem)
        # Converted once here, so that each verification only checks a signature.
        object.__setattr__(self, "jwk", jwk)


def load_admin_key(pem: bytes, kid: str | None = None) -> AdminKey:
    try:
        public_key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise AdminKeyError(
            "admin.key_malformed", "pem", "not a PEM public key (SubjectPublicKeyInfo)"
        ) from err
    alg = _alg_of(public_key)
    assert isinstance(public_key, Ed25519PublicKey | ec.EllipticCurvePublicKey)  # _alg_of refused the rest
    text = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return AdminKey(default_kid(public_key) if kid is None else kid, alg, public_key, text.decode())


def load_admin_keys(paths: Sequence[Path]) -> list[AdminKey]:
    """One key per PEM file. The same key named twice (flag and environment) is kept once."""
    keys: dict[str, AdminKey] = {}
    for path in paths:
        try:
            pem = path.read_bytes()
        except OSError as err:
            raise AdminKeyError("admin.key_unreadable", str(path), err.strerror or str(err)) from err
        try:
            key = load_admin_key(pem)
        except AdminKeyError as err:
            raise AdminKeyError(err.reason, str(path), err.detail) from err
        keys.setdefault(key.kid, key)
    return list(keys.values())


def admin_key_paths_from_env(value: str | None) -> list[Path]:
    """``REMITS_ADMIN_KEYS``: comma-separated paths; blanks around and between commas are ignored."""
    if not value:
        return []
    return [Path(part.strip()) for part in value.split(",") if part.strip()]


def generate_admin_keypair(alg: Alg = "EdDSA") -> tuple[bytes, bytes]:
    """(private PKCS#8 PEM, public SubjectPublicKeyInfo PEM), unencrypted: the caller stores the
    private half (mode 0600) where only the operator can read it."""
    private: Ed25519PrivateKey | ec.EllipticCurvePrivateKey
    if alg == "EdDSA":
        private = Ed25519PrivateKey.generate()
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        raise ValueError(f"alg must be EdDSA or ES256, not {alg!r}")
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


# -- compact JWS, shared with shared.manifest -----------------------------------------------------


class _Ed25519(EdDSAAlgorithm):
    # RFC 9864 deprecates the name "EdDSA" because it leaves the curve open. Here the curve is fixed
    # (AdminKey admits Ed25519 only) and the name is part of the admin interface, so joserfc's
    # warning on every verification would only be noise in the logs.
    security_warning = None


class JwsRegistry(jws.JWSRegistry):
    """joserfc's registry narrowed to what REMITS signs with: its own algorithm table, so that no
    header can reach another algorithm (``none``, HS*, RS*); and only the header parameters a
    signer here needs, so that ``crit``/``b64`` (unencoded payloads) and keys carried in the token
    (``jwk``, ``jku``, ``x5c``) are refused outright."""

    algorithms: ClassVar[dict[str, JWSAlgModel]] = {
        "EdDSA": _Ed25519(),
        "ES256": ESAlgorithm("ES256", "P-256", 256),
    }
    recommended: ClassVar[list[str]] = ["EdDSA", "ES256"]
    default_header_registry: ClassVar[HeaderRegistryDict] = {
        name: JWS_HEADER_REGISTRY[name] for name in ("alg", "kid", "typ", "cty")
    }

    def __init__(self, max_payload_bytes: int) -> None:
        super().__init__(algorithms=tuple(self.algorithms))
        self.max_payload_bytes = max_payload_bytes
        self.max_payload_length = math.ceil(max_payload_bytes * 4 / 3)  # joserfc bounds the base64 form


def verify_jws(token: str | bytes, keys: Sequence[AdminKey], registry: JwsRegistry) -> tuple[AdminKey, bytes]:
    """The configured key that signed ``token`` (a compact JWS), and the payload it signed.

    With a ``kid`` in the header only the key(s) of that id are tried; without, every key of the
    header's algorithm is."""
    raw = token.encode() if isinstance(token, str) else token
    try:
        obj = jws.extract_compact(raw, registry=registry)
    except (JoseError, ValueError, TypeError) as err:
        raise JwsRefused("malformed", "jws", f"not a compact JWS ({err})") from err
    header = obj.headers()
    if not isinstance(header, dict):
        raise JwsRefused("malformed", "header", "the protected header is not a JSON object")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in registry.algorithms:
        raise JwsRefused("bad_alg", "alg", f"alg {alg!r} refused; only EdDSA or ES256")
    try:
        registry.check_header(header)
    except JoseError as err:
        raise JwsRefused("malformed", "header", str(err)) from err
    if "kid" in header:
        kid = header["kid"]
        candidates = [key for key in keys if key.kid == kid]
        if not candidates:
            raise JwsRefused("unknown_key", "kid", f"no configured key has kid {kid!r}")
        if all(key.alg != alg for key in candidates):
            raise JwsRefused("bad_alg", "alg", f"key {kid} signs with {candidates[0].alg}, not {alg}")
    else:
        candidates = [key for key in keys if key.alg == alg]
        if not candidates:
            raise JwsRefused("unknown_key", "kid", f"no kid, and no configured {alg} key")
    for key in candidates:
        if key.alg == alg and _signed_by(obj, key, registry):
            return key, obj.payload
    raise JwsRefused("bad_signature", "signature", "not signed by a configured key")


def _signed_by(obj: jws.CompactSignature, key: AdminKey, registry: JwsRegistry) -> bool:
    try:
        return jws.validate_compact(obj, key.jwk, registry=registry)
    except JoseError:  # whatever joserfc objects to in this key/token pairing, it is no signature
        return False


def _load_private(private_key_pem: bytes) -> tuple[Alg, OKPKey | ECKey, PublicKey]:
    try:
        private = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise AdminKeyError("admin.key_malformed", "pem", "not an unencrypted PEM private key") from err
    alg = _alg_of(private)
    assert isinstance(private, Ed25519PrivateKey | ec.EllipticCurvePrivateKey)  # _alg_of refused the rest
    jwk = OKPKey.import_key(private_key_pem) if alg == "EdDSA" else ECKey.import_key(private_key_pem)
    return alg, jwk, private.public_key()


def sign_jws(
    private_key_pem: bytes,
    payload: bytes,
    registry: JwsRegistry,
    kid: str | None = None,
    typ: str | None = None,
) -> str:
    """A compact JWS over ``payload``; alg from the key's type, kid by default from its public half."""
    if len(payload) > registry.max_payload_bytes:
        raise ValueError(
            f"payload of {len(payload)} bytes; at most {registry.max_payload_bytes} are accepted"
        )
    alg, jwk, public_key = _load_private(private_key_pem)
    header: dict[str, str] = {"alg": alg, "kid": default_kid(public_key) if kid is None else kid}
    if typ is not None:
        header["typ"] = typ
    return jws.serialize_compact(header, payload, jwk, registry=registry)


# -- admin tokens -------------------------------------------------------------------------------

_REGISTRY = JwsRegistry(_MAX_TOKEN_PAYLOAD)


class _Claims(msgspec.Struct):
    # All optional so that a missing claim gets its own reason; other claims (iss, aud, ...) ignored.
    sub: str | None = None
    exp: int | float | None = None
    iat: int | float | None = None
    nbf: int | float | None = None
    jti: str | None = None


_claims_decoder = msgspec.json.Decoder(_Claims)
_AT = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_NAMED = re.compile(r"(?:missing required|contains unknown) field `(?P<name>[^`]+)`")


def error_field(err: msgspec.ValidationError, root: str) -> str:
    """The field a msgspec validation error is about, as ``a[1].b`` (``root`` for the whole)."""
    message = str(err)
    at = _AT.search(message)
    path = at["path"] if at else ""
    named = _NAMED.search(message)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return path or root


@dataclass(frozen=True)
class AdminIdentity:
    """Who made an admin request: recorded in the audit trail as who changed what."""

    subject: str
    kid: str
    jti: str  # the token's jti, or (none given) a digest of the token, so records still name it
    expires_at: int


def _bearer(authorization_header: str | None) -> str:
    value = (authorization_header or "").strip()
    if not value:
        raise AdminAuthError("admin.missing_credential", "authorization", "no Authorization header")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        # RFC 6750 §3.1: another scheme (Basic, ...) is no bearer credential at all.
        raise AdminAuthError("admin.missing_credential", "authorization", f"scheme {scheme!r}, not Bearer")
    token = token.strip()
    if not token:
        raise AdminAuthError("admin.malformed", "authorization", "Bearer without a token")
    return token


def verify_admin_token(
    authorization_header: str | None,
    keys: Sequence[AdminKey],
    now: float,
    skew_s: int = 60,
    max_lifetime_s: int = 3600,
) -> AdminIdentity:
    token = _bearer(authorization_header)
    try:
        key, payload = verify_jws(token, keys, _REGISTRY)
    except JwsRefused as err:
        raise AdminAuthError(f"admin.{err.kind}", err.field, err.detail) from err
    # Claims are read only once the signature holds: nothing unauthenticated is interpreted.
    try:
        claims = _claims_decoder.decode(payload)
    except msgspec.ValidationError as err:
        raise AdminAuthError("admin.malformed", error_field(err, "claims"), str(err)) from err
    except msgspec.DecodeError as err:
        raise AdminAuthError("admin.malformed", "claims", f"not JSON: {err}") from err
    for name in ("sub", "exp", "iat"):
        if getattr(claims, name) in (None, ""):
            raise AdminAuthError("admin.missing_claim", name, f"claim {name!r} is required")
    assert claims.sub is not None and claims.exp is not None and claims.iat is not None
    if len(claims.sub) > _MAX_SUBJECT or not claims.sub.isprintable():
        # The subject goes into the audit trail verbatim: no control characters, no essays.
        raise AdminAuthError("admin.malformed", "sub", f"not a printable name of at most {_MAX_SUBJECT}")
    if claims.exp <= now:
        raise AdminAuthError("admin.expired", "exp", f"expired at {claims.exp}, now {now:.0f}")
    if claims.iat > now + skew_s:
        raise AdminAuthError("admin.iat_in_future", "iat", f"issued at {claims.iat}, now {now:.0f}")
    if claims.nbf is not None and claims.nbf > now + skew_s:
        raise AdminAuthError("admin.not_yet_valid", "nbf", f"valid from {claims.nbf}, now {now:.0f}")
    if claims.exp <= claims.iat:
        raise AdminAuthError("admin.malformed", "exp", "exp is not after iat")
    if claims.exp - claims.iat > max_lifetime_s:
        raise AdminAuthError(
            "admin.lifetime_too_long",
            "exp",
            f"lives {claims.exp - claims.iat:.0f} s; at most {max_lifetime_s} s",
        )
    jti = claims.jti or "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return AdminIdentity(claims.sub, key.kid, jti, int(claims.exp))


def sign_admin_token(
    private_key_pem: bytes, subject: str, now: float, lifetime_s: int = 300, kid: str | None = None
) -> str:
    """An admin token for ``subject`` (for the CLI and tests), with a fresh random jti."""
    if lifetime_s <= 0:
        raise ValueError("lifetime_s must be positive")
    if not subject:
        raise ValueError("subject must not be empty")
    iat = int(now)
    claims = {"sub": subject, "iat": iat, "exp": iat + lifetime_s, "jti": secrets.token_urlsafe(16)}
    return sign_jws(private_key_pem, msgspec.json.encode(claims), _REGISTRY, kid=kid, typ="JWT")
