"""`remits bench-verify --tee tdx`: the cost of verifying one TDX quote with warm collateral, next
to the raw ECDSA P-256 verifies over per-quote bytes (the quote signature by the attestation key
and the QE report signature by the PCK key).

"warm" is ``QuoteVerifier``, what the pipeline runs: collateral parsed once and each platform's
PCK-chain verdict remembered inside its validity window, so a quote costs its parse, the checks
that read the quote (QE vendor, applicability, QE report signature and binding, QE identity,
quote signature), the window comparison and the TCB status. ``verify_quote_repeat`` is the plain
full verification of a quote from a platform already seen; "cold" is a never-seen PKI, platform
and collateral. Every timed quote carries its own REPORTDATA, so no quote signature repeats.
"""

from __future__ import annotations

import hashlib
import itertools
import statistics
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from services.bench.timing import per_call_us
from services.demo.tdx_sim import SimulatedIntel, SimulatedTdxPlatform
from shared.platforms.tdx.abi import parse_quote
from shared.platforms.tdx.collateral import Collateral
from shared.platforms.tdx.validate import claims
from shared.platforms.tdx.verify import QuoteVerifier, verify_quote


@dataclass(frozen=True)
class _World:
    intel: SimulatedIntel
    platform: SimulatedTdxPlatform
    collateral: Collateral
    quotes: tuple[bytes, ...]  # distinct REPORTDATA (nonces): the quote signature never repeats


def _world(quotes: int) -> _World:
    intel = SimulatedIntel.generate()
    platform = SimulatedTdxPlatform.create(intel)
    rtmrs = [hashlib.sha384(bytes([i])).digest() for i in range(4)]
    mr_td = hashlib.sha384(b"bench").digest()
    made = tuple(
        platform.make_quote(hashlib.sha512(i.to_bytes(4, "big")).digest(), mr_td=mr_td, rtmrs=rtmrs)
        for i in range(quotes)
    )
    return _World(intel, platform, intel.collateral(platform.fmspc), made)


def run(iterations: int = 2000) -> dict[str, Any]:
    """Per-quote costs in microseconds; ratios are over the two raw P-256 verifies."""
    world = _world(64)
    root, collateral = world.intel.root_der, world.collateral
    now = world.intel.now + timedelta(minutes=1)
    quote = parse_quote(world.quotes[0])

    # The floor: the signatures over per-quote bytes, DER-encoded once outside the loop.
    att_key = world.platform.attestation_key.public_key()
    pck_key = world.platform.pck_key.public_key()
    ecdsa = ec.ECDSA(hashes.SHA256())

    def der_sig(raw_sig: bytes) -> bytes:
        return encode_dss_signature(int.from_bytes(raw_sig[:32], "big"), int.from_bytes(raw_sig[32:], "big"))

    quote_sig, qe_sig = der_sig(quote.signature), der_sig(quote.qe.report_signature)
    one_raw_us = per_call_us(lambda: att_key.verify(quote_sig, quote.signed_data, ecdsa), iterations)

    def two_raw() -> None:
        att_key.verify(quote_sig, quote.signed_data, ecdsa)
        pck_key.verify(qe_sig, quote.qe.report.raw, ecdsa)

    raw_us = per_call_us(two_raw, iterations)

    # Cold: the first quote of a never-seen PKI, platform and collateral (nothing can be cached).
    fresh = [_world(1) for _ in range(max(5, min(50, iterations // 40)))]
    cold_samples = []
    for other in fresh:
        started = time.perf_counter()
        verify_quote(other.quotes[0], other.collateral, other.intel.root_der, now)
        cold_samples.append((time.perf_counter() - started) * 1e6)
    cold_us = statistics.median(cold_samples)

    # verify_quote as the pipeline calls it, after a first quote of this platform has been seen.
    rotation = itertools.cycle(world.quotes)
    verify_quote(world.quotes[0], collateral, root, now)
    core_us = per_call_us(lambda: verify_quote(next(rotation), collateral, root, now), iterations)

    warm = QuoteVerifier(collateral, root)  # the pipeline's own warm path
    first = warm.verify(world.quotes[0], now)  # fills the cache
    again = warm.verify(world.quotes[1], now)
    if (first.tcb_status, first.advisory_ids) != (again.tcb_status, again.advisory_ids):
        raise AssertionError("the warm path disagrees with verify_quote")
    split_us = per_call_us(lambda: warm.verify(next(rotation), now), iterations)

    def split_with_claims() -> None:
        verified = warm.verify(next(rotation), now)
        claims(verified.quote, verified)

    claims_us = per_call_us(split_with_claims, iterations)
    return {
        "raw_one_ecdsa_p256_verify_us": round(one_raw_us, 1),
        "raw_two_ecdsa_p256_verifies_us": round(raw_us, 1),
        "tdx_quote_cold_us": round(cold_us, 1),
        "tdx_quote_verify_quote_repeat_us": round(core_us, 1),
        "tdx_quote_warm_us": round(split_us, 1),
        "tdx_quote_warm_with_claims_us": round(claims_us, 1),
        "cold_over_raw": round(cold_us / raw_us, 2),
        "verify_quote_repeat_over_raw": round(core_us / raw_us, 2),
        "warm_over_raw": round(split_us / raw_us, 2),
        "warm_with_claims_over_raw": round(claims_us / raw_us, 2),
        "tcb_status": first.tcb_status,
        "iterations": iterations,
        "note": (
            "raw = quote signature + QE report signature (P-256); cold = verify_quote on a new "
            "PKI/platform/collateral (median); verify_quote_repeat = verify_quote on fresh quotes of "
            "a platform already seen, with whatever verdict caching shared/platforms/tdx does "
            "itself; warm = QuoteVerifier (what the pipeline runs): collateral and PCK-chain verdicts cached, per quote "
            "parse, applicability, QE report signature, binding, QE identity, quote signature, "
            "window, TCB status"
        ),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000), indent=1))
