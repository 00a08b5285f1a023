"""`remits audit`: the decision trail."""

from __future__ import annotations

import argparse
import asyncio

from services.cli.common import add_identity_flags, settings_from_args, stop_on_signals


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_sub.add_parser("tail", help="follow decisions live")
    tail.add_argument("--nats", help="NATS URL")
    tail.add_argument("--history", action="store_true", help="start from the first kept decision")
    add_identity_flags(tail)
    tail.set_defaults(run=lambda args: asyncio.run(cmd_audit_tail(args)))


async def cmd_audit_tail(args: argparse.Namespace) -> int:
    from services.audit.worker import tail
    from shared import credentials
    from shared.connections import connect_nats, identity_of

    settings = settings_from_args(args)
    # An ephemeral consumer on the decision stream: an operator's right, not the audit worker's.
    nc, js = await connect_nats(settings, identity_of(settings, credentials.ADMIN), "remits-audit-tail")
    stop = asyncio.Event()
    stop_on_signals(stop)
    try:
        await tail(js, stop, history=args.history)
    finally:
        await nc.drain()
    return 0
