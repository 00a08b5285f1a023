"""Passport mode: a relying party checks an EAR token it was handed, against the issuer's JWKS.

The issuer (our gateway's ``/.well-known/jwks.json``) names its signing key by ``kid``; the relying
party fetches that set, caches it, and re-fetches only when a token names a key it has not seen (a
rotation), at a bounded rate so tokens with made-up kids cannot turn it into a flood on the issuer.
Signature, validity window and profile are :class:`shared.ear.EarVerifier`'s; this module adds the
key lookup, the nonce (freshness) and the relying party's own acceptance policy.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric import ec

from shared.ear import (
    CPU_SUBMOD,
    EAT_PROFILE,
    K_EVIDENCE,
    SIGNING_ALG,
    EarVerifier,
    UnverifiedToken,
    submod_status,
    tee_pubkey_from_claims,
)
from shared.errors import ParseError, VerificationError
from shared.kbs.wire import b64url_decode

JWKS_PATH: Final = "/.well-known/jwks.json"
# A JWKS is a few hundred bytes; anything far larger is not one and is not worth holding.
MAX_JWKS_BYTES: Final = 1 << 20
# Verifiers kept by JwksSource.verifier: an issuer publishes a handful of keys.
_MAX_CACHED_VERIFIERS: Final = 64
# Members of the annotated evidence that are not a TEE's claims.
_NON_TEE_EVIDENCE: Final = frozenset({"runtime_data_claims", "init_data_claims"})
# Acceptable statuses per minimum; "none" (no claims) and "contraindicated" never pass.
_ACCEPTED_STATUS: Final = {
    "affirming": frozenset({"affirming"}),
    "warning": frozenset({"affirming", "warning"}),
}


# --- the issuer's keys --------------------------------------------------------------------------


def _import_jwk(jwk: Any) -> tuple[str, ec.EllipticCurvePublicKey] | None:
    """The (kid, key) of one JWKS entry, or None for an entry we must not verify with."""
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or jwk.get("kty") != "EC" or jwk.get("crv") != "P-256":
        return None
    # A key the issuer published for another purpose or algorithm must not vouch for an ES256 token.
    if jwk.get("use", "sig") != "sig" or jwk.get("alg", SIGNING_ALG) != SIGNING_ALG:
        return None
    try:
        x = int.from_bytes(b64url_decode(jwk["x"]), "big")
        y = int.from_bytes(b64url_decode(jwk["y"]), "big")
        # Raises for a point not on the curve, so an invalid-curve key is never used.
        return kid, ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    except (KeyError, ValueError, TypeError):
        return None


def parse_jwks(data: bytes | Mapping[str, Any]) -> dict[str, ec.EllipticCurvePublicKey]:
    """The usable signing keys of a JWKS document, by kid (entries of other types are skipped)."""
    doc: Any = data
    if isinstance(data, bytes | bytearray):
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise ParseError("jwks", f"not JSON: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, Mapping) else None
    if not isinstance(keys, list):
        raise ParseError("jwks", 'not a JWKS (no "keys" array)')
    imported = (_import_jwk(jwk) for jwk in keys)
    return dict(entry for entry in imported if entry is not None)


def _http_fetcher(url: str, timeout_s: float) -> Callable[[], bytes]:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        # urllib would also open file: and ftp: URLs; a JWKS location is only ever a web address.
        raise ValueError(f"JWKS URL must be http or https: {url!r}")

    def fetch() -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body: bytes = response.read(MAX_JWKS_BYTES + 1)
        if len(body) > MAX_JWKS_BYTES:
            raise ValueError(f"JWKS at {url} is larger than {MAX_JWKS_BYTES} bytes")
        return body

    return fetch


class JwksSource:
    """The issuer's verification keys, fetched on demand and cached for ``ttl_s``.

    A cache counts as usable while younger than ``ttl_s``: a failed refresh then keeps it, while an
    expired cache whose refresh fails is not trusted (keys are rotated out for a reason)."""

    def __init__(
        self,
        fetch: Callable[[], bytes],
        *,
        ttl_s: float = 300.0,
        min_refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl_s <= 0 or min_refresh_s < 0:
            raise ValueError("ttl_s must be positive and min_refresh_s not negative")
        self._fetch = fetch
        self._ttl_s = ttl_s
        self._min_refresh_s = min_refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, ec.EllipticCurvePublicKey] | None = None
        # One verifier per key object, rebuilt only when a refresh replaces the key set.
        self._verifiers: dict[str, tuple[ec.EllipticCurvePublicKey, EarVerifier]] = {}
        self._fetched_at = -math.inf
        self._attempted_at = -math.inf
        self._failure: str | None = None  # why the latest fetch failed, None after a success

    # --- constructors ---

    @classmethod
    def from_url(cls, url: str, timeout_s: float = 5.0, **options: Any) -> JwksSource:
        return cls(_http_fetcher(url, timeout_s), **options)

    @classmethod
    def from_issuer(cls, base_url: str, **options: Any) -> JwksSource:
        return cls.from_url(base_url.rstrip("/") + JWKS_PATH, **options)

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> JwksSource:
        return cls(Path(path).read_bytes, **options)

    @classmethod
    def from_keys(cls, jwks: Mapping[str, Any], **options: Any) -> JwksSource:
        """A fixed key set (tests, or a service that already holds the issuer's keys)."""
        body = json.dumps(jwks).encode()
        parse_jwks(body)  # refuse a malformed set now, not at the first token
        return cls(lambda: body, **options)

    # --- lookup ---

    def key(self, kid: str) -> ec.EllipticCurvePublicKey:
        with self._lock:
            # Held across the fetch on purpose: concurrent callers wait for one fetch, not start many.
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._ttl_s:
                if self._failure is not None and now - self._attempted_at < self._min_refresh_s:
                    raise VerificationError("token.jwks_unavailable", self._failure)
                self._refresh(now)
            assert self._keys is not None
            found = self._keys.get(kid)
            if found is None and now - self._attempted_at >= self._min_refresh_s:
                # An unseen kid may be a key the issuer rotated in since the last fetch.
                self._refresh(now)
                found = self._keys.get(kid)
            if found is None:
                raise VerificationError("token.unknown_kid", f"no key {kid[:64]!r} in the issuer's JWKS")
            return found

    def verifier(self, kid: str) -> EarVerifier:
        """An :class:`EarVerifier` for the key ``kid`` names, looked up as ``key`` does (kept per key,
        so a token does not import the key again)."""
        key = self.key(kid)
        with self._lock:
            cached = self._verifiers.get(kid)
            if cached is not None and cached[0] is key:
                return cached[1]
            verifier = EarVerifier(key)
            if len(self._verifiers) >= _MAX_CACHED_VERIFIERS:
                self._verifiers.clear()  # only ever the issuer's few keys; bound it all the same
            self._verifiers[kid] = (key, verifier)
            return verifier

    def fresh(self, kid: str) -> bool:
        """Whether ``key(kid)`` would answer from the cache, without fetching."""
        with self._lock:
            keys = self._keys
            return keys is not None and (not kid or kid in keys) and self._clock() - self._fetched_at < self._ttl_s

    async def prefetch(self, kid: str = "") -> None:
        """For asyncio services: make sure the keys (and ``kid``, if given) are current, fetching in
        a worker thread (a fetch blocks) so that verification never waits on the network in the loop.
        Failures are left for ``key`` to report."""
        if self.fresh(kid):
            return
        with contextlib.suppress(VerificationError):
            await asyncio.to_thread(self._current if not kid else self.key, kid)

    def _current(self, _kid: str = "") -> None:
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self._ttl_s:
                self._refresh(now)

    def _refresh(self, now: float) -> None:
        self._attempted_at = now
        try:
            keys = parse_jwks(self._fetch())
        except Exception as exc:  # the fetch is injected: whatever it raises means "no JWKS now"
            self._failure = f"cannot fetch the JWKS: {exc}"
            if self._keys is None or now - self._fetched_at >= self._ttl_s:
                raise VerificationError("token.jwks_unavailable", self._failure) from None
            return
        self._keys, self._fetched_at, self._failure = keys, now, None


# --- the relying party's policy -----------------------------------------------------------------


@dataclass(frozen=True)
class RelyingPartyPolicy:
    """What a relying party accepts beyond a valid signature: a minimum status, the TEEs, exact
    claim values (e.g. ``snp.measurement``) and how old a token may be.

    ``min_status`` defaults to "affirming" (the only other choice is "warning"); this default policy
    is also what :func:`verify_passport` applies when given none."""

    min_status: str = "affirming"
    tees: frozenset[str] | None = None
    claims: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_age_s: int | None = None

    def __post_init__(self) -> None:
        if self.min_status not in _ACCEPTED_STATUS:
            raise ValueError(f"min_status must be one of {sorted(_ACCEPTED_STATUS)}")
        if self.max_age_s is not None and self.max_age_s < 0:
            raise ValueError("max_age_s must not be negative")
        # Values compare case-insensitively (hex digests are written both ways), so store them folded.
        object.__setattr__(
            self,
            "claims",
            {name: frozenset(v.lower() for v in values) for name, values in self.claims.items()},
        )


# What verify_passport applies when the caller gives no policy: an affirming status, nothing more.
_DEFAULT_POLICY: Final = RelyingPartyPolicy()
_POLICY_MEMBERS: Final = frozenset({"min_status", "tees", "claims", "max_age_s"})


def _string_list(value: Any, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ParseError(f"passport_policy.{what}", "must be a list of strings", prefix="config")
    return frozenset(value)


def load_policy(data: bytes) -> RelyingPartyPolicy:
    """A policy from JSON ``{"min_status", "tees", "claims": {name: [values]}, "max_age_s"}`` (all optional)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ParseError("passport_policy", f"not JSON: {exc}", prefix="config") from None
    if not isinstance(doc, dict):
        raise ParseError("passport_policy", "must be a JSON object", prefix="config")
    unknown = sorted(set(doc) - _POLICY_MEMBERS)
    if unknown:
        # A misspelt member would otherwise be a check silently not made.
        raise ParseError("passport_policy", f"unknown members {unknown}", prefix="config")
    min_status = doc.get("min_status", "affirming")
    if min_status not in _ACCEPTED_STATUS:
        raise ParseError(
            "passport_policy.min_status", f"must be one of {sorted(_ACCEPTED_STATUS)}", prefix="config"
        )
    tees = None if doc.get("tees") is None else _string_list(doc["tees"], "tees")
    raw_claims = doc.get("claims", {})
    if not isinstance(raw_claims, dict):
        raise ParseError("passport_policy.claims", "must be an object of name: [values]", prefix="config")
    claims = {name: _string_list(values, f"claims.{name}") for name, values in raw_claims.items()}
    max_age = doc.get("max_age_s")
    if max_age is not None and (isinstance(max_age, bool) or not isinstance(max_age, int) or max_age < 0):
        raise ParseError("passport_policy.max_age_s", "must be a non-negative integer", prefix="config")
    return RelyingPartyPolicy(min_status=min_status, tees=tees, claims=claims, max_age_s=max_age)


# --- verifying a passport -----------------------------------------------------------------------


@dataclass(frozen=True)
class Passport:
    """A verified token: its claims and the parts a relying party decides on."""

    claims: dict[str, Any]
    tee: str
    status: str
    tee_claims: dict[str, Any]
    tee_pubkey: dict[str, Any] | None
    kid: str


def _tee_of(claims: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    submods = claims.get("submods")
    cpu = submods.get(CPU_SUBMOD) if isinstance(submods, dict) else None
    evidence = cpu.get(K_EVIDENCE) if isinstance(cpu, dict) else None
    if not isinstance(evidence, dict):
        raise VerificationError("token.malformed", f"no {K_EVIDENCE} in submod {CPU_SUBMOD!r}")
    # The issuer files the verifier's claims under the TEE's name, next to the runtime data.
    tees = [(k, v) for k, v in evidence.items() if k not in _NON_TEE_EVIDENCE and isinstance(v, dict)]
    if len(tees) != 1:
        raise VerificationError("token.malformed", f"expected one TEE in {K_EVIDENCE}, found {len(tees)}")
    return tees[0]


def _nonce_matches(eat_nonce: Any, nonce: str | bytes) -> bool:
    # EAT allows one nonce or an array of them.
    given = [g for g in (eat_nonce if isinstance(eat_nonce, list) else [eat_nonce]) if isinstance(g, str)]
    if isinstance(nonce, str):
        return nonce in given
    # Issuers spell a nonce's bytes in base64 (KBS) or hex: either is the same challenge.
    b64, hexed = base64.b64encode(nonce).decode("ascii"), nonce.hex()
    return any(g == b64 or g.lower() == hexed for g in given)


def _check_policy(policy: RelyingPartyPolicy, passport: Passport, now: int, leeway_s: int) -> None:
    if passport.status not in _ACCEPTED_STATUS[policy.min_status]:
        raise VerificationError(
            "token.policy.status", f"status {passport.status!r}, the policy needs {policy.min_status!r}"
        )
    if policy.tees is not None and passport.tee not in policy.tees:
        raise VerificationError(
            "token.policy.tee", f"TEE {passport.tee!r} is not one of {sorted(policy.tees)}"
        )
    for name, allowed in sorted(policy.claims.items()):
        if name not in passport.tee_claims:
            raise VerificationError("token.policy.claim", f"{name}: missing")
        value = passport.tee_claims[name]
        text = json.dumps(value) if isinstance(value, bool | None | dict | list) else str(value)
        if text.lower() not in allowed:
            raise VerificationError("token.policy.claim", f"{name}: {text[:128]!r} is not allowed")
    if policy.max_age_s is not None:
        age = now - passport.claims["iat"]
        if age > policy.max_age_s + leeway_s:
            raise VerificationError(
                "token.policy.max_age", f"issued {age} s ago, the policy allows {policy.max_age_s} s"
            )


def verify_passport(
    token: str,
    jwks: JwksSource,
    *,
    now: int,
    nonce: str | bytes | None = None,
    policy: RelyingPartyPolicy | None = None,
    leeway_s: int = 0,
    expected_profile: str = EAT_PROFILE,
) -> Passport:
    """Check ``token`` against the issuer's key it names, then its nonce and ``policy``.

    ``nonce`` is the challenge the relying party issued: the exact ``eat_nonce`` string, or its bytes
    (matched in base64 or hex). Without a ``policy`` the default :class:`RelyingPartyPolicy` applies,
    whose ``min_status`` is "affirming": a warning, contraindicated or empty ("none") result is
    refused (``token.policy.status``) unless the policy given lowers the minimum to "warning".
    Raises :class:`VerificationError` naming the failed check."""
    parsed = UnverifiedToken.parse(token)
    kid = parsed.kid
    claims = jwks.verifier(kid).verify_parsed(parsed, now, leeway_s, expected_profile=expected_profile)
    if nonce is not None:
        if "eat_nonce" not in claims:
            raise VerificationError("token.nonce", "the token carries no eat_nonce")
        if not _nonce_matches(claims["eat_nonce"], nonce):
            raise VerificationError("token.nonce", "eat_nonce is not the expected nonce")
    tee, tee_claims = _tee_of(claims)
    try:
        tee_pubkey: dict[str, Any] | None = tee_pubkey_from_claims(claims)
    except VerificationError:
        tee_pubkey = None  # a token without a bound key is still a valid attestation result
    passport = Passport(
        claims=claims,
        tee=tee,
        status=submod_status(claims),
        tee_claims=tee_claims,
        tee_pubkey=tee_pubkey,
        kid=kid,
    )
    # No policy is not "accept anything": a valid signature on a contraindicated result is still one.
    _check_policy(_DEFAULT_POLICY if policy is None else policy, passport, now, leeway_s)
    return passport
