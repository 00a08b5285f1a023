"""The set of public signing keys relying parties may see: the current key and, for one token lifetime
after their retirement, the keys it replaced (a token they signed just before may still be valid).

Pure: every time is passed in, and the set is immutable (``rotate`` returns a new one, as
``shared.sealing.KeyRing`` does), so a set being served never changes under a reader."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from shared.custody.errors import CustodyError
from shared.custody.signer import Es256Key, p256_public_jwk
from shared.ear import SIGNING_ALG, jwk_thumbprint
from shared.kbs.wire import b64url_decode

__all__ = ["KEYSET_VERSION", "KeyEntry", "SigningKeySet", "entry_for"]

KEYSET_VERSION = 1
_JWK_FIELDS = ("kty", "crv", "x", "y")


@dataclass(frozen=True)
class KeyEntry:
    """One signing key's public half and its life: ``retired_at`` is None while it is current."""

    kid: str
    public_jwk: dict[str, str] = field(hash=False)
    activated_at: float
    retired_at: float | None = None

    def published_jwk(self) -> dict[str, str]:
        return {
            **{k: self.public_jwk[k] for k in _JWK_FIELDS},
            "alg": SIGNING_ALG,
            "use": "sig",
            "kid": self.kid,
        }


def entry_for(key: Es256Key | ec.EllipticCurvePublicKey, now: float) -> KeyEntry:
    """The entry of a key activated at ``now``; its kid is the RFC 7638 thumbprint, as EAR headers use."""
    public = key if isinstance(key, ec.EllipticCurvePublicKey) else key.public_key()
    jwk = p256_public_jwk(public)
    return KeyEntry(jwk_thumbprint(jwk), jwk, _time(now, "activated_at"), None)


def _time(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CustodyError(f"custody.keyset.{name}", "must be a finite number of seconds")
    return float(value)


class SigningKeySet:
    """The current signing key and the retired ones still published."""

    __slots__ = ("_current", "_retired")

    def __init__(self, current: KeyEntry, retired: Sequence[KeyEntry] = ()) -> None:
        if current.retired_at is not None:
            raise CustodyError("custody.keyset.current", "the current key cannot have a retirement time")
        kids = [current.kid]
        for entry in retired:
            if entry.retired_at is None:
                raise CustodyError(
                    "custody.keyset.retired", f"retired key {entry.kid!r} has no retirement time"
                )
            kids.append(entry.kid)
        if len(set(kids)) != len(kids):
            raise CustodyError("custody.keyset.kid", "a kid appears twice")
        self._current = current
        # newest retirement first, the order relying parties most likely need them in
        self._retired = tuple(sorted(retired, key=lambda e: e.retired_at or 0.0, reverse=True))

    @classmethod
    def start(cls, key: Es256Key | ec.EllipticCurvePublicKey, now: float) -> SigningKeySet:
        return cls(entry_for(key, now))

    @property
    def current(self) -> KeyEntry:
        return self._current

    @property
    def retired(self) -> tuple[KeyEntry, ...]:
        return self._retired

    def __repr__(self) -> str:
        return f"SigningKeySet(current={self._current.kid!r}, retired={[e.kid for e in self._retired]!r})"

    def rotate(self, new_key: Es256Key | ec.EllipticCurvePublicKey, now: float) -> SigningKeySet:
        """A set whose current key is ``new_key`` (from ``now``) and in which the old current key is
        retired at ``now``."""
        entry = entry_for(new_key, now)
        if entry.kid == self._current.kid or any(e.kid == entry.kid for e in self._retired):
            raise CustodyError(
                "custody.keyset.kid", f"key {entry.kid!r} was used before; rotate to a new key"
            )
        if entry.activated_at < self._current.activated_at:
            raise CustodyError(
                "custody.keyset.activated_at", "rotation time is before the current key's activation"
            )
        old = KeyEntry(
            self._current.kid, self._current.public_jwk, self._current.activated_at, entry.activated_at
        )
        return SigningKeySet(entry, (old, *self._retired))

    def _live(self, entry: KeyEntry, now: float, token_lifetime_s: float) -> bool:
        return entry.retired_at is None or entry.retired_at + token_lifetime_s > now

    def jwks(self, now: float, token_lifetime_s: float) -> dict[str, list[dict[str, str]]]:
        """``{"keys": [...]}``: the current key, then every retired key a still-valid token may name."""
        now = _time(now, "now")
        lifetime = _check_lifetime(token_lifetime_s)
        keys = [self._current, *(e for e in self._retired if self._live(e, now, lifetime))]
        return {"keys": [e.published_jwk() for e in keys]}

    def prune(self, now: float, token_lifetime_s: float) -> SigningKeySet:
        """This set without the retired keys ``jwks`` no longer publishes (for storage)."""
        now = _time(now, "now")
        lifetime = _check_lifetime(token_lifetime_s)
        return SigningKeySet(self._current, [e for e in self._retired if self._live(e, now, lifetime)])

    # --- storage ---

    def to_json(self) -> str:
        doc = {
            "v": KEYSET_VERSION,
            "current": _entry_doc(self._current),
            "retired": [_entry_doc(e) for e in self._retired],
        }
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: str | bytes) -> SigningKeySet:
        try:
            doc = json.loads(data)
        except ValueError:
            raise CustodyError("custody.keyset", "the key set is not JSON") from None
        if not isinstance(doc, dict) or set(doc) != {"v", "current", "retired"}:
            raise CustodyError("custody.keyset", 'must be {"v", "current", "retired"}')
        if type(doc["v"]) is not int or doc["v"] != KEYSET_VERSION:
            raise CustodyError("custody.keyset.v", f"unsupported version (expected {KEYSET_VERSION})")
        if not isinstance(doc["retired"], list):
            raise CustodyError("custody.keyset.retired", "must be a list")
        current = _entry_from_doc(doc["current"], "current")
        retired = [_entry_from_doc(e, f"retired.{i}") for i, e in enumerate(doc["retired"])]
        return cls(current, retired)


