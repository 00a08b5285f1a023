"""`remits bench` clients end to end: the vendor process, a REMITS stack trusting it, and load
generator processes attesting over HTTP in each scenario and load shape."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from services.demo.fleet import DEMO_IMAGE_MEASUREMENT, DEMO_RESOURCE
from services.runtime import Stack
from shared.embedded import EmbeddedInfra
from shared.metrics import LogHistogram
from tests.conftest import add_reference_values, put_resource, stack_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
ROOT = Path(__file__).resolve().parents[2]
SEED = "integration"
FLEET = 20
SECRET = bytes.fromhex("5ec7e75ec7e75ec7e75ec7e75ec7e75e")


@dataclass
class Bench:
    url: str
    stats_url: str
    reset_url: str
    cache: Path
    logs: Path


def _http(url: str, method: str = "GET") -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
        return json.loads(response.read())


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bench(infra: EmbeddedInfra, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bench]:
    work = tmp_path_factory.mktemp("bench")
    data_dir, cache = work / "data", work / "cache"
    vendor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.bench.vendor", "--seed", SEED, "--fleet", str(FLEET),
        "--server-data-dir", str(data_dir), "--cache-dir", str(cache),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=(work / "vendor.log").open("wb"),
    )  # fmt: skip
    assert vendor.stdout is not None
    stack: Stack | None = None
    try:
        ready = json.loads(await asyncio.wait_for(vendor.stdout.readline(), 120))
        assert ready["event"] == "ready", ready
        env = ready["env"]
        settings = stack_settings(
            infra,
            data_dir,
            sample_kds_url=env["REMITS_SAMPLE_KDS_URL"],
            snp_kds_url=env["REMITS_SNP_KDS_URL"],
            snp_roots_dir=Path(env["REMITS_SNP_ROOTS_DIR"]),
            dcap_pcs_url=env["REMITS_DCAP_PCS_URL"],
            dcap_root_ca_path=Path(env["REMITS_DCAP_ROOT_CA_PATH"]),
        )
        stack = Stack(settings)
        await stack.start()
        for tee, name in (("sample", "measurement"), ("snp", "measurement"), ("tdx", "mr_td")):
            await add_reference_values(stack, tee, name, [DEMO_IMAGE_MEASUREMENT.hex()])
        await put_resource(stack, DEMO_RESOURCE, SECRET)
        yield Bench(stack.gateway_url, ready["stats_url"], ready["reset_url"], cache, work)
    finally:
        if stack is not None:
            await stack.stop()
        vendor.terminate()
        assert await asyncio.wait_for(vendor.wait(), 30) == 0


async def run_loadgen(
    bench: Bench, *args: str
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """One client process: its ready line, its result and its progress lines."""
    log = bench.logs / f"loadgen-{time.monotonic_ns()}.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.bench.loadgen", "--url", bench.url, "--seed", SEED,
        "--cache-dir", str(bench.cache), "--secret", SECRET.hex(), *args,
        cwd=ROOT, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log.open("wb"),
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    ready = json.loads(await asyncio.wait_for(proc.stdout.readline(), 120))
    assert ready["event"] == "ready", ready
    proc.stdin.write(json.dumps({"start_at": time.time() + 0.2}).encode() + b"\n")
    await proc.stdin.drain()
    progress, result = [], None
    async for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress":
            progress.append(event)
        else:
            result = event
    assert await asyncio.wait_for(proc.wait(), 30) == 0, log.read_text()[-2000:]
    assert result is not None and result["event"] == "result"
    return ready, result, progress


def assert_clean(result: dict[str, Any]) -> None:
    assert result["errors_by_reason"] == {}
    assert result["completed"] > 0 and result["completed"] == result["started"]
    assert LogHistogram.from_wire(result["latency"]).total == result["completed"]
    for phase in ("auth", "attest", "resource"):
        assert LogHistogram.from_wire(result["phases"][phase]).total == result["completed"]
    assert result["secrets_verified"] > 0
    assert result["cpu_s"] > 0


@pytest.mark.parametrize("tee", ["sample", "snp", "tdx"])
async def test_closed_loop_reattest(bench: Bench, tee: str) -> None:
    ready, result, progress = await run_loadgen(
        bench, "--tee", tee, "--scenario", "reattest", "--first", "0", "--count", "5",
        "--concurrency", "4", "--warmup", "0.5", "--duration", "1.5", "--verify-every", "2",
    )  # fmt: skip
    assert ready["primed"] == 5 and ready["prime_errors"] == {}
    assert_clean(result)
    assert result["measured_s"] == 1.5 and result["fleet_exhausted"] is False
    assert {p["phase"] for p in progress} == {"warmup", "measure"}
    assert sum(LogHistogram.from_wire(p["hist"]).total for p in progress) >= result["completed"]


async def test_open_loop(bench: Bench) -> None:
    _, result, _ = await run_loadgen(
        bench, "--tee", "sample", "--scenario", "reattest", "--first", "0", "--count", "5",
        "--rate", "20", "--warmup", "0.5", "--duration", "1.5", "--verify-every", "2",
    )  # fmt: skip
    assert_clean(result)


async def test_boot_storm_fetches_each_new_chip_once(bench: Bench) -> None:
    _http(bench.reset_url, "POST")
    _, result, _ = await run_loadgen(
        bench, "--tee", "mix", "--scenario", "boot-storm", "--first", "10", "--count", "10",
        "--concurrency", "6", "--duration", "30", "--verify-every", "3",
    )  # fmt: skip
    assert_clean(result)
    assert result["fleet_exhausted"] is True and result["completed"] == 30
    assert result["measured_s"] < 30
    stats = _http(bench.stats_url)
    for tee in ("sample", "snp"):  # TDX guests carry their PCK: nothing per platform to fetch
        by_tee = stats["by_tee"][tee]
        assert by_tee["distinct_devices"] == 10 and by_tee["device_requests"] == 10, stats
        assert by_tee["errors"] == 0
    assert stats["max_fetches_per_key"] == 1
