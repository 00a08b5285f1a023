"""`remits bench-verify --tee cca`: the cost of verifying one Arm CCA token, next to the raw ES384
verifies it needs. Cold: a platform token never seen, from a machine whose trust anchor is loaded
(two ECDSA P-384 verifies: CPAK and RAK); first contact: the same, with the anchor loaded too;
warm: the realm's platform token seen before (the RMM reuses it for every attestation under the
same RAK), so only the realm signature is verified. Both include CBOR/COSE decoding (cold: the
platform claims too; warm: those are kept per platform token), the RAK binding hash, the lifecycle
check and the claims."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from services.bench.timing import per_call_us
from services.demo.cca_sim import SimulatedCcaPlatform
from shared.platforms.cca import abi
from shared.platforms.cca import platform as cca_platform
from shared.platforms.cca.abi import decode_token
from shared.platforms.cca.cose import sig_structure
from shared.platforms.cca.platform import CcaPlatform
from shared.platforms.cca.tastore import encode_anchor


def run(iterations: int = 2000) -> dict[str, Any]:
    sim = SimulatedCcaPlatform()
    anchor = encode_anchor(sim.trust_anchor())
    now = datetime.now(UTC)
    token = sim.realm(hashlib.sha256(b"bench realm").digest()).token(b"\x42" * 64)
    realm = decode_token(token).realm
    rak = decode_token(token).realm_claims.rak_public_key
    half = len(realm.signature) // 2
    der = encode_dss_signature(int.from_bytes(realm.signature[:half], "big"), int.from_bytes(realm.signature[half:], "big"))
    to_be_signed = sig_structure(realm.protected, realm.payload)
    raw_us = per_call_us(lambda: rak.verify(der, to_be_signed, ec.ECDSA(hashes.SHA384())), iterations)

    known_platform = CcaPlatform()
    known_platform.verify_identity(token, [anchor], now)  # the platform's trust anchor loaded once

    def cold() -> None:
        # A realm never seen on a known machine: its platform token (and so its RAK) is new.
        abi._platform_claims.cache_clear()
        abi._rak_of.cache_clear()
        known_platform.forget_platform_tokens()
        known_platform.verify_identity(token, [anchor], now)

    def first_contact() -> None:
        # The first token from a machine: its trust anchor is loaded from the JWK as well.
        abi._platform_claims.cache_clear()
        abi._rak_of.cache_clear()
        cca_platform._anchor.cache_clear()
        CcaPlatform().verify_identity(token, [anchor], now)

    cold_us = per_call_us(cold, max(50, iterations // 4))
    first_us = per_call_us(first_contact, max(50, iterations // 4))
    warm = CcaPlatform()
    warm.verify_identity(token, [anchor], now)
    warm_us = per_call_us(lambda: warm.verify_identity(token, [anchor], now), iterations)
    def decode_cold() -> None:
        abi._platform_claims.cache_clear()
        decode_token(token)

    decode_us = per_call_us(decode_cold, iterations)
    return {
        "raw_es384_verify_us": round(raw_us, 1),
        "token_cold_us": round(cold_us, 1),
        "token_warm_us": round(warm_us, 1),
        "token_first_contact_us": round(first_us, 1),
        "decode_us": round(decode_us, 1),
        "cold_over_raw": round(cold_us / (2 * raw_us), 2),
        "warm_over_raw": round(warm_us / raw_us, 2),
        "first_contact_over_raw": round(first_us / (2 * raw_us), 2),
        "token_bytes": len(token),
        "iterations": iterations,
        "note": (
            "cold_over_raw: a new realm on a known machine, against the two raw verifies its new platform "
            "token needs; warm_over_raw: a known platform token, against the one raw verify it needs; "
            "first_contact_over_raw: the first token from a machine, its trust anchor loaded too"
        ),
    }
