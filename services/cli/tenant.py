"""`remits tenant create|list|get|delete`: the namespaces teams attest and keep secrets in (the
operator's: only keys given to `remits up --admin-key`, or --local, manage tenants)."""

from __future__ import annotations

import argparse
import asyncio
import json

from services.cli.admin_client import add_admin_client_flags, admin_session, print_reply


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tenant = sub.add_parser("tenant", help="tenants: isolated policies, reference values, resources and keys")
    actions = tenant.add_subparsers(dest="tenant_command", required=True)

    create = actions.add_parser("create", help="create a tenant, or change its quotas")
    create.add_argument("name", help="1-31 of a-z, 0-9 and - (guests use /t/<name>/kbs/v0/...)")
    create.add_argument(
        "--attestations-per-s", type=int, default=0, metavar="N",
        help="attestations admitted per second, fleet-wide (0: no limit); over it guests get 429",
    )  # fmt: skip
    create.add_argument(
        "--max-resources", type=int, default=0, metavar="N", help="resources it may store (0: no limit)"
    )
    _admin_flags(create)
    create.set_defaults(run=lambda args: asyncio.run(cmd_create(args)))

    list_ = actions.add_parser("list", help="every tenant and its quotas")
    _admin_flags(list_)
    list_.set_defaults(run=lambda args: asyncio.run(cmd_list(args)))

    get = actions.add_parser("get", help="one tenant and its quotas")
    get.add_argument("name")
    _admin_flags(get)
    get.set_defaults(run=lambda args: asyncio.run(cmd_get(args)))

    delete = actions.add_parser("delete", help="delete a tenant and every record of it (its secrets first)")
    delete.add_argument("name")
    _admin_flags(delete)
    delete.set_defaults(run=lambda args: asyncio.run(cmd_delete(args)))


def _admin_flags(parser: argparse.ArgumentParser) -> None:
    # Tenants are managed at the top (/admin/v1/tenants), never from inside one: no --tenant.
    add_admin_client_flags(parser, tenant_flag=False)


async def cmd_create(args: argparse.Namespace) -> int:
    body = {"name": args.name, "attestations_per_s": args.attestations_per_s, "max_resources": args.max_resources}
    async with admin_session(args) as call:
        return print_reply(*await call("POST", "tenants", json.dumps(body).encode()))


async def cmd_list(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        return print_reply(*await call("GET", "tenants"))


async def cmd_get(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        return print_reply(*await call("GET", f"tenants/{args.name}"))


async def cmd_delete(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        return print_reply(*await call("DELETE", f"tenants/{args.name}"))
