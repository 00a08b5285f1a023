"""`remits resource` and `remits refval`: provisioning secrets and reference values."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from services.cli.common import settings_from_args


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resource = sub.add_parser("resource", help="provision a secret resource")
    resource.add_argument("action", choices=["put"])
    resource.add_argument("path", help="<repository>/<type>/<tag>")
    resource.add_argument("--file", required=True, help="file holding the secret")
    resource.add_argument("--redis", help="Redis URL")
    resource.set_defaults(run=lambda args: asyncio.run(cmd_resource(args)))

    refval = sub.add_parser("refval", help="provision reference values")
    refval.add_argument("action", choices=["add"])
    refval.add_argument("tee")
    refval.add_argument("name", help="e.g. measurement, min_svn, allow_debug")
    refval.add_argument("values", nargs="+")
    refval.add_argument("--redis", help="Redis URL")
    refval.set_defaults(run=lambda args: asyncio.run(cmd_refval(args)))


async def cmd_resource(args: argparse.Namespace) -> int:
    from shared.cache import Store

    store = Store.from_url(settings_from_args(args).redis_url)
    try:
        secret = await asyncio.to_thread(Path(args.file).read_bytes)
        await store.put_resource(args.path, secret)
    finally:
        await store.close()
    print(f"stored {args.path}")
    return 0


async def cmd_refval(args: argparse.Namespace) -> int:
    from shared.cache import Store

    store = Store.from_url(settings_from_args(args).redis_url)
    try:
        await store.add_reference_values(args.tee, args.name, list(args.values))
    finally:
        await store.close()
    print(f"added {len(args.values)} value(s) to {args.tee}/{args.name}")
    return 0
