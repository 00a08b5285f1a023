"""The guest owner's side of a SEV launch end to end, as pure functions: a simulated Milan
platform's chain opens a launch, the firmware side (the core's own unwrap, measure and secret
opening) takes the challenge, and the broker checks the measurement and answers with the secret."""

from __future__ import annotations

import functools
import hashlib
import json
import os

import pytest

from services.demo.sev_sim import SimulatedAmdSev
from shared.errors import ParseError, VerificationError
from shared.platforms.sev import abi, broker, measure, secret, session, wire

KEY = bytes(range(32))
IMAGE = hashlib.sha256(b"a krunvm workload image").digest()
POLICY = session.SevPolicy(nodbg=True, noks=True, es=True).encode()
REQUIRE = measure.PolicyRequirements(require_es=True)


@functools.cache
def platform() -> SimulatedAmdSev:
    return SimulatedAmdSev.generate("Milan")


def request(workload: str = "wl-1", chain: dict | None = None) -> wire.SevRequest:  # type: ignore[type-arg]
    p = platform()
    params = {
        "workload_id": workload,
        "build": {"version": {"major": p.api_major, "minor": p.api_minor}, "build": 7},
        "chain": chain or p.sev_request_chain(),
    }
    return wire.decode_sev_request(json.dumps(params))


def firmware_launch(launch: broker.Launch, digest: bytes = IMAGE, *, policy: int | None = None) -> tuple[bytes, bytes, bytes, bytes]:
    """What the simulated firmware does with the challenge: (TEK, TIK, MEASURE, MNONCE)."""
    p = platform()
    start = wire.decode_challenge_params(launch.challenge_params).start
    godh = abi.parse_sev_cert(bytes(start.cert)).public_key()
    used_policy = start.policy.to_u32() if policy is None else policy
    tek, tik = session.unwrap_session(start.session.blob(), p.pdh_private_key, godh, used_policy)
    mnonce = os.urandom(16)
    return tek, tik, measure.launch_measure(tik, p.api_major, p.api_minor, 7, used_policy, digest, mnonce), mnonce


def test_a_launch_from_challenge_to_secret() -> None:
    launch = broker.open_launch(request(), policy=POLICY, roots=platform().roots, key=KEY, request_id="r1", session_id="s1")
    assert launch.claims["sev.workload_id"] == "wl-1" and launch.claims["sev.generation"] == "Milan"
    assert launch.claims["sev.chain_checks"][-1] == "sev.pdh.signed_by_pek" and len(launch.claims["sev.chain_checks"]) == 17
    tek, tik, measure_bytes, mnonce = firmware_launch(launch)
    state = broker.open_state(KEY, "s1", launch.sealed_state)
    assert (state.tek, state.tik, state.policy, state.build) == (tek, tik, POLICY, 7)
    assert "tek" not in repr(state) and tek.hex() not in repr(state)
    verdict = broker.appraise_launch(state, measure_bytes, mnonce, [os.urandom(32).hex(), IMAGE.hex()], REQUIRE)
    assert verdict.violations == [] and verdict.claims["sev.launch_digest"] == IMAGE.hex()
    assert verdict.claims["sev.policy.es"] is True and verdict.claims["sev.measure"] == measure_bytes.hex()
    body = broker.secret_answer(state, measure_bytes, b"LUKS passphrase")
    flags, iv, mac, ciphertext = wire.decode_secret(body)
    header = secret.LaunchSecret(flags, iv, mac, ciphertext).header
    opened = secret.open_secret(header, ciphertext, tek, tik, measure_bytes)  # the firmware's check
    assert len(opened) == 512 and secret.libkrun_secret(opened) == b"LUKS passphrase"


def test_a_redelivered_request_gets_the_same_challenge() -> None:
    kwargs = {"policy": POLICY, "roots": platform().roots, "key": KEY, "session_id": "s1"}
    one = broker.open_launch(request(), request_id="r1", **kwargs)  # type: ignore[arg-type]
    again = broker.open_launch(request(), request_id="r1", **kwargs)  # type: ignore[arg-type]
    other = broker.open_launch(request(), request_id="r2", **kwargs)  # type: ignore[arg-type]
    assert one.challenge_params == again.challenge_params != other.challenge_params
    assert broker.open_state(KEY, "s1", one.sealed_state) == broker.open_state(KEY, "s1", again.sealed_state)


def test_the_sealed_state_is_bound_to_its_session_and_key() -> None:
    launch = broker.open_launch(request(), policy=POLICY, roots=platform().roots, key=KEY, request_id="r1", session_id="s1")
    for key, session_id, sealed in (
        (KEY, "s2", launch.sealed_state),  # another session's state
        (bytes(32), "s1", launch.sealed_state),  # another key
        (KEY, "s1", launch.sealed_state[:-1] + bytes([launch.sealed_state[-1] ^ 1])),
        (KEY, "s1", b"short"),
    ):
        with pytest.raises(VerificationError) as err:
            broker.open_state(key, session_id, sealed)
        assert err.value.check == broker.SEALED_STATE


