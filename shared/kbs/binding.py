"""Binding a KBS challenge (nonce + TEE key) to the hardware evidence through report_data.

The client hashes the canonical JSON of its runtime data into the TEE report; the server recomputes the
same digest from the values it issued/received and compares. Canonical JSON is RFC 8785 (JCS), because
both sides must produce byte-identical input to the hash.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final

import rfc8785

from shared.errors import ParseError

REPORT_DATA_SIZE: Final = 64
# SHA-384 everywhere except IBM SE (SHA-512); SHA-256 is accepted by the attestation API on request.
_HASHES: Final = frozenset({"sha256", "sha384", "sha512"})


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 serialisation of ``obj``."""
    try:
        return rfc8785.dumps(obj)
    except (rfc8785.CanonicalizationError, TypeError, RecursionError) as exc:
        # e.g. integers beyond 2**53, which JCS cannot represent exactly
        raise ParseError("canonical_json", str(exc) or type(exc).__name__) from exc


def _digest(obj: Any, hash_alg: str) -> bytes:
    if hash_alg not in _HASHES:
        raise ValueError(f"unsupported runtime-data hash {hash_alg!r}")
    return hashlib.new(hash_alg, canonical_json(obj)).digest()


def runtime_data_digest(
    nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str = "", hash_alg: str = "sha384"
) -> bytes:
    """Digest the primary attester puts in its report: H(JCS({nonce, tee-pubkey, additional-evidence})).

    ``additional_evidence`` is the exact string from ``tee-evidence``; "" when no device attests, so
    device evidence cannot be swapped without breaking the primary binding."""
    runtime_data = {"nonce": nonce, "tee-pubkey": tee_pubkey, "additional-evidence": additional_evidence}
    return _digest(runtime_data, hash_alg)


def device_runtime_data_digest(nonce: str, tee_pubkey: dict[str, Any], hash_alg: str = "sha384") -> bytes:
    """Digest given to device (additional) attesters, which see no ``additional-evidence`` member."""
    return _digest({"nonce": nonce, "tee-pubkey": tee_pubkey}, hash_alg)


def pad_report_data(digest: bytes) -> bytes:
    """Zero-pad (or truncate) to the 64-byte REPORT_DATA field, as SNP/TDX attesters place it."""
    return digest[:REPORT_DATA_SIZE].ljust(REPORT_DATA_SIZE, b"\x00")


def expected_report_data(
    nonce: str, tee_pubkey: dict[str, Any], additional_evidence: str = "", hash_alg: str = "sha384"
) -> bytes:
    return pad_report_data(runtime_data_digest(nonce, tee_pubkey, additional_evidence, hash_alg))


def report_data_matches(report_data: bytes, expected: bytes) -> bool:
    """Compare all 64 bytes, padding included: trailing bytes left free would let a client smuggle data."""
    if len(report_data) != REPORT_DATA_SIZE:
        return False
    return hmac.compare_digest(bytes(report_data), pad_report_data(expected))
