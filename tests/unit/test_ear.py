from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws, jwt
from joserfc.jwk import ECKey, OctKey

from shared.ear import (
    EAT_PROFILE,
    TRUST_CLAIMS,
    TRUSTEE_EAT_PROFILE,
    EarSigner,
    EarVerifier,
    UnverifiedToken,
    build_ear_claims,
    load_or_create_signing_key,
    status_of,
    submod_status,
    tee_pubkey_from_claims,
    tier_of,
    verify_ear,
)
from shared.errors import ParseError, VerificationError
from shared.kbs.wire import b64url_decode, b64url_encode

DATA = Path(__file__).parents[1] / "data/kbs/ear"
EXAMPLE = json.loads((DATA / "example.token.json").read_text())
EXPECTED = json.loads((DATA / "expected.json").read_text())["expected"]

NOW = 1_760_000_000
JWK = {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"}
EVIDENCE: dict[str, Any] = {
    "report_data": "00" * 64,
    "init_data": "00" * 32,
    "runtime_data_claims": {"nonce": "bm9uY2U=", "tee-pubkey": JWK},
    "sample": {"svn": "1", "launch_digest": "ab" * 32},
}


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def signer(key: ec.EllipticCurvePrivateKey) -> EarSigner:
    return EarSigner(key)


def claims(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "tee": "sample",
        "vector": {"executables": 3, "hardware": 2, "configuration": 2},
        "annotated_evidence": EVIDENCE,
        "policy_id": "default",
        "issued_at": NOW,
        "verifier_build": "remits 0.1.0",
    }
    kwargs.update(overrides)
    return build_ear_claims(**kwargs)


# --- tiers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "tier"),
    [
        (-1, "none"),
        (0, "none"),
        (1, "none"),
        (2, "affirming"),
        (31, "affirming"),
        (-2, "affirming"),
        (-32, "affirming"),
        (32, "warning"),
        (36, "warning"),
        (95, "warning"),
        (-33, "warning"),
        (-96, "warning"),
        (96, "contraindicated"),
        (99, "contraindicated"),
        (127, "contraindicated"),
        (-97, "contraindicated"),
        (-128, "contraindicated"),
    ],
)
def test_tier_of(value: int, tier: str) -> None:
    assert tier_of(value) == tier


@pytest.mark.parametrize("value", [128, -129, True, "2", 2.0])
def test_tier_of_rejects(value: Any) -> None:
    with pytest.raises(ParseError) as err:
        tier_of(value)
    assert err.value.reason == "parse.trust_vector"


def test_status_is_worst_tier() -> None:
    assert status_of({}) == "none"
    assert status_of({"executables": 2}) == "affirming"
    assert status_of({"executables": 2, "configuration": 32}) == "warning"
    assert status_of({"executables": 2, "configuration": 32, "hardware": 97}) == "contraindicated"
    with pytest.raises(ParseError):
        status_of({"executable": 2})  # misspelt claim


def test_example_token_body_is_contraindicated() -> None:
    cpu0 = EXAMPLE["submods"]["cpu0"]
    assert cpu0["ear.trustworthiness-vector"] == EXPECTED["submods.cpu0.ear.trustworthiness-vector"]
    assert set(cpu0["ear.trustworthiness-vector"]) == set(TRUST_CLAIMS)
    assert status_of(cpu0["ear.trustworthiness-vector"]) == "contraindicated"
    assert cpu0["ear.status"] == EXPECTED["submods.cpu0.ear.status"] == "contraindicated"
    assert submod_status(EXAMPLE) == "contraindicated"
    assert cpu0["ear.appraisal-policy-id"] == "default"
    assert EXAMPLE["exp"] - EXAMPLE["iat"] == 300
    assert EXAMPLE["eat_profile"] == TRUSTEE_EAT_PROFILE == EXPECTED["eat_profile"]
    # Trustee's example carries no runtime data, hence no key to wrap resources to.
    with pytest.raises(VerificationError) as err:
        tee_pubkey_from_claims(EXAMPLE)
    assert err.value.check == "token.malformed"


