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
    creds.set_defaults(run=cmd_creds)


def cmd_creds(args: argparse.Namespace) -> int:
    credentials.ensure_credentials(args.out)
    out = args.out.resolve()
    print(f"credentials in {out}")
    print(f"  nats-server: include {out / 'nats-authorization.conf'} (anonymous clients are refused)")
    print(f"  redis-server: --aclfile {out / 'redis-users.acl'} (the default user needs admin's password)")
    print("  each component: REMITS_CREDENTIALS_DIR with its own <component>.nk and <component>.json,")
    print("  or --nats-creds FILE and a Redis URL naming its user; the operator's tools use admin.*")
    return 0
