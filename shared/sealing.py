"""Secrets at rest: envelope encryption under a key-encryption key (KEK).

Every sealed value gets its own random AES-256-GCM data key (DEK); only the DEK is encrypted
("wrapped") under a KEK. Rotating the KEK therefore re-wraps 32 bytes per record (``rewrap``) and never
re-encrypts, or even decrypts, the secrets themselves.

Sealed form (JSON-able)::

    {"v": 1, "kid": "<KEK id>", "wrapped_key": b64, "key_nonce": b64, "nonce": b64, "ciphertext": b64}

- ``wrapped_key`` = AES-256-GCM(KEK[kid], ``key_nonce``, DEK, AAD = b"remits-dek|" + aad), tag appended;
- ``ciphertext`` = AES-256-GCM(DEK, ``nonce``, plaintext, AAD = aad), tag appended.

``aad`` is the resource path: a sealed value copied to another path does not open. Every failure is a
``SealingError`` naming the field; no message carries plaintext or key bytes.

KEK file: ``{"current": "<kid>", "keys": {"<kid>": "<base64 of 32 bytes>", ...}}``, mode 0600. Old KEKs
stay in it after ``rotate`` until every record has been re-wrapped; ``KeyRing.retire`` then drops them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import RemitsError

SEALED_VERSION = 1
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
_DEK_AAD_PREFIX = b"remits-dek|"
_FIELDS = frozenset({"v", "kid", "wrapped_key", "key_nonce", "nonce", "ciphertext"})
_KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class SealingError(RemitsError):
    """A sealed value that cannot be made or opened, or an unusable KEK set or file.

    ``reason`` is ``sealing.<field>``; the detail names the field (or the file), never a secret."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"sealing.{field}", detail)
        self.field = field


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(value: object, field: str, size: int | None = None, minimum: int = 0) -> bytes:
    if not isinstance(value, str):
        raise SealingError(field, "must be a base64 string")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        # binascii's message may quote part of the input, which for a key is secret
        raise SealingError(field, "is not base64") from None
    # only the canonical text is accepted, so no edit of a stored record goes unnoticed
    if _b64(raw) != value:
        raise SealingError(field, "is not canonical base64")
    if (size is not None and len(raw) != size) or len(raw) < minimum:
        raise SealingError(field, "has the wrong length")
    return raw


def kid_of(key: bytes) -> str:
    """A KEK's id, derived from the key so that the same key has the same id whether it comes from the
    KEK file or from configuration (records sealed under one open under the other)."""
    return hashlib.sha256(b"remits-kek-id|" + key).hexdigest()[:16]


# --- the key ring ---------------------------------------------------------------------------------


