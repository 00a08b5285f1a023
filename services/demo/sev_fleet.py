"""`remits demo --tee sev`: libkrun-style VMMs on simulated SEV-ES hosts launching one workload
through a REMITS stack: each attests its launch before the guest runs and, when affirmed,
injects the workload's secret. The bad ones: a tampered image, a VMM that launches with another
policy than the session's, a host whose chain comes from an unknown vendor, and a replayed
measurement."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from services.demo.fleet import DeviceRun, plan_fleet, summarize
from services.demo.sev_sim import SEV_BAD_KINDS, SimulatedAmdSev, SimulatedSevFirmware, SimulatedVmm
from shared.platforms.sev.session import SevPolicy

WORKLOAD = "krun-demo"
POLICY = SevPolicy(nodbg=True, noks=True, es=True).encode()
# The workload's launch: firmware, kernel bundle, initrd and zero page (LAUNCH_UPDATE_DATA), and
# the VMSAs of two vCPUs (LAUNCH_UPDATE_VMSA).
IMAGE = (
    hashlib.sha256(b"remits demo qboot").digest() * 2048,
    hashlib.sha512(b"remits demo kernel bundle").digest() * 1024,
    hashlib.sha512(b"remits demo initrd").digest() * 512,
    bytes(4096),
)
VMSAS = (b"\x01" * 4096, b"\x02" * 4096)


@dataclass
class SevFleet:
    """The simulated hosts' vendor and the workload the operator registers."""

    platform: SimulatedAmdSev
    tee: str = "sev"
    resource_path: str = f"sev/workload/{WORKLOAD}"
    _digest: bytes = field(default=b"", init=False)

    def references(self) -> list[tuple[str, str, list[str]]]:
        digest = SimulatedVmm("", SimulatedSevFirmware(self.platform), workload_id=WORKLOAD, regions=IMAGE, vmsas=VMSAS).launch_digest
        return [(f"policy.{WORKLOAD}", "", [hex(POLICY)]), (f"launch_digest.{WORKLOAD}", "", [digest.hex()])]


def plan_kinds(fleet: int, bad: int) -> list[str]:
    """The SEV bad kinds in place of the KBS ones, spread through the fleet the same way."""
    generic = plan_fleet(fleet, bad)
    bad_index = 0
    kinds = []
    for kind in generic:
        if kind == "good":
            kinds.append("good")
        else:
            kinds.append(SEV_BAD_KINDS[bad_index % len(SEV_BAD_KINDS)])
            bad_index += 1
    return kinds


async def run_sev_fleet(base_url: str, fleet: SevFleet, secret: bytes, size: int, bad: int, concurrency: int) -> dict[str, Any]:
    kinds = plan_kinds(size, bad)
    connector = aiohttp.TCPConnector(limit=concurrency)
    gate = asyncio.Semaphore(concurrency)

    async def one(kind: str) -> DeviceRun:
        async with gate:
            vmm = SimulatedVmm(
                base_url, SimulatedSevFirmware(fleet.platform), workload_id=WORKLOAD,
                regions=IMAGE, vmsas=VMSAS, connector=connector,
            )  # fmt: skip
            result = await vmm.run(kind)
        released = result.secret_received == secret
        status = {"attested": "affirming", "launch_failed": "rejected"}.get(result.status, result.status)
        return DeviceRun(kind, status, result.reason, released, result.latency_ms)

    started = time.perf_counter()
    runs = await asyncio.gather(*(one(kind) for kind in kinds))
    elapsed = time.perf_counter() - started
    await connector.close()
    return summarize(list(runs), elapsed)
