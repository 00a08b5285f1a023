"""CCA attestation token layout: decoding only, no trust decisions (see ``verify``).

A token is CBOR tag 399 around a map {44234: platform token, 44241: realm token}. Each entry is
either a bstr holding a COSE_Sign1 (the legacy collection TF-RMM emits) or a CMW: the array
``[content-format, bstr]`` or a CBOR tag whose number encodes the content format
(draft-ietf-rats-msg-wrap). Both sub-tokens are COSE_Sign1 over a claims map.

ParseError fields are readable dotted names: ``cca.token``, ``cca.platform.sign1``,
``cca.realm.rim``, ``cca.platform.sw_components[3].measurement`` ...
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ParseError
from shared.platforms.cca.cbor import Tag, decode, decode_map_raw

TOKEN_TAG = 399
COSE_SIGN1_TAG = 18
PLATFORM_KEY = 44234
REALM_KEY = 44241
# CBOR tags derived from CoAP content formats start here (draft-ietf-rats-msg-wrap, TN()).
_CMW_TAG_BASE = 1668546817
MAX_TOKEN_SIZE = 64 * 1024

ALGORITHMS = {-7: "ES256", -35: "ES384", -36: "ES512"}
HASH_SIZES = (32, 48, 64)

PROFILE_PLATFORM_LEGACY = "http://arm.com/CCA-SSD/1.0.0"
PROFILE_PLATFORM = "tag:arm.com,2023:cca_platform#1.0.0"
PROFILE_REALM = "tag:arm.com,2023:realm#1.0.0"

# Claim keys.
PROFILE = 265
CHALLENGE = 10
IMPLEMENTATION_ID = 2396
INSTANCE_ID = 256
CONFIG = 2401
LIFECYCLE = 2395
SW_COMPONENTS = 2399
VERIFICATION_SERVICE = 2400
PLATFORM_HASH_ALG = 2402
PERSONALIZATION_VALUE = 44235
MEASUREMENT_ALG = 44236
RAK = 44237
RIM = 44238
REMS = 44239
RAK_HASH_ALG = 44240
PLATFORM_CLAIMS = frozenset(
    {
        PROFILE,
        CHALLENGE,
        IMPLEMENTATION_ID,
        INSTANCE_ID,
        CONFIG,
        LIFECYCLE,
        SW_COMPONENTS,
        VERIFICATION_SERVICE,
        PLATFORM_HASH_ALG,
    }
)
REALM_CLAIMS = frozenset(
    {PROFILE, CHALLENGE, PERSONALIZATION_VALUE, MEASUREMENT_ALG, RAK, RIM, REMS, RAK_HASH_ALG}
)

# COSE_Key (RFC 9053): kty EC2 and its curves.
_KTY, _CRV, _X, _Y = 1, -1, -2, -3
_KTY_EC2 = 2
_COSE_CURVES: dict[int, ec.EllipticCurve] = {1: ec.SECP256R1(), 2: ec.SECP384R1(), 3: ec.SECP521R1()}
# An uncompressed SEC1 point's length tells its curve.
_RAW_POINT_CURVES: dict[int, ec.EllipticCurve] = {65: ec.SECP256R1(), 97: ec.SECP384R1(), 133: ec.SECP521R1()}


@dataclass(frozen=True)
class CoseSign1:
    protected: bytes  # the protected header exactly as encoded: it is signed
    alg: int
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class SwComponent:
    type: str | None
    measurement: bytes
    version: str | None
    signer_id: bytes
    hash_alg: str | None


@dataclass(frozen=True)
class PlatformClaims:
    profile: str
    challenge: bytes
    implementation_id: bytes
    instance_id: bytes
    config: bytes
    lifecycle: int
    sw_components: tuple[SwComponent, ...]
    verification_service: str | None
    hash_alg: str
    extra: dict[int | str | bytes, Any] = field(default_factory=dict)  # unknown claims, not trusted


@dataclass(frozen=True)
class RealmClaims:
    profile: str | None  # absent in the legacy format
    challenge: bytes
    personalization_value: bytes
    measurement_alg: str
    # The claim's bytes the platform challenge is a hash of: the content of the bstr (raw SEC1
    # point, or a bstr-wrapped COSE_Key) or, for a bare COSE_Key map, the map as encoded.
    rak_claim: bytes
    rak_public_key: ec.EllipticCurvePublicKey
    rim: bytes
    rems: tuple[bytes, ...]
    rak_hash_alg: str
    extra: dict[int | str | bytes, Any] = field(default_factory=dict)  # unknown claims, not trusted


@dataclass(frozen=True)
class CcaToken:
    form: str  # "legacy" | "cmw"
    platform: CoseSign1
    realm: CoseSign1
    platform_claims: PlatformClaims
    realm_claims: RealmClaims


# -- COSE_Sign1 ----------------------------------------------------------------------------------
def decode_sign1(data: bytes, name: str) -> CoseSign1:
    """``name`` is "platform" or "realm": errors read ``cca.<name>.sign1``."""
    where = f"cca.{name}.sign1"
    item = decode(data, where)
    if isinstance(item, Tag):
        if item.number != COSE_SIGN1_TAG:
            raise ParseError(where, f"CBOR tag {item.number}, not COSE_Sign1 (18)")
        item = item.value
    if not isinstance(item, list) or len(item) != 4:
        raise ParseError(where, "not a four-element COSE_Sign1 array")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes) or not protected:
        raise ParseError(f"{where}.protected", "missing (the algorithm must be protected)")
    if not isinstance(unprotected, dict):
        raise ParseError(f"{where}.unprotected", "not a map")
    if not isinstance(payload, bytes):
        raise ParseError(f"{where}.payload", "not an attached bstr payload")
    if not isinstance(signature, bytes):
        raise ParseError(f"{where}.signature", "not a bstr")
    header = decode(protected, f"{where}.protected")
    if not isinstance(header, dict):
        raise ParseError(f"{where}.protected", "not a map")
    if 2 in header:
        # Critical headers we do not implement must make the signature unusable (RFC 9052 3.1).
        raise ParseError(f"{where}.protected.crit", "critical header parameters are not supported")
    alg = header.get(1)
    # type() first: an attacker's array or map here is unhashable and must be a ParseError too.
    if type(alg) is not int or alg not in ALGORITHMS:
        raise ParseError(f"{where}.alg", f"algorithm {alg!r} is not ES256, ES384 or ES512")
    if 1 in unprotected:
        raise ParseError(f"{where}.unprotected", "algorithm outside the protected header")
    return CoseSign1(protected=protected, alg=alg, payload=payload, signature=signature)


# -- claim helpers -------------------------------------------------------------------------------
def _bytes(claims: dict[Any, Any], key: int, name: str, sizes: tuple[int, ...] | None = None) -> bytes:
    if key not in claims:
        raise ParseError(name, f"mandatory claim {key} is missing")
    value = claims[key]
    if not isinstance(value, bytes):
        raise ParseError(name, f"claim {key} is not a bstr")
    if sizes is not None and len(value) not in sizes:
        raise ParseError(name, f"claim {key} is {len(value)} bytes, expected {' or '.join(map(str, sizes))}")
    return value


def _optional_text(claims: dict[Any, Any], key: int, name: str) -> str | None:
    if key not in claims:
        return None
    value = claims[key]
    if not isinstance(value, str):
        raise ParseError(name, f"claim {key} is not a text string")
    return value


def _text(claims: dict[Any, Any], key: int, name: str) -> str:
    value = _optional_text(claims, key, name)
    if value is None:
        raise ParseError(name, f"mandatory claim {key} is missing")
    return value


def _claims_map(payload: bytes, name: str) -> dict[Any, tuple[Any, bytes]]:
    return decode_map_raw(payload, f"cca.{name}.claims")


# -- platform ------------------------------------------------------------------------------------
def _sw_component(item: Any, index: int) -> SwComponent:
    if not isinstance(item, dict):
        raise ParseError(f"cca.platform.sw_components[{index}]", "not a map")
    try:
        return SwComponent(
            type=_optional_text(item, 1, ".type"),
            measurement=_bytes(item, 2, ".measurement", HASH_SIZES),
            version=_optional_text(item, 4, ".version"),
            signer_id=_bytes(item, 5, ".signer_id", HASH_SIZES),
            hash_alg=_optional_text(item, 6, ".hash_alg"),
        )
    except ParseError as exc:  # the component's full name only when it is needed (a token has many)
        raise ParseError(f"cca.platform.sw_components[{index}]{exc.field}", exc.detail) from None


def decode_platform_claims(payload: bytes) -> PlatformClaims:
    raw = _claims_map(payload, "platform")
    claims = {k: v for k, (v, _) in raw.items()}
    lifecycle = claims.get(LIFECYCLE)
    if LIFECYCLE not in claims:
        raise ParseError("cca.platform.lifecycle", f"mandatory claim {LIFECYCLE} is missing")
    if isinstance(lifecycle, bool) or not isinstance(lifecycle, int) or not 0 <= lifecycle <= 0xFFFF:
        raise ParseError("cca.platform.lifecycle", "not a 16-bit unsigned integer")
    components = claims.get(SW_COMPONENTS)
    if SW_COMPONENTS not in claims:
        raise ParseError("cca.platform.sw_components", f"mandatory claim {SW_COMPONENTS} is missing")
    if not isinstance(components, list):
        raise ParseError("cca.platform.sw_components", "not an array")
    return PlatformClaims(
        profile=_text(claims, PROFILE, "cca.platform.profile"),
        challenge=_bytes(claims, CHALLENGE, "cca.platform.challenge", HASH_SIZES),
        implementation_id=_bytes(claims, IMPLEMENTATION_ID, "cca.platform.implementation_id", (32,)),
        instance_id=_bytes(claims, INSTANCE_ID, "cca.platform.instance_id", (33,)),
        config=_bytes(claims, CONFIG, "cca.platform.config"),
        lifecycle=lifecycle,
        sw_components=tuple(_sw_component(item, i) for i, item in enumerate(components)),
        verification_service=_optional_text(
            claims, VERIFICATION_SERVICE, "cca.platform.verification_service"
        ),
        hash_alg=_text(claims, PLATFORM_HASH_ALG, "cca.platform.hash_alg"),
        extra={k: v for k, v in claims.items() if k not in PLATFORM_CLAIMS},
    )


# -- realm ---------------------------------------------------------------------------------------
def _coordinate(key: dict[Any, Any], label: int, size: int) -> int:
    value = key.get(label)
    if not isinstance(value, bytes) or len(value) != size:
        raise ParseError("cca.realm.rak", f"COSE_Key coordinate {label} is not a {size}-byte bstr")
    return int.from_bytes(value, "big")


def _cose_key(key: dict[Any, Any]) -> ec.EllipticCurvePublicKey:
    if key.get(_KTY) != _KTY_EC2:
        raise ParseError("cca.realm.rak", f"COSE_Key kty {key.get(_KTY)!r} is not EC2")
    crv = key.get(_CRV)
    curve = _COSE_CURVES.get(crv) if type(crv) is int else None
    if curve is None:
        raise ParseError("cca.realm.rak", f"COSE_Key curve {key.get(_CRV)!r} is not P-256, P-384 or P-521")
    size = (curve.key_size + 7) // 8
    try:
        return ec.EllipticCurvePublicNumbers(
            _coordinate(key, _X, size), _coordinate(key, _Y, size), curve
        ).public_key()
    except ValueError:
        raise ParseError("cca.realm.rak", "COSE_Key point is not on its curve") from None


def _raw_point(point: bytes) -> ec.EllipticCurvePublicKey:
    curve = _RAW_POINT_CURVES.get(len(point))
    if curve is None or point[:1] != b"\x04":
        raise ParseError("cca.realm.rak", f"{len(point)} bytes is not an uncompressed EC point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except ValueError:
        raise ParseError("cca.realm.rak", "point is not on its curve") from None


def _rak(value: Any, encoded: bytes) -> tuple[bytes, ec.EllipticCurvePublicKey]:
    """(bytes the binding hashes, key) from claim 44237 in any of its three shapes."""
    if isinstance(value, dict):
        return encoded, _cose_key(value)
    if not isinstance(value, bytes):
        raise ParseError("cca.realm.rak", f"claim {RAK} is neither a bstr nor a COSE_Key")
    if value[:1] == b"\x04":
        return value, _raw_point(value)
    inner = decode(value, "cca.realm.rak")
    if not isinstance(inner, dict):
        raise ParseError("cca.realm.rak", "bstr holds neither an EC point nor a COSE_Key")
    return value, _cose_key(inner)


# A realm keeps its RAK for every attestation under one platform token, and a public key object
# costs more than loading it: OpenSSL prepares a key on its first verify (~30 µs for P-384, more
# than all of the realm claims' decoding). Keyed by the claim's exact encoding; errors are not kept.
@functools.lru_cache(maxsize=4096)
def _rak_of(encoded: bytes) -> tuple[bytes, ec.EllipticCurvePublicKey]:
    return _rak(decode(encoded, "cca.realm.rak"), encoded)


def decode_realm_claims(payload: bytes) -> RealmClaims:
    raw = _claims_map(payload, "realm")
    claims = {k: v for k, (v, _) in raw.items()}
    if RAK not in raw:
        raise ParseError("cca.realm.rak", f"mandatory claim {RAK} is missing")
    rak_claim, rak_key = _rak_of(raw[RAK][1])
    rems = claims.get(REMS)
    if REMS not in claims:
        raise ParseError("cca.realm.rems", f"mandatory claim {REMS} is missing")
    if not isinstance(rems, list) or len(rems) != 4:
        raise ParseError("cca.realm.rems", "not an array of four REMs")
    for i, rem in enumerate(rems):
        if not isinstance(rem, bytes) or len(rem) not in HASH_SIZES:
            raise ParseError(f"cca.realm.rems[{i}]", "not a 32, 48 or 64-byte bstr")
    return RealmClaims(
        profile=_optional_text(claims, PROFILE, "cca.realm.profile"),
        challenge=_bytes(claims, CHALLENGE, "cca.realm.challenge", (64,)),
        personalization_value=_bytes(claims, PERSONALIZATION_VALUE, "cca.realm.rpv", (64,)),
        measurement_alg=_text(claims, MEASUREMENT_ALG, "cca.realm.hash_alg"),
        rak_claim=rak_claim,
        rak_public_key=rak_key,
        rim=_bytes(claims, RIM, "cca.realm.rim", HASH_SIZES),
        rems=tuple(rems),
        rak_hash_alg=_text(claims, RAK_HASH_ALG, "cca.realm.rak_hash_alg"),
        extra={k: v for k, v in claims.items() if k not in REALM_CLAIMS},
    )


# -- collection ----------------------------------------------------------------------------------
def _unwrap(entry: Any, name: str) -> tuple[str, bytes]:
    """(form, COSE_Sign1 bytes) of one collection entry."""
    where = f"cca.token.{name}"
    if isinstance(entry, bytes):
        return "legacy", entry
    if isinstance(entry, list):
        if len(entry) not in (2, 3):
            raise ParseError(where, "CMW array is not [content-format, value]")
        fmt, value = entry[0], entry[1]
        if isinstance(fmt, bool) or not isinstance(fmt, int | str) or (isinstance(fmt, int) and fmt < 0):
            raise ParseError(where, "CMW type is neither a content format nor a media type")
        if not isinstance(value, bytes):
            raise ParseError(where, "CMW value is not a bstr")
        return "cmw", value
    if isinstance(entry, Tag) and entry.number >= _CMW_TAG_BASE and isinstance(entry.value, bytes):
        return "cmw", entry.value
    raise ParseError(where, "neither a bstr (legacy) nor a CMW")


# A platform token repeats across a realm's attestations (the RMM fetches it once per RAK), and
# its claims (every software component) are most of a token's decoding: decoded once per payload.
# The result is immutable; a payload that fails to decode is not kept.
_platform_claims = functools.lru_cache(maxsize=4096)(lambda payload: decode_platform_claims(payload))


def decode_token(raw: bytes) -> CcaToken:
    """Raises only ParseError."""
    if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_TOKEN_SIZE:
        raise ParseError("cca.token", f"not a token of at most {MAX_TOKEN_SIZE} bytes")
    top = decode(bytes(raw), "cca.token")
    if not isinstance(top, Tag) or top.number != TOKEN_TAG:
        raise ParseError("cca.token", f"not CBOR tag {TOKEN_TAG} (CCA token collection)")
    collection = top.value
    if not isinstance(collection, dict):
        raise ParseError("cca.token", "tag 399 does not wrap a map")
    for key, name in ((PLATFORM_KEY, "platform"), (REALM_KEY, "realm")):
        if key not in collection:
            raise ParseError(f"cca.token.{name}", f"collection entry {key} is missing")
    unknown = set(collection) - {PLATFORM_KEY, REALM_KEY}
    if unknown:
        raise ParseError("cca.token", f"unexpected collection entries {sorted(map(repr, unknown))}")
    platform_form, platform_bytes = _unwrap(collection[PLATFORM_KEY], "platform")
    realm_form, realm_bytes = _unwrap(collection[REALM_KEY], "realm")
    if platform_form != realm_form:
        raise ParseError("cca.token", "platform and realm entries use different collection forms")
    platform = decode_sign1(platform_bytes, "platform")
    realm = decode_sign1(realm_bytes, "realm")
    return CcaToken(
        form=platform_form,
        platform=platform,
        realm=realm,
        platform_claims=_platform_claims(platform.payload),
        realm_claims=decode_realm_claims(realm.payload),
    )


# -- evidence as guests send it ------------------------------------------------------------------
_TOKEN_PREFIX = b"\xd9\x01\x8f"  # tag 399, two-byte head


def _token_bytes(value: Any) -> bytes:
    if isinstance(value, list):
        if len(value) > MAX_TOKEN_SIZE or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value
        ):
            raise ParseError("cca.evidence.token", "not an array of byte values")
        return bytes(value)
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 2 * MAX_TOKEN_SIZE:
            raise ParseError("cca.evidence.token", "too long")
        padded = text + "=" * (-len(text) % 4)
        try:
            alphabet = b"-_" if ("-" in text or "_" in text) else b"+/"
            return base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            raise ParseError("cca.evidence.token", "not base64 or base64url") from None
    raise ParseError("cca.evidence.token", "neither a byte array nor a base64 string")


def decode_evidence(primary_evidence: bytes) -> bytes:
    """The raw CBOR token from KBS ``primary_evidence``: either the token itself or the
    guest-components JSON ``{"token": [bytes...] | "<base64 or base64url>"}``. Raises only
    ParseError; the result still has to go through ``decode_token``."""
    data = bytes(primary_evidence)
    if data.startswith(_TOKEN_PREFIX):
        return data
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise ParseError("cca.evidence", "neither a CBOR CCA token nor JSON") from None
    if not isinstance(doc, dict) or "token" not in doc:
        raise ParseError("cca.evidence", 'JSON evidence has no "token"')
    token = _token_bytes(doc["token"])
    if not token.startswith(_TOKEN_PREFIX):
        raise ParseError("cca.evidence.token", "does not start with CBOR tag 399")
    return token
