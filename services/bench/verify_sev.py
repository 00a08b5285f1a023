"""`remits bench-verify --tee sev`: what a SEV/SEV-ES launch costs the key broker, next to the raw
primitives it cannot avoid. Per generation (simulated vendors with Naples' 2048-bit and Milan's
4096-bit RSA roots): the platform chain verified cold (parsed and checked from bytes) and cached
(the verdict of a host seen before); then opening a launch session (P-384 key, ECDH, KDF, wrap),
checking a launch measurement and building the secret packet."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from services.bench.timing import per_call_us
from services.demo.sev_sim import SimulatedAmdSev
from shared.platforms.sev import abi, broker, measure, session, verify, wire

_KEY = os.urandom(32)
_IMAGE = hashlib.sha256(b"bench workload").digest()
_POLICY = session.SevPolicy(nodbg=True, noks=True, es=True).encode()


def _request(platform: SimulatedAmdSev) -> wire.SevRequest:
    return wire.decode_sev_request(
        {
            "workload_id": "bench",
            "build": {"version": {"major": platform.api_major, "minor": platform.api_minor}, "build": 1},
            "chain": platform.sev_request_chain(),
        }
    )


def _raw(platform: SimulatedAmdSev, iterations: int) -> dict[str, float]:
    ask = abi.parse_ca_cert(platform.ask)
    ark_key = abi.parse_ca_cert(platform.ark).public_key()
    digest = hashes.SHA384() if ask.modulus_bits == 4096 else hashes.SHA256()
    signature = ask.signature[::-1]  # stored little-endian
    pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
    rsa_us = per_call_us(lambda: ark_key.verify(signature, ask.signed_bytes(), pss, digest), iterations)
    key = ec.generate_private_key(ec.SECP384R1())
    data = b"x" * 0x414
    sig = key.sign(data, ec.ECDSA(hashes.SHA256()))
    ecdsa_us = per_call_us(lambda: key.public_key().verify(sig, data, ec.ECDSA(hashes.SHA256())), iterations)
    return {f"raw_rsa_pss_{ask.modulus_bits}_verify_us": round(rsa_us, 1), "raw_ecdsa_p384_verify_us": round(ecdsa_us, 1)}


def _chain(platform: SimulatedAmdSev, iterations: int) -> dict[str, float]:
    certs = _request(platform).chain.certificates()
    order = [certs[n] for n in ("ark", "ask", "cek", "oca", "pek", "pdh")]
    cold_us = per_call_us(lambda: verify.verify_chain(*order, pinned=platform.roots), max(20, iterations // 10))
    cached = broker.ChainVerifier(platform.roots)
    cached.verify(certs)
    cached_us = per_call_us(lambda: cached.verify(certs), iterations)
    return {**_raw(platform, iterations), "chain_cold_us": round(cold_us, 1), "chain_cached_us": round(cached_us, 1)}


def run(iterations: int = 500) -> dict[str, Any]:
    result: dict[str, Any] = {"iterations": iterations}
    for product in ("Naples", "Milan"):
        result[product.lower()] = _chain(SimulatedAmdSev.generate(product), iterations)
    platform = SimulatedAmdSev.generate("Naples")
    verifier = broker.ChainVerifier(platform.roots)
    request = _request(platform)
    counter = iter(range(10**9))
    session_us = per_call_us(
        lambda: broker.open_launch(
            request, policy=_POLICY, roots=verifier, key=_KEY, request_id=str(next(counter)), session_id="s"
        ),
        iterations,
    )
    launch = broker.open_launch(request, policy=_POLICY, roots=verifier, key=_KEY, request_id="r", session_id="s")
    state = broker.open_state(_KEY, "s", launch.sealed_state)
    mnonce = os.urandom(16)
    measured = measure.launch_measure(state.tik, state.api_major, state.api_minor, state.build, state.policy, _IMAGE, mnonce)
    requirements = measure.PolicyRequirements(require_es=True)
    check_us = per_call_us(lambda: broker.appraise_launch(state, measured, mnonce, [_IMAGE], requirements), iterations)
    open_us = per_call_us(lambda: broker.open_state(_KEY, "s", launch.sealed_state), iterations)
    secret_us = per_call_us(lambda: broker.secret_answer(state, measured, b"passphrase"), iterations)
    pdh = platform.pdh_private_key.public_key()
    ecdh_us = per_call_us(lambda: ec.generate_private_key(ec.SECP384R1()).exchange(ec.ECDH(), pdh), iterations)
    result.update(
        {
            "raw_p384_keygen_and_ecdh_us": round(ecdh_us, 1),
            "session_open_us": round(session_us, 1),
            "session_state_open_us": round(open_us, 1),
            "measurement_check_us": round(check_us, 1),
            "secret_packet_us": round(secret_us, 1),
            "note": (
                "session_open = cached chain verdict, workload policy, derived P-384 owner key, ECDH, KDF, "
                "wrapped TEK/TIK, policy MAC, GODH certificate, challenge JSON and sealed state; "
                "measurement_check = HMAC against one reference digest plus the policy rules"
            ),
        }
    )
    return result
