"""Key custody: ES256 keys and AES-256 KEKs held in a PKCS#11 token (SoftHSM here), and signing-key
rotation with a JWKS overlap."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11e

from shared.custody import CustodyError
from shared.custody.kek import (
    DEK_AAD_PREFIX,
    Pkcs11Kek,
    SoftwareKek,
    generate_pkcs11_kek,
    pkcs11_kek_id,
)
from shared.custody.pkcs11 import Pkcs11Config, finalize_module, open_session
from shared.custody.rotation import KeyEntry, SigningKeySet
from shared.custody.signer import (
    P256_EC_PARAMS,
    Es256Key,
    Es256TokenSigner,
    Pkcs11Es256Key,
    SoftwareEs256Key,
    generate_pkcs11_es256_key,
    sign_jws,
)
from shared.ear import EarSigner, build_ear_claims, verify_ear
from shared.kbs.wire import b64url_decode, b64url_encode
from shared.sealing import KeyRing, seal, unseal
from tests.softhsm import softhsm_token

NOW = 1_800_000_000
LIFETIME = 300
IDLE_TOKEN = "remits-idle"  # no key of this module keeps it logged in


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pkcs11Config]:
    with softhsm_token(tmp_path_factory.mktemp("softhsm"), extra_labels=(IDLE_TOKEN,)) as config:
        generate_pkcs11_es256_key(config, "ear-a")
        generate_pkcs11_es256_key(config, "ear-b")
        generate_pkcs11_kek(config, "kek-a")
        yield config


@pytest.fixture(scope="module")
def hsm_key(token: Pkcs11Config) -> Iterator[Pkcs11Es256Key]:
    with Pkcs11Es256Key(token, "ear-a") as key:
        yield key


@pytest.fixture(scope="module")
def hsm_kek(token: Pkcs11Config) -> Iterator[Pkcs11Kek]:
    with Pkcs11Kek(token, "kek-a") as kek:
        yield kek


def _claims(issued_at: int = NOW) -> dict[str, object]:
    return build_ear_claims(
        tee="sample",
        vector={"hardware": 2},
        annotated_evidence={"sample": {"svn": 1}},
        policy_id="policy:test",
        issued_at=issued_at,
        lifetime_s=LIFETIME,
        verifier_build="test",
    )


def _header(token: str) -> dict[str, object]:
    return json.loads(b64url_decode(token.split(".")[0]))


# --- ES256 in the HSM --------------------------------------------------------------------------------


def test_ear_signed_in_the_hsm_verifies(hsm_key: Pkcs11Es256Key) -> None:
    assert isinstance(hsm_key, Es256Key)
    signer = Es256TokenSigner(hsm_key)
    token = signer.sign(_claims())
    claims = verify_ear(token, hsm_key.public_key(), NOW + 1)
    assert claims["submods"]["cpu0"]["ear.status"] == "affirming"
    assert _header(token)["kid"] == signer.kid == signer.public_jwk()["kid"]
    assert verify_ear(token, signer.public_jwk(), NOW + 1) == claims
    # the token names the HSM key, not some other one
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(Exception, match="signature_invalid"):
        verify_ear(token, other, NOW + 1)


def test_token_signer_writes_what_ear_signer_writes() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    ours, theirs = Es256TokenSigner(SoftwareEs256Key(private)), EarSigner(private)
    claims = _claims()
    mine, reference = ours.sign(claims), theirs.sign(claims)
    # ECDSA is randomised: everything but the signature is identical, and both verify
    assert mine.rsplit(".", 1)[0] == reference.rsplit(".", 1)[0]
    assert ours.kid == theirs.kid and ours.public_jwk() == theirs.public_jwk()
    assert verify_ear(mine, private.public_key(), NOW) == verify_ear(reference, private.public_key(), NOW)


def test_sign_jws_rejects_a_short_signature() -> None:
    class Broken:
        def public_key(self) -> ec.EllipticCurvePublicKey:
            return ec.generate_private_key(ec.SECP256R1()).public_key()

        def sign_digest_input(self, data: bytes) -> bytes:
            return b"\x00" * 63

    with pytest.raises(CustodyError) as err:
        sign_jws(Broken(), "e30", "e30")
    assert err.value.reason == "custody.sign"


def test_hsm_private_key_cannot_leave_the_token(token: Pkcs11Config) -> None:
    with open_session(token) as session:
        private = session.get_key(ObjectClass.PRIVATE_KEY, KeyType.EC, label="ear-a")
        assert private[Attribute.TOKEN] is True
        assert private[Attribute.SENSITIVE] is True
        assert private[Attribute.EXTRACTABLE] is False
        assert private[Attribute.ALWAYS_SENSITIVE] is True
        assert private[Attribute.NEVER_EXTRACTABLE] is True
        assert private[Attribute.DERIVE] is False
        assert bytes(private[Attribute.EC_PARAMS]) == P256_EC_PARAMS
        with pytest.raises(p11e.AttributeSensitive):
            private[Attribute.VALUE]


def test_an_extractable_key_is_refused(token: Pkcs11Config) -> None:
    with open_session(token, rw=True) as session:
        session.generate_keypair(
            KeyType.EC,
            label="loose",
            store=True,
            public_template={Attribute.EC_PARAMS: P256_EC_PARAMS},
            private_template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
        )
    with pytest.raises(CustodyError) as err:
        Pkcs11Es256Key(token, "loose")
    assert err.value.reason == "custody.key_policy"


def test_generating_over_an_existing_label_is_refused(token: Pkcs11Config) -> None:
    with pytest.raises(CustodyError) as err:
        generate_pkcs11_es256_key(token, "ear-a")
    assert err.value.reason == "custody.label_exists"
    with pytest.raises(CustodyError) as err:
        generate_pkcs11_kek(token, "kek-a")
    assert err.value.reason == "custody.label_exists"


def test_one_key_signs_from_many_threads(hsm_key: Pkcs11Es256Key) -> None:
    public = hsm_key.public_key()
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(20):
                token = sign_jws(hsm_key, "eyJhbGciOiJFUzI1NiJ9", b64url_encode(f"{worker}-{i}".encode()))
                # verify through the EAR code path's primitive: a raw r||s over the signing input
                header_b64, payload_b64, sig_b64 = token.split(".")
                _verify_raw(public, f"{header_b64}.{payload_b64}".encode(), b64url_decode(sig_b64))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def _verify_raw(public: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))


def test_hsm_signature_cost_against_software(hsm_key: Pkcs11Es256Key) -> None:
    software = SoftwareEs256Key(ec.generate_private_key(ec.SECP256R1()))
    data = b"x" * 2048  # about one EAR's signing input
    rounds = 300
    costs = {}
    for name, key in (("softhsm", hsm_key), ("software", software)):
        key.sign_digest_input(data)
        start = time.perf_counter()
        for _ in range(rounds):
            key.sign_digest_input(data)
        costs[name] = (time.perf_counter() - start) / rounds * 1e6
    print(
        f"\nES256 sign cost: softhsm {costs['softhsm']:.1f} µs, software {costs['software']:.1f} µs "
        f"(x{costs['softhsm'] / costs['software']:.1f})"
    )


def test_a_lost_session_is_reopened(token: Pkcs11Config, hsm_key: Pkcs11Es256Key, hsm_kek: Pkcs11Kek) -> None:
    nonce, wrapped = hsm_kek.wrap(b"w" * 32, b"aad")
    # The token forgets one session (as after a network HSM failover)...
    hsm_key._held._held.session.close()  # type: ignore[union-attr]
    _verify_raw(hsm_key.public_key(), b"after", hsm_key.sign_digest_input(b"after"))
    # ... or restarts and forgets everything: every held key logs in again on its next use.
    finalize_module(token.module)
    _verify_raw(hsm_key.public_key(), b"restart", hsm_key.sign_digest_input(b"restart"))
    assert hsm_kek.unwrap(nonce, wrapped, b"aad") == b"w" * 32


def test_a_closed_key_refuses_to_work(token: Pkcs11Config) -> None:
    key = Pkcs11Es256Key(token, "ear-b")
    key.close()
    with pytest.raises(CustodyError) as err:
        key.sign_digest_input(b"x")
    assert err.value.reason == "custody.closed"


# --- KEK in the HSM ----------------------------------------------------------------------------------


def test_hsm_kek_round_trip_and_binding(hsm_kek: Pkcs11Kek) -> None:
    dek = bytes(range(32))
    nonce, wrapped = hsm_kek.wrap(dek, b"default/key/a")
    assert len(nonce) == 12 and len(wrapped) == 48 and dek not in wrapped
    assert hsm_kek.unwrap(nonce, wrapped, b"default/key/a") == dek
    assert hsm_kek.wrap(dek, b"default/key/a")[1] != wrapped  # a fresh IV every time

    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    bad_tag = wrapped[:-1] + bytes([wrapped[-1] ^ 0x80])
    other_nonce = bytes([nonce[0] ^ 1]) + nonce[1:]
    for args in (
        (nonce, wrapped, b"default/key/b"),
        (nonce, tampered, b"default/key/a"),
        (nonce, bad_tag, b"default/key/a"),
        (other_nonce, wrapped, b"default/key/a"),
    ):
        with pytest.raises(CustodyError) as err:
            hsm_kek.unwrap(*args)
        assert err.value.reason == "custody.unwrap"
    # a failed tag check leaves the session usable
    assert hsm_kek.unwrap(nonce, wrapped, b"default/key/a") == dek


def test_hsm_kek_checks_its_inputs(hsm_kek: Pkcs11Kek) -> None:
    nonce, wrapped = hsm_kek.wrap(b"k" * 32, b"p")
    cases = [
        (lambda: hsm_kek.wrap(b"short", b"p"), "custody.dek"),
        (lambda: hsm_kek.wrap(b"k" * 32, b""), "custody.aad"),
        (lambda: hsm_kek.unwrap(nonce[:8], wrapped, b"p"), "custody.nonce"),
        (lambda: hsm_kek.unwrap(nonce, wrapped[:-1], b"p"), "custody.wrapped"),
    ]
    for call, reason in cases:
        with pytest.raises(CustodyError) as err:
            call()
        assert err.value.reason == reason


def test_hsm_kek_is_not_extractable_and_its_kid_is_stable(token: Pkcs11Config, hsm_kek: Pkcs11Kek) -> None:
    with open_session(token) as session:
        key = session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label="kek-a")
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.TOKEN] is True
        assert key[Attribute.VALUE_LEN] == 32
        assert key[Attribute.WRAP] is False
        with pytest.raises(p11e.AttributeSensitive):
            key[Attribute.VALUE]
    nonce, wrapped = hsm_kek.wrap(b"d" * 32, b"aad")
    with Pkcs11Kek(token, "kek-a") as reopened:
        assert reopened.kid == hsm_kek.kid == pkcs11_kek_id("kek-a") == "p11.kek-a"
        assert reopened.unwrap(nonce, wrapped, b"aad") == b"d" * 32
    with pytest.raises(CustodyError) as err:
        pkcs11_kek_id("no spaces allowed")
    assert err.value.reason == "custody.label"


def test_software_kek_opens_what_sealing_wrapped() -> None:
    ring = KeyRing.from_env_value(base64.b64encode(b"K" * 32).decode())
    kek = SoftwareKek(ring.current_kid, b"K" * 32)
    record = seal(ring, b"secret", b"default/key/a")
    dek = kek.unwrap(
        base64.b64decode(record["key_nonce"]), base64.b64decode(record["wrapped_key"]), b"default/key/a"
    )
    # and the other way: a DEK wrapped by the KEK object goes into a record sealing opens
    nonce, wrapped = kek.wrap(dek, b"default/key/a")
    rewrapped = {
        **record,
        "key_nonce": base64.b64encode(nonce).decode(),
        "wrapped_key": base64.b64encode(wrapped).decode(),
    }
    assert unseal(ring, rewrapped, b"default/key/a") == b"secret"
    with pytest.raises(CustodyError) as err:
        kek.unwrap(nonce, wrapped, b"default/key/b")
    assert err.value.reason == "custody.unwrap"
    assert DEK_AAD_PREFIX == b"remits-dek|"


def test_software_and_hsm_keks_are_interchangeable(hsm_kek: Pkcs11Kek) -> None:
    for kek in (SoftwareKek("soft-1", b"S" * 32), hsm_kek):
        nonce, wrapped = kek.wrap(b"q" * 32, b"r")
        assert kek.unwrap(nonce, wrapped, b"r") == b"q" * 32


# --- rotation ----------------------------------------------------------------------------------------


def _kid_of(token: str) -> str:
    kid = _header(token)["kid"]
    assert isinstance(kid, str)
    return kid


def _verify_by_jwks(token: str, jwks: dict[str, list[dict[str, str]]], now: int) -> dict[str, object]:
    matching = [k for k in jwks["keys"] if k["kid"] == _kid_of(token)]
    if not matching:
        raise LookupError("kid not published")
    return verify_ear(token, matching[0], now)


def test_rotation_keeps_the_old_key_for_one_token_lifetime(
    token: Pkcs11Config, hsm_key: Pkcs11Es256Key
) -> None:
    rotated_at = NOW + 1000
    keys = SigningKeySet.start(hsm_key, NOW)
    old_token = Es256TokenSigner(hsm_key).sign(_claims(rotated_at - 10))  # valid until rotated_at + 290

    with Pkcs11Es256Key(token, "ear-b") as new_key:
        keys = keys.rotate(new_key, rotated_at)
        new_token = Es256TokenSigner(new_key).sign(_claims(rotated_at + 5))
    old_kid, new_kid = Es256TokenSigner(hsm_key).kid, _kid_of(new_token)
    assert keys.current.kid == new_kid and [e.kid for e in keys.retired] == [old_kid]
    assert keys.retired[0].retired_at == rotated_at

    during = keys.jwks(rotated_at + LIFETIME - 1, LIFETIME)
    assert [k["kid"] for k in during["keys"]] == [new_kid, old_kid]
    assert all(k["alg"] == "ES256" and k["use"] == "sig" for k in during["keys"])
    assert _verify_by_jwks(old_token, during, rotated_at + 100)["iat"] == rotated_at - 10
    assert _verify_by_jwks(new_token, during, rotated_at + 100)["iat"] == rotated_at + 5

    after = keys.jwks(rotated_at + LIFETIME, LIFETIME)
    assert [k["kid"] for k in after["keys"]] == [new_kid]
    with pytest.raises(LookupError):
        _verify_by_jwks(old_token, after, rotated_at + 100)
    assert keys.prune(rotated_at + LIFETIME, LIFETIME).retired == ()
    assert keys.prune(rotated_at + LIFETIME - 1, LIFETIME).retired == keys.retired


def test_key_set_survives_storage_and_rejects_edits() -> None:
    a, b, c = (SoftwareEs256Key(ec.generate_private_key(ec.SECP256R1())) for _ in range(3))
    keys = SigningKeySet.start(a, 10).rotate(b, 20).rotate(c, 30.5)
    loaded = SigningKeySet.from_json(keys.to_json())
    assert loaded.current == keys.current and loaded.retired == keys.retired
    assert loaded.jwks(31, 100) == keys.jwks(31, 100)
    assert [e.retired_at for e in loaded.retired] == [30.5, 20]

    doc = json.loads(keys.to_json())
    doc["retired"][0]["kid"] = doc["current"]["kid"]
    with pytest.raises(CustodyError) as err:
        SigningKeySet.from_json(json.dumps(doc))
    assert err.value.reason == "custody.keyset.retired.0.kid"
    for broken, reason in (
        ("{", "custody.keyset"),
        ('{"v": 2, "current": {}, "retired": []}', "custody.keyset.v"),
        (json.dumps({**json.loads(keys.to_json()), "retired": {}}), "custody.keyset.retired"),
    ):
        with pytest.raises(CustodyError) as err:
            SigningKeySet.from_json(broken)
        assert err.value.reason == reason


def test_rotation_refuses_reuse_and_time_travel() -> None:
    a, b = (SoftwareEs256Key(ec.generate_private_key(ec.SECP256R1())) for _ in range(2))
    keys = SigningKeySet.start(a, 100).rotate(b, 200)
    for new_key, when, reason in ((a, 300, "custody.keyset.kid"), (b, 300, "custody.keyset.kid")):
        with pytest.raises(CustodyError) as err:
            keys.rotate(new_key, when)
        assert err.value.reason == reason
    fresh = SoftwareEs256Key(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CustodyError) as err:
        keys.rotate(fresh, 150)
    assert err.value.reason == "custody.keyset.activated_at"
    with pytest.raises(CustodyError) as err:
        keys.jwks(300, 0)
    assert err.value.reason == "custody.keyset.token_lifetime_s"
    with pytest.raises(CustodyError):
        SigningKeySet(KeyEntry("k", {}, 1.0, 2.0))


# --- errors ------------------------------------------------------------------------------------------


def test_wrong_pin(token: Pkcs11Config, hsm_key: Pkcs11Es256Key) -> None:
    idle = replace(token, token_label=IDLE_TOKEN)
    # once checked by the token itself, once against the login that hsm_key holds open
    for config in (replace(idle, pin="0000"), replace(token, pin="0000")):
        with pytest.raises(CustodyError) as err, open_session(config):
            pass
        assert err.value.reason == "custody.pin"
        assert "0000" not in str(err.value)
    with pytest.raises(CustodyError) as err:
        Pkcs11Es256Key(replace(token, pin="0000"), "ear-a")
    assert err.value.reason == "custody.pin"
    # the right PIN still works after a refusal, and logging out of the idle token leaves it usable
    for _ in range(2):
        with open_session(idle) as session:
            assert list(session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY})) == []


def test_missing_key_label(token: Pkcs11Config) -> None:
    for open_key in (Pkcs11Es256Key, Pkcs11Kek):
        with pytest.raises(CustodyError) as err:
            open_key(token, "no-such-key")
        assert err.value.reason == "custody.key_not_found"


def test_bad_module_path(token: Pkcs11Config) -> None:
    with pytest.raises(CustodyError) as err:
        Pkcs11Es256Key(replace(token, module="/nonexistent/libpkcs11.so"), "ear-a")
    assert err.value.reason == "custody.module"


def test_unknown_token_or_slot(token: Pkcs11Config) -> None:
    for config in (replace(token, token_label="no-such-token"), replace(token, slot=987654321)):
        with pytest.raises(CustodyError) as err, open_session(config):
            pass
        assert err.value.reason == "custody.token"


def test_pin_is_kept_out_of_repr(token: Pkcs11Config) -> None:
    assert token.pin not in repr(token)
