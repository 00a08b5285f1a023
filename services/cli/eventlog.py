"""`remits eventlog FILE [--json]`: replay a TCG measured-boot event log (crypto-agile or SHA-1-only)
and print the PCR values it claims and what its events say.

No quote is involved: the output is what the log asserts, useful to derive reference values or to
see why a replay does not match. Exit codes: 0 printed, 1 the file is unreadable or does not parse.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    eventlog = sub.add_parser("eventlog", help="replay a TCG event log and print its PCRs and claims")
    eventlog.add_argument(
        "file", help="the binary log (e.g. /sys/kernel/security/tpm0/binary_bios_measurements)"
    )
    eventlog.add_argument("--json", action="store_true", help='print {"pcrs": ..., "claims": ...}')
    eventlog.set_defaults(run=run_eventlog)


def _report(data: bytes) -> tuple[dict[str, dict[str, str]], dict[str, Any], str]:
    from shared.platforms.tpm.eventlog import claims, extended_pcrs, parse, replay

    log = parse(data)
    shown = extended_pcrs(log)
    pcrs = {bank: {str(i): values[i].hex() for i in shown} for bank, values in replay(log).items()}
    kind = "crypto-agile" if log.crypto_agile else "SHA-1-only"
    return pcrs, claims(log), f"{kind} TCG event log, {len(log.events)} events, banks: {', '.join(log.banks)}"


def _line(value: object) -> str:
    return str(value).replace("\n", "\\n").replace("\t", "\\t")


def _table(pcrs: dict[str, dict[str, str]], found: dict[str, Any], title: str) -> str:
    lines = [title, ""]
    for bank, values in pcrs.items():
        lines.append(f"{bank} PCRs")
        lines.extend(f"  {index:>2}  {value}" for index, value in values.items())
        lines.append("")
    lines.append("claims (as the log states them; no quote checked)")
    width = max((len(key) for key in found), default=0)
    for key, value in found.items():
        if isinstance(value, list):
            lines.append(f"  {key:<{width}}  ({len(value)})")
            lines.extend(f"  {'':<{width}}  - {_line(item)}" for item in value)
        elif isinstance(value, dict):
            text = ", ".join(f"{k}: {v}" for k, v in value.items()) or "-"
            lines.append(f"  {key:<{width}}  {text}")
        else:
            lines.append(f"  {key:<{width}}  {'-' if value is None else _line(value)}")
    return "\n".join(lines)


def run_eventlog(args: argparse.Namespace) -> int:
    from shared.errors import RemitsError

    try:
        data = Path(args.file).read_bytes()
    except OSError as err:
        print(f"remits eventlog: cannot read {args.file}: {err.strerror or err}", file=sys.stderr)
        return 1
    try:
        pcrs, found, title = _report(data)
    except RemitsError as err:
        print(f"remits eventlog: {args.file}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"pcrs": pcrs, "claims": found}, indent=2))
    else:
        print(_table(pcrs, found, title))
    return 0
