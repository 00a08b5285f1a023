"""Compact ES256 JWTs of the join service (node credentials, cluster statements), verified with
joserfc against a key chosen by ``kid`` from a JWKS: the header's own key proves nothing."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from shared.ear import token_kid
from shared.errors import VerificationError


def header_kid(token: str, what: str) -> str:
    return token_kid(token, what)


def verify(token: str, key: ec.EllipticCurvePublicKey, now: int, what: str) -> dict[str, Any]:
    """Signature (ES256 only), ``exp`` and ``iat``; the claims on success."""
    try:
        compact = jws.deserialize_compact(token, ECKey.import_key(key), algorithms=["ES256"])
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, TypeError) as exc:
        raise VerificationError(f"{what}.signature_invalid", type(exc).__name__) from None
    if not isinstance(claims, dict):
        raise VerificationError(f"{what}.malformed", "claims are not an object")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int) or not isinstance(iat, int):
        raise VerificationError(f"{what}.malformed", "exp and iat must be integers")
    if now >= exp:
        raise VerificationError(f"{what}.expired", f"expired at {exp}, now {now}")
    if iat > now + 60:
        raise VerificationError(f"{what}.not_yet_valid", f"issued in the future ({iat})")
    return claims