def _check_lifetime(value: object) -> float:
    lifetime = _time(value, "token_lifetime_s")
    if lifetime <= 0:
        raise CustodyError("custody.keyset.token_lifetime_s", "must be positive")
    return lifetime


def _entry_doc(entry: KeyEntry) -> dict[str, Any]:
    return {
        "kid": entry.kid,
        "public_jwk": {k: entry.public_jwk[k] for k in _JWK_FIELDS},
        "activated_at": entry.activated_at,
        "retired_at": entry.retired_at,
    }


def _entry_from_doc(doc: object, where: str) -> KeyEntry:
    if not isinstance(doc, dict) or set(doc) != {"kid", "public_jwk", "activated_at", "retired_at"}:
        raise CustodyError(f"custody.keyset.{where}", "must have kid, public_jwk, activated_at, retired_at")
    jwk = doc["public_jwk"]
    if (
        not isinstance(jwk, dict)
        or set(jwk) != set(_JWK_FIELDS)
        or not all(isinstance(v, str) for v in jwk.values())
    ):
        raise CustodyError(f"custody.keyset.{where}.public_jwk", "must be an EC JWK (kty, crv, x, y)")
    # The stored kid is a claim about the key; recomputing it stops an edited file from
    # publishing one key under another's kid.
    try:
        public = _public_key_of(jwk)
    except ValueError:
        raise CustodyError(f"custody.keyset.{where}.public_jwk", "is not a P-256 public key") from None
    if doc["kid"] != jwk_thumbprint(p256_public_jwk(public)):
        raise CustodyError(f"custody.keyset.{where}.kid", "is not the thumbprint of public_jwk")
    retired_at = doc["retired_at"]
    return KeyEntry(
        doc["kid"],
        p256_public_jwk(public),
        _time(doc["activated_at"], f"{where}.activated_at"),
        None if retired_at is None else _time(retired_at, f"{where}.retired_at"),
    )


def _public_key_of(jwk: dict[str, str]) -> ec.EllipticCurvePublicKey:
    if jwk["kty"] != "EC" or jwk["crv"] != "P-256":
        raise ValueError("not a P-256 EC JWK")
    x, y = b64url_decode(jwk["x"]), b64url_decode(jwk["y"])
    if len(x) != 32 or len(y) != 32:
        raise ValueError("coordinates are 32 bytes")
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
    ).public_key()
