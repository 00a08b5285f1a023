"""Signed reference-value manifests: what is imported from a good one, and the reason (and field)
each bad one is refused with."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import adminauth, manifest
from shared.adminauth import AdminKey
from shared.manifest import ManifestEntry, ManifestError

NOW = 1_700_000_000.0
MEASUREMENT = "AB" * 48


def _payload(*entries: dict[str, Any], **top: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "iss": "build-pipeline@example",
        "iat": int(NOW) - 10,
        "reference_values": list(entries)
        or [{"tee": "snp", "name": "measurement", "values": [MEASUREMENT], "expires_at": 1_800_000_000}],
    }
    body.update(top)
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], payload: Any, sign: Callable[[bytes], bytes]) -> str:
    """Built by hand, so that payloads the signing helper refuses can still be put to the verifier."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


@pytest.fixture(scope="module")
def ed() -> tuple[bytes, AdminKey]:
    private, public = adminauth.generate_admin_keypair("EdDSA")
    return private, adminauth.load_admin_key(public)


@pytest.fixture(scope="module")
def es() -> tuple[bytes, AdminKey]:
    private, public = adminauth.generate_admin_keypair("ES256")
    return private, adminauth.load_admin_key(public)


def _ed_sign(private_pem: bytes) -> Callable[[bytes], bytes]:
    private = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return private.sign


def _refused(
    token: str, keys: list[AdminKey], reason: str, field: str | None = None, now: float = NOW
) -> None:
    with pytest.raises(ManifestError) as caught:
        manifest.verify_manifest(token, keys, now)
    assert caught.value.reason == reason, caught.value
    if field is not None:
        assert caught.value.field == field, caught.value


def _bad_entry(ed: tuple[bytes, AdminKey], payload: Any, field: str) -> None:
    token = _forge({"alg": "EdDSA"}, payload, _ed_sign(ed[0]))
    _refused(token, [ed[1]], "manifest.invalid_payload", field)


# -- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["ed", "es"])
def test_valid_manifest_gives_entries_and_signer(which: str, request: pytest.FixtureRequest) -> None:
    private, key = request.getfixturevalue(which)
    other = adminauth.load_admin_key(adminauth.generate_admin_keypair()[1])
    token = manifest.sign_manifest(
        private,
        _payload(
            {
                "tee": "snp",
                "name": "measurement",
                "values": [MEASUREMENT, MEASUREMENT.lower()],
                "expires_at": 1.8e9,
            },
            {"tee": "tdx", "name": "mrtd.v2", "values": ["Debian-12", "0x1F"]},
        ),
    )
    verified = manifest.verify_manifest(token.encode() + b"\n", [other, key], NOW)
    assert verified.signer_kid == key.kid and verified.issuer == "build-pipeline@example"
    assert verified.issued_at == int(NOW) - 10
    assert verified.entries == (
        # Hex is lower-cased, so the two spellings of one measurement collapse; other values stay as written.
        ManifestEntry("snp", "measurement", (MEASUREMENT.lower(),), 1.8e9),
        ManifestEntry("tdx", "mrtd.v2", ("Debian-12", "0x1F"), None),
    )
    assert verified.digest == manifest.verify_manifest(token, [key], NOW).digest  # whitespace aside
    assert len(verified.digest) == 64


def test_empty_manifest_and_null_expiry_are_accepted(ed: tuple[bytes, AdminKey]) -> None:
    token = manifest.sign_manifest(ed[0], _payload(reference_values=[]))
    assert manifest.verify_manifest(token, [ed[1]], NOW).entries == ()
    entry = {"tee": "snp", "name": "measurement", "values": ["aa"], "expires_at": None}
    token = manifest.sign_manifest(ed[0], _payload(entry))
    assert manifest.verify_manifest(token, [ed[1]], NOW).entries[0].expires_at is None


def test_kidless_manifest_from_an_independent_signer(
    ed: tuple[bytes, AdminKey], es: tuple[bytes, AdminKey]
) -> None:
    token = _forge({"alg": "EdDSA"}, _payload(), _ed_sign(ed[0]))
    assert manifest.verify_manifest(token, [es[1], ed[1]], NOW).signer_kid == ed[1].kid


# -- refused: the signature ----------------------------------------------------------------------


def test_tampered_payload(ed: tuple[bytes, AdminKey], es: tuple[bytes, AdminKey]) -> None:
    for private, key in (ed, es):
        header, _, signature = manifest.sign_manifest(private, _payload()).split(".")
        evil = _payload({"tee": "snp", "name": "measurement", "values": ["ff" * 48]})
        _refused(f"{header}.{_b64(json.dumps(evil).encode())}.{signature}", [key], "manifest.bad_signature")


def test_wrong_key(ed: tuple[bytes, AdminKey]) -> None:
    stranger = adminauth.generate_admin_keypair()[0]
    _refused(manifest.sign_manifest(stranger, _payload()), [ed[1]], "manifest.unknown_key", "kid")
    forged = manifest.sign_manifest(stranger, _payload(), kid=ed[1].kid)
    _refused(forged, [ed[1]], "manifest.bad_signature", "signature")
    _refused(_forge({"alg": "EdDSA"}, _payload(), _ed_sign(stranger)), [ed[1]], "manifest.bad_signature")


def test_alg_none_and_others_are_refused(ed: tuple[bytes, AdminKey]) -> None:
    for alg in ("none", "HS256", "RS256", "ES384"):
        _refused(_forge({"alg": alg}, _payload(), lambda _data: b""), [ed[1]], "manifest.bad_alg", "alg")


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "e30.e30.", "x" * 100])
def test_not_a_jws(token: str, ed: tuple[bytes, AdminKey]) -> None:
    _refused(token, [ed[1]], "manifest.malformed")


