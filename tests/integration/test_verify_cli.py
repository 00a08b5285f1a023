"""`remits verify snp`: exit codes and output, offline and against a local KDS serving real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
CASE = DATA / "snp" / "reports" / "genoa_v3_trustee_e2e"
AT = "2025-05-28T00:00:00Z"


def remits(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", "verify", "snp", *argv], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_verified_report_prints_claims_and_exits_0() -> None:
    done = remits(str(CASE / "report.bin"), "--vek", str(CASE / "vek.pem"), "--at", AT, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    expected = json.loads((CASE / "expected.json").read_text())["report"]
    assert out["verified"] is True
    assert out["snp.measurement"] == expected["measurement"]
    assert out["snp.chip_id"] == expected["chip_id"]


def test_coco_evidence_with_carried_vcek_verifies() -> None:
    done = remits(str(DATA / "kbs" / "snp-e2e-evidence.json"), "--at", AT, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["snp.product"] == "Genoa"


@pytest.mark.parametrize(
    ("argv", "check"),
    [
        ((str(CASE / "report.bin"), "--vek", str(DATA / "snp" / "reports" / "genoa_v3_azure" / "vek.der"), "--at", AT), None),
        ((str(CASE / "report.bin"), "--vek", str(CASE / "vek.der"), "--at", "2040-01-01T00:00:00Z"), "snp.cert_validity"),
        ((str(DATA / "snp" / "negative" / "trustee_report_byte42_plus1.bin"), "--vek", str(CASE / "vek.der"), "--at", AT), None),
    ],
)
def test_failed_check_exits_1_with_its_name(argv: tuple[str, ...], check: str | None) -> None:
    done = remits(*argv, "--json")
    assert done.returncode == 1, (done.stdout, done.stderr)
    out = json.loads(done.stdout)
    assert out["verified"] is False and out["check"]
    if check:
        assert out["check"] == check


def test_usage_errors_exit_2() -> None:
    assert remits("/no/such/report").returncode == 2
    assert remits(str(CASE / "report.bin"), "--at", "yesterday").returncode == 2
    assert remits().returncode == 2  # argparse


def test_certs_dir_picks_the_matching_vek(tmp_path: Path) -> None:
    for case in ("genoa_v3_azure", "genoa_v3_trustee_e2e", "milan_v2_trustee"):
        (tmp_path / f"{case}.der").write_bytes((DATA / "snp" / "reports" / case / "vek.der").read_bytes())
    done = remits(str(CASE / "report.bin"), "--certs-dir", str(tmp_path), "--at", AT, "--json")
    assert done.returncode == 0, done.stdout + done.stderr


async def test_asks_kds_when_no_vek_is_given(tmp_path: Path) -> None:
    """A local server answers on KDS's VCEK path with the real VCEK; the CRL is absent (404)."""
    expected = json.loads((CASE / "expected.json").read_text())
    vcek_path = expected["kds_vcek_url"].split("kdsintf.amd.com", 1)[1].split("?", 1)[0]
    hits: list[str] = []

    async def vcek(request: web.Request) -> web.Response:
        hits.append(request.path_qs)
        return web.Response(body=(CASE / "vek.der").read_bytes())

    app = web.Application()
    app.router.add_get(vcek_path, vcek)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        import asyncio

        done = await asyncio.to_thread(
            remits, str(CASE / "report.bin"), "--kds", f"http://127.0.0.1:{port}", "--at", AT, "--json"
        )
    finally:
        await runner.cleanup()
    assert done.returncode == 0, done.stdout + done.stderr
    assert hits == [vcek_path + "?" + expected["kds_vcek_url"].split("?", 1)[1]]
    assert json.loads(done.stdout)["snp.crl_checked"] is False
