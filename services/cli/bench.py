"""`remits bench`: rate, latency and cost per attestation, measured from outside the service."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from services.cli.serve import default_processes


def component_spec(value: str) -> tuple[str, int]:
    from services.runtime import COMPONENTS

    name, _, count = value.partition("=")
    if name not in COMPONENTS or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(f"expected COMPONENT=N with COMPONENT one of {', '.join(COMPONENTS)}, N >= 1")
    return name, int(count)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser(
        "bench",
        help="benchmark the service end to end: attestations/s, latency, CPU and round trips per attestation",
        description=(
            "Starts NATS, Redis, the simulated vendors, the REMITS processes and K load-generator "
            "processes, runs the KBS flow (auth, attest, fetch one resource) for --duration after "
            "--warmup, and reports what it measured from outside the service."
        ),
    )
    bench.add_argument("--tee", default="sample", choices=["sample", "snp", "tdx", "mix"])
    bench.add_argument(
        "--scenario", default="reattest", choices=["reattest", "boot-storm"],
        help="reattest: a known fleet attests again (endorsements cached); boot-storm: every attestation is a new chip",
    )
    load = bench.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, default=64, help="closed loop: guests in flight (default 64)")
    load.add_argument("--rate", type=float, help="open loop: arrivals per second (Poisson)")
    bench.add_argument("--duration", type=float, default=20.0, help="measured seconds (default 20)")
    bench.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring (default 5)")
    bench.add_argument("--clients", type=int, default=1, help="load-generator processes (default 1)")
    bench.add_argument("--fleet", type=int, default=0, help="devices (default: 1000 for reattest, enough for the run for boot-storm)")
    bench.add_argument(
        "--layout", default="split", choices=["split", "stack"],
        help="split: one process per component (CPU per stage); stack: whole-stack processes like `remits up`",
    )
    bench.add_argument("--processes", type=int, default=None, help="whole-stack processes for --layout stack (default: one per core)")
    bench.add_argument(
        "--replicas", type=component_spec, action="append", default=[], metavar="COMPONENT=N",
        help="extra processes for one component with --layout split, e.g. identity=1",
    )
    bench.add_argument("--crypto-threads", type=int, default=None, help="signature-check threads per process (0: inline)")
    bench.add_argument("--seed", default="remits-bench", help="names the simulated fleet (cached between runs)")
    bench.add_argument(
        "--cache-dir", type=Path, default=None, help="simulated vendors and their certificates (default ~/.cache/remits/bench)"
    )
    bench.add_argument(
        "--tenants", type=int, default=1,
        help="N > 1: create tenants bench-1..bench-N (the default tenant left out), provision each alike "
        "and spread the guests round-robin over them, each on its /t/<tenant>/kbs/v0 paths (default 1: the default tenant)",
    )  # fmt: skip
    bench.add_argument("--verify-every", type=int, default=10, help="clients decrypt every K-th released secret")
    bench.add_argument("--json", action="store_true", help="one JSON object on stdout")
    bench.add_argument("--out", type=Path, help="also write the JSON report to this file")
    bench.set_defaults(run=cmd_bench)

    capacity = sub.add_parser(
        "capacity", help="write the capacity model (docs/capacity.md) from two `remits bench --out` reports"
    )
    capacity.add_argument("reattest", type=Path, help="report of a --scenario reattest run")
    capacity.add_argument("boot_storm", type=Path, help="report of a --scenario boot-storm run")
    capacity.add_argument("--out", type=Path, help="write here instead of stdout")
    capacity.set_defaults(run=cmd_capacity)


def cmd_bench(args: argparse.Namespace) -> int:
    from services.bench.fleet import DEFAULT_CACHE_DIR
    from services.bench.report import format_table
    from services.bench.run import BenchConfig, run_bench

    if args.clients < 1 or args.duration <= 0 or args.warmup < 0 or (args.rate is not None and args.rate <= 0):
        print("remits bench: need --clients >= 1, --duration > 0, --warmup >= 0 and --rate > 0", file=sys.stderr)
        return 2
    if not 1 <= args.tenants <= 9999:
        print("remits bench: need 1 <= --tenants <= 9999", file=sys.stderr)
        return 2
    live = sys.stderr.isatty()

    def show(line: str) -> None:
        if live:
            print(f"\r\x1b[2K{line}", end="", file=sys.stderr, flush=True)

    config = BenchConfig(
        tee=args.tee,
        scenario=args.scenario,
        concurrency=args.concurrency,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        clients=args.clients,
        fleet=args.fleet,
        layout=args.layout,
        processes=args.processes or default_processes(),
        replicas=dict(args.replicas),
        seed=args.seed,
        cache_dir=args.cache_dir or DEFAULT_CACHE_DIR,
        verify_every=args.verify_every,
        crypto_threads=args.crypto_threads,
        tenants=args.tenants,
        progress=show,
    )
    result = asyncio.run(run_bench(config))
    if live:
        print(file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if args.json else format_table(result))
    return 0 if result["errors"] == 0 and result["completed"] > 0 else 1


def cmd_capacity(args: argparse.Namespace) -> int:
    from services.bench.capacity import render

    reattest, storm = (json.loads(path.read_text()) for path in (args.reattest, args.boot_storm))
    if reattest.get("scenario") != "reattest" or storm.get("scenario") != "boot-storm":
        print("remits capacity: give a reattest report, then a boot-storm report", file=sys.stderr)
        return 2
    text = render(reattest, storm, (args.reattest.name, args.boot_storm.name))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    else:
        print(text, end="")
    return 0
