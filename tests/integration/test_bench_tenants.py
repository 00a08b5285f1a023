"""`remits bench --tenants 2`: two tenants provisioned alike, the guests spread over them, each on
its tenant's /t/<tenant>/kbs/v0 paths; every attestation affirming and released its own tenant's
secret (counts only, no timing thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_two_tenants(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--duration", "3", "--warmup", "1", "--concurrency", "8",
         "--cache-dir", str(tmp_path / "cache"), "--tee", "sample", "--fleet", "20", "--verify-every", "1",
         "--tenants", "2", "--json", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(done.stdout)
    assert report["tenants"] == 2
    assert report["completed"] > 0 and report["errors"] == 0 and report["errors_by_reason"] == {}
    assert report["attestations_per_s"] > 0
    # Every released secret was decrypted and was the guest's own tenant's.
    assert report["secrets_verified"] == report["completed"]
    assert set(report["per_tenant"]) == {"bench-1", "bench-2"}
    assert all(n > 0 for n in report["per_tenant"].values())
    assert sum(report["per_tenant"].values()) == report["completed"]
    assert report["per_tenant_errors"] == {"bench-1": 0, "bench-2": 0}
