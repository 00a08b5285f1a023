"""`remits bench-verify --tee se`: what an IBM Secure Execution attestation costs the verifier,
next to the raw primitives it cannot avoid: the host key documents' chain (cold, and the verdict
kept), building the attestation request (the customer P-521 key, one ECDH per host key, AES-GCM),
sealing its state, and checking the Ultravisor's answer (one HMAC-SHA512 per approved image)."""

from __future__ import annotations

import hashlib
import hmac
import os
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from services import seattest
from services.bench.timing import per_call_us
from services.demo.se_fleet import DEMO_TAGS, write_se_dir
from services.demo.se_sim import SimulatedHost, SimulatedUltravisor, random_image_tags
from shared.platforms.se import hkd, measurement

_KEY = os.urandom(32)


def run(iterations: int = 500) -> dict[str, Any]:
    now = datetime.now(UTC)
    hosts = [SimulatedHost()]
    chain = hosts[0].chain()
    hkd_cold_us = per_call_us(
        lambda: hkd.verify_host_key_documents([hosts[0].hkd_pem], now=now, **chain), max(20, iterations // 10)
    )
    with TemporaryDirectory() as tmp:
        se_dir = write_se_dir(Path(tmp) / "se", hosts)
        seattest.load_host_keys(se_dir, now)
        hkd_cached_us = per_call_us(lambda: seattest.load_host_keys(se_dir, now), iterations)

    keys = [h.public_key for h in hosts]
    counter = iter(range(10**9))
    build_us = per_call_us(lambda: seattest.build_request(_KEY, f"r{next(counter)}", keys), iterations)
    eight = [SimulatedHost(hosts[0].pki).public_key for _ in range(7)] + keys
    build_8_us = per_call_us(lambda: seattest.build_request(_KEY, f"r{next(counter)}", eight), max(20, iterations // 4))
    peer = ec.generate_private_key(ec.SECP521R1()).public_key()
    raw_p521_us = per_call_us(
        lambda: ec.generate_private_key(ec.SECP521R1()).exchange(ec.ECDH(), peer), iterations
    )

    request, state = seattest.build_request(_KEY, "bench", keys)
    seal_us = per_call_us(lambda: seattest.open_state(_KEY, "s", seattest.seal_state(_KEY, "s", state)), iterations)
    answer = SimulatedUltravisor(hosts[0], DEMO_TAGS).perform(request, hashlib.sha512(b"runtime").digest())
    check_us = per_call_us(lambda: measurement.verify_response(state, answer, [DEMO_TAGS]), iterations * 4)
    ten = [random_image_tags(bytes([i])) for i in range(9)] + [DEMO_TAGS]
    check_10_us = per_call_us(lambda: measurement.verify_response(state, answer, ten), iterations)
    items = DEMO_TAGS.to_bytes() + answer.cuid + bytes(8) + answer.user_data + state.nonce + answer.additional_data
    raw_hmac_us = per_call_us(lambda: hmac.new(state.measurement_key, items, "sha512").digest(), iterations * 4)
    return {
        "hkd_chain_cold_us": round(hkd_cold_us, 1),
        "hkd_chain_cached_us": round(hkd_cached_us, 1),
        "request_build_us": round(build_us, 1),
        "request_build_8_host_keys_us": round(build_8_us, 1),
        "raw_p521_keygen_and_ecdh_us": round(raw_p521_us, 1),
        "state_seal_and_open_us": round(seal_us, 1),
        "response_check_us": round(check_us, 1),
        "response_check_10_images_us": round(check_10_us, 1),
        "raw_hmac_sha512_us": round(raw_hmac_us, 2),
        "iterations": iterations,
        "note": "request build derives the customer P-521 key from identity's key (one scalar multiplication) and does one ECDH per host key",
    }
