"""`remits bench-verify --tee cca`: what it reports (values are timings, so only their shape and
the relations that hold by construction are asserted), and that the caches it measures never stand
in for a check."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from services.bench.verify_cca import run
from services.demo.cca_sim import SimulatedCcaPlatform
from shared.errors import RemitsError
from shared.platforms.cca import abi
from shared.platforms.cca.platform import CcaPlatform
from shared.platforms.cca.tastore import encode_anchor


def test_report_names_every_case_against_its_raw_verifies() -> None:
    report = run(iterations=40)
    for key in ("raw_es384_verify_us", "token_cold_us", "token_warm_us", "token_first_contact_us", "decode_us"):
        assert report[key] > 0, key
    # The ratios are computed from the unrounded timings, the timings are reported to 0.1 µs: a
    # ratio recomputed from the reported timings may differ in its last digit.
    raw = report["raw_es384_verify_us"]
    assert report["cold_over_raw"] == pytest.approx(report["token_cold_us"] / (2 * raw), abs=0.011)
    assert report["warm_over_raw"] == pytest.approx(report["token_warm_us"] / raw, abs=0.011)
    assert report["first_contact_over_raw"] == pytest.approx(report["token_first_contact_us"] / (2 * raw), abs=0.011)
    assert report["token_bytes"] > 1000 and report["iterations"] == 40


def test_a_cached_rak_does_not_carry_a_verdict() -> None:
    """The RAK cache holds key objects, not outcomes: a token under a known RAK with a broken realm
    signature is still refused, and so is the next one after a good one."""
    sim = SimulatedCcaPlatform()
    anchor = encode_anchor(sim.trust_anchor())
    realm = sim.realm(hashlib.sha256(b"cached rak").digest())
    now = datetime.now(UTC)
    platform = CcaPlatform()
    good = realm.token(b"\x01" * 64)
    platform.verify_identity(good, [anchor], now)
    assert abi._rak_of.cache_info().currsize >= 1
    token = abi.decode_token(good)
    signature = token.realm.signature
    tampered = good.replace(signature, signature[:-1] + bytes([signature[-1] ^ 1]))
    with pytest.raises(RemitsError) as refused:
        platform.verify_identity(tampered, [anchor], now)
    assert refused.value.reason == "cca.realm.signature"
    platform.verify_identity(realm.token(b"\x02" * 64), [anchor], now)  # the realm itself still verifies
