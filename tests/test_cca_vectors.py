"""Arm CCA: the collected public tokens (FVP / published test keys, see tests/data/cca/README.md)
decode to the values their sources document and verify with their trust anchors."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from shared.errors import ParseError, VerificationError
from shared.platforms.cca.abi import PROFILE_PLATFORM, PROFILE_PLATFORM_LEGACY, PROFILE_REALM, decode_token
from shared.platforms.cca.tastore import (
    TrustAnchor,
    decode_anchor,
    encode_anchor,
    find_anchor,
    jwk_to_key,
    load_ta_store,
)
from shared.platforms.cca.verify import verify_token, verify_token_with_store

DATA = Path(__file__).parent / "data" / "cca"
FVP_IMPL = bytes.fromhex("7f454c4602010100000000000000000003003e00010000005058000000000000")
FVP_INST = bytes.fromhex("0107060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918")
TF_M_CPAK_X = "IShnxS4rlQiwpCCpBWDzlNLfqiG911FP8akBr-fh94uxHU5m-Kijivp2r2oxxN6M"

# token file -> trust-anchor store that endorses it
TOKENS = {
    "realm_tf-rmm_cca_token.cbor": "cca_conf_tastore.json",
    "cca-token-02.cbor": "ta-02-ok.json",
    "cca-token-draft-ffm-00.cbor": "cca_conf_tastore.json",
    "cca_misc_cca-example-token.cbor": "cca_conf_tastore.json",
}


def read(name: str) -> bytes:
    return (DATA / name).read_bytes()


def tf_m_cpak() -> ec.EllipticCurvePublicKey:
    key = load_pem_public_key(read("realm_tf-rmm_cca_platform.pub"))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def test_every_vector_is_covered() -> None:
    assert sorted(p.name for p in DATA.glob("*.cbor")) == sorted(TOKENS)


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_vector_verifies_with_its_store(name: str) -> None:
    anchors = load_ta_store(read(TOKENS[name]))
    token = verify_token_with_store(read(name), anchors)
    assert token.form == "legacy"
    # The binding the verifier just checked, recomputed independently here.
    digest = hashlib.new(
        token.realm_claims.rak_hash_alg.replace("-", ""), token.realm_claims.rak_claim
    ).digest()
    assert digest == token.platform_claims.challenge


def test_tf_rmm_token_with_the_tf_m_pem_key() -> None:
    token = decode_token(read("realm_tf-rmm_cca_token.cbor"))
    verify_token(token, TrustAnchor(FVP_IMPL, FVP_INST, tf_m_cpak()), expected_challenge=b"\xab" * 64)
    realm, platform = token.realm_claims, token.platform_claims
    assert realm.challenge == b"\xab" * 64
    assert realm.profile is None  # legacy format
    assert realm.rim == bytes(32)
    assert realm.rems == (bytes(32),) * 4
    assert realm.personalization_value == b"The quick brown fox jumps over 13 lazy dogs.The quick brown fox "
    assert realm.measurement_alg == "sha-256" and realm.rak_hash_alg == "sha-256"
    assert len(realm.rak_claim) == 97 and realm.rak_claim[0] == 4
    assert realm.rak_public_key.curve.name == "secp384r1"
    assert platform.profile == PROFILE_PLATFORM_LEGACY
    assert platform.implementation_id == FVP_IMPL and platform.instance_id == FVP_INST
    assert platform.lifecycle == 0x3003
    assert platform.hash_alg == "sha-256"
    assert platform.verification_service == "whatever.com"
    assert platform.challenge == hashlib.sha256(realm.rak_claim).digest()
    assert [sw.type for sw in platform.sw_components] == ["BL", "M1", "M2", "M3"]
    assert [sw.version for sw in platform.sw_components] == ["3.4.2", "1.2", "1.2.3", "1"]
    assert [sw.hash_alg for sw in platform.sw_components] == ["sha-256", None, None, None]
    assert platform.extra == {} and realm.extra == {}
    assert token.platform.alg == token.realm.alg == -35


def test_draft_ffm_token_uses_a_cose_key_rak() -> None:
    token = decode_token(read("cca-token-draft-ffm-00.cbor"))
    realm, platform = token.realm_claims, token.platform_claims
    assert realm.profile == PROFILE_REALM and platform.profile == PROFILE_PLATFORM
    # The binding hashes the bstr-wrapped COSE_Key as encoded (kty EC2, crv P-384, x, y).
    assert realm.rak_claim[:5] == bytes.fromhex("a401022002")
    assert platform.challenge == hashlib.sha256(realm.rak_claim).digest()
    assert realm.rak_public_key.public_numbers().x == int(
        "76f988091be585ed41801aecfab858548c63057e16b0e676120bbd0d2f9c29e056c5d41a0130eb9c21517899dc23146b", 16
    )
    assert realm.rim.hex() == "311314ab73620350cf758834ae5c65d9e8c2dc7febe6e7d9654bbe864e300d49"
    assert realm.rems[3].hex() == "32c6afc627e55585c03155359f331a0e225f6840db947dd96efab81be2671939"
    assert len(platform.sw_components) == 13
    assert (
        platform.sw_components[0].type == "RSE_BL1_2" and platform.sw_components[-1].type == "SOC_FW_CONFIG"
    )
    assert platform.config == b"\xcf" * 4 and platform.lifecycle == 0x3003


def test_trustee_token_values() -> None:
    token = decode_token(read("cca_misc_cca-example-token.cbor"))
    realm, platform = token.realm_claims, token.platform_claims
    assert realm.measurement_alg == "sha-512"
    assert (
        realm.rim.hex().startswith("ae87fbf7") and realm.rim.hex().endswith("ac7c") and len(realm.rim) == 64
    )
    assert realm.challenge.hex().startswith("57e979ae")
    assert len(platform.sw_components) == 13
    assert platform.profile == PROFILE_PLATFORM_LEGACY


def test_trustee_token_matches_the_trustee_rv_store() -> None:
    rv = json.loads(read("cca_conf_rvstore.json"))
    token = decode_token(read("cca_misc_cca-example-token.cbor"))
    platform = token.platform_claims
    assert rv["platform"][0]["implementation-id"] == platform.implementation_id.hex()
    assert rv["platform"][0]["platform-configuration"] == platform.config.hex()
    assert [
        (c["component-type"], c["measurement-value"], c["signer-id"])
        for c in rv["platform"][0]["sw-components"]
    ] == [(sw.type, sw.measurement.hex(), sw.signer_id.hex()) for sw in platform.sw_components]
    assert rv["realm"][0]["initial-measurement"] == token.realm_claims.rim.hex()
    assert rv["realm"][0]["extensible-measurements"] == [r.hex() for r in token.realm_claims.rems]
    assert rv["realm"][0]["personalization-value"] == token.realm_claims.personalization_value.hex()


def b64(value: str) -> bytes:
    return base64.b64decode(value)


def test_trustee_expected_claims() -> None:
    """cca-claims.json is an evcli-style claims template. Its realm half and all platform identity
    fields are exactly cca-token-02.cbor (rust-ccatoken), not the trustee example token; the two
    fields a token creator fills in or the token leaves out differ and are pinned here as such."""
    expected = json.loads(read("cca-claims.json"))
    token = decode_token(read("cca-token-02.cbor"))
    realm, platform = token.realm_claims, token.platform_claims
    want_realm = expected["realm"]
    assert realm.challenge == b64(want_realm["cca-realm-challenge"])
    assert realm.personalization_value == b64(want_realm["cca-realm-personalization-value"])
    assert realm.rim == b64(want_realm["cca-realm-initial-measurement"])
    assert list(realm.rems) == [b64(r) for r in want_realm["cca-realm-extensible-measurements"]]
    assert realm.measurement_alg == want_realm["cca-realm-hash-algo-id"]
    assert realm.rak_claim == b64(want_realm["cca-realm-public-key"])
    assert realm.rak_hash_alg == want_realm["cca-realm-public-key-hash-algo-id"]
    want = expected["platform"]
    assert platform.profile == want["cca-platform-profile"]
    assert platform.implementation_id == b64(want["cca-platform-implementation-id"])
    assert platform.instance_id == b64(want["cca-platform-instance-id"])
    assert platform.config == b64(want["cca-platform-config"])
    assert platform.lifecycle == want["cca-platform-lifecycle"]
    assert platform.verification_service == want["cca-platform-service-indicator"]
    assert platform.hash_alg == want["cca-platform-hash-algo-id"]
    (want_sw,) = want["cca-platform-sw-components"]
    (sw,) = platform.sw_components
    assert sw.measurement == b64(want_sw["measurement-value"])
    assert sw.signer_id == b64(want_sw["signer-id"])
    # Differences: the template's challenge is a placeholder (the token carries SHA-512 of the RAK),
    # and the token's component has no type or version.
    assert platform.challenge != b64(want["cca-platform-challenge"])
    assert platform.challenge == hashlib.sha512(realm.rak_claim).digest()
    assert (sw.type, sw.version) == (None, None) != (want_sw["measurement-type"], want_sw["version"])
    # The trustee token is a different one altogether.
    trustee = decode_token(read("cca_misc_cca-example-token.cbor"))
    assert trustee.realm_claims.challenge != realm.challenge


def test_token_02_is_es256_and_sha512_bound() -> None:
    token = decode_token(read("cca-token-02.cbor"))
    assert token.platform.alg == -7 and token.realm.alg == -35
    assert token.platform_claims.lifecycle == 0x3000
    assert token.platform_claims.challenge == hashlib.sha512(token.realm_claims.rak_claim).digest()


def test_stores_load_in_both_id_encodings() -> None:
    (rust,) = load_ta_store(read("ta.json"))
    assert rust.implementation_id == b"\xaa" * 32 and rust.instance_id == b"\x01" + b"\xaa" * 32
    assert rust.public_key.curve.name == "secp256r1"
    (ok02,) = load_ta_store(read("ta-02-ok.json"))
    assert ok02.implementation_id == bytes(32) and ok02.instance_id == b"\x01" + b"\x02" * 32
    (trustee,) = load_ta_store(read("cca_conf_tastore.json"))
    assert (trustee.implementation_id, trustee.instance_id) == (FVP_IMPL, FVP_INST)
    assert trustee.public_key.public_numbers() == tf_m_cpak().public_numbers()
    jwk = jwk_to_key(json.loads(read("cca_misc_cpak-pub.json")), "cpak")
    assert jwk.public_numbers() == tf_m_cpak().public_numbers()
    # Base64 ids (as in the evcli / Trustee claims files) load like hex ones.
    entry = json.loads(read("cca_conf_tastore.json"))[0]
    entry["implementation-id"] = base64.b64encode(FVP_IMPL).decode()
    entry["instance-id"] = base64.urlsafe_b64encode(FVP_INST).decode().rstrip("=")
    (b64_anchor,) = load_ta_store(json.dumps([entry]).encode())
    assert (b64_anchor.implementation_id, b64_anchor.instance_id) == (FVP_IMPL, FVP_INST)


@pytest.mark.parametrize(
    "store",
    [
        b"{}",
        b"not json",
        b'[{"implementation-id": "00", "instance-id": "00", "pkey": {}}]',
        b'[{"implementation-id": "'
        + b"00" * 32
        + b'", "instance-id": "'
        + b"01" * 33
        + b'", "pkey": {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}}]',
    ],
)
def test_bad_stores_are_config_errors(store: bytes) -> None:
    with pytest.raises(ParseError) as err:
        load_ta_store(store)
    assert err.value.reason.startswith("config.cca.ta_store")


def test_anchor_document_round_trip() -> None:
    (anchor,) = load_ta_store(read("cca_conf_tastore.json"))
    document = encode_anchor(anchor)
    again = decode_anchor(document)
    assert (again.implementation_id, again.instance_id) == (FVP_IMPL, FVP_INST)
    assert again.public_key.public_numbers() == anchor.public_key.public_numbers()
    assert json.loads(document)["pkey"]["x"] == TF_M_CPAK_X
    assert encode_anchor(again) == document


def test_unknown_platform_is_anchor_unknown() -> None:
    with pytest.raises(VerificationError) as err:
        verify_token_with_store(read("cca-token-02.cbor"), load_ta_store(read("ta.json")))
    assert err.value.check == "cca.platform.anchor_unknown"
    with pytest.raises(VerificationError):
        find_anchor([], FVP_IMPL, FVP_INST)


def test_wrong_anchor_key_or_ids() -> None:
    token = decode_token(read("cca-token-02.cbor"))
    (rust,) = load_ta_store(read("ta.json"))
    with pytest.raises(VerificationError) as err:
        verify_token(token, rust)
    assert err.value.check == "cca.platform.anchor_mismatch"
    # Right ids, another P-256 key: the signature check is what fails.
    impostor = TrustAnchor(
        token.platform_claims.implementation_id, token.platform_claims.instance_id, rust.public_key
    )
    with pytest.raises(VerificationError) as err:
        verify_token(token, impostor)
    assert err.value.check == "cca.platform.signature"
    # Right ids, a key on the wrong curve for ES256.
    p384 = TrustAnchor(
        token.platform_claims.implementation_id, token.platform_claims.instance_id, tf_m_cpak()
    )
    with pytest.raises(VerificationError) as err:
        verify_token(token, p384)
    assert err.value.check == "cca.platform.signature"


def test_expected_challenge() -> None:
    token = decode_token(read("realm_tf-rmm_cca_token.cbor"))
    anchor = TrustAnchor(FVP_IMPL, FVP_INST, tf_m_cpak())
    verify_token(token, anchor, expected_challenge=b"\xab" * 64)
    verify_token(token, anchor, expected_challenge=b"\xab" * 64 + b"ignored past 64 bytes")
    for wrong in (b"\xab" * 63, b"\xab" * 32, b"\xab" * 63 + b"\xaa", b""):
        with pytest.raises(VerificationError) as err:
            verify_token(token, anchor, expected_challenge=wrong)
        assert err.value.check == "cca.realm.challenge"