def test_submod_status_never_better_than_vector() -> None:
    body = claims()
    body["submods"]["cpu0"]["ear.status"] = "affirming"
    body["submods"]["cpu0"]["ear.trustworthiness-vector"]["hardware"] = 97
    assert submod_status(body) == "contraindicated"
    body["submods"]["cpu0"]["ear.status"] = 32  # integer form
    body["submods"]["cpu0"]["ear.trustworthiness-vector"]["hardware"] = 2
    assert submod_status(body) == "warning"
    with pytest.raises(VerificationError):
        submod_status(body, "gpu0")
    body["submods"]["cpu0"]["ear.status"] = "great"
    with pytest.raises(VerificationError):
        submod_status(body)


# --- building ------------------------------------------------------------------------------------


def test_build_claims() -> None:
    body = claims()
    assert body["eat_profile"] == EAT_PROFILE == "tag:github.com,2025:remits/ear"
    assert (body["iat"], body["exp"], body["iss"]) == (NOW, NOW + 300, "remits")
    assert body["ear.verifier-id"] == {"developer": "remits", "build": "remits 0.1.0"}
    cpu0 = body["submods"]["cpu0"]
    assert cpu0["ear.status"] == "affirming"
    assert cpu0["ear.trustworthiness-vector"] == {
        "instance-identity": 0,
        "configuration": 2,
        "executables": 3,
        "file-system": 0,
        "hardware": 2,
        "runtime-opaque": 0,
        "storage-opaque": 0,
        "sourced-data": 0,
    }
    assert cpu0["ear.appraisal-policy-id"] == "default"
    assert cpu0["ear.veraison.annotated-evidence"] == EVIDENCE
    assert cpu0["ear.veraison.annotated-evidence"] is not EVIDENCE
    assert tee_pubkey_from_claims(body) == JWK
    assert set(body) == {"eat_profile", "iat", "exp", "iss", "ear.verifier-id", "submods"}


def test_build_claims_rejects() -> None:
    with pytest.raises(ParseError):
        claims(tee="snp")  # evidence has no "snp" claims object
    with pytest.raises(ParseError):
        claims(vector={"hardware": 300})
    with pytest.raises(ValueError):
        claims(lifetime_s=0)
    assert claims(lifetime_s=60, issuer="x")["exp"] == NOW + 60


# --- signing and verifying -----------------------------------------------------------------------


def test_sign_and_verify(signer: EarSigner, key: ec.EllipticCurvePrivateKey) -> None:
    token = signer.sign(claims())
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header["alg"] == "ES256" and header["typ"] == "JWT"
    assert header["kid"] == signer.kid == signer.public_jwk()["kid"]
    assert {k: header["jwk"][k] for k in ("kty", "crv", "x", "y")} == {
        k: signer.public_jwk()[k] for k in ("kty", "crv", "x", "y")
    }
    assert "d" not in header["jwk"] and "d" not in signer.public_jwk()
    # kid is the RFC 7638 thumbprint, as joserfc computes it.
    assert signer.kid == ECKey.import_key(key.public_key()).thumbprint()

    out = verify_ear(token, key.public_key(), now=NOW + 10)
    assert out == claims()
    assert verify_ear(token, signer.public_jwk(), now=NOW) == out


def test_verify_time_window(signer: EarSigner, key: ec.EllipticCurvePrivateKey) -> None:
    token = signer.sign(claims())
    pub = key.public_key()
    assert verify_ear(token, pub, now=NOW + 299)
    for now, leeway, check in (
        (NOW + 300, 0, "token.expired"),
        (NOW + 400, 60, "token.expired"),
        (NOW - 1, 0, "token.not_yet_valid"),
    ):
        with pytest.raises(VerificationError) as err:
            verify_ear(token, pub, now=now, leeway_s=leeway)
        assert err.value.check == check
    assert verify_ear(token, pub, now=NOW + 330, leeway_s=60)
    assert verify_ear(token, pub, now=NOW - 30, leeway_s=60)


