from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwe as jose_jwe
from joserfc.jwk import ECKey, RSAKey

from shared.errors import ParseError, ProtocolError, RemitsError, VerificationError
from shared.jwe import unwrap_secret, wrap_secret
from shared.kbs.wire import b64url_decode, b64url_encode

SECRET = b'{"key":"c2VjcmV0IHJlc291cmNl"}'
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def tee_jwk(private_key: PrivateKey) -> dict[str, str]:
    """The tee-pubkey a KBS client would send for ``private_key``."""
    if isinstance(private_key, rsa.RSAPrivateKey):
        numbers = private_key.public_key().public_numbers()
        return {
            "kty": "RSA",
            "alg": "RSA-OAEP-256",
            "n": b64url_encode(numbers.n.to_bytes(256, "big")),
            "e": b64url_encode(numbers.e.to_bytes(3, "big")),
        }
    size = (private_key.curve.key_size + 7) // 8
    point = private_key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": {"secp256r1": "P-256", "secp521r1": "P-521"}[private_key.curve.name],
        "alg": "ECDH-ES+A256KW",
        "x": b64url_encode(point.x.to_bytes(size, "big")),
        "y": b64url_encode(point.y.to_bytes(size, "big")),
    }


@pytest.fixture(scope="module", params=["RSA-2048", "P-256", "P-521"])
def private_key(request: pytest.FixtureRequest) -> PrivateKey:
    if request.param == "RSA-2048":
        return rsa.generate_private_key(65537, 2048)
    curve = ec.SECP256R1() if request.param == "P-256" else ec.SECP521R1()
    return ec.generate_private_key(curve)


def protected_header(jwe: dict[str, str]) -> dict[str, Any]:
    return json.loads(b64url_decode(jwe["protected"]))


def test_round_trip(private_key: PrivateKey) -> None:
    jwk = tee_jwk(private_key)
    out = wrap_secret(SECRET, jwk)
    assert set(out) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    assert all("=" not in value for value in out.values())
    assert len(b64url_decode(out["iv"])) == 12
    assert len(b64url_decode(out["tag"])) == 16
    assert len(b64url_decode(out["ciphertext"])) == len(SECRET)
    header = protected_header(out)
    assert header["enc"] == "A256GCM" and header["alg"] == jwk["alg"]
    if jwk["kty"] == "EC":
        assert set(header) == {"alg", "enc", "epk"}
        assert header["epk"]["crv"] == jwk["crv"] and "d" not in header["epk"]
        assert len(b64url_decode(out["encrypted_key"])) == 40
    else:
        assert set(header) == {"alg", "enc"}
        assert len(b64url_decode(out["encrypted_key"])) == 256
    assert unwrap_secret(out, private_key) == SECRET


def test_fresh_randomness_per_call(private_key: PrivateKey) -> None:
    a, b = wrap_secret(SECRET, tee_jwk(private_key)), wrap_secret(SECRET, tee_jwk(private_key))
    assert (
        a["iv"] != b["iv"] and a["encrypted_key"] != b["encrypted_key"] and a["ciphertext"] != b["ciphertext"]
    )


def _flip(value: str) -> str:
    raw = bytearray(b64url_decode(value))
    raw[len(raw) // 2] ^= 0x01
    return b64url_encode(bytes(raw))


@pytest.mark.parametrize("member", ["ciphertext", "tag", "iv", "encrypted_key"])
def test_tampering_is_detected(private_key: PrivateKey, member: str) -> None:
    out = wrap_secret(SECRET, tee_jwk(private_key))
    out[member] = _flip(out[member])
    with pytest.raises(VerificationError) as err:
        unwrap_secret(out, private_key)
    assert err.value.check == "jwe.decrypt_failed"


def test_tampered_protected_header(private_key: PrivateKey) -> None:
    out = wrap_secret(SECRET, tee_jwk(private_key))
    header = protected_header(out)
    # Still valid JSON with the same meaning, but not the bytes that were authenticated.
    out["protected"] = b64url_encode(json.dumps(header, indent=1).encode())
    with pytest.raises(VerificationError):
        unwrap_secret(out, private_key)
    out["protected"] = _flip(wrap_secret(SECRET, tee_jwk(private_key))["protected"])
    with pytest.raises(RemitsError):
        unwrap_secret(out, private_key)


def test_malformed_jwe(private_key: PrivateKey) -> None:
    out = wrap_secret(SECRET, tee_jwk(private_key))
    for broken in (
        {k: v for k, v in out.items() if k != "tag"},
        {**out, "aad": "AAAA"},
        {**out, "iv": out["iv"] + "="},
        {**out, "protected": b64url_encode(b'{"alg":"dir","enc":"A128GCM"}')},
    ):
        with pytest.raises(ParseError):
            unwrap_secret(broken, private_key)


def test_wrong_recipient_key_fails() -> None:
    out = wrap_secret(SECRET, tee_jwk(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(VerificationError):
        unwrap_secret(out, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ParseError):  # P-521 key for a P-256 epk
        unwrap_secret(out, ec.generate_private_key(ec.SECP521R1()))


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "EC", "crv": "P-384", "alg": "ECDH-ES+A256KW", "x": "AA", "y": "AA"},
        {"kty": "RSA", "alg": "RSA1_5", "n": "AQAB", "e": "AQAB"},
        {"kty": "AKP", "alg": "ML-KEM-768+A192KW", "pub": "AA"},
        {"kty": "oct", "k": "AAAA"},
    ],
)
def test_unsupported_keys(jwk: dict[str, str]) -> None:
    with pytest.raises(ProtocolError) as err:
        wrap_secret(SECRET, jwk)
    assert err.value.reason == "kbs.unsupported_tee_pubkey"


# --- interop with joserfc ------------------------------------------------------------------------


def _jose_key(private_key: PrivateKey) -> ECKey | RSAKey:
    return (
        RSAKey.import_key(private_key)
        if isinstance(private_key, rsa.RSAPrivateKey)
        else ECKey.import_key(private_key)
    )


def test_joserfc_decrypts_our_output(private_key: PrivateKey) -> None:
    out = wrap_secret(SECRET, tee_jwk(private_key))
    alg = protected_header(out)["alg"]
    decrypted = jose_jwe.decrypt_json(out, _jose_key(private_key), algorithms=[alg, "A256GCM"])
    assert decrypted.plaintext == SECRET


def test_we_decrypt_joserfc_output(private_key: PrivateKey) -> None:
    alg = tee_jwk(private_key)["alg"]
    compact = jose_jwe.encrypt_compact(
        {"alg": alg, "enc": "A256GCM"}, SECRET, _jose_key(private_key), algorithms=[alg, "A256GCM"]
    )
    # Compact serialisation keeps every header in the protected part, which is our flattened shape.
    protected, encrypted_key, iv, ciphertext, tag = compact.split(".")
    flattened = {
        "protected": protected,
        "encrypted_key": encrypted_key,
        "iv": iv,
        "ciphertext": ciphertext,
        "tag": tag,
    }
    assert unwrap_secret(flattened, private_key) == SECRET