def test_a_tampered_image_a_replayed_measurement_and_a_weak_policy_are_refused() -> None:
    roots, make = platform().roots, functools.partial(broker.open_launch, policy=POLICY, key=KEY, session_id="s1")
    launch = make(request(), roots=roots, request_id="r1")
    state = broker.open_state(KEY, "s1", launch.sealed_state)
    _, _, measure_bytes, mnonce = firmware_launch(launch, digest=hashlib.sha256(b"another image").digest())
    with pytest.raises(VerificationError, match=r"sev\.measurement_mismatch"):
        broker.appraise_launch(state, measure_bytes, mnonce, [IMAGE], REQUIRE)
    # A measurement from an earlier launch does not verify under this launch's TIK.
    _, _, old_measure, old_mnonce = firmware_launch(make(request(), roots=roots, request_id="r0"))
    with pytest.raises(VerificationError, match=r"sev\.measurement_mismatch"):
        broker.appraise_launch(state, old_measure, old_mnonce, [IMAGE], REQUIRE)
    # A VMM that launches with another policy than the session's: the firmware refuses the session.
    with pytest.raises(VerificationError, match=r"sev\.policy_mac"):
        firmware_launch(launch, policy=session.SevPolicy(nodbg=False, es=True).encode())
    # The workload's own policy allows debugging: the measurement verifies, the policy check does not.
    weak = session.SevPolicy(es=True).encode()
    launch = broker.open_launch(request(), policy=weak, roots=roots, key=KEY, request_id="r3", session_id="s3")
    _, _, measure_bytes, mnonce = firmware_launch(launch)
    verdict = broker.appraise_launch(broker.open_state(KEY, "s3", launch.sealed_state), measure_bytes, mnonce, [IMAGE], REQUIRE)
    assert {v.field for v in verdict.violations} == {"policy.nodbg", "policy.noks"}


def test_a_chain_that_does_not_verify_opens_no_session() -> None:
    p = platform()
    chain = p.sev_request_chain()
    chain["sev"]["pdh"][0x20] ^= 1  # inside the PDH's signed key
    with pytest.raises((VerificationError, ParseError)) as err:
        broker.open_launch(request(chain=chain), policy=POLICY, roots=p.roots, key=KEY, request_id="r", session_id="s")
    assert "pdh" in err.value.reason or "pdh" in str(err.value)
    # The real Milan chain is not signed by the simulated vendor's roots, nor the other way round.
    with pytest.raises(VerificationError, match=r"sev\.ark"):
        broker.open_launch(request(), policy=POLICY, roots=broker.verify.pinned_roots(), key=KEY, request_id="r", session_id="s")


def test_a_chain_is_verified_once_per_host() -> None:
    verifier = broker.ChainVerifier(platform().roots, capacity=2)
    certs = request().chain.certificates()
    first = verifier.verify(certs)
    assert verifier.verify(dict(certs)) is first  # cached: the same verdict, not checked again
    flipped = dict(certs, pdh=certs["pdh"][:0x20] + bytes([certs["pdh"][0x20] ^ 1]) + certs["pdh"][0x21:])
    with pytest.raises((VerificationError, ParseError)):
        verifier.verify(flipped)  # a different chain is checked, and a failure is never cached
    with pytest.raises((VerificationError, ParseError)):
        verifier.verify(flipped)
    launch = broker.open_launch(request(), policy=POLICY, roots=verifier, key=KEY, request_id="r", session_id="s")
    assert launch.claims["sev.generation"] == "Milan"


def test_bench_verify_sev_reports_every_step() -> None:
    from services.bench.verify_sev import run

    result = run(5)
    for product in ("naples", "milan"):
        row = result[product]
        assert row["chain_cold_us"] > row["chain_cached_us"] > 0 and row["raw_ecdsa_p384_verify_us"] > 0
    assert "raw_rsa_pss_2048_verify_us" in result["naples"] and "raw_rsa_pss_4096_verify_us" in result["milan"]
    assert all(result[k] > 0 for k in ("session_open_us", "measurement_check_us", "secret_packet_us"))


def test_the_platform_judges_only_checked_and_complete_claims() -> None:
    from shared.platforms.sev.platform import SevPlatform

    sev = SevPlatform()
    with pytest.raises(VerificationError, match=r"sev\.measurement_unchecked"):
        sev.appraise(b"\x00" * 48, {"sev.policy": POLICY}, {})
    with pytest.raises(VerificationError, match=r"sev\.claims"):
        sev.appraise(b"\x00" * 48, {"sev.launch_digest": IMAGE.hex(), "sev.policy": POLICY}, {})
    claims = {"sev.launch_digest": IMAGE.hex(), "sev.policy": POLICY, "sev.api_version": "1.51", "sev.build": 7}
    appraisal = sev.appraise(b"\x00" * 48, claims, {})
    assert appraisal.violations == [] and appraisal.vector["runtime-opaque"] == 2


def test_the_endorse_part_of_the_chain_alone() -> None:
    p = platform()
    assert broker.verify.verify_endorsement(p.ark, p.ask, p.cek, pinned=p.roots).value == "Milan"
    other = p.another_platform()
    assert broker.verify.verify_endorsement(p.ark, p.ask, other.cek, pinned=p.roots).value == "Milan"
    with pytest.raises(VerificationError, match=r"sev\.ark\.generation"):
        broker.verify.verify_endorsement(p.ark, p.ask, p.cek, pinned=broker.verify.pinned_roots())