def test_verify_uses_only_the_trusted_key(signer: EarSigner) -> None:
    # A token signed by another key, which names itself in the header, must still fail.
    attacker = EarSigner(ec.generate_private_key(ec.SECP256R1()))
    forged = attacker.sign(claims())
    trusted = signer.public_jwk()
    with pytest.raises(VerificationError) as err:
        verify_ear(forged, trusted, now=NOW)
    assert err.value.check == "token.signature_invalid"


def test_verify_rejects_tampering_and_alg_tricks(signer: EarSigner, key: ec.EllipticCurvePrivateKey) -> None:
    pub = key.public_key()
    header, payload, sig = signer.sign(claims()).split(".")
    changed = claims(vector={"hardware": 2, "executables": 2, "configuration": 2}, policy_id="lenient")
    tampered = ".".join([header, b64url_encode(json.dumps(changed).encode()), sig])
    with pytest.raises(VerificationError) as err:
        verify_ear(tampered, pub, now=NOW)
    assert err.value.check == "token.signature_invalid"

    none_header = b64url_encode(b'{"alg":"none","typ":"JWT"}')
    hs_token = jwt.encode({"alg": "HS256"}, claims(), OctKey.generate_key(256))
    for bad in (f"{none_header}.{payload}.", hs_token, "abc", "a.b", "a.b.c", "", f"{header}.{payload}.AAAA"):
        with pytest.raises(VerificationError) as err:
            verify_ear(bad, pub, now=NOW)
        assert err.value.check in {"token.malformed", "token.signature_invalid"}


def test_a_token_read_once_is_trusted_only_after_its_signature(signer: EarSigner, key: ec.EllipticCurvePrivateKey) -> None:
    """The release stage reads a token once (its iss and kid choose the keys) and verifies that
    reading: what it read before the check carries no trust of its own."""
    token = signer.sign({**claims(), "iss": "remits/t/team-a"})
    read = UnverifiedToken.parse(token)
    assert (read.kid, read.issuer) == (signer.kid, "remits/t/team-a")
    assert EarVerifier(key.public_key()).verify_parsed(read, now=NOW) == {**claims(), "iss": "remits/t/team-a"}
    # Another issuer written into the payload: read as such, refused by the signature.
    header, _, sig = token.split(".")
    moved = ".".join([header, b64url_encode(json.dumps({**claims(), "iss": "remits/t/team-b"}).encode()), sig])
    assert UnverifiedToken.parse(moved).issuer == "remits/t/team-b"
    with pytest.raises(VerificationError) as err:
        EarVerifier(key.public_key()).verify_parsed(UnverifiedToken.parse(moved), now=NOW)
    assert err.value.check == "token.signature_invalid"
    assert UnverifiedToken.parse(signer.sign(claims())).issuer == "remits"
    assert UnverifiedToken.parse(signer.sign({k: v for k, v in claims().items() if k != "iss"})).issuer == ""
    for bad in ("a.b", f"{header}.bm90IGpzb24.{sig}", f"{header}.WzFd.{sig}"):  # not JSON; a JSON array
        with pytest.raises(VerificationError) as err:
            UnverifiedToken.parse(bad)
        assert err.value.check == "token.malformed"
    alg_only = b64url_encode(b'{"alg":"ES256"}')
    no_kid = UnverifiedToken.parse(".".join([alg_only, token.split(".")[1], sig]))
    with pytest.raises(VerificationError) as err:
        _ = no_kid.kid
    assert err.value.check == "token.malformed"


