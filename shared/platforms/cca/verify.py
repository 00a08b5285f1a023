"""Verification of a decoded CCA token against one trust anchor.

The CPAK (from the anchor) signs the platform token; the RAK (from the realm token itself) signs
the realm token. The RAK is only trustworthy because the platform challenge is a hash of it: that
binding, not the realm signature, ties the realm to the platform.
"""

from __future__ import annotations

import hashlib
import hmac

from shared.errors import VerificationError
from shared.kbs.binding import pad_report_data
from shared.platforms.cca.abi import CcaToken, decode_token
from shared.platforms.cca.cose import verify_sign1
from shared.platforms.cca.tastore import TrustAnchor, find_anchor

# IANA "Named Information Hash Algorithm" names, as CCA uses them.
HASHES = {"sha-256": hashlib.sha256, "sha-384": hashlib.sha384, "sha-512": hashlib.sha512}
LIFECYCLE_SECURED = range(0x3000, 0x3100)


def lifecycle_secured(lifecycle: int) -> bool:
    return lifecycle in LIFECYCLE_SECURED


def verify_token(
    token: CcaToken,
    anchor: TrustAnchor,
    *,
    expected_challenge: bytes | None = None,
    platform_verified: bool = False,
) -> None:
    """Every check, in order. ``platform_verified``: this exact platform token (its signature bytes
    included) already verified under this anchor, so its CPAK signature is not checked again; the
    realm signature, the binding and the lifecycle always are."""
    platform, realm = token.platform_claims, token.realm_claims
    if not (
        hmac.compare_digest(anchor.implementation_id, platform.implementation_id)
        and hmac.compare_digest(anchor.instance_id, platform.instance_id)
    ):
        raise VerificationError(
            "cca.platform.anchor_mismatch",
            f"anchor is for {anchor.implementation_id.hex()}/{anchor.instance_id.hex()}, token is from "
            f"{platform.implementation_id.hex()}/{platform.instance_id.hex()}",
        )
    if not platform_verified:
        verify_sign1(token.platform, anchor.public_key, "cca.platform.signature")
    verify_sign1(token.realm, realm.rak_public_key, "cca.realm.signature")
    digest = HASHES.get(realm.rak_hash_alg)
    if digest is None:
        raise VerificationError("cca.realm.binding", f"unknown RAK hash algorithm {realm.rak_hash_alg!r}")
    if not hmac.compare_digest(digest(realm.rak_claim).digest(), platform.challenge):
        raise VerificationError(
            "cca.realm.binding", f"platform challenge is not the {realm.rak_hash_alg} of the realm key"
        )
    if not lifecycle_secured(platform.lifecycle):
        raise VerificationError(
            "cca.platform.lifecycle",
            f"security lifecycle {platform.lifecycle:#06x} is not secured (0x3000-0x30ff)",
        )
    if expected_challenge is not None and not hmac.compare_digest(
        realm.challenge, pad_report_data(expected_challenge)  # 64 bytes, as the KBS binding
    ):
        raise VerificationError("cca.realm.challenge", "realm challenge differs from the expected nonce")


def verify_token_with_store(
    raw: bytes, anchors: list[TrustAnchor], expected_challenge: bytes | None = None
) -> CcaToken:
    token = decode_token(raw)
    anchor = find_anchor(anchors, token.platform_claims.implementation_id, token.platform_claims.instance_id)
    verify_token(token, anchor, expected_challenge=expected_challenge)
    return token
