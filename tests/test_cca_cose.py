"""Arm CCA: our COSE_Sign1 and CBOR code against independent implementations (pycose, cbor2)."""

from __future__ import annotations

from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pycose.algorithms import Es256, Es384, Es512
from pycose.headers import Algorithm
from pycose.keys import EC2Key
from pycose.keys.curves import P256, P384, P521
from pycose.messages import Sign1Message

from shared.errors import ParseError, VerificationError
from shared.platforms.cca import cbor
from shared.platforms.cca.abi import decode_sign1, decode_token
from shared.platforms.cca.cose import sig_structure, sign1, verify_sign1

DATA = Path(__file__).parent / "data" / "cca"
CASES = [
    (-7, ec.SECP256R1(), P256, Es256),
    (-35, ec.SECP384R1(), P384, Es384),
    (-36, ec.SECP521R1(), P521, Es512),
]


def cose_key(
    key: ec.EllipticCurvePublicKey, curve: object, private: ec.EllipticCurvePrivateKey | None = None
) -> EC2Key:
    size = (key.curve.key_size + 7) // 8
    n = key.public_numbers()
    d = private.private_numbers().private_value.to_bytes(size, "big") if private else b""
    return EC2Key(crv=curve, x=n.x.to_bytes(size, "big"), y=n.y.to_bytes(size, "big"), d=d)


def pycose_verifies(raw: bytes, key: ec.EllipticCurvePublicKey, curve: object) -> bool:
    # cbor2 6 decodes arrays to tuples and maps to frozendicts, which pycose 1.1 does not take.
    protected, unprotected, payload, signature = cbor2.loads(raw).value
    msg = Sign1Message.from_cose_obj([protected, dict(unprotected), payload, signature], True)
    msg.key = cose_key(key, curve)
    return bool(msg.verify_signature())


