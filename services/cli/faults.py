"""`remits faults run`: the fault-injection suite (services/faults) and its results table."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    faults = sub.add_parser(
        "faults",
        help="fault injection: kill stages, stop NATS/Redis, kill a NATS cluster node, fail Redis over, break the "
        "vendor, poison the bus, skew clocks",
    )
    commands = faults.add_subparsers(dest="faults_command", required=True)
    run = commands.add_parser(
        "run",
        help="run every fault under load and count lost, duplicated and unaffirmed releases",
        description=(
            "Starts NATS, Redis, the sample vendor and one process per REMITS component, runs a "
            "small fleet under load, injects each fault in turn, and writes the results table. The "
            "high-availability faults run afterwards on a 3-node NATS cluster and Redis Sentinel."
        ),
    )
    run.add_argument("--long", action="store_true", help="a soak: longer faults and more load (not for CI)")
    run.add_argument(
        "--only", metavar="NAME", help="only the faults whose name contains NAME (e.g. 'SIGKILL', 'vendor')"
    )
    run.add_argument("--out", type=Path, help="write the markdown results here (e.g. docs/reliability.md)")
    run.add_argument("--json", type=Path, help="also write the rows as JSON here")
    run.add_argument(
        "--keep-logs", type=Path, metavar="DIR", help="copy every process's and server's log here at the end"
    )
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="simulated vendor and certificates (default ~/.cache/remits/bench)",
    )
    run.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from services.bench import fleet
    from services.faults import markdown, suite

    cache_dir = args.cache_dir or fleet.DEFAULT_CACHE_DIR
    # Before any event loop or thread: issuing the certificates forks worker processes.
    issued = suite.preissue(args.long, cache_dir)
    command = (
        "remits faults run"
        + (" --long" if args.long else "")
        + (f" --only {args.only!r}" if args.only else "")
    )
    result = asyncio.run(
        suite.run_suite(
            long=args.long,
            only=args.only,
            cache_dir=cache_dir,
            issued=issued,
            command=command,
            keep_logs=args.keep_logs,
        )
    )
    text = markdown.render(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    if args.json:
        args.json.write_text(json.dumps({"passed": result.passed, "seconds": round(result.seconds, 1),
                                         "rows": [r.to_json() for r in result.rows]}, indent=2))  # fmt: skip
    return 0 if result.passed else 1
