"""`remits bench`: attestations/s and latency end to end through the HTTP KBS flow."""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from services.cli.demo import fleet_target


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmark: attestations/s and p50/p99 latency end to end")
    bench.add_argument("--fleet", type=int, default=400, help="attestations per round")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--concurrency", type=int, default=64)
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--tee", default="sample", choices=["sample", "snp", "tdx"])
    bench.add_argument("--processes", type=int, default=1, help="server processes (0: in this process)")
    bench.set_defaults(run=lambda args: asyncio.run(cmd_bench(args)))


async def cmd_bench(args: argparse.Namespace) -> int:
    from services.demo.fleet import run_fleet

    rounds = []
    with tempfile.TemporaryDirectory(prefix="remits-bench-") as tmp:
        async with fleet_target(args, Path(tmp)) as (url, fleet, store):
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