@pytest.mark.parametrize(("alg", "curve", "pycose_curve", "_pycose_alg"), CASES)
def test_our_signatures_verify_in_pycose(
    alg: int, curve: ec.EllipticCurve, pycose_curve: object, _pycose_alg: object
) -> None:
    key = ec.generate_private_key(curve)
    raw = sign1(b"payload bytes", key, alg)
    assert pycose_verifies(raw, key.public_key(), pycose_curve)
    parsed = decode_sign1(raw, "realm")
    assert parsed.alg == alg and parsed.payload == b"payload bytes"
    assert len(parsed.signature) == 2 * ((curve.key_size + 7) // 8)
    verify_sign1(parsed, key.public_key(), "check.name")
    tampered = bytearray(raw)
    tampered[-1] ^= 1
    assert not pycose_verifies(bytes(tampered), key.public_key(), pycose_curve)
    with pytest.raises(VerificationError) as err:
        verify_sign1(decode_sign1(bytes(tampered), "realm"), key.public_key(), "check.name")
    assert err.value.check == "check.name"


@pytest.mark.parametrize(("alg", "curve", "pycose_curve", "pycose_alg"), CASES)
def test_pycose_signatures_verify_here(
    alg: int, curve: ec.EllipticCurve, pycose_curve: object, pycose_alg: object
) -> None:
    key = ec.generate_private_key(curve)
    msg = Sign1Message(phdr={Algorithm: pycose_alg}, payload=b"from pycose")
    msg.key = cose_key(key.public_key(), pycose_curve, key)
    parsed = decode_sign1(msg.encode(), "platform")
    assert parsed.alg == alg
    verify_sign1(parsed, key.public_key(), "x")
    other = ec.generate_private_key(curve).public_key()
    with pytest.raises(VerificationError):
        verify_sign1(parsed, other, "x")


def test_vector_signatures_verify_in_pycose() -> None:
    """pycose agrees with us on the TF-RMM token's two signatures."""
    public = load_pem_public_key((DATA / "realm_tf-rmm_cca_platform.pub").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    outer = cbor2.loads((DATA / "realm_tf-rmm_cca_token.cbor").read_bytes()).value
    assert pycose_verifies(outer[44234], public, P384)
    token = decode_token((DATA / "realm_tf-rmm_cca_token.cbor").read_bytes())
    assert pycose_verifies(outer[44241], token.realm_claims.rak_public_key, P384)


def test_sig_structure_matches_cbor2() -> None:
    protected = cbor2.dumps({1: -35})
    payload = bytes(range(256)) * 300
    assert sig_structure(protected, payload) == cbor2.dumps(["Signature1", protected, b"", payload])


def test_key_must_fit_the_algorithm() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    parsed = decode_sign1(sign1(b"x", key, -35), "realm")
    with pytest.raises(VerificationError, match="does not fit"):
        verify_sign1(parsed, ec.generate_private_key(ec.SECP256R1()).public_key(), "c")
    with pytest.raises(ValueError):
        sign1(b"x", key, -7)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (cbor2.CBORTag(17, [cbor2.dumps({1: -35}), {}, b"", b""]), "parse.cca.realm.sign1"),
        ([cbor2.dumps({1: -35}), {}, b""], "parse.cca.realm.sign1"),
        ([b"", {1: -35}, b"p", b"s"], "parse.cca.realm.sign1.protected"),
        ([cbor2.dumps({1: -8}), {}, b"p", b"s"], "parse.cca.realm.sign1.alg"),
        ([cbor2.dumps({1: -35, 2: [99]}), {}, b"p", b"s"], "parse.cca.realm.sign1.protected.crit"),
        ([cbor2.dumps({1: -35}), {}, None, b"s"], "parse.cca.realm.sign1.payload"),
        ([cbor2.dumps({1: -35}), [], b"p", b"s"], "parse.cca.realm.sign1.unprotected"),
        ([cbor2.dumps({1: -35}), {1: -7}, b"p", b"s"], "parse.cca.realm.sign1.unprotected"),
        ([cbor2.dumps([1]), {}, b"p", b"s"], "parse.cca.realm.sign1.protected"),
    ],
)
def test_malformed_sign1(value: object, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        decode_sign1(cbor2.dumps(value), "realm")
    assert err.value.reason == reason


def test_untagged_sign1_is_accepted() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    tagged = sign1(b"p", key, -35)
    assert tagged[0] == 0xD2
    parsed = decode_sign1(tagged[1:], "realm")
    verify_sign1(parsed, key.public_key(), "c")


def test_wrong_signature_length() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    parsed = decode_sign1(sign1(b"p", key, -35), "realm")
    short = type(parsed)(parsed.protected, parsed.alg, parsed.payload, parsed.signature[:-1])
    with pytest.raises(VerificationError, match="95 bytes"):
        verify_sign1(short, key.public_key(), "c")


VALUES = [
    0,
    23,
    24,
    255,
    256,
    65535,
    65536,
    2**32,
    2**64 - 1,
    -1,
    -24,
    -25,
    -(2**64),
    b"",
    b"x" * 300,
    "",
    "ü" * 40,
    [],
    [1, [2, [3]]],
    {},
    {1: b"a", -2: "b", "k": [1]},
    True,
    False,
    None,
]


@pytest.mark.parametrize("value", VALUES)
def test_cbor_codec_agrees_with_cbor2(value: object) -> None:
    ours = cbor.encode(value)
    assert ours == cbor2.dumps(value)
    assert cbor.decode(ours, "v") == value


def test_cbor_tags_and_floats() -> None:
    assert cbor.decode(cbor2.dumps(cbor2.CBORTag(399, {1: 2})), "v") == cbor.Tag(399, {1: 2})
    assert cbor.encode(cbor.Tag(18, [])) == cbor2.dumps(cbor2.CBORTag(18, []))
    for f in (1.5, -0.25, 1e300):
        assert cbor.decode(cbor2.dumps(f), "v") == f


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"", "needs 1 bytes"),
        (b"\x5f\x41a\xff", "indefinite"),
        (b"\x9f\x01\xff", "indefinite"),
        (b"\x5a\xff\xff\xff\xff", "exceeds"),
        (b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff", "exceeds"),
        (b"\xa2\x01\x01\x01\x02", "duplicate"),
        (b"\xa1\x80\x01", "map key"),
        (b"\x62\xff\xfe", "UTF-8"),
        (b"\x01\x02", "trailing"),
        (b"\x81" * 40 + b"\x01", "deeply"),
        (b"\xf8\x20", "simple"),
        (b"\x1c", "reserved"),
    ],
)
def test_cbor_decoder_rejects(raw: bytes, detail: str) -> None:
    with pytest.raises(ParseError, match=detail) as err:
        cbor.decode(raw, "cca.token")
    assert err.value.reason == "parse.cca.token"


def test_decode_map_raw_gives_exact_value_bytes() -> None:
    inner = cbor2.dumps({1: 2, -1: 2})
    raw = cbor2.dumps({10: b"abc", 44237: {1: 2, -1: 2}, 7: [1, 2]})
    got = cbor.decode_map_raw(raw, "m")
    assert got[44237] == ({1: 2, -1: 2}, inner)
    assert got[10] == (b"abc", cbor2.dumps(b"abc"))
    with pytest.raises(ParseError):
        cbor.decode_map_raw(cbor2.dumps([1]), "m")
