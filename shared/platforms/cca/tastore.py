"""CCA trust anchors: which CPAK (platform attestation key) vouches for which platform.

The store is the JSON shape rust-ccatoken and Trustee's local CCA verifier read:
``[{"implementation-id": ..., "instance-id": ..., "pkey": <EC JWK>}]``. Ids appear in hex in
some stores and base64 in others; the fixed id sizes (32 and 33 bytes) tell which, since no
string is valid at the right size in both encodings.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ParseError, VerificationError

_JWK_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_CURVE_NAMES = {type(curve): name for name, curve in _JWK_CURVES.items()}
_ID_SIZES = {"implementation-id": 32, "instance-id": 33}


@dataclass(frozen=True)
class TrustAnchor:
    implementation_id: bytes
    instance_id: bytes
    public_key: ec.EllipticCurvePublicKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    alphabet = b"-_" if ("-" in text or "_" in text) else b"+/"
    return base64.b64decode(padded, altchars=alphabet, validate=True)


def _identifier(value: Any, name: str, where: str) -> bytes:
    size = _ID_SIZES[name]
    if not isinstance(value, str):
        raise ParseError(f"{where}.{name}", "not a string")
    for decoder in (bytes.fromhex, _unb64):
        try:
            raw = decoder(value)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == size:
            return raw
    raise ParseError(f"{where}.{name}", f"neither hex nor base64 of {size} bytes")


def jwk_to_key(jwk: Any, where: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC":
        raise ParseError(f"{where}.pkey", "not an EC JWK")
    curve = _JWK_CURVES.get(jwk.get("crv"))  # type: ignore[arg-type]
    if curve is None:
        raise ParseError(f"{where}.pkey.crv", f"curve {jwk.get('crv')!r} is not P-256, P-384 or P-521")
    size = (curve.key_size + 7) // 8
    try:
        x, y = (_unb64(jwk[c]) for c in ("x", "y"))
        if len(x) != size or len(y) != size:
            raise ValueError("coordinate size")
        return ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise ParseError(
            f"{where}.pkey", "x/y are not base64url coordinates of a point on the curve"
        ) from None


def key_to_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    size = (key.curve.key_size + 7) // 8
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": _CURVE_NAMES[type(key.curve)],
        "x": _b64url(numbers.x.to_bytes(size, "big")),
        "y": _b64url(numbers.y.to_bytes(size, "big")),
    }


def _anchor(entry: Any, where: str) -> TrustAnchor:
    if not isinstance(entry, dict):
        raise ParseError(where, "not an object")
    return TrustAnchor(
        implementation_id=_identifier(entry.get("implementation-id"), "implementation-id", where),
        instance_id=_identifier(entry.get("instance-id"), "instance-id", where),
        public_key=jwk_to_key(entry.get("pkey"), where),
    )


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ParseError(where, "not JSON", prefix="config") from None


def load_ta_store(data: bytes) -> list[TrustAnchor]:
    doc = _json(data, "cca.ta_store")
    if not isinstance(doc, list):
        raise ParseError("cca.ta_store", "not a JSON array", prefix="config")
    try:
        return [_anchor(entry, f"cca.ta_store[{i}]") for i, entry in enumerate(doc)]
    except ParseError as err:
        raise ParseError(err.field, err.detail, prefix="config") from None


def find_anchor(anchors: list[TrustAnchor], implementation_id: bytes, instance_id: bytes) -> TrustAnchor:
    for anchor in anchors:
        if anchor.implementation_id == implementation_id and anchor.instance_id == instance_id:
            return anchor
    raise VerificationError(
        "cca.platform.anchor_unknown",
        f"no trust anchor for implementation {implementation_id.hex()} instance {instance_id.hex()}",
    )


def encode_anchor(anchor: TrustAnchor) -> bytes:
    """One store entry as canonical JSON: the cacheable endorsement document."""
    entry = {
        "implementation-id": anchor.implementation_id.hex(),
        "instance-id": anchor.instance_id.hex(),
        "pkey": key_to_jwk(anchor.public_key),
    }
    return json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()


def decode_anchor(document: bytes) -> TrustAnchor:
    return _anchor(_json(document, "cca.anchor"), "cca.anchor")
