"""Admin API credentials: which tokens open the admin API, and the exact reason each other one is
refused. Hostile tokens are built by hand (with ``cryptography`` and ``hmac``, not our signer), the
way an attacker would."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import given
from hypothesis import strategies as st

from shared import adminauth
from shared.adminauth import AdminAuthError, AdminKey, AdminKeyError

NOW = 1_700_000_000.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _signer(private_pem: bytes) -> Callable[[bytes], bytes]:
    """Sign as RFC 7515/7518 say, with cryptography alone: an independent second implementation."""
    private = serialization.load_pem_private_key(private_pem, password=None)
    if isinstance(private, Ed25519PrivateKey):
        return private.sign
    assert isinstance(private, ec.EllipticCurvePrivateKey)

    def es256(data: bytes) -> bytes:
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return es256


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "alice", "iat": int(NOW), "exp": int(NOW) + 300, "jti": "j-1"}
    claims.update(overrides)
    return {name: value for name, value in claims.items() if value is not None}


@pytest.fixture(scope="module")
def ed() -> tuple[bytes, AdminKey]:
    private, public = adminauth.generate_admin_keypair("EdDSA")
    return private, adminauth.load_admin_key(public)


@pytest.fixture(scope="module")
def es() -> tuple[bytes, AdminKey]:
    private, public = adminauth.generate_admin_keypair("ES256")
    return private, adminauth.load_admin_key(public)


@pytest.fixture(scope="module")
def stranger() -> tuple[bytes, AdminKey]:
    private, public = adminauth.generate_admin_keypair("EdDSA")
    return private, adminauth.load_admin_key(public)


def _refused(
    header: str | None, keys: list[AdminKey], reason: str, field: str | None = None, **kw: Any
) -> None:
    with pytest.raises(AdminAuthError) as caught:
        adminauth.verify_admin_token(header, keys, NOW, **kw)
    assert caught.value.reason == reason, caught.value
    if field is not None:
        assert caught.value.field == field, caught.value


# -- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ed", "es"])
def test_valid_tokens_give_the_signers_identity(which: str, request: pytest.FixtureRequest) -> None:
    private, key = request.getfixturevalue(which)
    token = adminauth.sign_admin_token(private, "alice@ops", NOW, lifetime_s=120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # joserfc's EdDSA deprecation warning must not fire per request
        identity = adminauth.verify_admin_token(f"Bearer {token}", [key], NOW + 10)
    assert identity.subject == "alice@ops" and identity.kid == key.kid
    assert identity.expires_at == int(NOW) + 120 and len(identity.jti) >= 16
    assert adminauth.verify_admin_token(f"bearer  {token} ", [key], NOW).subject == "alice@ops"


@pytest.mark.parametrize("which", ["ed", "es"])
def test_tokens_from_an_independent_signer_are_accepted(which: str, request: pytest.FixtureRequest) -> None:
    private, key = request.getfixturevalue(which)
    token = _forge({"alg": key.alg, "kid": key.kid, "typ": "JWT"}, _claims(), _signer(private))
    identity = adminauth.verify_admin_token(f"Bearer {token}", [key], NOW)
    assert (identity.subject, identity.kid, identity.jti) == ("alice", key.kid, "j-1")


def test_kidless_token_is_tried_against_every_key_of_its_alg(
    ed: tuple[bytes, AdminKey], es: tuple[bytes, AdminKey], stranger: tuple[bytes, AdminKey]
) -> None:
    private, key = ed
    token = _forge({"alg": "EdDSA"}, _claims(jti=None), _signer(private))
    identity = adminauth.verify_admin_token(f"Bearer {token}", [stranger[1], es[1], key], NOW)
    assert identity.kid == key.kid
    # No jti: the audit trail still gets a stable name for the credential.
    assert identity.jti == "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    _refused(f"Bearer {token}", [stranger[1], es[1]], "admin.bad_signature", "signature")
    _refused(f"Bearer {token}", [es[1]], "admin.unknown_key")


def test_lifetime_and_skew_limits_are_inclusive(ed: tuple[bytes, AdminKey]) -> None:
    private, key = ed
    at_limit = _forge({"alg": "EdDSA"}, _claims(iat=int(NOW) + 60, exp=int(NOW) + 3660), _signer(private))
    assert adminauth.verify_admin_token(f"Bearer {at_limit}", [key], NOW).expires_at == int(NOW) + 3660


# -- refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_no_credential(header: str | None, ed: tuple[bytes, AdminKey]) -> None:
    _refused(header, [ed[1]], "admin.missing_credential", "authorization")


def test_not_bearer(ed: tuple[bytes, AdminKey]) -> None:
    token = adminauth.sign_admin_token(ed[0], "alice", NOW)
    _refused(f"Basic {token}", [ed[1]], "admin.missing_credential", "authorization")
    _refused(token, [ed[1]], "admin.missing_credential", "authorization")  # no scheme at all
    _refused("Bearer", [ed[1]], "admin.malformed", "authorization")


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "a.b", "....", "eyJhbGciOiJFZERTQSJ9.e30", "é.é.é", "W10.e30.AA", "IiI.e30.AA"],
)
def test_garbage_is_malformed(token: str, ed: tuple[bytes, AdminKey]) -> None:
    _refused(f"Bearer {token}", [ed[1]], "admin.malformed")


def test_alg_none_is_refused(ed: tuple[bytes, AdminKey]) -> None:
    for alg in ("none", "None", "NONE"):
        token = _forge({"alg": alg, "kid": ed[1].kid}, _claims(), lambda _data: b"")
        _refused(f"Bearer {token}", [ed[1]], "admin.bad_alg", "alg")


def test_hs256_keyed_with_the_public_key_is_refused(
    ed: tuple[bytes, AdminKey], es: tuple[bytes, AdminKey]
) -> None:
    # The classic confusion: the public key, known to all, used as an HMAC secret.
    for _, key in (ed, es):
        secret = key.pem.encode()
        token = _forge(
            {"alg": "HS256", "kid": key.kid}, _claims(), lambda data, s=secret: hmac.digest(s, data, "sha256")
        )
        _refused(f"Bearer {token}", [key], "admin.bad_alg", "alg")


def test_rs256_is_refused(ed: tuple[bytes, AdminKey]) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = _forge(
        {"alg": "RS256"}, _claims(), lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    )
    _refused(f"Bearer {token}", [ed[1]], "admin.bad_alg", "alg")


@pytest.mark.parametrize("alg", ["ES384", "PS256", "Ed25519", "ES256K", "", None, 1, ["EdDSA"]])
def test_other_algs_are_refused(alg: Any, ed: tuple[bytes, AdminKey]) -> None:
    token = _forge({"alg": alg}, _claims(), _signer(ed[0]))
    _refused(f"Bearer {token}", [ed[1]], "admin.bad_alg", "alg")


def test_alg_must_fit_the_kids_key(ed: tuple[bytes, AdminKey], es: tuple[bytes, AdminKey]) -> None:
    token = _forge({"alg": "ES256", "kid": ed[1].kid}, _claims(), _signer(es[0]))
    _refused(f"Bearer {token}", [ed[1], es[1]], "admin.bad_alg", "alg")


def test_wrong_key(ed: tuple[bytes, AdminKey], stranger: tuple[bytes, AdminKey]) -> None:
    # Signed by a key nobody configured, under the id of one that is.
    token = adminauth.sign_admin_token(stranger[0], "mallory", NOW, kid=ed[1].kid)
    _refused(f"Bearer {token}", [ed[1]], "admin.bad_signature", "signature")


def test_unknown_kid(ed: tuple[bytes, AdminKey], stranger: tuple[bytes, AdminKey]) -> None:
    token = adminauth.sign_admin_token(stranger[0], "mallory", NOW)
    _refused(f"Bearer {token}", [ed[1]], "admin.unknown_key", "kid")
    _refused(f"Bearer {token}", [], "admin.unknown_key", "kid")  # admin API off: nothing verifies


def test_tampered_payload(ed: tuple[bytes, AdminKey], es: tuple[bytes, AdminKey]) -> None:
    for private, key in (ed, es):
        header, _, signature = adminauth.sign_admin_token(private, "alice", NOW).split(".")
        forged = f"{header}.{_b64(json.dumps(_claims(sub='root')).encode())}.{signature}"
        _refused(f"Bearer {forged}", [key], "admin.bad_signature", "signature")


def test_tampered_header_and_signature(ed: tuple[bytes, AdminKey]) -> None:
    header, claims, signature = adminauth.sign_admin_token(ed[0], "alice", NOW).split(".")
    typ_changed = _b64(json.dumps({"alg": "EdDSA", "kid": ed[1].kid}).encode())
    _refused(f"Bearer {typ_changed}.{claims}.{signature}", [ed[1]], "admin.bad_signature")
    _refused(f"Bearer {header}.{claims}.{signature[:-4]}AAAA", [ed[1]], "admin.bad_signature")
    _refused(f"Bearer {header}.{claims}.", [ed[1]], "admin.bad_signature")


@pytest.mark.parametrize("extra", [{"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]}, {"jwk": {}}])
def test_unsupported_header_parameters(extra: dict[str, Any], ed: tuple[bytes, AdminKey]) -> None:
    token = _forge({"alg": "EdDSA", "kid": ed[1].kid, **extra}, _claims(), _signer(ed[0]))
    _refused(f"Bearer {token}", [ed[1]], "admin.malformed")


def test_expired(ed: tuple[bytes, AdminKey]) -> None:
    token = adminauth.sign_admin_token(ed[0], "alice", NOW - 400, lifetime_s=300)
    _refused(f"Bearer {token}", [ed[1]], "admin.expired", "exp")
    at_exp = _forge({"alg": "EdDSA"}, _claims(exp=int(NOW)), _signer(ed[0]))
    _refused(f"Bearer {at_exp}", [ed[1]], "admin.expired", "exp")


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
def test_missing_claim(claim: str, ed: tuple[bytes, AdminKey]) -> None:
    token = _forge({"alg": "EdDSA"}, _claims(**{claim: None}), _signer(ed[0]))
    _refused(f"Bearer {token}", [ed[1]], "admin.missing_claim", claim)
    if claim == "sub":
        empty = _forge({"alg": "EdDSA"}, _claims(sub=""), _signer(ed[0]))
        _refused(f"Bearer {empty}", [ed[1]], "admin.missing_claim", "sub")


def test_iat_in_the_future(ed: tuple[bytes, AdminKey]) -> None:
    token = adminauth.sign_admin_token(ed[0], "alice", NOW + 61)
    _refused(f"Bearer {token}", [ed[1]], "admin.iat_in_future", "iat")
    _refused(f"Bearer {token}", [ed[1]], "admin.iat_in_future", "iat", skew_s=0)
    assert adminauth.verify_admin_token(f"Bearer {token}", [ed[1]], NOW, skew_s=61).subject == "alice"


def test_not_before_in_the_future(ed: tuple[bytes, AdminKey]) -> None:
    token = _forge({"alg": "EdDSA"}, _claims(nbf=int(NOW) + 120), _signer(ed[0]))
    _refused(f"Bearer {token}", [ed[1]], "admin.not_yet_valid", "nbf")


def test_lifetime_too_long(ed: tuple[bytes, AdminKey]) -> None:
    year = adminauth.sign_admin_token(ed[0], "alice", NOW, lifetime_s=365 * 86400)
    _refused(f"Bearer {year}", [ed[1]], "admin.lifetime_too_long", "exp")
    hour_and_a_second = _forge({"alg": "EdDSA"}, _claims(exp=int(NOW) + 3601), _signer(ed[0]))
    _refused(f"Bearer {hour_and_a_second}", [ed[1]], "admin.lifetime_too_long", "exp")
    _refused(f"Bearer {hour_and_a_second}", [ed[1]], "admin.lifetime_too_long", max_lifetime_s=600)
    # An old iat cannot be used to stretch a token either.
    backdated = _forge({"alg": "EdDSA"}, _claims(iat=int(NOW) - 86400), _signer(ed[0]))
    _refused(f"Bearer {backdated}", [ed[1]], "admin.lifetime_too_long", "exp")


@pytest.mark.parametrize(
    ("claims", "field"),
    [
        (_claims(exp="soon"), "exp"),
        (_claims(iat=True), "iat"),
        (_claims(sub=["root"]), "sub"),
        (_claims(sub="alice\nadmin: root"), "sub"),
        (_claims(sub="a" * 257), "sub"),
        (_claims(iat=int(NOW) + 30, exp=int(NOW) + 20), "exp"),
        (["not", "an", "object"], "claims"),
    ],
)
def test_malformed_claims_name_the_claim(claims: Any, field: str, ed: tuple[bytes, AdminKey]) -> None:
    token = _forge({"alg": "EdDSA"}, claims, _signer(ed[0]))
    _refused(f"Bearer {token}", [ed[1]], "admin.malformed", field)


@given(st.text(max_size=300))
def test_arbitrary_headers_fail_only_with_typed_errors(text: str) -> None:
    with pytest.raises(AdminAuthError):
        adminauth.verify_admin_token(text, [], NOW)
    with pytest.raises(AdminAuthError):
        adminauth.verify_admin_token(f"Bearer {text}", [], NOW)


# -- keys ----------------------------------------------------------------------------------------


def test_key_ids_and_loading(tmp_path: Path, ed: tuple[bytes, AdminKey], es: tuple[bytes, AdminKey]) -> None:
    _, key = ed
    der = key.public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert key.kid == "sha256:" + hashlib.sha256(der).hexdigest()[:16] and key.alg == "EdDSA"
    assert es[1].alg == "ES256" and es[1].pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert adminauth.load_admin_key(key.pem.encode(), kid="ops-2024").kid == "ops-2024"
    (tmp_path / "a.pem").write_text(key.pem)
    (tmp_path / "b.pem").write_text(es[1].pem)
    paths = adminauth.admin_key_paths_from_env(
        f" {tmp_path / 'a.pem'} ,{tmp_path / 'b.pem'},,{tmp_path / 'a.pem'}"
    )
    assert len(paths) == 3
    assert [k.kid for k in adminauth.load_admin_keys(paths)] == [key.kid, es[1].kid]  # the repeat kept once
    assert adminauth.admin_key_paths_from_env(None) == [] and adminauth.admin_key_paths_from_env("") == []


def _pem(public_key: Any) -> bytes:
    return bytes(
        public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        (
            _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()),
            "admin.key_unsupported",
        ),
        (_pem(ec.generate_private_key(ec.SECP384R1()).public_key()), "admin.key_unsupported"),
        # A private key where a public one goes: refused, not quietly reduced to its public half.
        (adminauth.generate_admin_keypair()[0], "admin.key_malformed"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "admin.key_malformed"),
        (b"", "admin.key_malformed"),
    ],
)
def test_unusable_keys_are_refused(pem: bytes, reason: str) -> None:
    with pytest.raises(AdminKeyError) as caught:
        adminauth.load_admin_key(pem)
    assert caught.value.reason == reason


def test_key_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(AdminKeyError) as caught:
        adminauth.load_admin_keys([missing])
    assert caught.value.reason == "admin.key_unreadable" and caught.value.field == str(missing)
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a key")
    with pytest.raises(AdminKeyError) as caught:
        adminauth.load_admin_keys([bad])
    assert caught.value.reason == "admin.key_malformed" and caught.value.field == str(bad)


def test_admin_key_alg_must_fit_the_key(ed: tuple[bytes, AdminKey]) -> None:
    with pytest.raises(AdminKeyError):
        AdminKey(ed[1].kid, "ES256", ed[1].public_key, ed[1].pem)


def test_signing_refuses_unusable_keys_and_arguments(ed: tuple[bytes, AdminKey]) -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(AdminKeyError):
        adminauth.sign_admin_token(rsa_pem, "alice", NOW)
    with pytest.raises(AdminKeyError):
        adminauth.sign_admin_token(ed[1].pem.encode(), "alice", NOW)  # a public key cannot sign
    with pytest.raises(ValueError):
        adminauth.sign_admin_token(ed[0], "alice", NOW, lifetime_s=0)
    with pytest.raises(ValueError):
        adminauth.generate_admin_keypair("RS256")  # type: ignore[arg-type]
