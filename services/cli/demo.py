"""`remits demo`: a simulated fleet attesting through the HTTP KBS flow, good and bad guests mixed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from services.cli.common import (
    embedded_infrastructure,
    settings_from_args,
    spawn_server,
    start_local_kds,
    stop_processes,
)
from services.demo.fleet import provision
from services.runtime import Stack, init_data_dir
from shared.config import Settings
from shared.embedded import free_port
from shared.trust.operator import operator_trust


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    demo = sub.add_parser("demo", help="run a simulated fleet through the HTTP KBS flow")
    demo.add_argument("--fleet", type=int, default=50)
    demo.add_argument("--bad", type=int, default=5)
    demo.add_argument(
        "--tee", default="sample", choices=["sample", "snp", "tdx", "tpm", "az-snp-vtpm", "gcp-vtpm", "sev", "cca", "se"]
    )
    demo.add_argument("--json", action="store_true", help="one JSON object on stdout")
    demo.add_argument(
        "--cluster", type=int, default=0, metavar="N",
        help="a confidential cluster of N nodes joining over attested TLS instead of a fleet (--tee sample|snp|tdx; --bad K)",
    )  # fmt: skip
    demo.add_argument("--concurrency", type=int, default=100)
    demo.add_argument("--processes", type=int, default=1, help="server processes (0: in this process)")
    demo.add_argument(
        "--data-dir", default=None,
        help="keep the demo's data here (its audit trail, keys and JetStream store); default: a temporary directory",
    )  # fmt: skip
    demo.set_defaults(run=lambda args: asyncio.run(cmd_demo(args)))


async def simulated_vendor(args: argparse.Namespace, settings: Settings):  # type: ignore[no-untyped-def]
    """The simulated vendor whose guests the fleet runs, and the settings that trust it."""
    from services.demo.fleet import SampleFleet, SnpFleet

    if args.tee in ("snp", "az-snp-vtpm"):
        from services.demo.fleet import AzureSnpFleet
        from services.demo.snp_sim import LocalAmdKds, SimulatedAmd

        vendor = await asyncio.to_thread(SimulatedAmd.generate, "Milan")
        roots = settings.data_dir / "snp-test-roots" / "milan"
        roots.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        (roots / "ark.pem").write_bytes(vendor.ark.public_bytes(pem))
        (roots / "ask.pem").write_bytes(vendor.ask.public_bytes(pem))
        (roots / "asvk.pem").write_bytes(vendor.ask.public_bytes(pem))  # the demo issues no VLEKs
        kds = LocalAmdKds(vendor)
        await kds.start()
        extra = {"snp_roots_dir": roots.parent, "snp_kds_url": kds.base_url}
        return (AzureSnpFleet(kds) if args.tee == "az-snp-vtpm" else SnpFleet(kds)), kds, extra
    if args.tee == "sev":
        from services.demo.sev_fleet import SevFleet
        from services.demo.sev_sim import SimulatedAmdSev

        sev = await asyncio.to_thread(SimulatedAmdSev.generate, "Milan")
        roots = settings.data_dir / "sev-test-roots"
        generation = roots / sev.generation.value.lower()
        generation.mkdir(parents=True, exist_ok=True)
        (generation / "ark.cert").write_bytes(sev.ark)
        (generation / "ask.cert").write_bytes(sev.ask)
        return SevFleet(sev), _NoVendor(), {"sev_roots_dir": roots}
    if args.tee == "cca":
        from services.demo.cca_fleet import CcaFleet, LocalCcaTaServer

        ta = LocalCcaTaServer()
        await ta.start()
        return CcaFleet(ta), ta, {"cca_ta_url": ta.base_url}
    if args.tee == "se":
        from services.demo.se_fleet import SeFleet, write_se_dir

        se_fleet = await asyncio.to_thread(SeFleet.generate)
        se_dir = write_se_dir(settings.data_dir / "se", [se_fleet.host])
        return se_fleet, _NoVendor(), {"se_dir": se_dir}
    if args.tee == "gcp-vtpm":
        from services.demo.fleet import GcpFleet
        from services.demo.gcp_sim import SimulatedGoogleCa

        ca = await asyncio.to_thread(SimulatedGoogleCa.generate)
        roots = settings.data_dir / "gcp-test-roots.pem"
        roots.write_bytes(ca.roots_pem())
        return GcpFleet(ca), _NoVendor(), {"gcp_ak_roots_path": roots}
    if args.tee == "tdx":
        from services.demo.fleet import TdxFleet
        from services.demo.local_pcs import LocalPcs
        from services.demo.tdx_sim import SimulatedIntel

        intel = await asyncio.to_thread(SimulatedIntel.generate)
        root = settings.data_dir / "tdx-test-root.pem"
        root.write_bytes(intel.root_pem)
        pcs_server = LocalPcs.from_simulated(intel)
        await pcs_server.start()
        return TdxFleet(intel), pcs_server, {"dcap_root_ca_path": root, "dcap_pcs_url": pcs_server.base_url}
    if args.tee == "tpm":
        from services.demo.fleet import TpmFleet

        fleet = TpmFleet(args.fleet)
        await asyncio.to_thread(fleet.prepare)
        return fleet, _NoVendor(), {}
    pki, kds = await start_local_kds(settings)
    return SampleFleet(pki, kds), kds, {"sample_kds_url": kds.base_url}


class _NoVendor:
    """A plain TPM's trust is the operator's AK registry: there is no vendor server to run."""

    async def stop(self) -> None:
        return None


@contextlib.asynccontextmanager
async def fleet_target(args: argparse.Namespace, workdir: Path):  # type: ignore[no-untyped-def]
    """Embedded NATS/Redis, the simulated vendor's key server, and the REMITS stack: in this
    process (--processes 0) or as N `remits up` server processes sharing one port (SO_REUSEPORT),
    so the simulated fleet's own crypto does not compete with the service for one event loop."""
    args.nats = args.redis = None
    data_dir = workdir if getattr(args, "data_dir", None) else workdir / "data"
    async with embedded_infrastructure(args, workdir, data_dir / "credentials") as urls:
        base = {**urls, "data_dir": data_dir, "http_port": 0}
        settings = settings_from_args(args, **base)
        init_data_dir(settings)
        fleet, kds, extra = await simulated_vendor(args, settings)
        settings = settings_from_args(args, **base, **extra)
        secret = os.urandom(32)
        async with operator_trust(settings) as admin:  # before any service starts: they find it there
            await provision(admin, fleet, secret)
        servers: list[asyncio.subprocess.Process] = []
        stack: Stack | None = None
        try:
            if args.processes <= 0:
                stack = Stack(settings)
                await stack.start()
                url = stack.gateway_url
            else:
                port = free_port()
                for index in range(args.processes):
                    log_path = workdir / f"server-{index}.log"
                    servers.append(await spawn_server(settings, port, log_path, audit=index == 0))
                url = f"http://127.0.0.1:{port}"
            yield url, fleet, secret
        finally:
            if stack is not None:
                await stack.stop()
            await stop_processes(servers)
            await kds.stop()


