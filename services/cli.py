"""The `remits` command: run the stack, one worker, the demo, the audit tail, provisioning."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from services.runtime import COMPONENTS, Stack, init_data_dir
from shared.config import Settings
from shared.embedded import ManagedServer, free_port, nats_server, redis_server


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host, int(port)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", help="NATS URL (default: start an embedded nats-server)")
    parser.add_argument("--redis", help="Redis URL (default: start an embedded redis-server)")
    parser.add_argument("--data-dir", help="keys, sample PKI and audit log (default: $REMITS_DATA_DIR or .remits)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remits", description="REMITS remote-attestation service")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the whole stack (embedded NATS and Redis unless URLs are given)")
    _common(up)
    up.add_argument("--http", type=_host_port, default=None, help="gateway HOST:PORT (default 127.0.0.1:8080)")
    up.add_argument("--kds", help="sample vendor endorsement server URL (default: start a local one)")
    up.add_argument("--reuse-port", action="store_true", help="let several `remits up` share the gateway port")
    up.add_argument("--processes", type=int, default=1, help="run the whole stack in N processes (multi-core)")

    worker = sub.add_parser("worker", help="run one component; several replicas may run at once")
    worker.add_argument("stage", choices=COMPONENTS)
    _common(worker)
    worker.add_argument("--http", type=_host_port, default=None, help="gateway HOST:PORT")
    worker.add_argument("--kds", help="sample vendor endorsement server URL")

    setup = sub.add_parser("setup", help="create or update the JetStream streams and consumers")
    setup.add_argument("--nats", help="NATS URL")

    demo = sub.add_parser("demo", help="run a simulated fleet through the HTTP KBS flow")
    demo.add_argument("--fleet", type=int, default=50)
    demo.add_argument("--bad", type=int, default=5)
    demo.add_argument("--tee", default="sample", choices=["sample", "snp", "tdx"])
    demo.add_argument("--json", action="store_true", help="one JSON object on stdout")
    demo.add_argument("--concurrency", type=int, default=100)
    demo.add_argument("--processes", type=int, default=1, help="server processes (0: in this process)")

    audit = sub.add_parser("audit", help="audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_sub.add_parser("tail", help="follow decisions live")
    tail.add_argument("--nats", help="NATS URL")
    tail.add_argument("--history", action="store_true", help="start from the first kept decision")

    verify = sub.add_parser("verify", help="verify evidence offline (outside the pipeline)")
    verify_sub = verify.add_subparsers(dest="verify_tee", required=True)
    vsnp = verify_sub.add_parser("snp", help="an AMD SEV-SNP report (raw 1184 bytes or guest evidence JSON)")
    vsnp.add_argument("report")
    vsnp.add_argument("--vek", help="the VCEK/VLEK (DER or PEM)")
    vsnp.add_argument("--certs-dir", help="offline directory holding the VEK (and optionally a .crl)")
    vsnp.add_argument("--kds", default="https://kdsintf.amd.com", help="AMD KDS base URL when no VEK is given")
    vsnp.add_argument("--at", help="verification time, ISO 8601 (default: now)")
    vsnp.add_argument("--json", action="store_true")
    vsnp.add_argument("--roots-dir", help=argparse.SUPPRESS)  # test vendors only
    from services.verify_tdx_cli import add_verify_parsers

    add_verify_parsers(verify_sub)

    kds = sub.add_parser("kds", help="run the sample vendor's endorsement (key) server")
    kds.add_argument("--data-dir", help="holds sample-pki/ and enrolled device certificates in sample-kds/")
    kds.add_argument("--http", type=_host_port, default=("127.0.0.1", 8099), help="HOST:PORT (default 127.0.0.1:8099)")

    bench = sub.add_parser("bench", help="benchmark: attestations/s and p50/p99 latency end to end")
    bench.add_argument("--fleet", type=int, default=400, help="attestations per round")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--concurrency", type=int, default=64)
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--tee", default="sample", choices=["sample", "snp", "tdx"])
    bench.add_argument("--processes", type=int, default=1, help="server processes (0: in this process)")

    bench_verify = sub.add_parser("bench-verify", help="benchmark: one SNP report (warm cache) vs one raw ECDSA P-384 verify")
    bench_verify.add_argument("--iterations", type=int, default=2000)
    bench_verify.add_argument("--tee", default="snp", choices=["snp", "tdx"])
    bench_verify.add_argument("--json", action="store_true")

    resource = sub.add_parser("resource", help="provision a secret resource")
    resource.add_argument("action", choices=["put"])
    resource.add_argument("path", help="<repository>/<type>/<tag>")
    resource.add_argument("--file", required=True, help="file holding the secret")
    resource.add_argument("--redis", help="Redis URL")

    refval = sub.add_parser("refval", help="provision reference values")
    refval.add_argument("action", choices=["add"])
    refval.add_argument("tee")
    refval.add_argument("name", help="e.g. measurement, min_svn, allow_debug")
    refval.add_argument("values", nargs="+")
    refval.add_argument("--redis", help="Redis URL")
    return parser


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    overrides: dict[str, object] = dict(extra)
    if getattr(args, "nats", None):
        overrides["nats_url"] = args.nats
    if getattr(args, "redis", None):
        overrides["redis_url"] = args.redis
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "http", None):
        overrides["http_host"], overrides["http_port"] = args.http
    if getattr(args, "kds", None):
        overrides["sample_kds_url"] = args.kds
    if getattr(args, "reuse_port", False):
        overrides["http_reuse_port"] = True
    return Settings.from_env(**overrides)


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


@contextlib.asynccontextmanager
async def _infrastructure(args: argparse.Namespace, workdir: Path) -> AsyncIterator[dict[str, str]]:
    """Embedded NATS and/or Redis for whichever URL was not given; stopped again on exit."""
    urls: dict[str, str] = {}
    started: list[ManagedServer] = []
    try:
        if not getattr(args, "nats", None):
            nats = nats_server(workdir / "infra")
            await asyncio.to_thread(nats.start)
            started.append(nats)
            urls["nats_url"] = f"nats://127.0.0.1:{nats.port}"
        if not getattr(args, "redis", None):
            redis = redis_server(workdir / "infra")
            await asyncio.to_thread(redis.start)
            started.append(redis)
            urls["redis_url"] = f"redis://127.0.0.1:{redis.port}/0"
        yield urls
    finally:
        for server in started:
            await asyncio.to_thread(server.stop)


async def _local_kds(settings: Settings, host: str = "127.0.0.1", port: int = 0):  # type: ignore[no-untyped-def]
    from services.runtime import init_data_dir
    from shared.platforms.sample.endorsement_server import LocalEndorsementServer
    from shared.platforms.sample.pki import VendorPKI

    init_data_dir(settings)
    pki = VendorPKI.load(settings.sample_pki_dir)
    kds = LocalEndorsementServer({}, pki.chain_pem(), device_dir=settings.data_dir / "sample-kds")
    await kds.start(host, port)
    return pki, kds


async def cmd_up(args: argparse.Namespace) -> int:
    if args.processes < 1:
        print("remits up: --processes must be at least 1", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir) if args.data_dir else Settings.from_env().data_dir
    async with _infrastructure(args, data_dir) as urls:
        extra: dict[str, object] = dict(urls)
        if args.processes > 1:
            # Every process serves the same gateway port (SO_REUSEPORT); the kernel spreads
            # connections, and JetStream spreads stage work over the shared durable consumers.
            port = Settings.from_env().http_port if not args.http else args.http[1]
            extra.update(http_reuse_port=True, http_port=port or free_port())
        settings = _settings(args, **extra)
        kds = None
        if not args.kds:
            _, kds = await _local_kds(settings)
            settings = _settings(args, **extra, sample_kds_url=kds.base_url)
        stack = Stack(settings)
        await stack.start()
        _stop_on_signals(stack.stop_event)
        children = [
            await _spawn_server(settings, settings.http_port, settings.data_dir / f"up-{index}.log")
            for index in range(1, args.processes)
        ]
        print(f"REMITS gateway ready at {stack.gateway_url}", flush=True)
        print(
            f"  nats={settings.nats_url} redis={settings.redis_url} sample-kds={settings.sample_kds_url}"
            f" processes={args.processes}",
            flush=True,
        )
        await stack.stop_event.wait()
        for child in children:
            if child.returncode is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                await asyncio.wait_for(child.wait(), 15)
            except TimeoutError:
                child.kill()
        await stack.stop()
        if kds is not None:
            await kds.stop()
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings(args)
    stack = Stack(settings, components=(args.stage,), setup_topology=False)
    await stack.start()
    _stop_on_signals(stack.stop_event)
    if stack.gateway_url:
        print(f"REMITS gateway ready at {stack.gateway_url}", flush=True)
    await stack.stop_event.wait()
    await stack.stop()
    return 0


async def cmd_setup(args: argparse.Namespace) -> int:
    from shared.bus import connect, ensure_topology

    settings = _settings(args)
    nc, js = await connect(settings.nats_url, "remits-setup")
    await ensure_topology(js, settings)
    await nc.drain()
    print("streams and consumers ready")
    return 0


async def _simulated_vendor(args: argparse.Namespace, settings: Settings):  # type: ignore[no-untyped-def]
    """The simulated vendor whose guests the fleet runs, and the settings that trust it."""
    from services.demo.fleet import SampleFleet, SnpFleet

    if args.tee == "snp":
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
        return SnpFleet(kds), kds, extra
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
    pki, kds = await _local_kds(settings)
    return SampleFleet(pki, kds), kds, {"sample_kds_url": kds.base_url}


@contextlib.asynccontextmanager
async def _fleet_target(args: argparse.Namespace, workdir: Path):  # type: ignore[no-untyped-def]
    """Embedded NATS/Redis, the simulated vendor's key server, and the REMITS stack: in this
    process (--processes 0) or as N `remits up` server processes sharing one port (SO_REUSEPORT),
    so the simulated fleet's own crypto does not compete with the service for one event loop."""
    from shared.cache import Store

    args.nats = args.redis = None
    async with _infrastructure(args, workdir) as urls:
        base = {**urls, "data_dir": workdir / "data", "http_port": 0}
        settings = _settings(args, **base)
        init_data_dir(settings)
        fleet, kds, extra = await _simulated_vendor(args, settings)
        settings = _settings(args, **base, **extra)
        store = Store.from_url(settings.redis_url)
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
                    servers.append(await _spawn_server(settings, port, workdir / f"server-{index}.log"))
                url = f"http://127.0.0.1:{port}"
            yield url, fleet, store
        finally:
            if stack is not None:
                await stack.stop()
            for proc in servers:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in servers:
                try:
                    await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    proc.kill()
            await store.close()
            await kds.stop()


