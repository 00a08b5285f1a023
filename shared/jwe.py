"""Resources released to an attested TEE, encrypted to its ``tee-pubkey`` as a flattened JSON JWE.

Built directly on ``cryptography`` rather than joserfc: KBS clients read ``alg``/``enc``/``epk`` from the
*protected* header only, and joserfc's flattened serialisation places the per-recipient ``alg`` in an
unprotected ``header`` member. The format is RFC 7516/7518; joserfc is used in tests to prove interop.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from shared.errors import ParseError, ProtocolError, VerificationError
from shared.kbs.wire import b64url_decode, b64url_encode, tee_public_key

ENC: Final = "A256GCM"
ALG_RSA: Final = "RSA-OAEP-256"
ALG_ECDH: Final = "ECDH-ES+A256KW"
MEMBERS: Final = ("protected", "encrypted_key", "iv", "ciphertext", "tag")

_CEK_SIZE: Final = 32
_IV_SIZE: Final = 12
_CURVES: Final[dict[str, tuple[ec.EllipticCurve, int]]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-521": (ec.SECP521R1(), 66),
}
_CURVE_NAMES: Final = {curve.name: (crv, size) for crv, (curve, size) in _CURVES.items()}


def _oaep() -> padding.OAEP:
    # RFC 7518 §4.3: RSA-OAEP-256 means SHA-256 for both the OAEP hash and MGF1.
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _ecdh_kek(shared_secret: bytes) -> bytes:
    """RFC 7518 §4.6.2 Concat KDF: AlgorithmID, empty PartyUInfo/PartyVInfo, SuppPubInfo = key bits."""

    def field(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    other_info = field(ALG_ECDH.encode("ascii")) + field(b"") + field(b"") + struct.pack(">I", _CEK_SIZE * 8)
    return ConcatKDFHash(hashes.SHA256(), _CEK_SIZE, other_info).derive(shared_secret)


def _ec_public_key(jwk: dict[str, Any]) -> ec.EllipticCurvePublicKey:
    curve, _size = _CURVES[jwk["crv"]]
    x = int.from_bytes(b64url_decode(jwk["x"]), "big")
    y = int.from_bytes(b64url_decode(jwk["y"]), "big")
    return ec.EllipticCurvePublicNumbers(x, y, curve).public_key()


def _epk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    crv, size = _CURVE_NAMES[public_key.curve.name]
    numbers = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": b64url_encode(numbers.y.to_bytes(size, "big")),
    }


def _encode_header(header: dict[str, Any]) -> str:
    return b64url_encode(json.dumps(header, separators=(",", ":")).encode("ascii"))


def wrap_secret(secret: bytes, tee_jwk: dict[str, Any]) -> dict[str, str]:
    """Encrypt ``secret`` to ``tee_jwk`` (validated here, so any unsupported key raises
    ``ProtocolError("kbs.unsupported_tee_pubkey")``)."""
    recipient = tee_public_key(tee_jwk)
    cek = AESGCM.generate_key(bit_length=_CEK_SIZE * 8)
    alg = tee_jwk["alg"]
    header: dict[str, Any] = {"alg": alg, "enc": ENC}
    if alg == ALG_RSA and isinstance(recipient, rsa.RSAPublicKey):
        encrypted_key = recipient.encrypt(cek, _oaep())
    elif alg == ALG_ECDH and isinstance(recipient, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(recipient.curve)
        kek = _ecdh_kek(ephemeral.exchange(ec.ECDH(), recipient))
        encrypted_key = aes_key_wrap(kek, cek)
        header["epk"] = _epk(ephemeral.public_key())
    else:  # pragma: no cover - tee_public_key admits only the two algorithms above
        raise ProtocolError("kbs.unsupported_tee_pubkey", f"alg {alg!r}")
    protected = _encode_header(header)
    iv = os.urandom(_IV_SIZE)
    # The AAD is the encoded protected header, binding alg/enc/epk to the ciphertext.
    sealed = AESGCM(cek).encrypt(iv, secret, protected.encode("ascii"))
    ciphertext, tag = sealed[:-16], sealed[-16:]
    return {
        "protected": protected,
        "encrypted_key": b64url_encode(encrypted_key),
        "iv": b64url_encode(iv),
        "ciphertext": b64url_encode(ciphertext),
        "tag": b64url_encode(tag),
    }


# --- client side --------------------------------------------------------------------------------


def _members(jwe: dict[str, Any]) -> dict[str, bytes]:
    extra = set(jwe) - set(MEMBERS)
    if extra:
        # aad/unprotected/header would change what is authenticated; we never produce them.
        raise ParseError("jwe", f"unexpected members {sorted(extra)}")
    out: dict[str, bytes] = {}
    for name in MEMBERS:
        try:
            out[name] = b64url_decode(jwe[name])
        except (KeyError, ValueError) as exc:
            raise ParseError(f"jwe.{name}", "missing or not base64url") from exc
    return out


def _header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ParseError("jwe.protected", "not JSON") from exc
    if not isinstance(header, dict):
        raise ParseError("jwe.protected", "not a JSON object")
    if header.get("enc") != ENC or "zip" in header or "crit" in header:
        raise ParseError("jwe.protected", "only enc A256GCM without zip/crit is supported")
    return header


def _unwrap_cek(header: dict[str, Any], encrypted_key: bytes, private_key: Any) -> bytes:
    alg = header.get("alg")
    if alg == ALG_RSA and isinstance(private_key, rsa.RSAPrivateKey):
        return private_key.decrypt(encrypted_key, _oaep())
    if alg == ALG_ECDH and isinstance(private_key, ec.EllipticCurvePrivateKey):
        epk = header.get("epk")
        if not isinstance(epk, dict) or epk.get("kty") != "EC" or epk.get("crv") not in _CURVES:
            raise ParseError("jwe.protected", "epk missing or not an EC key")
        ephemeral = _ec_public_key(epk)
        if ephemeral.curve.name != private_key.curve.name:
            raise ParseError("jwe.protected", "epk curve differs from the recipient key")
        kek = _ecdh_kek(private_key.exchange(ec.ECDH(), ephemeral))
        return aes_key_unwrap(kek, encrypted_key)
    raise ParseError("jwe.protected", f"alg {alg!r} does not fit the private key")


def unwrap_secret(jwe: dict[str, Any], private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    """Inverse of :func:`wrap_secret`, for clients and tests.

    Raises ParseError for a malformed JWE and VerificationError("jwe.decrypt_failed") when any
    authenticated part (protected header, key, IV, ciphertext, tag) was altered."""
    parts = _members(jwe)
    header = _header(parts["protected"])
    try:
        cek = _unwrap_cek(header, parts["encrypted_key"], private_key)
    except (ValueError, KeyError, TypeError, InvalidUnwrap) as exc:
        # Off-curve epk, wrong OAEP padding, failed key unwrap: all mean "not for this key / altered".
        raise VerificationError("jwe.decrypt_failed", "content key could not be recovered") from exc
    if len(cek) != _CEK_SIZE or len(parts["iv"]) != _IV_SIZE or len(parts["tag"]) != 16:
        raise VerificationError("jwe.decrypt_failed", "content key, IV or tag has the wrong size")
    try:
        aad = jwe["protected"].encode("ascii")
        return AESGCM(cek).decrypt(parts["iv"], parts["ciphertext"] + parts["tag"], aad)
    except InvalidTag as exc:
        raise VerificationError("jwe.decrypt_failed", "authentication tag mismatch") from exc
