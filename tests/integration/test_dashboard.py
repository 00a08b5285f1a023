"""The fleet dashboard (`GET /dashboard`) in a real headless Chromium, driven by Playwright with
Debian's browser: a small SNP and TDX fleet attests through the gateway while the page watches,
and the page must show the counts, reasons and TCB levels that the guests themselves saw.

The screenshot goes to this test's directory, and to docs/dashboard.png with REMITS_UPDATE_DOCS=1.
Without /usr/bin/chromium the test is skipped, unless REMITS_REQUIRE_BROWSER=1 (CI sets it and
installs the browser)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from services.demo.fleet import DEMO_IMAGE_MEASUREMENT, DEMO_RESOURCE, SnpFleet, TdxFleet, run_fleet
from services.demo.local_pcs import LocalPcs
from services.demo.snp_sim import LocalAmdKds, SimulatedAmd, SimulatedSnpGuest, Tcb
from services.demo.tdx_sim import SimulatedIntel
from shared import schemas
from shared.adminauth import generate_admin_keypair, sign_admin_token
from tests.conftest import publisher_as, start_stack

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("REMITS_CHROMIUM", "/usr/bin/chromium")
# What the machine's closed network needs (no background connections, no QUIC), and root's sandbox.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]  # fmt: skip
OLD_TCB = Tcb(bootloader=3, tee=0, snp=22, microcode=213)

if not Path(CHROMIUM).exists() and os.environ.get("REMITS_REQUIRE_BROWSER") != "1":
    pytest.skip(f"no browser at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@dataclass
class MixedTcbSnpFleet(SnpFleet):
    """Every third good machine has not taken the last firmware update yet."""

    made: int = 0

    def new_guest(self, kind: str) -> SimulatedSnpGuest:
        self.made += 1
        if kind != "good" or self.made % 3:
            return super().new_guest(kind)
        guest = SimulatedSnpGuest.create(DEMO_IMAGE_MEASUREMENT, product=self.kds.vendor.product, tcb=OLD_TCB)
        self.kds.enroll(guest)
        return guest


async def _vendors(data_dir: Path) -> tuple[LocalAmdKds, LocalPcs, SimulatedIntel, dict[str, Any]]:
    amd = await asyncio.to_thread(SimulatedAmd.generate, "Milan")
    roots = data_dir / "snp-test-roots" / "milan"
    roots.mkdir(parents=True)
    pem = serialization.Encoding.PEM
    for name, cert in (("ark", amd.ark), ("ask", amd.ask), ("asvk", amd.ask)):
        (roots / f"{name}.pem").write_bytes(cert.public_bytes(pem))
    kds = LocalAmdKds(amd)
    await kds.start()
    intel = await asyncio.to_thread(SimulatedIntel.generate)
    (data_dir / "tdx-root.pem").write_bytes(intel.root_pem)
    pcs = LocalPcs.from_simulated(intel)
    await pcs.start()
    settings = {
        "snp_roots_dir": roots.parent, "snp_kds_url": kds.base_url,
        "dcap_root_ca_path": data_dir / "tdx-root.pem", "dcap_pcs_url": pcs.base_url,
    }  # fmt: skip
    return kds, pcs, intel, settings


async def _text(page: Any, testid: str) -> str:
    return (await page.locator(f'[data-testid="{testid}"]').text_content() or "").strip()


async def _wait_for(page: Any, testid: str, expected: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (value := await _text(page, testid)) != expected:
        assert time.monotonic() < deadline, f"{testid}: {value!r}, expected {expected!r}"
        await asyncio.sleep(0.2)


async def test_dashboard_shows_the_fleet_live(infra, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import async_playwright

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    private_pem, public_pem = generate_admin_keypair("EdDSA")
    (tmp_path / "admin.pub.pem").write_bytes(public_pem)
    kds, pcs, intel, vendor_settings = await _vendors(data_dir)
    rs = await start_stack(infra, data_dir, admin_keys=(tmp_path / "admin.pub.pem",), **vendor_settings)
    secret = os.urandom(32)
    snp, tdx = MixedTcbSnpFleet(kds), TdxFleet(intel)
    admin = rs.stack.trust_admin
    assert admin is not None
    await admin.put_reference_value("snp", "measurement", [DEMO_IMAGE_MEASUREMENT.hex()], "tests")
    await admin.put_reference_value("tdx", "mr_td", [DEMO_IMAGE_MEASUREMENT.hex()], "tests")
    await admin.put_resource(DEMO_RESOURCE, secret, "tests", {"tees": ["snp", "tdx"]})
    await rs.stack.trust_synced()
    token = sign_admin_token(private_pem, "alice", now=time.time())

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1500})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(f"{rs.url}/dashboard")

            # A credential that provision does not accept: refused, with its reason, no board.
            wrong = sign_admin_token(generate_admin_keypair("EdDSA")[0], "mallory", now=time.time())
            await page.fill("#token", wrong)
            await page.click("#connect")
            await page.wait_for_selector("#login-error:has-text('admin.unknown_key')", timeout=15_000)
            assert await page.locator("#board").is_hidden()

            await page.fill("#token", token)
            await page.click("#connect")
            await page.wait_for_selector("#state[data-state='live']", timeout=15_000)
            assert (await page.text_content("#actor") or "").startswith("as alice")

            snp_run = await run_fleet(rs.url, snp, secret, fleet=12, bad=4, concurrency=8)
            tdx_run = await run_fleet(rs.url, tdx, secret, fleet=8, bad=4, concurrency=8)
            runs = (snp_run, tdx_run)
            affirming = sum(r["affirming"] for r in runs)
            rejected = sum(r["rejected"] for r in runs)
            assert (affirming, rejected) == (12, 8) and all(r["errors"] == 0 for r in runs)

            # The page's counts are the guests' own answers.
            await _wait_for(page, "total-decided", "20")
            assert await _text(page, "total-affirming") == "12"
            assert await _text(page, "total-rejected") == "8"
            assert await _text(page, "total-warning") == "0"
            seen_by_guests: Counter[str] = Counter()
            for run in runs:
                for key, count in run["rejection_reasons"].items():
                    seen_by_guests[key.split(":", 1)[1]] += count
            shown = {
                (await row.get_attribute("data-reason")): int(await row.locator("td.num").text_content() or 0)
                for row in await page.locator("#reasons tbody tr").all()
            }
            assert shown == dict(seen_by_guests)
            assert shown["nonce.replayed"] == 2 and shown["measurement.not_in_reference_values"] == 2

            # TCB levels: 8 SNP machines (every third on the older firmware), 4 TDX up to date.
            levels = {
                (await h.get_attribute("data-histogram"), await lv.get_attribute("data-level")): int(
                    await lv.locator(".count").text_content() or 0
                )
                for h in await page.locator("#tcb .histogram").all()
                for lv in await h.locator(".level").all()
            }
            current, old = "bl 4 · tee 0 · snp 27 · ucode 222", "bl 3 · tee 0 · snp 22 · ucode 213"
            snp_levels = {lv: n for (name, lv), n in levels.items() if name == "SNP reported TCB"}
            assert sum(snp_levels.values()) == 8 and set(snp_levels) == {current, old} and snp_levels[old] >= 1
            assert levels[("TDX TCB status", "UpToDate")] == 4

            # Per-stage figures, collected from every process (here: one), lag from JetStream.
            await page.wait_for_selector("#stages tr[data-stage='audit']", timeout=15_000)
            stage_names = [await r.get_attribute("data-stage") for r in await page.locator("#stages tbody tr").all()]
            assert stage_names[:6] == ["intake", "endorse", "identity", "measure", "decide", "release"]
            async def stage_field(stage: str, name: str) -> str:
                cell = page.locator(f"#stages tr[data-stage='{stage}'] td[data-field='{name}']")
                return (await cell.text_content() or "").strip()

            deadline = time.monotonic() + 15
            while await stage_field("release", "done") != "20":
                assert time.monotonic() < deadline, await page.text_content("#stages")
                await asyncio.sleep(0.2)
            # Every attestation passed intake and decide; the replays stopped at intake.
            assert [await stage_field(s, "done") for s in ("intake", "endorse", "decide", "audit")] == [
                "20", "18", "20", "20"
            ]
            assert float(await stage_field("intake", "per_s")) > 0 and float(await stage_field("decide", "p99_ms")) > 0
            assert int(await stage_field("intake", "pending")) >= 0

            # The last decisions, newest first; a click shows one decision's reason and claims.
            rows = page.locator("#recent tbody tr")
            assert await rows.count() == 20
            await page.locator("#recent tbody tr.rejected").first.click()
            reason = await page.text_content("#detail dd[data-field='reason']")
            assert reason in seen_by_guests
            affirmed_snp = page.locator("#recent tbody tr.affirming", has_text="snp").first
            await affirmed_snp.click()
            claims = await page.text_content("#claims")
            assert claims is not None and DEMO_IMAGE_MEASUREMENT.hex() in claims
            assert await page.text_content("#detail dd[data-field='status']") == "affirming"
            shot = tmp_path / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("REMITS_UPDATE_DOCS") == "1":
                shutil.copy(shot, ROOT / "docs" / "dashboard.png")

            # Markup in a decision (reasons and claims come from guests) is shown as text.
            nc, publisher = await publisher_as(infra, "decide")
            hostile = "<img src=x onerror=alert(1)>"
            meta = schemas.RequestMeta("f" * 32, "snp", "", time.time())
            forged = schemas.Decision(meta=meta, status="rejected", decided_at=time.time(), reason="policy.denied",
                                      detail=hostile, claims={"snp.note": hostile})  # fmt: skip
            from shared.bus import Publish

            await publisher.send(Publish(schemas.decision_subject("default", "snp", "rejected"), forged, "f" * 32 + ":decide"), "x")
            await nc.close()
            await _wait_for(page, "total-decided", "21")
            await page.locator(f"#recent tbody tr[data-request-id='{'f' * 32}']").click()
            assert await page.text_content("#detail dd[data-field='detail']") == hostile
            assert await page.locator("#detail img").count() == 0
            assert errors == []
        finally:
            await browser.close()

    # Without the admin credential, the feed is refused before anything is streamed.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{rs.url}/dashboard/v1/feed") as resp:
            assert resp.status == 401 and (await resp.json())["error"] == "admin.missing_credential"
        async with http.get(f"{rs.url}/dashboard") as resp:
            assert resp.status == 200 and "script-src 'self'" in resp.headers["Content-Security-Policy"]
        async with http.get(f"{rs.url}/dashboard/static/../app.py") as resp:
            assert resp.status == 404
    await rs.stack.stop()
    await rs.kds.stop()
    await kds.stop()
    await pcs.stop()

