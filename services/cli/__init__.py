"""The `remits` command. One module per command group; each registers its subcommands and the
function that runs them (``args.run``)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.cli import (
    adminkeys,
    audit,
    bench,
    bench_verify,
    cluster,
    creds,
    demo,
    eventlog,
    faults,
    hsm,
    policy,
    provision,
    serve,
    tenant,
    token,
    tpm,
    verify,
)
from services.cli.common import settings_from_args

_GROUPS = (
    serve,
    creds,
    demo,
    bench,
    bench_verify,
    faults,
    verify,
    token,
    cluster,
    eventlog,
    tpm,
    audit,
    policy,
    provision,
    adminkeys,
    tenant,
    hsm,
)

# Kept under its old name: scripts and tests build Settings from parsed flags with it.
_settings = settings_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="remits", description="REMITS remote-attestation service")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.register(sub)
    return parser


def install_fast_loop() -> None:
    # uvloop roughly halves the event-loop overhead per message; plain asyncio still works without it.
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    install_fast_loop()
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
