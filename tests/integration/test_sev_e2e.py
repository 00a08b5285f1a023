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
from aiohttp import web

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


class LocalCekKds:
    """AMD's KDS as far as CEKs go: ``GET /cek/id/<chip id hex>`` for the chips it knows."""

    def __init__(self, ceks: dict[bytes, bytes]) -> None:
        self.ceks = {chip.hex(): cek for chip, cek in ceks.items()}
        self.requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def _cek(self, request: web.Request) -> web.Response:
        chip = request.match_info["chip"]
        self.requests.append(chip)
        if chip not in self.ceks:
            return web.Response(status=404)
        return web.Response(body=self.ceks[chip], content_type="application/octet-stream")

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.get("/cek/id/{chip}", self._cek)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def _auth(url: str, vmm: SimulatedVmm, chip_id: bytes) -> tuple[int, dict]:  # type: ignore[type-arg]
    body = vmm.auth_body()
    body["extra-params"]["chip_id"] = chip_id.hex()
    async with aiohttp.ClientSession() as http, http.post(f"{url}/kbs/v0/auth", json=body) as resp:
        return resp.status, await resp.json()


async def test_the_cek_comes_from_amds_kds_by_chip_id(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    platform = SimulatedAmdSev.generate("Naples")
    other = platform.another_platform()  # another chip of the same vendor
    roots = _roots(platform, tmp_path / "sev-roots")
    kds = LocalCekKds({platform.chip_id: platform.cek, other.chip_id: other.cek})
    await kds.start()
    rs = await start_stack(infra, tmp_path / "data", sev_roots_dir=roots, snp_kds_url=kds.base_url)
    try:
        vmm = SimulatedVmm(rs.url, SimulatedSevFirmware(platform), workload_id=WORKLOAD, regions=IMAGE, vmsas=VMSAS)
        admin = rs.stack.trust_admin
        assert admin is not None
        await admin.put_reference_value("sev", f"policy.{WORKLOAD}", [hex(POLICY)], "tests")
        await rs.stack.trust_synced()
        # The host names its chip: its CEK is fetched from the KDS (once), and the chain verifies.
        for _ in range(2):
            status, body = await _auth(rs.url, vmm, platform.chip_id)
            assert status == 200 and "start" in body["extra-params"], body
        assert kds.requests == [platform.chip_id.hex()]  # the second launch took the cached CEK
        # A chip the KDS does not know: no CEK, no session.
        status, body = await _auth(rs.url, vmm, bytes([7]) * 64)
        assert status == 401 and body["detail"].startswith("endorsement.not_found"), body
        # A host that names another chip gets that chip's CEK, which did not sign its PEK.
        status, body = await _auth(rs.url, vmm, other.chip_id)
        assert status == 401 and body["detail"].startswith("sev.pek.signed_by_cek"), body
    finally:
        await rs.stack.stop()
        await rs.kds.stop()
        await kds.stop()
