"""Key-encryption keys that wrap record DEKs with AES-256-GCM, in software or inside a PKCS#11 token.

Both backends bind a wrapped DEK to the record's AAD exactly as ``shared.sealing`` does (GCM AAD
``b"remits-dek|" + aad``), so a record wrapped by one opens with the other holding the same key bytes,
and a DEK moved to another record does not unwrap."""

from __future__ import annotations

import re
import secrets
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.custody.errors import CustodyError

if TYPE_CHECKING:
    from shared.custody.pkcs11 import Pkcs11Config, TokenSession

__all__ = ["DEK_AAD_PREFIX", "Kek", "Pkcs11Kek", "SoftwareKek", "generate_pkcs11_kek", "pkcs11_kek_id"]

DEK_AAD_PREFIX = b"remits-dek|"
KEY_SIZE = 32
DEK_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
WRAPPED_SIZE = DEK_SIZE + TAG_SIZE
# Ids share the sealing KEK-id alphabet so an HSM KEK can sit in the same records' ``kid`` field.
_KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_LABEL_RE = re.compile(r"[A-Za-z0-9._-]{1,60}")


@runtime_checkable
class Kek(Protocol):
    @property
    def kid(self) -> str: ...

    def wrap(self, dek: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """``(nonce, wrapped)`` for ``dek`` bound to the record's ``aad``."""
        ...

    def unwrap(self, nonce: bytes, wrapped: bytes, aad: bytes) -> bytes: ...


def _check_wrap_args(dek: object, aad: object) -> None:
    if not isinstance(dek, bytes) or len(dek) != DEK_SIZE:
        raise CustodyError("custody.dek", f"a DEK is {DEK_SIZE} bytes")
    _check_aad(aad)


def _check_aad(aad: object) -> None:
    if not isinstance(aad, bytes) or not aad:
        raise CustodyError("custody.aad", "must be non-empty bytes (the record's resource path)")


def _check_unwrap_args(nonce: object, wrapped: object, aad: object) -> None:
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise CustodyError("custody.nonce", f"a wrap nonce is {NONCE_SIZE} bytes")
    if not isinstance(wrapped, bytes) or len(wrapped) != WRAPPED_SIZE:
        raise CustodyError("custody.wrapped", f"a wrapped DEK is {WRAPPED_SIZE} bytes")
    _check_aad(aad)


class SoftwareKek:
    """An AES-256 KEK in process memory; ``kid`` is whatever the key ring calls it."""

    def __init__(self, kid: str, key: bytes) -> None:
        if not isinstance(kid, str) or not _KID_RE.fullmatch(kid):
            raise CustodyError("custody.kid", "a KEK id must be 1-64 of A-Z a-z 0-9 . _ -")
        if not isinstance(key, bytes) or len(key) != KEY_SIZE:
            raise CustodyError("custody.kek", f"a KEK is {KEY_SIZE} bytes")
        self._kid = kid
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"SoftwareKek(kid={self._kid!r})"

    @property
    def kid(self) -> str:
        return self._kid

    def wrap(self, dek: bytes, aad: bytes) -> tuple[bytes, bytes]:
        _check_wrap_args(dek, aad)
        nonce = secrets.token_bytes(NONCE_SIZE)
        return nonce, self._aead.encrypt(nonce, dek, DEK_AAD_PREFIX + aad)

    def unwrap(self, nonce: bytes, wrapped: bytes, aad: bytes) -> bytes:
        _check_unwrap_args(nonce, wrapped, aad)
        try:
            return self._aead.decrypt(nonce, wrapped, DEK_AAD_PREFIX + aad)
        except InvalidTag:
            raise CustodyError(
                "custody.unwrap", f"does not unwrap under KEK {self._kid!r} for this aad"
            ) from None


def pkcs11_kek_id(label: str) -> str:
    """The KEK id of the token key ``label``: readable in records and logs, and the same on every
    replica and after a restart, since it depends on nothing but the label."""
    if not isinstance(label, str) or not _LABEL_RE.fullmatch(label):
        raise CustodyError("custody.label", "a KEK label must be 1-60 of A-Z a-z 0-9 . _ -")
    return f"p11.{label}"


class Pkcs11Kek:
    """An AES-256 KEK that stays in a PKCS#11 token: wrapping and unwrapping are CKM_AES_GCM inside
    the token, with a fresh random 96-bit IV per wrap chosen here (so the record carries it)."""

    def __init__(self, config: Pkcs11Config, label: str) -> None:
        from pkcs11 import Mechanism

        from shared.custody.pkcs11 import HeldObjects

        self._kid = pkcs11_kek_id(label)
        self.label = label
        self._mechanism = Mechanism.AES_GCM
        self._key: Any = None
        self._held = HeldObjects(config, f"KEK {label!r}", self._load)

    def _load(self, held: TokenSession) -> None:
        from pkcs11 import Attribute, KeyType, ObjectClass

        from shared.custody.pkcs11 import translate

        what = f"KEK {self.label!r}"
        if self._mechanism not in held.mechanisms():
            raise CustodyError("custody.mechanism", f"token {held.config.token_label!r} lacks CKM_AES_GCM")
        with translate("custody.key", what):
            key = held.session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=self.label)
            length = int(key[Attribute.VALUE_LEN])
            sensitive = bool(key[Attribute.SENSITIVE])
            extractable = bool(key[Attribute.EXTRACTABLE])
        if length != KEY_SIZE:
            raise CustodyError("custody.key_type", f"{what} is AES-{8 * length}, not AES-256")
        if not sensitive or extractable:
            raise CustodyError("custody.key_policy", f"{what} must be sensitive and non-extractable")
        self._key = key

    def __repr__(self) -> str:
        return f"Pkcs11Kek(kid={self._kid!r})"

    @property
    def kid(self) -> str:
        return self._kid

    def _params(self, nonce: bytes, aad: bytes) -> object:
        from pkcs11 import GCMParams

        return GCMParams(nonce, DEK_AAD_PREFIX + aad, 8 * TAG_SIZE)

    def wrap(self, dek: bytes, aad: bytes) -> tuple[bytes, bytes]:
        _check_wrap_args(dek, aad)
        nonce = secrets.token_bytes(NONCE_SIZE)
        params = self._params(nonce, aad)
        wrapped = self._held.use(
            "custody.wrap",
            lambda: bytes(self._key.encrypt(dek, mechanism=self._mechanism, mechanism_param=params)),
        )
        if len(wrapped) != WRAPPED_SIZE:
            raise CustodyError("custody.wrap", f"KEK {self.label!r}: token returned {len(wrapped)} bytes")
        return nonce, wrapped

    def unwrap(self, nonce: bytes, wrapped: bytes, aad: bytes) -> bytes:
        _check_unwrap_args(nonce, wrapped, aad)
        params = self._params(nonce, aad)
        # Every token error here, however a token spells a failed GCM tag (SoftHSM: CKR_GENERAL_ERROR),
        # means this record does not open under this KEK for this aad.
        dek = self._held.use(
            "custody.unwrap",
            lambda: bytes(self._key.decrypt(wrapped, mechanism=self._mechanism, mechanism_param=params)),
        )
        if len(dek) != DEK_SIZE:
            raise CustodyError("custody.unwrap", f"KEK {self.label!r}: unwrapped {len(dek)} bytes")
        return dek

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> Pkcs11Kek:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def generate_pkcs11_kek(config: Pkcs11Config, label: str) -> str:
    """Create an AES-256 KEK on the token under ``label`` (a token object, sensitive, non-extractable,
    usable only to encrypt and decrypt) and return its kid. Refuses a label already in use."""
    from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

    from shared.custody.pkcs11 import open_session, translate

    kid = pkcs11_kek_id(label)
    with open_session(config, rw=True) as session, translate("custody.generate", f"KEK {label!r}"):
        if list(session.get_objects({Attribute.LABEL: label, Attribute.CLASS: ObjectClass.SECRET_KEY})):
            raise CustodyError("custody.label_exists", f"a secret key labelled {label!r} exists already")
        session.generate_key(
            KeyType.AES,
            8 * KEY_SIZE,
            label=label,
            store=True,
            capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            },
        )
    return kid
