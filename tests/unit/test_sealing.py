"""Envelope encryption of resources: round trip, binding to the path, tamper detection field by field,
KEK rotation with re-wrapping (ciphertext untouched), and the KEK file's mode."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from shared import sealing
from shared.sealing import KeyRing, SealingError, rewrap, rotate, seal, unseal

SECRET = b"db-password: correct horse battery staple"
PATH = b"default/db/password"


@pytest.fixture
def ring() -> KeyRing:
    key = os.urandom(32)
    return KeyRing.from_env_value(base64.b64encode(key).decode())


def _flip(sealed: dict[str, Any], field: str, bit: int = 0) -> dict[str, Any]:
    raw = bytearray(base64.b64decode(sealed[field]))
    raw[bit // 8] ^= 1 << (bit % 8)
    return {**sealed, field: base64.b64encode(bytes(raw)).decode()}


def test_roundtrip(ring: KeyRing) -> None:
    sealed = seal(ring, SECRET, PATH)
    assert sealed["v"] == 1 and sealed["kid"] == ring.current_kid
    assert set(sealed) == {"v", "kid", "wrapped_key", "key_nonce", "nonce", "ciphertext"}
    assert unseal(ring, sealed, PATH) == SECRET
    assert unseal(ring, json.loads(json.dumps(sealed)), PATH) == SECRET  # survives the JSON store
    assert unseal(ring, seal(ring, b"", PATH), PATH) == b""


def test_every_seal_uses_a_fresh_data_key_and_nonces(ring: KeyRing) -> None:
    a, b = seal(ring, SECRET, PATH), seal(ring, SECRET, PATH)
    for field in ("wrapped_key", "key_nonce", "nonce", "ciphertext"):
        assert a[field] != b[field]


def test_plaintext_never_appears_in_the_sealed_form(ring: KeyRing) -> None:
    text = json.dumps(seal(ring, SECRET, PATH))
    assert SECRET.decode() not in text
    assert base64.b64encode(SECRET).decode() not in text
    assert SECRET.hex() not in text


def test_wrong_aad_fails(ring: KeyRing) -> None:
    sealed = seal(ring, SECRET, PATH)
    with pytest.raises(SealingError) as err:
        unseal(ring, sealed, b"default/db/other")
    assert err.value.reason == "sealing.wrapped_key"


@pytest.mark.parametrize("field", ["ciphertext", "wrapped_key", "nonce", "key_nonce"])
@pytest.mark.parametrize("bit", [0, 7, 95])
def test_a_flipped_bit_fails_with_the_typed_error(ring: KeyRing, field: str, bit: int) -> None:
    sealed = seal(ring, SECRET, PATH)
    with pytest.raises(SealingError) as err:
        unseal(ring, _flip(sealed, field, bit), PATH)
    # GCM fails the data key's fields at unwrapping, the data's fields at decryption
    assert err.value.field == ("wrapped_key" if field in ("wrapped_key", "key_nonce") else "ciphertext")


@pytest.mark.parametrize("field", ["wrapped_key", "key_nonce"])
def test_rewrap_refuses_a_damaged_data_key(ring: KeyRing, field: str) -> None:
    with pytest.raises(SealingError) as err:
        rewrap(rotate(ring), _flip(seal(ring, SECRET, PATH), field), PATH)
    assert err.value.field == "wrapped_key"


def test_the_ciphertext_tag_is_checked(ring: KeyRing) -> None:
    sealed = seal(ring, SECRET, PATH)
    bits = 8 * len(base64.b64decode(sealed["ciphertext"]))
    with pytest.raises(SealingError, match="ciphertext"):
        unseal(ring, _flip(sealed, "ciphertext", bits - 1), PATH)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"kid": "nope"}, "kid"),
        ({"kid": 7}, "kid"),
        ({"v": 2}, "v"),
        ({"v": True}, "v"),
        ({"nonce": "not base64!"}, "nonce"),
        ({"key_nonce": base64.b64encode(b"short").decode()}, "key_nonce"),
        ({"wrapped_key": base64.b64encode(bytes(47)).decode()}, "wrapped_key"),
        ({"ciphertext": base64.b64encode(bytes(15)).decode()}, "ciphertext"),
        ({"ciphertext": None}, "ciphertext"),
        ({"extra": 1}, "sealed"),
    ],
)
def test_malformed_fields_are_named(ring: KeyRing, change: dict[str, Any], field: str) -> None:
    sealed = {**seal(ring, SECRET, PATH), **change}
    with pytest.raises(SealingError) as err:
        unseal(ring, sealed, PATH)
    assert err.value.field == field
    assert err.value.reason == f"sealing.{field}"


def test_non_canonical_base64_is_refused(ring: KeyRing) -> None:
    sealed = seal(ring, SECRET, PATH)
    with pytest.raises(SealingError, match="nonce"):
        unseal(ring, {**sealed, "nonce": sealed["nonce"] + "\n"}, PATH)
    # 16 bytes encode to 22 characters + "==": the last character carries 4 unused bits, so "AQ==" and
    # "AR==" decode alike; only the canonical spelling is accepted
    assert base64.b64decode("AR==") == base64.b64decode("AQ==")
    with pytest.raises(SealingError, match="canonical"):
        sealing._unb64("AR==", "x", 1)


def test_missing_fields_and_non_objects_are_refused(ring: KeyRing) -> None:
    sealed = seal(ring, SECRET, PATH)
    del sealed["key_nonce"]
    with pytest.raises(SealingError, match="sealed"):
        unseal(ring, sealed, PATH)
    with pytest.raises(SealingError, match="sealed"):
        unseal(ring, [], PATH)  # type: ignore[arg-type]
    with pytest.raises(SealingError, match="aad"):
        unseal(ring, seal(ring, SECRET, PATH), "default/db/password")  # type: ignore[arg-type]
    with pytest.raises(SealingError, match="plaintext"):
        seal(ring, "text", PATH)  # type: ignore[arg-type]


def test_a_record_relabelled_to_another_kek_fails(ring: KeyRing) -> None:
    rotated = rotate(ring)
    sealed = seal(rotated, SECRET, PATH)
    with pytest.raises(SealingError, match="wrapped_key"):
        unseal(rotated, {**sealed, "kid": ring.current_kid}, PATH)


def test_rotate_rewrap_retire(ring: KeyRing) -> None:
    old_kid = ring.current_kid
    records = {
        f"repo/key/{i}".encode(): seal(ring, SECRET + bytes([i]), f"repo/key/{i}".encode()) for i in range(3)
    }

    rotated = rotate(ring)
    assert rotated.current_kid != old_kid and set(rotated.kids) == {old_kid, rotated.current_kid}
    assert ring.current_kid == old_kid  # rings are immutable
    for aad, sealed in records.items():
        assert unseal(rotated, sealed, aad) == SECRET + bytes([int(aad[-1:])])  # old records still open

    rewrapped = {aad: rewrap(rotated, sealed, aad) for aad, sealed in records.items()}
    for aad, new in rewrapped.items():
        old = records[aad]
        assert new["kid"] == rotated.current_kid
        assert new["ciphertext"] == old["ciphertext"] and new["nonce"] == old["nonce"]
        assert new["wrapped_key"] != old["wrapped_key"] and new["key_nonce"] != old["key_nonce"]
        assert rewrap(rotated, new, aad) == new  # already current: nothing to do

    retired = rotated.retire(old_kid)
    assert retired.kids == (rotated.current_kid,)
    assert old_kid not in json.loads(retired.to_bytes())["keys"]
    for aad, new in rewrapped.items():
        assert unseal(retired, new, aad) == unseal(rotated, records[aad], aad)
    aad, old = next(iter(records.items()))
    with pytest.raises(SealingError) as err:
        unseal(retired, old, aad)  # a record missed by the rewrap run no longer opens
    assert err.value.field == "kid"


def test_rewrap_does_not_move_a_record_to_another_path(ring: KeyRing) -> None:
    sealed = seal(ring, SECRET, PATH)
    with pytest.raises(SealingError, match="wrapped_key"):
        rewrap(rotate(ring), sealed, b"elsewhere")


def test_rewrap_never_decrypts_the_data(ring: KeyRing, monkeypatch: pytest.MonkeyPatch) -> None:
    sealed = seal(ring, SECRET, PATH)
    rotated = rotate(ring)
    decrypted: list[int] = []
    real = sealing.AESGCM.decrypt

    def spy(self: Any, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
        decrypted.append(len(data))
        return real(self, nonce, data, aad)

    monkeypatch.setattr(sealing.AESGCM, "decrypt", spy)
    rewrap(rotated, sealed, PATH)
    assert decrypted == [sealing.KEY_SIZE + sealing.TAG_SIZE]  # the DEK only


def test_current_and_unknown_keys_cannot_be_retired(ring: KeyRing) -> None:
    with pytest.raises(SealingError, match="current"):
        ring.retire(ring.current_kid)
    with pytest.raises(SealingError) as err:
        rotate(ring).retire("nope")
    assert err.value.field == "kid"


# --- the KEK file ---------------------------------------------------------------------------------


def test_kek_file_is_created_0600_and_reloads(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    first = KeyRing.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["kek.json"]  # no temp file left behind
    again = KeyRing.load_or_create(path)
    assert again.current_kid == first.current_kid
    sealed = seal(first, SECRET, PATH)
    assert unseal(again, sealed, PATH) == SECRET
    doc = json.loads(path.read_text())
    assert doc["current"] == first.current_kid
    assert len(base64.b64decode(doc["keys"][first.current_kid])) == 32


def test_kek_file_is_never_created_readable(tmp_path: Path) -> None:
    old = os.umask(0)  # even with a permissive umask
    try:
        path = tmp_path / "kek.json"
        KeyRing.load_or_create(path)
        rotate(KeyRing.load(path)).save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_after_rotate_is_atomic_and_keeps_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "kek.json"
    ring = KeyRing.load_or_create(path)
    sealed = seal(ring, SECRET, PATH)
    rotated = rotate(ring)
    rotated.save(path)
    loaded = KeyRing.load(path)
    assert loaded.current_kid == rotated.current_kid and set(loaded.kids) == set(rotated.kids)
    assert unseal(loaded, sealed, PATH) == SECRET
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kek.json"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o620])
def test_loose_mode_file_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "kek.json"
    KeyRing.load_or_create(path)
    path.chmod(mode)
    with pytest.raises(SealingError) as err:
        KeyRing.load(path)
    assert err.value.field == "kek_file" and str(path) in err.value.detail
    with pytest.raises(SealingError):
        KeyRing.load_or_create(path)
    assert (
        KeyRing.load(path, allow_loose_mode=True).current_kid
        == KeyRing.load_or_create(path, allow_loose_mode=True).current_kid
    )


def test_missing_and_malformed_kek_files(tmp_path: Path) -> None:
    with pytest.raises(SealingError, match="no KEK file"):
        KeyRing.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    cases = {
        b"not json": "sealing.kek",
        b"[]": "sealing.kek.current",
        b'{"current": "a", "keys": {}}': "sealing.kek.keys",
        b'{"current": "a", "keys": {"a": "AAAA"}}': "sealing.kek.keys.a",
        b'{"current": "b", "keys": {"a": "' + base64.b64encode(bytes(32)) + b'"}}': "sealing.kek.current",
        b'{"current": "a b", "keys": {"a b": "' + base64.b64encode(bytes(32)) + b'"}}': "sealing.kek.kid",
    }
    for content, reason in cases.items():
        bad.write_bytes(content)
        bad.chmod(0o600)
        with pytest.raises(SealingError) as err:
            KeyRing.load(bad)
        assert err.value.reason == reason, content


def test_bytes_roundtrip_and_repr_hides_keys(ring: KeyRing) -> None:
    rotated = rotate(ring)
    again = KeyRing.from_bytes(rotated.to_bytes())
    assert again.current_kid == rotated.current_kid and again.kids == rotated.kids
    assert unseal(again, seal(rotated, SECRET, PATH), PATH) == SECRET
    for key in json.loads(rotated.to_bytes())["keys"].values():
        assert key not in repr(rotated)


def test_env_value_kek(ring: KeyRing) -> None:
    key = os.urandom(32)
    value = base64.b64encode(key).decode()
    env = KeyRing.from_env_value(value)
    assert env.kids == (env.current_kid,)
    assert KeyRing.from_env_value(value + "\n").current_kid == env.current_kid  # same key, same kid
    assert env.current_kid == sealing.kid_of(key) and key.hex() not in env.current_kid
    for bad in ("", "not base64", base64.b64encode(bytes(16)).decode()):
        with pytest.raises(SealingError) as err:
            KeyRing.from_env_value(bad)
        assert err.value.field == "kek"
