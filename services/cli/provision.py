"""`remits resource` and `remits refval`: provisioning secrets and reference values."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from services.cli.common import add_identity_flags, settings_from_args
from shared import credentials
from shared.cache import Store
from shared.connections import identity_of, open_store


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resource = sub.add_parser("resource", help="provision a secret resource")
    resource.add_argument("action", choices=["put"])
    resource.add_argument("path", help="<repository>/<type>/<tag>")
    resource.add_argument("--file", required=True, help="file holding the secret")
    resource.add_argument("--redis", help="Redis URL (the operator's user and password in it, or --credentials-dir)")
    add_identity_flags(resource)
    resource.set_defaults(run=lambda args: asyncio.run(cmd_resource(args)))

    refval = sub.add_parser("refval", help="provision reference values")
    refval.add_argument("action", choices=["add"])
    refval.add_argument("tee")
    refval.add_argument("name", help="e.g. measurement, min_svn, allow_debug")
    refval.add_argument("values", nargs="+")
    refval.add_argument("--redis", help="Redis URL (the operator's user and password in it, or --credentials-dir)")
    add_identity_flags(refval)
    refval.set_defaults(run=lambda args: asyncio.run(cmd_refval(args)))


def _operator_store(args: argparse.Namespace) -> Store:
    """Provisioning is the operator's: the admin identity (its Redis user may write what no
    component's can)."""
    settings = settings_from_args(args)
    return open_store(settings, identity_of(settings, credentials.ADMIN))


async def cmd_resource(args: argparse.Namespace) -> int:
    store = _operator_store(args)
    try:
        secret = await asyncio.to_thread(Path(args.file).read_bytes)
        await store.put_resource(args.path, secret)
    finally:
        await store.close()
    print(f"stored {args.path}")
    return 0


async def cmd_refval(args: argparse.Namespace) -> int:
    store = _operator_store(args)
    try:
        await store.add_reference_values(args.tee, args.name, list(args.values))
    finally:
        await store.close()
    print(f"added {len(args.values)} value(s) to {args.tee}/{args.name}")
    return 0
