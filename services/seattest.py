"""What the identity stage does for IBM Secure Execution (the pure steps are shared.platforms.se):
build the attestation request for the operator's host keys, keep its secrets sealed in Redis under
the session, and check the Ultravisor's answer against them.

The operator provisions, as files under ``settings.se_dir`` (durable, like the pinned roots):
``hkds/`` the host key documents of the machines that may run the guests, ``ca/`` the IBM Z Host
Key Signing Service certificate and its intermediates, ``roots/`` the root(s), ``crls/`` their CRLs.
As reference values of TEE ``se``: ``image_tags`` (the SE image's header tags, PLD‖ALD‖TLD‖tag as
hex, from `remits refval se-header`) and optionally ``host_key_hash`` (the SHA-256 of the public
host keys allowed to run the image and to answer).

Each request's secrets (the request protection key, measurement key, nonce, customer key) are
derived from identity's SE key and the request id, so a redelivered challenge request yields the
very same ARCB rather than a second one that would overwrite the first.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
from base64 import b64encode
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common import StageContext
from shared.errors import ParseError, VerificationError
from shared.platforms.se import abi, arcb, hkd, measurement
from shared.trust.snapshot import TrustSnapshot

TEE = "se"
SESSION_PREFIX = "remits:se-session:"
MEASUREMENT_SIZE = 64
# A verified set of host keys is used for at most this long before the files are checked again.
_HKD_RECHECK = timedelta(hours=1)


@dataclass(frozen=True)
class HostKeys:
    keys: tuple[ec.EllipticCurvePublicKey, ...]
    valid_until: datetime


_host_keys: dict[tuple[Path, tuple[tuple[str, float], ...]], HostKeys] = {}
_host_keys_lock = threading.Lock()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []


def _read_all(directory: Path) -> list[bytes]:
    return [p.read_bytes() for p in _files(directory)]


def load_host_keys(se_dir: Path | None, now: datetime) -> tuple[ec.EllipticCurvePublicKey, ...]:
    """The operator's host key documents, each verified to the configured root with its CRLs.
    The verdict is kept until the files change, the hour is over or a certificate expires."""
    if se_dir is None:
        raise VerificationError("se.unavailable", "no host key documents configured (REMITS_SE_DIR)")
    listing = tuple(
        (str(p), p.stat().st_mtime) for sub in ("hkds", "ca", "roots", "crls") for p in _files(se_dir / sub)
    )
    key = (se_dir, listing)
    with _host_keys_lock:
        hit = _host_keys.get(key)
    if hit is not None and now < hit.valid_until:
        return hit.keys
    hkds = _read_all(se_dir / "hkds")
    if not hkds:
        raise VerificationError("se.unavailable", f"no host key documents in {se_dir / 'hkds'}")
    documents = {
        "intermediates": _read_all(se_dir / "ca"),
        "roots": _read_all(se_dir / "roots"),
        "crls": _read_all(se_dir / "crls"),
    }
    keys = hkd.verify_host_key_documents(hkds, now=now, **documents)
    verified = HostKeys(tuple(keys), min(now + _HKD_RECHECK, hkd.documents_valid_until(hkds, **documents)))
    with _host_keys_lock:
        _host_keys.clear()  # only the current file set matters
        _host_keys[key] = verified
    return verified.keys


def _derive(key: bytes, request_id: str, label: str, size: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < size:
        out += hmac.new(key, f"se-request|{request_id}|{label}|{counter}".encode(), hashlib.sha512).digest()
        counter += 1
    return out[:size]


def build_request(
    key: bytes, request_id: str, host_keys: Sequence[ec.EllipticCurvePublicKey]
) -> tuple[bytes, arcb.SeRequestState]:
    """The ARCB for ``host_keys`` and what checking its answer needs; the same for the same request id."""
    # Below 2**520 (< the group order): a valid scalar without rejection sampling.
    scalar = int.from_bytes(_derive(key, request_id, "customer-key", 66), "big") % (1 << 520) + 1
    return arcb.build_arcb(
        host_keys,
        arpk=_derive(key, request_id, "arpk", 32),
        iv=_derive(key, request_id, "iv", 12),
        measurement_key=_derive(key, request_id, "measurement-key", 64),
        nonce=_derive(key, request_id, "nonce", 16),
        customer_key=ec.derive_private_key(scalar, ec.SECP521R1()),
    )


def challenge_params(request: bytes, state: arcb.SeRequestState) -> str:
    """The challenge's extra-params, as a JSON string (as IBM SE challenges are sent)."""
    return json.dumps(
        {
            "selected-hash-algorithm": "sha512",
            "request_blob": b64encode(request).decode(),
            "measurement_size": MEASUREMENT_SIZE,
            "additional_size": abi.expected_additional_size(state.flags),
        },
        separators=(",", ":"),
    )


