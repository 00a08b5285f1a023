"""ES256 signing keys held in software or in a PKCS#11 token, and JWS/EAR signing over either."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)

from shared.custody.errors import CustodyError
from shared.ear import EarSigner
from shared.ear import p256_public_jwk as ear_public_jwk
from shared.kbs.wire import b64url_encode

if TYPE_CHECKING:
    from shared.custody.pkcs11 import Pkcs11Config, TokenSession

__all__ = [
    "P256_EC_PARAMS",
    "Es256Key",
    "Es256TokenSigner",
    "Pkcs11Es256Key",
    "SoftwareEs256Key",
    "generate_pkcs11_es256_key",
    "p256_public_jwk",
    "sign_jws",
]

SIGNATURE_SIZE = 64
# DER of the named-curve OID 1.2.840.10045.3.1.7 (P-256), as CKA_EC_PARAMS holds it.
P256_EC_PARAMS = bytes.fromhex("06082a8648ce3d030107")
_POINT_SIZE = 65  # uncompressed: 0x04 || x || y


@runtime_checkable
class Es256Key(Protocol):
    """A P-256 private key that signs without revealing itself."""

    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign_digest_input(self, data: bytes) -> bytes:
        """The ES256 signature of ``data``: raw r||s (64 bytes) over SHA-256(data)."""
        ...


def _require_p256_public(key: ec.EllipticCurvePublicKey) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise CustodyError("custody.key_type", "ES256 needs a P-256 key")


class SoftwareEs256Key:
    """An ES256 key in process memory (``cryptography``)."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise CustodyError("custody.key_type", "ES256 needs an EC private key")
        _require_p256_public(private_key.public_key())
        self._private_key = private_key

    def __repr__(self) -> str:
        return "SoftwareEs256Key(P-256)"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._private_key.public_key()

    def sign_digest_input(self, data: bytes) -> bytes:
        r, s = decode_dss_signature(self._private_key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


# --- PKCS#11 ------------------------------------------------------------------------------------


def _public_key_from_ec_point(raw: bytes, label: str) -> ec.EllipticCurvePublicKey:
    # CKA_EC_POINT is the DER OCTET STRING around the point; a few modules return the bare point.
    if len(raw) == _POINT_SIZE + 2 and raw[0] == 0x04 and raw[1] == _POINT_SIZE:
        raw = raw[2:]
    if len(raw) != _POINT_SIZE or raw[0] != 0x04:
        raise CustodyError(
            "custody.public_key", f"key {label!r}: EC_POINT is not an uncompressed P-256 point"
        )
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except ValueError as exc:
        raise CustodyError("custody.public_key", f"key {label!r}: EC_POINT is not on P-256") from exc


class Pkcs11Es256Key:
    """An ES256 key whose private half never leaves a PKCS#11 token.

    The token signs the SHA-256 digest with CKM_ECDSA, which every EC-capable token offers (SoftHSM has
    no CKM_ECDSA_SHA256); hashing here also keeps a large signing input off a network HSM's wire. One
    session is held for the key's life, so a signature costs one C_Sign, not an open and a login."""

    def __init__(self, config: Pkcs11Config, label: str) -> None:
        from pkcs11 import Mechanism

        from shared.custody.pkcs11 import HeldObjects

        self.label = label
        self._mechanism = Mechanism.ECDSA
        self._private: Any = None
        self._public_key: ec.EllipticCurvePublicKey | None = None
        self._held = HeldObjects(config, f"key {label!r}", self._load)

    def _load(self, held: TokenSession) -> None:
        from pkcs11 import Attribute, KeyType, ObjectClass

        from shared.custody.pkcs11 import translate

        what = f"key {self.label!r}"
        if self._mechanism not in held.mechanisms():
            raise CustodyError("custody.mechanism", f"token {held.config.token_label!r} lacks CKM_ECDSA")
        with translate("custody.key", what):
            private = held.session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label=self.label)
            public = held.session.get_key(ObjectClass.PUBLIC_KEY, KeyType.EC, label=self.label)
            params = bytes(private[Attribute.EC_PARAMS])
            sensitive = bool(private[Attribute.SENSITIVE])
            extractable = bool(private[Attribute.EXTRACTABLE])
            point = bytes(public[Attribute.EC_POINT])
            if params != P256_EC_PARAMS:
                raise CustodyError("custody.key_type", f"{what} is not a P-256 key")
            # A key that could be read out of the token would give none of custody's guarantees.
            if not sensitive or extractable:
                raise CustodyError("custody.key_policy", f"{what} must be sensitive and non-extractable")
            public_key = _public_key_from_ec_point(point, self.label)
            # Label collisions can pair a private key with a foreign public key: prove they match.
            probe = b"remits custody key check"
            signature = bytes(private.sign(hashlib.sha256(probe).digest(), mechanism=self._mechanism))
        if len(signature) != SIGNATURE_SIZE or not _verifies(public_key, probe, signature):
            raise CustodyError("custody.key_mismatch", f"{what}: private and public key do not match")
        if self._public_key is not None and self._public_key != public_key:
            # after a reconnect: tokens already issued name the old key, so a swapped key is an error
            raise CustodyError("custody.key_mismatch", f"{what} is not the key opened before")
        self._private, self._public_key = private, public_key

    def __repr__(self) -> str:
        return f"Pkcs11Es256Key(label={self.label!r})"

    def public_key(self) -> ec.EllipticCurvePublicKey:
        assert self._public_key is not None
        return self._public_key

    def sign_digest_input(self, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        signature = self._held.use(
            "custody.sign", lambda: bytes(self._private.sign(digest, mechanism=self._mechanism))
        )
        if len(signature) != SIGNATURE_SIZE:
            raise CustodyError("custody.sign", f"key {self.label!r}: token returned {len(signature)} bytes")
        return signature

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> Pkcs11Es256Key:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate_pkcs11_es256_key(config: Pkcs11Config, label: str) -> ec.EllipticCurvePublicKey:
    """Create a P-256 key pair on the token under ``label``: a private key that is a token object,
    sensitive, non-extractable and can only sign, and its public key. Refuses a label already in use,
    since two keys under one label could not be told apart later."""
    from pkcs11 import Attribute, KeyType, MechanismFlag

    from shared.custody.pkcs11 import open_session, translate

    with open_session(config, rw=True) as session, translate("custody.generate", f"key {label!r}"):
        if list(session.get_objects({Attribute.LABEL: label, Attribute.KEY_TYPE: KeyType.EC})):
            raise CustodyError("custody.label_exists", f"an EC key labelled {label!r} exists already")
        public, _ = session.generate_keypair(
            KeyType.EC,
            label=label,
            store=True,
            capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            public_template={Attribute.EC_PARAMS: P256_EC_PARAMS, Attribute.TOKEN: True},
            private_template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.DERIVE: False,
                Attribute.DECRYPT: False,
                Attribute.UNWRAP: False,
            },
        )
        return _public_key_from_ec_point(bytes(public[Attribute.EC_POINT]), label)


def _verifies(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, hashlib.sha256(data).digest(), ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        return False
    return True


# --- JWS ------------------------------------------------------------------------------------------


def sign_jws(key: Es256Key, header_b64: str, payload_b64: str) -> str:
    """The compact ES256 JWS of an already encoded header and payload."""
    signing_input = f"{header_b64}.{payload_b64}"
    signature = key.sign_digest_input(signing_input.encode("ascii"))
    if len(signature) != SIGNATURE_SIZE:
        raise CustodyError("custody.sign", f"an ES256 signature is {SIGNATURE_SIZE} bytes")
    return f"{signing_input}.{b64url_encode(signature)}"


def p256_public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The public JWK (kty, crv, x, y) of a P-256 key, as the EAR header and JWKS carry it."""
    _require_p256_public(public_key)
    return ear_public_jwk(public_key)


# EarSigner takes any Es256Key (it signs through ``sign_digest_input``): one signer for every backend.
Es256TokenSigner = EarSigner