async def _spawn_server(settings: Settings, port: int, log_path: Path) -> asyncio.subprocess.Process:
    argv = [
        sys.executable, "-m", "services.cli", "up",
        "--nats", settings.nats_url, "--redis", settings.redis_url,
        "--http", f"{settings.http_host}:{port}", "--kds", settings.sample_kds_url,
        "--data-dir", str(settings.data_dir), "--reuse-port",
    ]
    env = dict(os.environ, REMITS_SNP_KDS_URL=settings.snp_kds_url, REMITS_DCAP_PCS_URL=settings.dcap_pcs_url)
    if settings.snp_roots_dir is not None:
        env["REMITS_SNP_ROOTS_DIR"] = str(settings.snp_roots_dir)
    if settings.dcap_root_ca_path is not None:
        env["REMITS_DCAP_ROOT_CA_PATH"] = str(settings.dcap_root_ca_path)
    log = open(log_path, "wb")  # noqa: ASYNC230 - handed to the child, closed right after
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=log, env=env)
    log.close()
    assert proc.stdout is not None
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line:
                raise RuntimeError(f"server exited early; see {log_path}")
            if line.startswith(b"REMITS gateway ready"):
                return proc
    except BaseException:
        proc.kill()
        raise


async def cmd_demo(args: argparse.Namespace) -> int:
    from services.demo.fleet import run_fleet

    if args.fleet < 1 or not 0 <= args.bad <= args.fleet:
        print("remits demo: need --fleet >= 1 and 0 <= --bad <= --fleet", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="remits-demo-") as tmp:
        async with _fleet_target(args, Path(tmp)) as (url, fleet, store):
            summary = await run_fleet(url, fleet, store, args.fleet, args.bad, args.concurrency)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"REMITS demo: {summary['submitted']} simulated guests ({args.bad} deliberately bad)")
        print(
            f"  affirming {summary['affirming']}, warning {summary['warning']}, "
            f"contraindicated {summary['contraindicated']}, rejected {summary['rejected']}, errors {summary['errors']}"
        )
        print(f"  secrets released: {summary['secrets_released']}")
        print(
            f"  {summary['attestations_per_s']} attestations/s over {summary['elapsed_s']} s; "
            f"latency p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
        )
        for reason, count in summary["rejection_reasons"].items():
            print(f"  rejected {count:>4}  {reason}")
    return 0 if summary["errors"] == 0 else 1


