"""The simulated SEV firmware and the libkrun-style VMM client.

The firmware is checked against the guest owner's core functions (``session.start_session``,
``measure.check_measurement``, ``secret.build_secret``); the VMM's HTTP flow runs against a small
key broker served here on 127.0.0.1, built from the pure broker steps (``broker.open_launch`` ->
``start_session`` on the verified PDH, ``broker.appraise_launch`` -> ``check_measurement``,
``broker.secret_answer`` -> ``build_secret`` over ``libkrun_plaintext``), which makes these tests an
end-to-end check of the whole SEV crypto flow."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from services.demo.sev_sim import (
    SEV_KINDS,
    SevFirmwareError,
    SimulatedAmdSev,
    SimulatedSevFirmware,
    SimulatedVmm,
)
from shared.errors import ParseError, VerificationError
from shared.kbs.wire import error_body
from shared.platforms.sev import abi, broker, measure, secret, session, verify, wire

WORKLOAD = "krun-wl"
SECRET = b"the disk passphrase of krun-wl"
REGIONS = (b"qboot bios" * 100, b"kernel bundle" * 300, b"initrd" * 50, bytes(4096))
VMSAS = (b"\x01" * 4096, b"\x02" * 4096)
POLICY_SEV = session.SevPolicy(nodbg=True, noks=True).encode()
POLICY_ES = session.SevPolicy(nodbg=True, noks=True, es=True).encode()
KEY = os.urandom(32)


@functools.cache
def platform() -> SimulatedAmdSev:
    return SimulatedAmdSev.generate("Milan")


def ref_digest(es: bool = False) -> bytes:
    return measure.launch_digest(b"".join(REGIONS), vmsas=VMSAS if es else ())


def owner_session(policy: int = POLICY_SEV) -> session.LaunchSession:
    chain = verify.verify_chain(*platform().chain(), pinned=platform().roots)
    return session.start_session(chain.pdh_public_key, policy)


def started(policy: int = POLICY_SEV, **kwargs: Any) -> tuple[SimulatedSevFirmware, session.LaunchSession]:
    fw = SimulatedSevFirmware(platform(), **kwargs)
    owner = owner_session(policy)
    fw.launch_start(policy, abi.godh_cert(owner.godh_public), owner.session)
    return fw, owner


# --- the firmware on its own ----------------------------------------------------------------------


def test_firmware_accepts_a_session_and_measures_with_its_tik() -> None:
    fw, owner = started()
    assert fw.platform_status() == (1, 51, 7) and fw.state == "lupdate" and fw.policy == POLICY_SEV
    for region in REGIONS:
        fw.launch_update_data(region)
    assert fw.launch_digest() == ref_digest()
    measure_bytes, mnonce = fw.launch_measure()
    assert len(measure_bytes) == 32 and len(mnonce) == 16
    matched = measure.check_measurement(
        measure_bytes + mnonce,
        owner.tik,
        api_major=1,
        api_minor=51,
        build=7,
        policy=POLICY_SEV,
        launch_digests=[os.urandom(32), ref_digest()],
    )
    assert matched == ref_digest()
    # a fresh MNONCE each launch
    fw2, _ = started()
    assert fw2.launch_measure()[1] != mnonce


def test_firmware_secret_is_bound_to_its_measurement() -> None:
    fw, owner = started()
    fw.launch_update_data(REGIONS[0])
    measure_bytes, _ = fw.launch_measure()
    wrong = secret.build_secret(secret.libkrun_plaintext(SECRET), owner.tek, owner.tik, os.urandom(32))
    with pytest.raises(SevFirmwareError) as err:
        fw.launch_secret(wrong.header, wrong.payload)
    assert err.value.check == "sev.firmware.secret_mac"
    packet = secret.build_secret(secret.libkrun_plaintext(SECRET), owner.tek, owner.tik, measure_bytes)
    plain = fw.launch_secret(packet.header, packet.payload)
    assert len(plain) == 512 and secret.libkrun_secret(plain) == SECRET and fw.injected == [plain]
    fw.launch_finish()
    assert fw.state == "running"
    with pytest.raises(SevFirmwareError, match="guest_state"):
        fw.launch_secret(packet.header, packet.payload)


@pytest.mark.parametrize(
    ("offset", "check"),
    [
        (0, "sev.firmware.wrap_mac"),
        (20, "sev.firmware.wrap_mac"),
        (70, "sev.firmware.wrap_mac"),
        (100, "sev.firmware.policy_mac"),
    ],
)
def test_firmware_refuses_a_tampered_session(offset: int, check: str) -> None:
    owner = owner_session()
    blob = bytearray(owner.session)
    blob[offset] ^= 0x01
    fw = SimulatedSevFirmware(platform())
    with pytest.raises(SevFirmwareError) as err:
        fw.launch_start(POLICY_SEV, abi.godh_cert(owner.godh_public), bytes(blob))
    assert err.value.check == check and isinstance(err.value, VerificationError)
    assert fw.state == "uninit"


def test_firmware_refuses_other_policies_and_bad_inputs() -> None:
    owner = owner_session()
    godh = abi.godh_cert(owner.godh_public)
    fw = SimulatedSevFirmware(platform())
    debug = POLICY_SEV & ~0x1
    with pytest.raises(SevFirmwareError) as err:
        fw.launch_start(debug, godh, owner.session)
    assert err.value.check == "sev.firmware.policy_mac"
    # a minimum API above the firmware's 1.51
    high = session.SevPolicy(nodbg=True, api_major=1, api_minor=52).encode()
    hi_owner = owner_session(high)
    with pytest.raises(SevFirmwareError, match=r"requires API 1\.52"):
        fw.launch_start(high, abi.godh_cert(hi_owner.godh_public), hi_owner.session)
    with pytest.raises(SevFirmwareError) as err:
        fw.launch_start(POLICY_SEV | 1 << 6, godh, owner.session)
    assert err.value.check == "sev.firmware.policy"
    # a GODH that is not a P-384 ECDH certificate, and one for another key
    with pytest.raises(SevFirmwareError) as err:
        fw.launch_start(POLICY_SEV, godh[:-1], owner.session)
    assert err.value.check == "sev.firmware.godh_cert"
    p256 = abi.godh_cert(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(SevFirmwareError, match="P-384"):
        fw.launch_start(POLICY_SEV, p256, owner.session)
    with pytest.raises(SevFirmwareError) as err:
        fw.launch_start(POLICY_SEV, abi.godh_cert(owner_session().godh_public), owner.session)
    assert err.value.check == "sev.firmware.wrap_mac"
    # commands out of order
    with pytest.raises(SevFirmwareError, match="guest_state"):
        SimulatedSevFirmware(platform()).launch_update_data(b"x")
    with pytest.raises(SevFirmwareError, match="guest_state"):
        SimulatedSevFirmware(platform()).launch_measure()
    fw, _ = started()
    fw.launch_measure()
    with pytest.raises(SevFirmwareError, match="guest_state"):
        fw.launch_update_data(b"late")


def test_firmware_es_needs_vmsas_and_plain_sev_refuses_them() -> None:
    fw, _ = started(POLICY_SEV)
    with pytest.raises(SevFirmwareError) as err:
        fw.launch_update_vmsa(VMSAS[0])
    assert err.value.check == "sev.firmware.vmsa"
    fw, owner = started(POLICY_ES)
    with pytest.raises(SevFirmwareError, match="needs its VMSAs"):
        fw.launch_measure()
    with pytest.raises(SevFirmwareError, match="4096"):
        fw.launch_update_vmsa(b"short")
    for region in REGIONS:
        fw.launch_update_data(region)
    for vmsa in VMSAS:
        fw.launch_update_vmsa(vmsa)
    measure_bytes, mnonce = fw.launch_measure()
    assert measure.check_measurement(
        measure_bytes + mnonce,
        owner.tik,
        api_major=1,
        api_minor=51,
        build=7,
        policy=POLICY_ES,
        launch_digests=[ref_digest(es=True)],
    ) == ref_digest(es=True)


# --- a small key broker (the server side, from the pure core) --------------------------------------


@dataclass
class Broker:
    roots: verify.SevRoots
    policy: int = POLICY_SEV
    digests: list[str] = field(default_factory=lambda: [ref_digest().hex()])
    requirements: measure.PolicyRequirements = field(default_factory=measure.PolicyRequirements)
    secret: bytes = SECRET
    bad_secret: bool = False  # answer with a secret bound to another measurement
    pending: dict[str, bytes] = field(default_factory=dict)  # session -> sealed state (nonce unused)
    attested: dict[str, tuple[broker.SessionState, bytes]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/kbs/v0/auth", self.auth)
        app.router.add_post("/kbs/v0/attest", self.attest)
        app.router.add_get("/kbs/v0/key/{workload}", self.key)
        return app

    @staticmethod
    def refuse(variant: str, reason: str, detail: str, status: int = 401) -> web.Response:
        return web.Response(
            status=status, body=error_body(variant, f"{reason}: {detail}"), content_type="application/json"
        )

    async def auth(self, request: web.Request) -> web.Response:
        self.requests.append("auth")
        body = await request.json()
        assert body["version"] == "0.0.0" and body["tee"] == "sev" and isinstance(body["extra-params"], dict)
        try:
            sev = wire.decode_sev_request(body["extra-params"])
        except ParseError as exc:
            return self.refuse("InvalidRequest", exc.reason, exc.detail, 400)
        sid = uuid.uuid4().hex
        try:
            launch = broker.open_launch(
                sev, policy=self.policy, roots=self.roots, key=KEY, request_id=sid, session_id=sid
            )
        except (ParseError, VerificationError) as exc:
            return self.refuse("AttestationFailed", exc.reason, exc.detail)
        self.pending[sid] = launch.sealed_state
        resp = web.json_response({"nonce": sid, "extra-params": launch.challenge_params})
        resp.set_cookie("kbs-session-id", sid)
        return resp

    async def attest(self, request: web.Request) -> web.Response:
        self.requests.append("attest")
        sid = request.cookies.get("kbs-session-id", "")
        sealed = self.pending.pop(sid, None)  # single use
        if sealed is None:
            return self.refuse("InvalidCookie", "kbs.session", "no open session")
        body = await request.json()
        assert body["tee-pubkey"] == {"kty": "", "alg": "", "k_mod": "", "k_exp": ""}
        assert isinstance(body["tee-evidence"], str)
        try:
            measure_bytes, mnonce = wire.decode_measurement(body["tee-evidence"])
            state = broker.open_state(KEY, sid, sealed)
            verdict = broker.appraise_launch(state, measure_bytes, mnonce, self.digests, self.requirements)
        except (ParseError, VerificationError) as exc:
            return self.refuse("AttestationFailed", exc.reason, exc.detail)
        if verdict.violations:
            names = ", ".join(v.name if hasattr(v, "name") else str(v) for v in verdict.violations)
            return self.refuse("PolicyDeny", "sev.policy_violation", names)
        self.attested[sid] = (state, measure_bytes)
        return web.json_response({"token": f"ear-for-{sid}"})

    async def key(self, request: web.Request) -> web.Response:
        self.requests.append("key")
        entry = self.attested.get(request.cookies.get("kbs-session-id", ""))
        if entry is None or entry[0].workload_id != request.match_info["workload"]:
            return self.refuse(
                "TokenNotFound", "kbs.unauthenticated", "no attested session for this workload"
            )
        state, measure_bytes = entry
        bound = os.urandom(32) if self.bad_secret else measure_bytes
        return web.Response(
            body=broker.secret_answer(state, bound, self.secret), content_type="application/json"
        )


@pytest.fixture
async def kbs() -> AsyncIterator[tuple[str, Broker]]:
    state = Broker(platform().roots)
    runner = web.AppRunner(state.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}/", state
    await runner.cleanup()


def vmm(base: str, **kwargs: Any) -> SimulatedVmm:
    firmware = kwargs.pop("firmware", None) or SimulatedSevFirmware(platform())
    return SimulatedVmm(base, firmware, workload_id=WORKLOAD, regions=REGIONS, **kwargs)


# --- the VMM against the broker --------------------------------------------------------------------


async def test_good_launch_receives_the_provisioned_secret(kbs: tuple[str, Broker]) -> None:
    base, state = kbs
    client = vmm(base)
    assert client.launch_digest == ref_digest()
    result = await client.run("good")
    assert (result.kind, result.status, result.stage, result.reason) == ("good", "attested", "done", "")
    assert result.secret_received == SECRET and result.http_status == 200
    assert result.token is not None and result.token.startswith("ear-for-") and result.latency_ms > 0
    assert client.firmware.state == "running" and secret.libkrun_secret(client.firmware.injected[0]) == SECRET
    assert state.requests == ["auth", "attest", "key"]


async def test_tampered_image_fails_the_measurement(kbs: tuple[str, Broker]) -> None:
    base, state = kbs
    result = await vmm(base).run("tampered")
    assert (result.status, result.stage, result.http_status) == ("rejected", "attest", 401)
    assert result.reason == "sev.measurement_mismatch" and result.secret_received is None
    assert "reference launch digest" in result.detail and "key" not in state.requests


async def test_wrong_policy_is_refused_by_the_firmware(kbs: tuple[str, Broker]) -> None:
    base, state = kbs
    result = await vmm(base).run("wrong_policy")
    assert (result.status, result.stage, result.reason) == (
        "launch_failed",
        "launch",
        "sev.firmware.policy_mac",
    )
    assert result.secret_received is None and state.requests == ["auth"]


async def test_wrong_policy_on_a_broken_firmware_fails_the_measurement(kbs: tuple[str, Broker]) -> None:
    base, _ = kbs
    broken = SimulatedSevFirmware(platform(), check_policy_mac=False)
    result = await vmm(base, firmware=broken).run("wrong_policy")
    assert broken.policy == POLICY_SEV ^ 0x1  # the firmware really ran with debugging allowed
    assert (result.status, result.stage, result.reason) == ("rejected", "attest", "sev.measurement_mismatch")
    assert result.secret_received is None


async def test_a_policy_the_broker_refuses(kbs: tuple[str, Broker]) -> None:
    base, state = kbs
    state.policy = session.SevPolicy(noks=True).encode()  # debugging allowed: the requirements refuse it
    result = await vmm(base).run("good")
    assert (result.status, result.stage, result.reason) == ("rejected", "attest", "sev.policy_violation")
    assert "policy.nodbg" in result.detail and result.secret_received is None


async def test_replayed_measurement_fails(kbs: tuple[str, Broker]) -> None:
    base, state = kbs
    client = vmm(base)
    first = await client.run("good")
    assert first.status == "attested"
    replay = await client.run("replayed")
    assert (replay.status, replay.stage, replay.reason) == ("rejected", "attest", "sev.measurement_mismatch")
    assert replay.secret_received is None
    # with no earlier launch, the VMM makes an honest one first
    fresh = vmm(base)
    assert (await fresh.run("replayed")).reason == "sev.measurement_mismatch"
    assert state.requests.count("key") == 2


async def test_unknown_vendor_chain_is_refused_at_auth(kbs: tuple[str, Broker]) -> None:
    base, state = kbs
    result = await vmm(base).run("unknown_vendor")
    assert (result.status, result.stage, result.http_status) == ("rejected", "auth", 401)
    assert result.reason == "sev.ark.generation" and state.requests == ["auth"]


async def test_sev_es_launch_with_vmsas(kbs: tuple[str, Broker]) -> None:
    base, state = kbs
    state.policy = POLICY_ES
    state.requirements = measure.PolicyRequirements(require_es=True)
    client = vmm(base, vmsas=VMSAS)
    state.digests = [client.launch_digest.hex()]
    assert client.launch_digest == ref_digest(es=True) != client.launch_digest_sev
    result = await client.run("good")
    assert result.status == "attested" and result.secret_received == SECRET
    # the digest without the VMSAs does not verify an ES launch
    state.digests = [client.launch_digest_sev.hex()]
    assert (await client.run("good")).reason == "sev.measurement_mismatch"
    # an ES policy with a VMM that has no VMSAs: the firmware refuses to measure
    result = await vmm(base).run("good")
    assert (result.status, result.reason) == ("launch_failed", "sev.firmware.vmsa")


async def test_secret_bound_to_another_measurement_is_refused_by_the_firmware(
    kbs: tuple[str, Broker],
) -> None:
    base, state = kbs
    state.bad_secret = True
    result = await vmm(base).run("good")
    assert (result.status, result.stage, result.reason) == ("error", "secret", "sev.firmware.secret_mac")
    assert result.token is not None and result.secret_received is None


async def test_concurrent_vmms_keep_their_own_sessions(kbs: tuple[str, Broker]) -> None:
    base, _ = kbs
    results = await asyncio.gather(*(vmm(base).run(kind) for kind in ("good", "tampered", "good")))
    assert [r.status for r in results] == ["attested", "rejected", "attested"]
    assert [r.secret_received for r in results] == [SECRET, None, SECRET]


async def test_http_bodies_and_unreachable_broker() -> None:
    client = vmm("http://127.0.0.1:1")
    body = client.auth_body()
    params = body["extra-params"]
    assert wire.decode_sev_request(json.dumps(params)).build.build == 7
    attest = SimulatedVmm.attest_body(bytes(32), bytes(range(16)))
    assert wire.decode_measurement(attest["tee-evidence"]) == (bytes(32), bytes(range(16)))
    result = await client.run("good")
    assert (result.status, result.reason, result.stage) == ("error", "http.unreachable", "http")
    with pytest.raises(ValueError, match="unknown kind"):
        await client.run("evil")
    assert set(SEV_KINDS) == {"good", "tampered", "wrong_policy", "unknown_vendor", "replayed"}
    assert hashlib.sha256(b"".join(REGIONS)).digest() == measure.launch_digest(b"".join(REGIONS))
