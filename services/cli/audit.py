"""`remits audit`: the decision trail (tail, export, verify, replay)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from services.cli.admin_client import add_local_flags, operator_nats
from services.cli.common import add_identity_flags, settings_from_args, stop_on_signals


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    tail = audit_sub.add_parser("tail", help="follow decisions and admin changes live")
    tail.add_argument("--nats", help="NATS URL")
    tail.add_argument("--history", action="store_true", help="start from the first kept event")
    add_identity_flags(tail)
    tail.set_defaults(run=lambda args: asyncio.run(cmd_audit_tail(args)))

    export = audit_sub.add_parser("export", help="write the chained trail (from the audit stream) as JSON lines")
    export.add_argument("file", help="where to write it (- for stdout)")
    add_local_flags(export)
    export.set_defaults(run=lambda args: asyncio.run(cmd_audit_export(args)))

    verify = audit_sub.add_parser("verify", help="check the trail's chain and signatures: exit 0 intact, 1 not")
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument("file", nargs="?", help="a trail file (audit.jsonl, or one `audit export` wrote)")
    source.add_argument("--stream", action="store_true", help="the trail kept on the audit stream")
    verify.add_argument(
        "--key", action="append", default=[], help="audit public key (PEM; default: the data directory's)"
    )
    verify.add_argument("--partial", action="store_true", help="the trail may start after record 1 (an excerpt)")
    add_local_flags(verify)
    verify.set_defaults(run=lambda args: asyncio.run(cmd_audit_verify(args)))

    feed = audit_sub.add_parser(
        "feed", help="a tenant's audit events, as its team's reader: the history it missed, then live (JSON lines)"
    )
    feed.add_argument("tenant")
    feed.add_argument("--nats", required=True, help="NATS URL")
    feed.add_argument("--seed", required=True, type=Path, help="the reader's nkey seed (remits creds --tenant-audit)")
    feed.add_argument(
        "--idle-exit", type=float, default=0.0, metavar="S",
        help="exit once caught up and nothing came for S seconds (default: follow until interrupted)",
    )  # fmt: skip
    feed.set_defaults(run=lambda args: asyncio.run(cmd_audit_feed(args)))

    replay = audit_sub.add_parser("replay", help="run a past appraisal again and compare")
    replay.add_argument("request_id")
    replay.add_argument("--current", action="store_true", help="against today's policy and reference values")
    add_local_flags(replay)
    replay.set_defaults(run=lambda args: asyncio.run(cmd_audit_replay(args)))


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


async def stream_records(js: Any) -> list[bytes]:
    """Every record line kept on the audit stream, in order."""
    from services.audit.trail import read_audit_stream

    return await read_audit_stream(js)


async def cmd_audit_export(args: argparse.Namespace) -> int:
    async with operator_nats(args) as (_settings, _nc, js):
        lines = await stream_records(js)
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    if args.file == "-":
        sys.stdout.buffer.write(data)
    else:
        await asyncio.to_thread(Path(args.file).write_bytes, data)
        print(f"{len(lines)} records written to {args.file}", file=sys.stderr)
    return 0


async def cmd_audit_verify(args: argparse.Namespace) -> int:
    from services.audit.verify import format_result, load_keys, verify_file, verify_records
    from services.cli.admin_client import local_settings

    settings = local_settings(args)
    key_paths = [Path(k) for k in args.key]
    default_key = settings.audit_key_path.with_name(settings.audit_key_path.stem + ".pub.pem")
    if not key_paths and default_key.exists():
        key_paths = [default_key]
    if not key_paths:
        print("remits audit verify: no audit public key (--key, or the data directory's)", file=sys.stderr)
        return 2
    keys = load_keys(key_paths)
    if args.stream:
        async with operator_nats(args) as (_settings, _nc, js):
            lines = await stream_records(js)
        result = verify_records(lines, keys, allow_partial=args.partial)
    else:
        result = await asyncio.to_thread(verify_file, Path(args.file), keys, allow_partial=args.partial)
    print(format_result(result))
    return 0 if result.ok else 1


async def cmd_audit_replay(args: argparse.Namespace) -> int:
    from services.audit.replay import ReplayError, replay

    async with operator_nats(args) as (settings, _nc, js):
        try:
            report = await replay(js, settings, args.request_id, current=args.current)
        except ReplayError as exc:
            print(f"remits audit replay: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0 if report["result"] == "same" else 1


def feed_lines(tenant: str, subject: str, reply: str, data: bytes, last_seq: int) -> tuple[list[dict[str, Any]], int]:
    """What one feed message prints (a "missed" line first when deliveries were lost, then the
    event), and the consumer sequence reached."""
    import base64

    from shared.tenant_feeds import delivery

    at = delivery(reply, tenant)
    if at is None:  # not a delivery of this feed: nothing to place it by
        return [{"ignored": subject}], last_seq
    out: list[dict[str, Any]] = []
    if at.consumer_seq > last_seq + 1:
        out.append({"missed": at.consumer_seq - last_seq - 1, "after_consumer_seq": last_seq})
    try:
        event: Any = json.loads(data)
    except ValueError:
        event = {"base64": base64.b64encode(data).decode()}
    out.append({"subject": subject, "stream_seq": at.stream_seq, "consumer_seq": at.consumer_seq, "event": event})
    return out, max(last_seq, at.consumer_seq)


async def cmd_audit_feed(args: argparse.Namespace) -> int:
    import nats

    from shared import credentials, tenant_feeds, tenants

    try:
        tenant = tenants.check_name(args.tenant)
    except tenants.BadTenant as error:
        print(f"remits audit feed: {error}", file=sys.stderr)
        return 2
    user = credentials.tenant_audit_user(tenant)
    nc = await nats.connect(
        args.nats, nkeys_seed=str(args.seed), inbox_prefix=credentials.inbox_prefix(user),
        name=f"remits-audit-feed-{tenant}", max_reconnect_attempts=-1,
    )  # fmt: skip
    stop = asyncio.Event()
    stop_on_signals(stop)
    state = {"last": 0, "pending": 0, "at": asyncio.get_running_loop().time()}

    async def on_message(msg: Any) -> None:
        lines, state["last"] = feed_lines(tenant, msg.subject, msg.reply or "", msg.data, state["last"])
        at = tenant_feeds.delivery(msg.reply or "", tenant)
        state["pending"] = at.pending if at is not None else state["pending"]
        state["at"] = asyncio.get_running_loop().time()
        for line in lines:
            print(json.dumps(line, sort_keys=True), flush=True)

    await nc.subscribe(tenant_feeds.subject(tenant), cb=on_message)
    try:
        while not stop.is_set():
            await asyncio.sleep(0.1)
            idle = asyncio.get_running_loop().time() - state["at"]
            if args.idle_exit > 0 and state["pending"] == 0 and idle >= args.idle_exit:
                break
    finally:
        await nc.close()
    return 0
