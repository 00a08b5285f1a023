"""`remits creds`: every component's identity for NATS and Redis, and the servers' configuration."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared import credentials, schemas, tenant_feeds, tenants


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    creds = sub.add_parser(
        "creds",
        help="write each component's credentials and the NATS and Redis user configuration (for external servers)",
        description=(
            "Creates, in DIR, one NATS nkey and one Redis user per component, with the narrowest rights it needs, "
            "its message key, and the servers' configuration: include nats-authorization.conf in nats-server's "
            "configuration and start redis-server with --aclfile redis-users.acl. Existing credentials are kept; "
            "the configuration is rendered again."
        ),
    )
    creds.add_argument("--out", required=True, type=Path, help="directory to write (created mode 0700)")
    creds.add_argument(
        "--per-component", action="store_true",
        help="lay the set out as OUT/<component>/ (its two files only) and OUT/servers/ (the servers' two), "
        "for deployments that mount each component only its own credentials; the full set stays in OUT/all/",
    )  # fmt: skip
    creds.add_argument(
        "--tenant-audit", action="append", default=[], metavar="TENANT",
        help="also a NATS user for TENANT's team that may only subscribe to TENANT's decisions and admin events "
        "(live, and its feed of the stream's history once `remits setup` made it) and publish nothing; repeatable",
    )  # fmt: skip
    creds.set_defaults(run=cmd_creds)


def cmd_creds(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    try:  # every name checked before anything is written
        readers = [tenants.check_name(name, "--tenant-audit") for name in dict.fromkeys(args.tenant_audit)]
    except tenants.BadTenant as error:
        print(f"remits creds: {error}", file=sys.stderr)
        return 2
    if args.per_component:
        credentials.ensure_credentials(out / "all")
        seeds = _add_readers(out / "all", readers)  # before the export, so servers/ has them
        credentials.export_per_component(out / "all", out)
        print(f"credentials in {out}: <component>/ for each component, servers/ for nats-server and redis-server")
        _print_readers({t: out / seed.stem / seed.name for t, seed in seeds.items()})
        return 0
    credentials.ensure_credentials(out)
    seeds = _add_readers(out, readers)
    print(f"credentials in {out}")
    print(f"  nats-server: include {out / 'nats-authorization.conf'} (anonymous clients are refused)")
    print(f"  redis-server: --aclfile {out / 'redis-users.acl'} (the default user needs admin's password)")
    print("  each component: REMITS_CREDENTIALS_DIR with its own <component>.nk and <component>.json,")
    print("  or --nats-creds FILE and a Redis URL naming its user; the operator's tools use admin.*")
    _print_readers(seeds)
    return 0


def _add_readers(directory: Path, readers: list[str]) -> dict[str, Path]:
    return {tenant: credentials.add_tenant_audit_reader(directory, tenant) for tenant in readers}


def _print_readers(seeds: dict[str, Path]) -> None:
    for tenant, seed in seeds.items():
        subjects = ", ".join(schemas.tenant_audit_subjects(tenant))
        feed = tenant_feeds.subject(tenant)
        print(f"  tenant {tenant}'s audit reader: {seed} (its nkey seed); may subscribe to {subjects}, {feed} only")
    if seeds:
        print("  (reload nats-server for new readers to be accepted; `remits setup` creates their history feeds)")
