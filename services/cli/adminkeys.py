"""`remits admin`: admin credentials (key pairs, tokens for curl) and the keys the API trusts."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

from services.cli.admin_client import add_admin_client_flags, admin_session, operator_name, print_reply


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    admin = sub.add_parser("admin", help="admin credentials")
    actions = admin.add_subparsers(dest="admin_command", required=True)
    keygen = actions.add_parser("keygen", help="a new admin (or provisioner) key pair: PREFIX.pem and PREFIX.pub.pem")
    keygen.add_argument("prefix", help="e.g. ~/.config/remits/admin")
    keygen.add_argument("--alg", choices=["EdDSA", "ES256"], default="EdDSA")
    keygen.set_defaults(run=cmd_keygen)

    token = actions.add_parser("token", help="print an admin JWT (Authorization: Bearer ...) for curl")
    token.add_argument("--key", required=True, help="admin private key (PEM)")
    token.add_argument("--subject", default=None, help="who you are (default: $USER)")
    token.add_argument("--lifetime", type=int, default=300, help="seconds (at most 3600)")
    token.set_defaults(run=cmd_token)

    trust = actions.add_parser("trust-key", help="add a key to the admin-keys bucket (role admin or provisioner)")
    trust.add_argument("public_key", help="PEM public key")
    trust.add_argument("--role", choices=["admin", "provisioner"], default="admin")
    add_admin_client_flags(trust)
    trust.set_defaults(run=lambda args: asyncio.run(cmd_trust_key(args)))

    keys = actions.add_parser("keys", help="list the keys of the admin-keys bucket")
    add_admin_client_flags(keys)
    keys.set_defaults(run=lambda args: asyncio.run(cmd_keys(args)))


def cmd_keygen(args: argparse.Namespace) -> int:
    from shared.adminauth import generate_admin_keypair, load_admin_key

    private_pem, public_pem = generate_admin_keypair(args.alg)
    prefix = Path(os.path.expanduser(args.prefix))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    private_path, public_path = Path(f"{prefix}.pem"), Path(f"{prefix}.pub.pem")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_pem)
    public_path.write_bytes(public_pem)
    kid = load_admin_key(public_pem).kid
    print(json.dumps({"private": str(private_path), "public": str(public_path), "kid": kid, "alg": args.alg}))
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from shared.adminauth import sign_admin_token

    if not 0 < args.lifetime <= 3600:
        print("remits admin token: --lifetime must be 1..3600 seconds", file=sys.stderr)
        return 2
    print(sign_admin_token(Path(args.key).read_bytes(), operator_name(args), now=time.time(), lifetime_s=args.lifetime))
    return 0


async def cmd_trust_key(args: argparse.Namespace) -> int:
    pem = await asyncio.to_thread(Path(args.public_key).read_text)
    async with admin_session(args) as call:
        return print_reply(*await call("POST", "admin-keys", json.dumps({"pem": pem, "role": args.role}).encode()))


async def cmd_keys(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        return print_reply(*await call("GET", "admin-keys"))
