"""COSE_Sign1 (RFC 9052) with ECDSA only: what CCA tokens are signed with."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from shared.errors import VerificationError
from shared.platforms.cca.abi import COSE_SIGN1_TAG, CoseSign1
from shared.platforms.cca.cbor import Tag, encode

# alg -> (curve the key must be on, hash): RFC 9053 ties each ESxxx to one curve.
_ECDSA: dict[int, tuple[type[ec.EllipticCurve], hashes.HashAlgorithm]] = {
    -7: (ec.SECP256R1, hashes.SHA256()),
    -35: (ec.SECP384R1, hashes.SHA384()),
    -36: (ec.SECP521R1, hashes.SHA512()),
}


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """The bytes actually signed: ["Signature1", protected, external_aad = h'', payload]."""
    return encode(["Signature1", protected, b"", payload])


def _coordinate_size(curve: ec.EllipticCurve) -> int:
    return (curve.key_size + 7) // 8


def verify_sign1(sign1: CoseSign1, key: ec.EllipticCurvePublicKey, check: str) -> None:
    """Raises VerificationError(check) unless ``key`` signed ``sign1`` with its declared alg."""
    spec = _ECDSA.get(sign1.alg)
    if spec is None:
        raise VerificationError(check, f"unsupported algorithm {sign1.alg}")
    curve_type, digest = spec
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, curve_type):
        # An ES384 signature "verified" with a P-256 key would mean the alg header is not what
        # selected the verification: refuse rather than adapt.
        raise VerificationError(check, f"key does not fit algorithm {sign1.alg}")
    size = _coordinate_size(key.curve)
    if len(sign1.signature) != 2 * size:
        raise VerificationError(check, f"signature is {len(sign1.signature)} bytes, expected {2 * size}")
    r = int.from_bytes(sign1.signature[:size], "big")
    s = int.from_bytes(sign1.signature[size:], "big")
    try:
        key.verify(
            utils.encode_dss_signature(r, s), sig_structure(sign1.protected, sign1.payload), ec.ECDSA(digest)
        )
    except InvalidSignature:
        raise VerificationError(check, "signature does not verify") from None


def sign1(payload: bytes, private_key: ec.EllipticCurvePrivateKey, alg: int) -> bytes:
    """A tagged COSE_Sign1 over ``payload`` (used by simulators and tests, never by verification)."""
    curve_type, digest = _ECDSA[alg]
    if not isinstance(private_key.curve, curve_type):
        raise ValueError(f"a {private_key.curve.name} key cannot sign with algorithm {alg}")
    protected = encode({1: alg})
    der = private_key.sign(sig_structure(protected, payload), ec.ECDSA(digest))
    r, s = utils.decode_dss_signature(der)
    size = _coordinate_size(private_key.curve)
    signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return encode(Tag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))