def test_an_admin_token_is_not_a_manifest(ed: tuple[bytes, AdminKey]) -> None:
    # Same key in both roles (a misconfiguration): the schemas still keep the two apart.
    token = adminauth.sign_admin_token(ed[0], "alice", NOW)
    _refused(token, [ed[1]], "manifest.invalid_payload", "sub")
    with pytest.raises(adminauth.AdminAuthError) as caught:
        adminauth.verify_admin_token(f"Bearer {manifest.sign_manifest(ed[0], _payload())}", [ed[1]], NOW)
    assert caught.value.reason == "admin.missing_claim"


# -- refused: the payload ------------------------------------------------------------------------

GOOD = {"tee": "snp", "name": "measurement", "values": ["aa"]}


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        ({**GOOD, "values": []}, "reference_values[1].values"),
        ({**GOOD, "values": "aa"}, "reference_values[1].values"),
        ({**GOOD, "values": ["aa", ""]}, "reference_values[1].values[1]"),
        ({**GOOD, "values": ["a" * 1025]}, "reference_values[1].values[0]"),
        ({**GOOD, "values": [7]}, "reference_values[1].values[0]"),
        ({**GOOD, "tee": "SNP"}, "reference_values[1].tee"),
        ({**GOOD, "tee": "snp\n"}, "reference_values[1].tee"),
        ({**GOOD, "tee": "s.n.p"}, "reference_values[1].tee"),
        ({**GOOD, "name": "Measurement"}, "reference_values[1].name"),
        ({**GOOD, "name": "a/b"}, "reference_values[1].name"),
        ({**GOOD, "expires_at": "tomorrow"}, "reference_values[1].expires_at"),
        ({**GOOD, "expires_at": True}, "reference_values[1].expires_at"),
        # Unknown fields are refused: the signer may have meant something this importer ignores.
        ({**GOOD, "not_before": 1}, "reference_values[1].not_before"),
        # Missing fields name the field, not only the entry.
        ({"tee": "snp", "values": ["aa"]}, "reference_values[1].name"),
        ("snp:measurement:aa", "reference_values[1]"),
    ],
)
def test_malformed_entries_name_the_field(entry: Any, field: str, ed: tuple[bytes, AdminKey]) -> None:
    _bad_entry(ed, _payload(GOOD, entry), field)
    with pytest.raises(ManifestError) as caught:  # the signing helper refuses the same manifest
        manifest.sign_manifest(ed[0], _payload(GOOD, entry))
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"iat": 1, "reference_values": []}, "iss"),
        ({"iss": "x", "reference_values": []}, "iat"),
        ({"iss": "x", "iat": 1}, "reference_values"),
        ({"iss": "", "iat": 1, "reference_values": []}, "iss"),
        ({"iss": "x", "iat": 1.5, "reference_values": []}, "iat"),
        ({"iss": "x", "iat": 1, "reference_values": [], "exp": 2}, "exp"),
        ({"iss": "x", "iat": 1, "reference_values": {}}, "reference_values"),
        ([1, 2], "payload"),
    ],
)
def test_malformed_top_level_names_the_field(payload: Any, field: str, ed: tuple[bytes, AdminKey]) -> None:
    _bad_entry(ed, payload, field)


def test_too_many_entries(ed: tuple[bytes, AdminKey]) -> None:
    entries = [{"tee": "snp", "name": "measurement", "values": [f"{i:096x}"]} for i in range(10_001)]
    _bad_entry(ed, _payload(*entries), "reference_values")
    token = manifest.sign_manifest(ed[0], _payload(*entries[:10_000]))
    assert len(manifest.verify_manifest(token, [ed[1]], NOW).entries) == 10_000


def test_expired_entry_is_refused_by_index(ed: tuple[bytes, AdminKey]) -> None:
    payload = _payload(GOOD, {**GOOD, "expires_at": NOW + 1}, {**GOOD, "expires_at": NOW})
    token = manifest.sign_manifest(ed[0], payload)
    _refused(token, [ed[1]], "manifest.entry_expired", "reference_values[2].expires_at")
    _refused(token, [ed[1]], "manifest.entry_expired", "reference_values[1].expires_at", now=NOW + 1)
    assert len(manifest.verify_manifest(token, [ed[1]], NOW - 1).entries) == 3


def test_iat_in_the_future(ed: tuple[bytes, AdminKey]) -> None:
    _refused(
        manifest.sign_manifest(ed[0], _payload(iat=int(NOW) + 61)), [ed[1]], "manifest.iat_in_future", "iat"
    )
    assert manifest.verify_manifest(manifest.sign_manifest(ed[0], _payload(iat=int(NOW) + 60)), [ed[1]], NOW)


def test_only_the_appraised_tees_when_given(ed: tuple[bytes, AdminKey]) -> None:
    token = manifest.sign_manifest(ed[0], _payload(GOOD, {**GOOD, "tee": "cca"}))
    with pytest.raises(ManifestError) as caught:
        manifest.verify_manifest(token, [ed[1]], NOW, tees={"snp", "tdx"})
    assert caught.value.reason == "manifest.unknown_tee" and caught.value.field == "reference_values[1].tee"
    assert len(manifest.verify_manifest(token, [ed[1]], NOW).entries) == 2


def test_signing_refuses_what_json_cannot_carry(ed: tuple[bytes, AdminKey]) -> None:
    with pytest.raises(ManifestError) as caught:
        manifest.sign_manifest(ed[0], _payload(iat=object()))
    assert caught.value.reason == "manifest.invalid_payload"