async def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo.fleet import run_fleet

    if args.cluster:
        from services.cli.demo_cluster import cmd_cluster_demo

        return await cmd_cluster_demo(args)
    if args.fleet < 1 or not 0 <= args.bad <= args.fleet:
        print("remits demo: need --fleet >= 1 and 0 <= --bad <= --fleet", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as cleanup:
        workdir = Path(args.data_dir) if args.data_dir else Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="remits-demo-")))
        async with fleet_target(args, workdir) as (url, fleet, secret):
            if args.tee == "sev":
                from services.demo.sev_fleet import run_sev_fleet

                summary = await run_sev_fleet(url, fleet, secret, args.fleet, args.bad, args.concurrency)
            else:
                summary = await run_fleet(url, fleet, secret, args.fleet, args.bad, args.concurrency)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"REMITS demo: {summary['submitted']} simulated guests ({args.bad} deliberately bad)")
        print(
            f"  affirming {summary['affirming']}, warning {summary['warning']}, "
            f"contraindicated {summary['contraindicated']}, rejected {summary['rejected']}, errors {summary['errors']}"
        )
        print(f"  secrets released: {summary['secrets_released']}")
        if args.data_dir:
            print(f"  audit trail: {Path(args.data_dir) / 'audit.jsonl'} (`remits audit verify` checks it)")
        print(
            f"  {summary['attestations_per_s']} attestations/s over {summary['elapsed_s']} s; "
            f"latency p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
        )
        for reason, count in summary["rejection_reasons"].items():
            print(f"  rejected {count:>4}  {reason}")
    return 0 if summary["errors"] == 0 else 1
