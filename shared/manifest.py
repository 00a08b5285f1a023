"""Reference values imported from a signed manifest (the RVPS role).

A build pipeline publishes the values its images measure to, as a compact JWS (EdDSA or ES256)
signed by a provisioner key the operator configured; REMITS imports a manifest only once the
signature and every field hold. Payload:

    {"iss": "build-pipeline@example", "iat": 1700000000,
     "reference_values": [{"tee": "snp", "name": "measurement", "values": ["<hex>"],
                           "expires_at": 1800000000}]}

Schema rules, so that a signer knows what will be refused rather than silently dropped:

- ``iss``, ``iat`` (integer seconds, at most 60 s ahead of the importer's clock) and
  ``reference_values`` (0 to 10,000 entries) are required; in an entry ``tee``, ``name`` and
  ``values`` are, ``expires_at`` (a number of seconds, or null) is not.
- Unknown fields are refused, at the top and in entries: a field the signer added (an ``exp``, a
  ``not_before``) may mean something this importer would not enforce.
- Values that are hex are lower-cased (measurements compare as lower-case hex), and repeats
  within an entry are dropped; other values are kept as written.
- Two entries may name the same tee and name (e.g. with different expiry dates).
- A JSON object repeating a key is read as its last occurrence (as msgspec, Python and jq do).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from shared.adminauth import AdminKey, JwsRefused, JwsRegistry, error_field, sign_jws, verify_jws
from shared.errors import RemitsError

MAX_ENTRIES = 10_000
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # 10,000 entries of a few values each fit many times over
IAT_SKEW_S = 60

_REGISTRY = JwsRegistry(MAX_PAYLOAD_BYTES)
# \A...\Z rather than ^...$: "$" also matches before a trailing newline.
_Tee = Annotated[str, Meta(pattern=r"\A[a-z0-9_-]+\Z", max_length=64)]
_Name = Annotated[str, Meta(pattern=r"\A[a-z0-9_.-]+\Z", max_length=128)]
_Value = Annotated[str, Meta(min_length=1, max_length=1024)]
_HEX = re.compile(r"[0-9a-fA-F]+")


class _Entry(msgspec.Struct, forbid_unknown_fields=True):
    tee: _Tee
    name: _Name
    values: Annotated[list[_Value], Meta(min_length=1)]
    expires_at: float | None = None


class _Payload(msgspec.Struct, forbid_unknown_fields=True):
    iss: Annotated[str, Meta(min_length=1, max_length=256)]
    iat: Annotated[int, Meta(ge=0)]
    reference_values: Annotated[list[_Entry], Meta(max_length=MAX_ENTRIES)]


_decoder = msgspec.json.Decoder(_Payload)


class ManifestError(RemitsError):
    """A manifest refused. ``reason``: ``manifest.malformed``, ``manifest.bad_alg``,
    ``manifest.unknown_key``, ``manifest.bad_signature``, ``manifest.invalid_payload``,
    ``manifest.iat_in_future``, ``manifest.entry_expired``, ``manifest.unknown_tee``. ``field`` names
    what failed, e.g. ``alg``, ``signature``, ``reference_values[1].values``."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(reason, f"{field}: {detail}")
        self.field = field


@dataclass(frozen=True)
class ManifestEntry:
    tee: str
    name: str
    values: tuple[str, ...]
    expires_at: float | None


@dataclass(frozen=True)
class VerifiedManifest:
    issuer: str
    signer_kid: str  # the configured provisioner key that verified the signature
    issued_at: int
    entries: tuple[ManifestEntry, ...]
    digest: str  # SHA-256 hex of the compact JWS (surrounding whitespace removed): names this import


def _decode(body: bytes) -> _Payload:
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as err:
        raise ManifestError("manifest.invalid_payload", error_field(err, "payload"), str(err)) from err
    except msgspec.DecodeError as err:
        raise ManifestError("manifest.invalid_payload", "payload", f"not JSON: {err}") from err


def _normalise(values: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value.lower() if _HEX.fullmatch(value) else value for value in values))


def verify_manifest(
    jws_compact: bytes | str,
    provisioner_keys: Sequence[AdminKey],
    now: float,
    *,
    tees: Collection[str] | None = None,
) -> VerifiedManifest:
    """The manifest's entries once its signature, schema and dates hold. With ``tees`` (the TEEs
    this deployment appraises), an entry for any other TEE is refused rather than stored unused."""
    token = (jws_compact.encode() if isinstance(jws_compact, str) else jws_compact).strip()
    try:
        key, body = verify_jws(token, provisioner_keys, _REGISTRY)
    except JwsRefused as err:
        raise ManifestError(f"manifest.{err.kind}", err.field, err.detail) from err
    payload = _decode(body)
    if payload.iat > now + IAT_SKEW_S:
        raise ManifestError("manifest.iat_in_future", "iat", f"issued at {payload.iat}, now {now:.0f}")
    entries = []
    for index, entry in enumerate(payload.reference_values):
        where = f"reference_values[{index}]"
        if tees is not None and entry.tee not in tees:
            raise ManifestError(
                "manifest.unknown_tee", f"{where}.tee", f"{entry.tee!r} is not appraised here"
            )
        if entry.expires_at is not None and entry.expires_at <= now:
            # Refused rather than skipped: the signer meant these values to be imported.
            raise ManifestError(
                "manifest.entry_expired",
                f"{where}.expires_at",
                f"expired at {entry.expires_at}, now {now:.0f}",
            )
        entries.append(ManifestEntry(entry.tee, entry.name, _normalise(entry.values), entry.expires_at))
    return VerifiedManifest(
        issuer=payload.iss,
        signer_kid=key.kid,
        issued_at=payload.iat,
        entries=tuple(entries),
        digest=hashlib.sha256(token).hexdigest(),
    )


def sign_manifest(private_key_pem: bytes, payload: dict[str, Any], kid: str | None = None) -> str:
    """A compact JWS over ``payload``, which must pass the schema (so that tooling cannot publish a
    manifest every importer refuses). Dates are not checked: they are the importer's business."""
    try:
        body = msgspec.json.encode(payload)
    except (TypeError, msgspec.EncodeError) as err:
        raise ManifestError("manifest.invalid_payload", "payload", f"not JSON-encodable: {err}") from err
    _decode(body)
    return sign_jws(private_key_pem, body, _REGISTRY, kid=kid)
