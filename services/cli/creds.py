"""`remits creds`: every component's identity for NATS and Redis, and the servers' configuration."""

from __future__ import annotations

import argparse
from pathlib import Path

from shared import credentials


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
    creds.set_defaults(run=cmd_creds)


def cmd_creds(args: argparse.Namespace) -> int:
    out = args.out.resolve()
    if args.per_component:
        credentials.ensure_credentials(out / "all")
        credentials.export_per_component(out / "all", out)
        print(f"credentials in {out}: <component>/ for each component, servers/ for nats-server and redis-server")
        return 0
    credentials.ensure_credentials(out)
    print(f"credentials in {out}")
    print(f"  nats-server: include {out / 'nats-authorization.conf'} (anonymous clients are refused)")
    print(f"  redis-server: --aclfile {out / 'redis-users.acl'} (the default user needs admin's password)")
    print("  each component: REMITS_CREDENTIALS_DIR with its own <component>.nk and <component>.json,")
    print("  or --nats-creds FILE and a Redis URL naming its user; the operator's tools use admin.*")
    return 0
