"""`remits bench-verify`: the cost of verifying one SNP report with a warm cache, next to one raw
ECDSA P-384 verify on the same machine (the floor: the report signature cannot be cached)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from services.bench.timing import per_call_us
from services.demo.snp_sim import SimulatedAmd, SimulatedSnpGuest
from shared.platforms.snp.abi import Product
from shared.platforms.snp.certs import AmdRoots
from shared.platforms.snp.platform import SnpPlatform


def run(iterations: int = 2000) -> dict[str, Any]:
    vendor = SimulatedAmd.generate("Milan")
    guest = SimulatedSnpGuest.create(hashlib.sha384(b"bench").digest())
    vcek = vendor.issue_vcek(guest.chip_id, guest.tcb, guest.vcek_key.public_key())
    report = guest.make_report(b"\x42" * 64)
    roots = AmdRoots(Product.MILAN, vendor.ark, vendor.ask, vendor.ask)
    now = datetime.now(UTC)

    public_key = guest.vcek_key.public_key()
    signature = guest.vcek_key.sign(report[:0x2A0], ec.ECDSA(hashes.SHA384()))
    raw_us = per_call_us(lambda: public_key.verify(signature, report[:0x2A0], ec.ECDSA(hashes.SHA384())), iterations)

    def cold() -> None:
        SnpPlatform({Product.MILAN: roots}).verify_identity(report, [vcek, b""], now)

    cold_us = per_call_us(cold, max(20, iterations // 20))
    warm_platform = SnpPlatform({Product.MILAN: roots})
    warm_platform.verify_identity(report, [vcek, b""], now)
    warm_us = per_call_us(lambda: warm_platform.verify_identity(report, [vcek, b""], now), iterations)
    return {
        "raw_ecdsa_p384_verify_us": round(raw_us, 1),
        "snp_report_warm_us": round(warm_us, 1),
        "snp_report_cold_us": round(cold_us, 1),
        "warm_over_raw": round(warm_us / raw_us, 2),
        "iterations": iterations,
        "note": "warm = chain verdict cached; includes parsing, TCB/chip binding and claims",
    }