class KeyRing:
    """The KEKs still needed to unwrap stored DEKs, and the current one that wraps new DEKs.

    Immutable: ``rotate`` and ``retire`` return a new ring, so a ring in use never changes under a
    caller. Key bytes are kept out of ``repr``."""

    __slots__ = ("_current", "_keys")

    def __init__(self, current_kid: str, keys: Mapping[str, bytes | Any]) -> None:
        for kid, key in keys.items():
            if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
                raise SealingError("kek.kid", "a KEK id must be 1-64 of A-Z a-z 0-9 . _ -")
            # A KEK is 32 bytes held here, or a custody backend (an HSM key through PKCS#11:
            # shared.custody.kek) that wraps and unwraps DEKs without the key leaving the HSM.
            held = isinstance(key, bytes) and len(key) == KEY_SIZE
            if not held and not (hasattr(key, "wrap") and hasattr(key, "unwrap")):
                raise SealingError("kek.key", f"KEK {kid!r} is not {KEY_SIZE} bytes")
        if current_kid not in keys:
            raise SealingError("kek.current", f"current KEK {current_kid!r} is not among the keys")
        self._current = current_kid
        self._keys = dict(keys)

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def _key(self, kid: object) -> Any:
        if not isinstance(kid, str) or kid not in self._keys:
            raise SealingError(
                "kid", f"unknown KEK id {kid!r}" if isinstance(kid, str) else "must be a string"
            )
        return self._keys[kid]

    def __repr__(self) -> str:
        return f"KeyRing(current_kid={self._current!r}, kids={list(self._keys)!r})"

    def retire(self, kid: str) -> KeyRing:
        """This ring without ``kid``; call once no stored record is wrapped under it any more."""
        if kid == self._current:
            raise SealingError("kid", f"KEK {kid!r} is current and cannot be retired")
        self._key(kid)
        return KeyRing(self._current, {k: v for k, v in self._keys.items() if k != kid})

    # --- serialisation ---

    def with_custody(self, kek: Any) -> KeyRing:
        """This ring with an HSM-held KEK (shared.custody) as the current one: new secrets are
        sealed under it, records under the others still open until `remits kek rotate` rewraps them."""
        return KeyRing(kek.kid, {**self._keys, kek.kid: kek})

    def to_bytes(self) -> bytes:
        if not all(isinstance(key, bytes) for key in self._keys.values()):
            raise SealingError("kek", "a ring with HSM-held keys is configured, not written to a file")
        doc = {"current": self._current, "keys": {kid: _b64(key) for kid, key in self._keys.items()}}
        return (json.dumps(doc, indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyRing:
        try:
            doc = json.loads(data)
        except ValueError:
            raise SealingError("kek", "the KEK set is not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("current"), str):
            raise SealingError("kek.current", 'the KEK set must be {"current": kid, "keys": {kid: base64}}')
        keys = doc.get("keys")
        if not isinstance(keys, dict) or not keys:
            raise SealingError("kek.keys", "must be a non-empty object of kid -> base64 key")
        return cls(doc["current"], {kid: _unb64(v, f"kek.keys.{kid}", KEY_SIZE) for kid, v in keys.items()})

    @classmethod
    def from_env_value(cls, value: str) -> KeyRing:
        """A single KEK given in configuration as the base64 of 32 bytes."""
        key = _unb64(value.strip() if isinstance(value, str) else value, "kek", KEY_SIZE)
        return cls(kid_of(key), {kid_of(key): key})

    # --- the KEK file ---

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, allow_loose_mode: bool = False) -> KeyRing:
        """The ring in the KEK file at ``path``. A file that group or others may access is refused
        unless ``allow_loose_mode`` (secrets mounted by container runtimes often have such modes)."""
        target = Path(path)
        try:
            # mode and content come from the same open file, so a swap in between cannot slip through
            with open(target, "rb") as fh:
                mode = os.fstat(fh.fileno()).st_mode
                data = fh.read()
        except FileNotFoundError:
            raise SealingError("kek_file", f"no KEK file at {target}") from None
        except OSError as exc:
            raise SealingError("kek_file", f"cannot read KEK file {target}: {exc.strerror}") from None
        if not allow_loose_mode and stat.S_IMODE(mode) & 0o077:
            raise SealingError(
                "kek_file",
                f"KEK file {target} has mode {stat.S_IMODE(mode):04o}; group/other access is refused",
            )
        return cls.from_bytes(data)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str], *, allow_loose_mode: bool = False) -> KeyRing:
        """Load the KEK file at ``path``, first creating it (mode 0600, one fresh KEK) if absent.

        The new file is hard-linked into place, so concurrent starters never see a half-written file and
        exactly one generated KEK wins (the others load it)."""
        target = Path(path)
        if not target.exists():
            key = secrets.token_bytes(KEY_SIZE)
            tmp = _private_temp(target, cls(kid_of(key), {kid_of(key): key}).to_bytes())
            try:
                os.link(tmp, target)
            except FileExistsError:
                pass
            finally:
                os.unlink(tmp)
            _fsync_dir(target.parent)
        return cls.load(target, allow_loose_mode=allow_loose_mode)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Atomically replace the KEK file at ``path`` (mode 0600): readers see the old set or the new."""
        target = Path(path)
        tmp = _private_temp(target, self.to_bytes())
        try:
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        # a rename is durable only once the directory is; a lost rotated KEK would lose records
        _fsync_dir(target.parent)


def rotate(ring: KeyRing) -> KeyRing:
    """``ring`` plus a fresh KEK that becomes current; the old KEKs stay so existing records still open."""
    key = secrets.token_bytes(KEY_SIZE)
    while kid_of(key) in ring.kids:  # a 64-bit id clash is unlikely, but would overwrite a live key
        key = secrets.token_bytes(KEY_SIZE)
    keys = {kid: ring._key(kid) for kid in ring.kids}
    keys[kid_of(key)] = key
    return KeyRing(kid_of(key), keys)


def _private_temp(target: Path, data: bytes) -> str:
    """A fully written, fsynced temp file beside ``target``. mkstemp creates it 0600, so the keys are
    never readable by others, not even for an instant."""
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- sealing --------------------------------------------------------------------------------------


def _check_aad(aad: object) -> bytes:
    if not isinstance(aad, bytes) or not aad:
        raise SealingError("aad", "must be non-empty bytes (the resource path)")
    return aad


def _check_sealed(sealed: object) -> Mapping[str, Any]:
    if not isinstance(sealed, Mapping):
        raise SealingError("sealed", "must be a JSON object")
    if set(sealed) != _FIELDS:
        raise SealingError("sealed", f"must have exactly the fields {sorted(_FIELDS)}")
    if type(sealed["v"]) is not int or sealed["v"] != SEALED_VERSION:
        raise SealingError("v", f"unsupported version (expected {SEALED_VERSION})")
    return sealed


def _wrap(ring: KeyRing, dek: bytes, aad: bytes) -> dict[str, Any]:
    kek = ring._key(ring.current_kid)
    if not isinstance(kek, bytes):
        # The backend adds the DEK prefix itself (records it wraps open with the same key in software).
        key_nonce, wrapped = kek.wrap(dek, aad)
    else:
        key_nonce = secrets.token_bytes(NONCE_SIZE)
        wrapped = AESGCM(kek).encrypt(key_nonce, dek, _DEK_AAD_PREFIX + aad)
    return {"kid": ring.current_kid, "wrapped_key": _b64(wrapped), "key_nonce": _b64(key_nonce)}


def _unwrap(ring: KeyRing, sealed: Mapping[str, Any], aad: bytes) -> bytes:
    kek = ring._key(sealed["kid"])
    wrapped = _unb64(sealed["wrapped_key"], "wrapped_key", KEY_SIZE + TAG_SIZE)
    key_nonce = _unb64(sealed["key_nonce"], "key_nonce", NONCE_SIZE)
    if not isinstance(kek, bytes):
        from shared.custody.errors import CustodyError

        try:
            return bytes(kek.unwrap(key_nonce, wrapped, aad))
        except CustodyError:
            raise SealingError(
                "wrapped_key", f"does not unwrap under KEK {sealed['kid']!r} for this aad"
            ) from None
    try:
        return AESGCM(kek).decrypt(key_nonce, wrapped, _DEK_AAD_PREFIX + aad)
    except InvalidTag:
        # GCM cannot tell a damaged key, nonce or AAD apart; the record simply does not belong here
        raise SealingError(
            "wrapped_key", f"does not unwrap under KEK {sealed['kid']!r} for this aad"
        ) from None


def seal(ring: KeyRing, plaintext: bytes, aad: bytes) -> dict[str, Any]:
    """Encrypt ``plaintext`` for ``aad`` (the resource path) under a fresh DEK wrapped by the current KEK."""
    if not isinstance(plaintext, bytes):
        raise SealingError("plaintext", "must be bytes")
    aad = _check_aad(aad)
    dek = AESGCM.generate_key(bit_length=8 * KEY_SIZE)
    nonce = secrets.token_bytes(NONCE_SIZE)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext, aad)
    return {
        "v": SEALED_VERSION,
        **_wrap(ring, dek, aad),
        "nonce": _b64(nonce),
        "ciphertext": _b64(ciphertext),
    }


def unseal(ring: KeyRing, sealed: Mapping[str, Any], aad: bytes) -> bytes:
    """The plaintext sealed for ``aad``, or ``SealingError``; GCM checks the tag before releasing any byte."""
    aad = _check_aad(aad)
    checked = _check_sealed(sealed)
    dek = _unwrap(ring, checked, aad)
    nonce = _unb64(checked["nonce"], "nonce", NONCE_SIZE)
    ciphertext = _unb64(checked["ciphertext"], "ciphertext", minimum=TAG_SIZE)
    try:
        return AESGCM(dek).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise SealingError("ciphertext", "does not authenticate for this aad") from None


def rewrap(ring: KeyRing, sealed: Mapping[str, Any], aad: bytes) -> dict[str, Any]:
    """The same record with its DEK wrapped under the current KEK; ``nonce`` and ``ciphertext`` are kept
    byte for byte. The ciphertext is deliberately not decrypted: a rotation never handles the secrets."""
    aad = _check_aad(aad)
    checked = _check_sealed(sealed)
    dek = _unwrap(ring, checked, aad)
    # shape only: a malformed record is reported now rather than carried over to the new KEK
    _unb64(checked["nonce"], "nonce", NONCE_SIZE)
    _unb64(checked["ciphertext"], "ciphertext", minimum=TAG_SIZE)
    if checked["kid"] == ring.current_kid:
        return dict(checked)
    return {
        "v": SEALED_VERSION,
        **_wrap(ring, dek, aad),
        "nonce": checked["nonce"],
        "ciphertext": checked["ciphertext"],
    }
