"""A SEV-ES launch through the whole pipeline, as a libkrun-style VMM does it over HTTP: the
platform chain goes through intake, endorse and identity, which answers with the launch session;
the simulated firmware launches and measures; the measurement goes through the pipeline to a
decision; release answers with the LAUNCH_SECRET the firmware opens. Each bad kind is refused for
its own reason, with exactly one decision where the pipeline decided."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import aiohttp
import pytest

from services.demo.sev_sim import SimulatedAmdSev, SimulatedSevFirmware, SimulatedVmm
from shared.platforms.sev.session import SevPolicy
from tests.conftest import decisions_on_stream, start_stack

pytestmark = pytest.mark.integration
WORKLOAD = "krun-wl"
SECRET = b"the workload's disk passphrase"
POLICY = SevPolicy(nodbg=True, noks=True, es=True).encode()
IMAGE = [hashlib.sha256(b"qboot").digest() * 128, os.urandom(8192), b"\x00" * 4096]  # firmware, kernel, zero page
VMSAS = [bytes([i]) * 4096 for i in (1, 2)]


def _roots(platform: SimulatedAmdSev, directory: Path) -> Path:
    generation = directory / platform.generation.value.lower()
    generation.mkdir(parents=True)
    (generation / "ark.cert").write_bytes(platform.ark)
    (generation / "ask.cert").write_bytes(platform.ask)
    return directory


async def test_sev_launches_end_to_end(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    platform = SimulatedAmdSev.generate("Milan")
    rs = await start_stack(infra, tmp_path / "data", sev_roots_dir=_roots(platform, tmp_path / "sev-roots"))
    try:
        vmm = SimulatedVmm(rs.url, SimulatedSevFirmware(platform), workload_id=WORKLOAD, regions=IMAGE, vmsas=VMSAS)
        admin = rs.stack.trust_admin
        assert admin is not None
        await admin.put_reference_value("sev", f"policy.{WORKLOAD}", [hex(POLICY)], "tests")
        await admin.put_reference_value("sev", f"launch_digest.{WORKLOAD}", [vmm.launch_digest.hex()], "tests")
        await admin.put_resource(f"sev/workload/{WORKLOAD}", SECRET, "tests", {"tees": ["sev"]})
        await rs.stack.trust_synced()
        before = len(await decisions_on_stream(rs.stack.js))

        good = await vmm.run("good")
        assert (good.status, good.stage, good.secret_received) == ("attested", "done", SECRET), good
        again = await vmm.run("good")  # a second launch of the same host: its chain verdict is kept
        assert again.status == "attested" and again.secret_received == SECRET

        results = {kind: await vmm.run(kind) for kind in ("tampered", "wrong_policy", "unknown_vendor", "replayed")}
        assert (results["tampered"].status, results["tampered"].reason) == ("rejected", "sev.measurement_mismatch")
        assert results["tampered"].stage == "attest"
        # The VMM launched with debugging allowed: the firmware refuses the session's policy MAC.
        assert (results["wrong_policy"].status, results["wrong_policy"].reason) == ("launch_failed", "sev.firmware.policy_mac")
        # Another vendor's chain: refused at /auth, before any session is opened.
        assert (results["unknown_vendor"].status, results["unknown_vendor"].stage) == ("rejected", "auth")
        assert results["unknown_vendor"].reason == "sev.ark.generation"
        assert (results["replayed"].status, results["replayed"].reason) == ("rejected", "sev.measurement_mismatch")

        # A workload nobody registered gets no session.
        stranger = SimulatedVmm(rs.url, SimulatedSevFirmware(platform), workload_id="stranger", regions=IMAGE, vmsas=VMSAS)
        unknown = await stranger.run("good")
        assert (unknown.status, unknown.stage, unknown.reason) == ("rejected", "auth", "sev.unknown_workload")

        # One decision per launch request the pipeline refused and per measurement it judged:
        # good ×2, tampered and replayed (at /attest), unknown vendor and unknown workload (at
        # /auth); wrong_policy never reached /attest (the firmware refused its session).
        decisions = (await decisions_on_stream(rs.stack.js))[before:]
        statuses = sorted((d.status, d.reason) for d in decisions)  # type: ignore[attr-defined]
        assert statuses.count(("affirming", "")) == 2 and statuses.count(("rejected", "sev.measurement_mismatch")) == 2
        assert ("rejected", "sev.measurement_mismatch") in statuses and ("rejected", "sev.ark.generation") in statuses
        assert ("rejected", "sev.unknown_workload") in statuses and len(decisions) == 6
        assert all(d.meta.tee == "sev" for d in decisions)  # type: ignore[attr-defined]
        affirmed = next(d for d in decisions if d.status == "affirming")  # type: ignore[attr-defined]
        assert affirmed.claims["sev.workload_id"] == WORKLOAD  # type: ignore[attr-defined]
        assert affirmed.claims["sev.launch_digest"] == vmm.launch_digest.hex()  # type: ignore[attr-defined]
        assert "sev.tik" not in str(affirmed.claims) and "tek" not in affirmed.claims  # type: ignore[attr-defined]

        # The secret goes to no other session: a fresh session (not attested) is refused.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{rs.url}/kbs/v0/key/{WORKLOAD}") as resp:
                assert resp.status == 401
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
