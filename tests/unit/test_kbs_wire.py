from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import ProtocolError
from shared.kbs.wire import (
    KNOWN_TEES,
    SUPPORTED_TEES,
    Challenge,
    ErrorBody,
    TokenResponse,
    b64url_decode,
    b64url_encode,
    decode_attestation,
    decode_request,
    error_body,
    require_supported_tee,
    validate_tee_pubkey,
)

NONCE = "2yN2hQ1Y7wqVvB0s9XN0cS3m8o9sdN3l5bC0H3J2m1Q="


def ec_jwk(curve: ec.EllipticCurve, crv: str, size: int) -> dict[str, str]:
    numbers = ec.generate_private_key(curve).public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "alg": "ECDH-ES+A256KW",
        "x": b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": b64url_encode(numbers.y.to_bytes(size, "big")),
    }


def rsa_jwk(bits: int = 2048) -> dict[str, str]:
    numbers = rsa.generate_private_key(65537, bits).public_key().public_numbers()
    return {
        "kty": "RSA",
        "alg": "RSA-OAEP-256",
        "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url_encode(numbers.e.to_bytes(3, "big")),
    }


P256 = ec_jwk(ec.SECP256R1(), "P-256", 32)


def attestation_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "init-data": {"format": "toml", "body": 'version = "0.1.0"\nalgorithm = "sha384"\n'},
        "runtime-data": {"nonce": NONCE, "tee-pubkey": P256},
        "tee-evidence": {
            "primary_evidence": {"quote": "AAAA", "cc_eventlog": None},
            "additional_evidence": "",
        },
    }
    body.update(overrides)
    return body


# --- /auth ---------------------------------------------------------------------------------------


def test_decode_request_as_the_client_sends_it() -> None:
    req = decode_request(
        b'{"version":"0.4.0","tee":"snp","extra-params":'
        b'{"supported-hash-algorithms":["sha256","sha384","sha512","sm3"]}}'
    )
    assert req.version == "0.4.0"
    assert req.tee == "snp"
    assert req.extra_params == {"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]}


def test_decode_request_extra_params_forms() -> None:
    assert decode_request(b'{"version":"0.4.0","tee":"sample","extra-params":""}').extra_params == ""
    assert decode_request(b'{"version":"0.4.0","tee":"sample"}').extra_params == ""
    with pytest.raises(ProtocolError) as err:
        decode_request(b'{"version":"0.4.0","tee":"sample","extra-params":[1]}')
    assert err.value.reason == "kbs.bad_request"
    assert "$.extra-params" in err.value.detail


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'{"version":"0.3.0","tee":"snp","extra-params":""}', "$.version"),
        (b'{"version":"0.4.0","tee":"nope","extra-params":""}', "$.tee"),
        (b'{"version":"0.4.0","tee":7,"extra-params":""}', "$.tee"),
        (b'{"version":"0.4.0","extra-params":""}', "tee"),
        (b'{"version":"0.4.0","tee":"snp","extra_params":""}', "extra_params"),
        (b'{"version":"0.4.0","tee":"snp","extra-params":"","x":1}', "`x`"),
        (b'{"version":"0.4.0",', "truncated"),
        (b"[]", "object"),
    ],
)
def test_decode_request_rejects(body: bytes, path: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_request(body)
    assert err.value.reason == "kbs.bad_request"
    assert path in err.value.detail


def test_tee_sets() -> None:
    assert {"sample", "snp", "tdx", "sgx", "tpm", "az-snp-vtpm", "az-tdx-vtpm", "gcp-vtpm", "sev", "cca", "se"} == SUPPORTED_TEES
    assert SUPPORTED_TEES <= KNOWN_TEES
    assert {"snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm", "se", "sampledevice"} <= KNOWN_TEES
    assert require_supported_tee("sample") == "sample"
    assert require_supported_tee("snp") == "snp"
    with pytest.raises(ProtocolError) as err:
        require_supported_tee("csv")
    assert err.value.reason == "kbs.unsupported_tee"


def test_challenge_and_token_encoding() -> None:
    assert json.loads(msgspec.json.encode(Challenge(nonce=NONCE))) == {"nonce": NONCE, "extra-params": ""}
    se = Challenge(nonce=NONCE, extra_params={"selected-hash-algorithm": "sha512"})
    assert json.loads(msgspec.json.encode(se))["extra-params"] == {"selected-hash-algorithm": "sha512"}
    assert msgspec.json.encode(TokenResponse(token="a.b.c")) == b'{"token":"a.b.c"}'


# --- /attest -------------------------------------------------------------------------------------


def test_decode_attestation_full() -> None:
    att = decode_attestation(json.dumps(attestation_body()).encode())
    assert att.init_data is not None and att.init_data.format == "toml"
    assert att.init_data.body.startswith("version")
    assert att.runtime_data.nonce == NONCE
    assert att.runtime_data.tee_pubkey == P256
    assert att.tee_evidence.primary_evidence == {"quote": "AAAA", "cc_eventlog": None}
    assert att.tee_evidence.additional_evidence == ""


def test_decode_attestation_optional_parts() -> None:
    body = attestation_body(**{"tee-evidence": {"primary_evidence": "opaque"}})
    del body["init-data"]
    att = decode_attestation(json.dumps(body).encode())
    assert att.init_data is None
    assert att.tee_evidence.primary_evidence == "opaque"
    assert att.tee_evidence.additional_evidence == ""
    assert decode_attestation(json.dumps(attestation_body(**{"init-data": None})).encode()).init_data is None


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"init-data": {"format": "json", "body": "{}"}}, "$.init-data.format"),
        ({"runtime-data": {"nonce": NONCE}}, "tee-pubkey"),
        ({"runtime-data": {"nonce": 5, "tee-pubkey": P256}}, "$.runtime-data.nonce"),
        ({"runtime-data": {"nonce": NONCE, "tee-pubkey": "k"}}, "$.runtime-data.tee-pubkey"),
        ({"runtime-data": {"nonce": NONCE, "tee-pubkey": P256, "x": 1}}, "$.runtime-data"),
        ({"tee-evidence": {"additional_evidence": ""}}, "primary_evidence"),
        ({"tee-evidence": {"primary_evidence": {}, "additional_evidence": {}}}, "additional_evidence"),
        ({"runtime_data": {}}, "runtime_data"),
    ],
)
def test_decode_attestation_rejects(overrides: dict[str, Any], path: str) -> None:
    with pytest.raises(ProtocolError) as err:
        decode_attestation(json.dumps(attestation_body(**overrides)).encode())
    assert err.value.reason == "kbs.bad_request"
    assert path in err.value.detail