async def cmd_kds(args: argparse.Namespace) -> int:
    settings = _settings(argparse.Namespace(data_dir=args.data_dir))
    host, port = args.http
    _, kds = await _local_kds(settings, host, port)
    print(f"sample KDS ready at {kds.base_url}", flush=True)
    stop = asyncio.Event()
    _stop_on_signals(stop)
    await stop.wait()
    await kds.stop()
    return 0


async def cmd_bench(args: argparse.Namespace) -> int:
    """Good guests only, several rounds on one warm stack: the first round pays the endorsement
    fetches (cold cache), later rounds are the steady state."""
    from services.demo.fleet import run_fleet

    rounds = []
    with tempfile.TemporaryDirectory(prefix="remits-bench-") as tmp:
        async with _fleet_target(args, Path(tmp)) as (url, fleet, store):
            for _ in range(args.rounds):
                rounds.append(await run_fleet(url, fleet, store, args.fleet, 0, args.concurrency))
    keys = ("attestations_per_s", "p50_ms", "p99_ms", "affirming", "errors")
    report = {"fleet": args.fleet, "concurrency": args.concurrency, "rounds": [{k: r[k] for k in keys} for r in rounds]}
    if args.json:
        print(json.dumps(report))
    else:
        for i, r in enumerate(report["rounds"], 1):
            print(
                f"round {i}: {r['attestations_per_s']:>7} attestations/s  p50 {r['p50_ms']:>7} ms  "
                f"p99 {r['p99_ms']:>7} ms  ({r['affirming']}/{args.fleet} affirming)"
            )
    return 0 if all(r["errors"] == 0 and r["affirming"] == args.fleet for r in rounds) else 1