def test_verify_profile_and_claim_types(signer: EarSigner, key: ec.EllipticCurvePrivateKey) -> None:
    pub = key.public_key()
    other = {**claims(), "eat_profile": TRUSTEE_EAT_PROFILE}
    with pytest.raises(VerificationError) as err:
        verify_ear(signer.sign(other), pub, now=NOW)
    assert err.value.check == "token.profile"
    assert verify_ear(signer.sign(other), pub, now=NOW, expected_profile=TRUSTEE_EAT_PROFILE)

    for broken in ({**claims(), "exp": "soon"}, {k: v for k, v in claims().items() if k != "iat"}):
        with pytest.raises(VerificationError) as err:
            verify_ear(signer.sign(broken), pub, now=NOW)
        assert err.value.check == "token.malformed"
    array_payload = jws.serialize_compact({"alg": "ES256"}, b"[1]", ECKey.import_key(key))
    with pytest.raises(VerificationError) as err:
        verify_ear(array_payload, pub, now=NOW)
    assert err.value.check == "token.malformed"


def test_signer_requires_p256() -> None:
    with pytest.raises(TypeError):
        EarSigner(ec.generate_private_key(ec.SECP384R1()))


# --- key storage ---------------------------------------------------------------------------------


def test_load_or_create_signing_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ear.pem"
    created = load_or_create_signing_key(path)
    assert isinstance(created.curve, ec.SECP256R1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_signing_key(str(path))
    assert again.private_numbers() == created.private_numbers()
    assert [p.name for p in path.parent.iterdir()] == ["ear.pem"]  # no temp files left behind

    wrong = tmp_path / "p384.pem"
    wrong.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(TypeError):
        load_or_create_signing_key(wrong)


def test_tokens_interoperate_with_joserfc(signer: EarSigner, key: ec.EllipticCurvePrivateKey) -> None:
    """Our hand-built ES256 tokens are what a JOSE library expects, and the other way round."""
    ours = signer.sign(claims())
    decoded = jwt.decode(ours, ECKey.import_key(key.public_key()), algorithms=["ES256"])
    assert decoded.claims == claims() and decoded.header["kid"] == signer.kid
    theirs = jwt.encode({"alg": "ES256", "typ": "JWT"}, claims(), ECKey.import_key(key), algorithms=["ES256"])
    assert verify_ear(theirs, key.public_key(), now=NOW) == claims()
    # A library-made token with a wrong signature still fails with us.
    other = ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode({"alg": "ES256"}, claims(), ECKey.import_key(other), algorithms=["ES256"])
    with pytest.raises(VerificationError) as err:
        verify_ear(forged, key.public_key(), now=NOW)
    assert err.value.check == "token.signature_invalid"


def test_verify_refuses_critical_headers_and_short_signatures(key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    signing_input = ".".join(
        b64url_encode(json.dumps(part).encode()) for part in ({"alg": "ES256", "crit": ["x"], "x": 1}, claims())
    )
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    crit = f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
    with pytest.raises(VerificationError) as err:
        verify_ear(crit, key.public_key(), now=NOW)
    assert err.value.check == "token.malformed"
    header, payload, _ = EarSigner(key).sign(claims()).split(".")
    with pytest.raises(VerificationError) as err:
        verify_ear(f"{header}.{payload}.{b64url_encode(bytes(63))}", key.public_key(), now=NOW)
    assert err.value.check == "token.signature_invalid"


def test_issued_skew_accepts_a_signer_ahead_but_never_lengthens_a_token(
    signer: EarSigner, key: ec.EllipticCurvePrivateKey
) -> None:
    # A decide replica whose clock runs 30 s ahead issued this token; release is on time.
    token = signer.sign(claims())
    verifier = EarVerifier(key.public_key())
    assert verifier.verify(token, now=NOW - 30, issued_skew_s=60)
    with pytest.raises(VerificationError) as err:
        verifier.verify(token, now=NOW - 61, issued_skew_s=60)
    assert err.value.check == "token.not_yet_valid"
    with pytest.raises(VerificationError) as err:  # the expiry is not moved by the skew
        verifier.verify(token, now=NOW + 300, issued_skew_s=60)
    assert err.value.check == "token.expired"