def test_deep_nesting_is_a_bad_request() -> None:
    deep = b'{"runtime-data":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(ProtocolError) as err:
        decode_attestation(deep)
    assert err.value.reason == "kbs.bad_request"
    evidence = b'{"tee-evidence":{"primary_evidence":' + b"[" * 5000 + b"]" * 5000 + b"}}"
    with pytest.raises(ProtocolError):
        decode_attestation(evidence)


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_protocol_error(body: bytes) -> None:
    for decode in (decode_request, decode_attestation):
        try:
            decode(body)
        except ProtocolError as exc:
            assert exc.reason == "kbs.bad_request"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300)
@given(JSON_VALUES)
def test_random_json_only_raises_protocol_error(value: Any) -> None:
    body = json.dumps(value).encode()
    for decode in (decode_request, decode_attestation):
        try:
            decode(body)
        except ProtocolError as exc:
            assert exc.reason == "kbs.bad_request"


# --- tee-pubkey ----------------------------------------------------------------------------------


def test_accepts_supported_keys() -> None:
    p521 = ec_jwk(ec.SECP521R1(), "P-521", 66)
    rsa2048 = rsa_jwk()
    for jwk in (P256, p521, rsa2048):
        assert validate_tee_pubkey(jwk) is jwk
    assert len(b64url_decode(p521["x"])) == 66


def _mutated(base: dict[str, str], **changes: str | None) -> dict[str, str]:
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {"alg": "ECDH-ES"},
        {"alg": None},
        {"crv": "P-384"},
        {"crv": "secp256k1"},
        {"kty": "OKP"},
        {"kty": "AKP"},
        {"x": P256["x"][:-2]},  # too short
        {"x": P256["x"] + "="},  # padded
        {"x": P256["x"][:-1] + "+"},  # wrong alphabet
        {"y": b64url_encode(bytes(32))},  # off the curve
        {"y": None},
        {"d": P256["x"]},  # private key material
    ],
)
def test_rejects_bad_ec_keys(changes: dict[str, str | None]) -> None:
    with pytest.raises(ProtocolError) as err:
        validate_tee_pubkey(_mutated(P256, **changes))
    assert err.value.reason == "kbs.unsupported_tee_pubkey"


def test_rejects_bad_rsa_keys() -> None:
    good = rsa_jwk()
    small = rsa_jwk(1024)
    even_e = _mutated(good, e=b64url_encode((65536).to_bytes(3, "big")))
    for bad in (
        small,
        _mutated(good, alg="RSA1_5"),
        _mutated(good, alg="RSA-OAEP"),
        even_e,
        _mutated(good, n=None),
        "not a dict",
    ):
        with pytest.raises(ProtocolError) as err:
            validate_tee_pubkey(bad)  # type: ignore[arg-type]
        assert err.value.reason == "kbs.unsupported_tee_pubkey"


def test_b64url_strictness() -> None:
    assert b64url_decode("AQID") == b"\x01\x02\x03"
    assert b64url_encode(b"\xfb\xff") == "-_8"
    for bad in ("AQI=", "A", "AQ+D", "AR", "A Q"):
        with pytest.raises(ValueError):
            b64url_decode(bad)


# --- errors --------------------------------------------------------------------------------------


def test_error_body() -> None:
    body = error_body("PolicyDeny", "resource policy denied the request")
    assert json.loads(body) == {
        "type": "https://github.com/confidential-containers/kbs/errors/PolicyDeny",
        "detail": "resource policy denied the request",
    }
    decoded = msgspec.json.decode(body, type=ErrorBody)
    assert decoded.type_.endswith("/PolicyDeny")
    with pytest.raises(ValueError):
        error_body("policy deny", "x")