async def cmd_audit_tail(args: argparse.Namespace) -> int:
    from services.audit.worker import tail
    from shared.bus import connect

    settings = _settings(args)
    nc, js = await connect(settings.nats_url, "remits-audit-tail")
    stop = asyncio.Event()
    _stop_on_signals(stop)
    try:
        await tail(js, stop, history=args.history)
    finally:
        await nc.drain()
    return 0


async def cmd_resource(args: argparse.Namespace) -> int:
    from shared.cache import Store

    store = Store.from_url(_settings(args).redis_url)
    try:
        secret = await asyncio.to_thread(Path(args.file).read_bytes)
        await store.put_resource(args.path, secret)
    finally:
        await store.close()
    print(f"stored {args.path}")
    return 0


async def cmd_refval(args: argparse.Namespace) -> int:
    from shared.cache import Store

    store = Store.from_url(_settings(args).redis_url)
    try:
        await store.add_reference_values(args.tee, args.name, list(args.values))
    finally:
        await store.close()
    print(f"added {len(args.values)} value(s) to {args.tee}/{args.name}")
    return 0


def _install_fast_loop() -> None:
    # uvloop roughly halves the event-loop overhead per message; plain asyncio still works without it.
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _install_fast_loop()
    commands = {
        "up": cmd_up,
        "worker": cmd_worker,
        "setup": cmd_setup,
        "demo": cmd_demo,
        "resource": cmd_resource,
        "refval": cmd_refval,
        "kds": cmd_kds,
        "bench": cmd_bench,
    }
    if args.command == "audit":
        return asyncio.run(cmd_audit_tail(args))
    if args.command == "bench-verify":
        if args.tee == "tdx":
            from services.bench_verify_tdx import run as run_tdx

            result = run_tdx(args.iterations)
            if args.json:
                print(json.dumps(result))
            else:
                print(
                    f"two raw ECDSA P-256 verifies {result['raw_two_ecdsa_p256_verifies_us']} us; TDX quote: "
                    f"warm {result['tdx_quote_warm_us']} us ({result['warm_over_raw']}x), "
                    f"verify_quote repeated {result['tdx_quote_verify_quote_repeat_us']} us, cold {result['tdx_quote_cold_us']} us"
                )
            return 0
        from services.bench_verify import run

        result = run(args.iterations)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"raw ECDSA P-384 verify {result['raw_ecdsa_p384_verify_us']} us; SNP report, warm cache "
                f"{result['snp_report_warm_us']} us ({result['warm_over_raw']}x raw); cold {result['snp_report_cold_us']} us"
            )
        return 0
    if args.command == "verify":
        if args.verify_tee in ("tdx", "sgx"):
            from services.verify_tdx_cli import main_verify_dcap

            return main_verify_dcap(args)
        from services.verify_cli import main_verify

        return main_verify(args)
    return asyncio.run(commands[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
