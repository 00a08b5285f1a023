"""`remits bench` as an operator runs it: a short run, its report's required fields and the counts
that do not depend on timing (no timing thresholds here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
REQUIRED = (
    "attestations_per_s", "p50_ms", "p95_ms", "p99_ms", "errors_by_reason", "per_stage", "cpu_ms_per_attestation",
    "redis_roundtrips_per_attestation", "redis_commands_per_attestation", "bus_messages_per_attestation",
    "crypto_floor_us", "crypto_bound_per_s", "efficiency",
)


def bench(tmp_path: Path, *argv: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--duration", "3", "--warmup", "1", "--concurrency", "8",
         "--cache-dir", str(tmp_path / "cache"), "--json", *argv],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_reattest_report(tmp_path: Path) -> None:
    report = bench(tmp_path, "--tee", "sample", "--fleet", "20")
    assert all(key in report for key in REQUIRED)
    assert report["completed"] > 0 and report["errors"] == 0 and report["errors_by_reason"] == {}
    # Six Redis round trips and six JetStream messages per attestation, by design (window edges
    # shift a few attestations in or out).
    assert 5.0 < report["redis_roundtrips_per_attestation"] < 7.0
    assert 5.0 < report["bus_messages_per_attestation"] < 7.0
    assert set(report["per_stage"]) >= {"intake", "endorse", "identity", "measure", "decide", "release"}
    kinds = set(report["cpu_ms_per_attestation"])
    assert kinds >= {"gateway", "intake", "endorse", "identity", "measure", "decide", "release", "audit",
                     "nats-server", "redis-server", "client"}  # fmt: skip
    assert report["crypto_bound_per_s"] == round(report["cores"] * 1e6 / report["crypto_floor_us"], 1)
    assert report["endorsement_fetches"]["requests"] == 0  # every chip's endorsement was cached when priming


def test_boot_storm_fetches_each_chip_once(tmp_path: Path) -> None:
    report = bench(tmp_path, "--tee", "snp", "--scenario", "boot-storm", "--fleet", "300")
    assert report["completed"] > 0 and report["errors"] == 0
    fetches = report["endorsement_fetches"]["by_tee"]["snp"]
    assert fetches["device_requests"] == fetches["distinct_devices"] > 0
    assert report["endorsement_fetches"]["max_fetches_per_key"] == 1