def _state_key(key: bytes) -> bytes:
    """The AES-256 key a request's state is sealed under: derived, so that the SE key is used as
    an HMAC key only (it also derives every request's secrets)."""
    return hmac.new(key, b"se-request-state|seal", hashlib.sha256).digest()


def seal_state(key: bytes, session_id: str, state: arcb.SeRequestState) -> bytes:
    iv = os.urandom(12)
    plain = json.dumps(state.to_json()).encode()
    return iv + AESGCM(_state_key(key)).encrypt(iv, plain, f"se-session:{session_id}".encode())


def open_state(key: bytes, session_id: str, sealed: bytes) -> arcb.SeRequestState:
    try:
        plain = AESGCM(_state_key(key)).decrypt(sealed[:12], sealed[12:], f"se-session:{session_id}".encode())
        return arcb.SeRequestState.from_json(json.loads(plain))
    except (InvalidTag, ValueError, KeyError, TypeError) as exc:
        raise VerificationError("se.session_state", f"the request's state does not open: {type(exc).__name__}") from None


def image_candidates(snapshot: TrustSnapshot, now: float) -> list[abi.BootHdrTags]:
    """The SE images the operator approved (reference values ``image_tags``), unexpired."""
    entries = snapshot.refvals.get((TEE, "image_tags"), ())
    values = [v for e in entries if e.record.expires_at is None or now < e.record.expires_at for v in e.record.values]
    out = []
    for value in values:
        try:
            out.append(abi.BootHdrTags.from_bytes(bytes.fromhex(value)))
        except (ValueError, ParseError):
            raise ParseError("reference_values.image_tags", f"{value[:32]}…: not SE header tags", prefix="config") from None
    return out


async def open_challenge(ctx: StageContext, session_id: str, request_id: str) -> str:
    """Build (or rebuild, on redelivery) the request for this session and keep its state."""
    if not ctx.se_key:
        raise VerificationError("se.unavailable", f"{ctx.component} holds no SE key")
    now = datetime.fromtimestamp(ctx.clock(), tz=UTC)
    host_keys = await ctx.run_crypto(load_host_keys, ctx.settings.se_dir, now)
    request, state = await ctx.run_crypto(build_request, ctx.se_key, request_id, host_keys)
    ttl_ms = int(ctx.settings.nonce_ttl_s * 1000) + 60_000
    await ctx.store.client.execute("SET", SESSION_PREFIX + session_id, seal_state(ctx.se_key, session_id, state), "PX", ttl_ms)
    return challenge_params(request, state)


async def verify_answer(
    ctx: StageContext, session_id: str, evidence: bytes, tenant: str = "default"
) -> dict[str, Any]:
    """The Ultravisor's measurement recomputed under the session's key for each approved image."""
    if not ctx.se_key:
        raise VerificationError("se.unavailable", f"{ctx.component} holds no SE key")
    sealed = await ctx.store.client.execute("GET", SESSION_PREFIX + session_id)
    if not isinstance(sealed, bytes):
        raise VerificationError("se.session_unknown", "no attestation request for this session (expired, or never made)")
    state = open_state(ctx.se_key, session_id, sealed)
    if ctx.trust is None:  # no approved images can be read: nothing can verify
        raise VerificationError("se.unavailable", f"{ctx.component} reads no reference values")
    candidates = image_candidates(ctx.trust.snapshot(tenant), ctx.clock())
    if not candidates:
        raise VerificationError("se.image_unknown", "no SE image approved (reference values se/image_tags)")
    from shared.platforms.se.evidence import decode_evidence

    response = decode_evidence(evidence)
    verified = await ctx.run_crypto(measurement.verify_response, state, response, candidates)
    return measurement.claims(verified)
