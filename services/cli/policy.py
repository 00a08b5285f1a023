"""`remits policy set|get|list|delete|test`: the Rego policies (attestation per TEE, resource)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from services.cli.admin_client import add_admin_client_flags, admin_session, print_reply


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    policy = sub.add_parser("policy", help="attestation and resource policies (Rego)")
    actions = policy.add_subparsers(dest="policy_command", required=True)

    set_ = actions.add_parser("set", help="store a policy (a new revision; every replica uses it at once)")
    set_.add_argument("policy_id", help="attestation.<tee> (sample, snp, tdx, sgx) or resource")
    set_.add_argument("file", help="the Rego module")
    add_admin_client_flags(set_)
    set_.set_defaults(run=lambda args: asyncio.run(cmd_set(args)))

    get = actions.add_parser("get", help="print a policy (the stored one, or the built-in default)")
    get.add_argument("policy_id")
    get.add_argument("--history", action="store_true", help="every kept revision instead")
    get.add_argument("--json", action="store_true", help="the whole record, not just the Rego text")
    add_admin_client_flags(get)
    get.set_defaults(run=lambda args: asyncio.run(cmd_get(args)))

    list_ = actions.add_parser("list", help="every policy: id, digest, revision, stored or default")
    add_admin_client_flags(list_)
    list_.set_defaults(run=lambda args: asyncio.run(cmd_list(args)))

    delete = actions.add_parser("delete", help="drop a stored policy (the built-in default applies again)")
    delete.add_argument("policy_id")
    add_admin_client_flags(delete)
    delete.set_defaults(run=lambda args: asyncio.run(cmd_delete(args)))

    test = actions.add_parser("test", help="evaluate a policy file against an input, and explain the result")
    test.add_argument("file", help="the Rego module")
    test.add_argument("--input", required=True, help="JSON: a full policy input, or just the claims")
    test.add_argument("--tee", help="the TEE, when the input is only claims (default: from the claim names)")
    test.add_argument(
        "--kind", choices=["attestation", "resource"], default=None, help="default: from the package"
    )
    test.set_defaults(run=cmd_test)


async def cmd_set(args: argparse.Namespace) -> int:
    rego = await asyncio.to_thread(Path(args.file).read_bytes)
    async with admin_session(args) as call:
        return print_reply(*await call("PUT", f"policies/{args.policy_id}", rego))


async def cmd_get(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        status, doc = await call(
            "GET", f"policies/{args.policy_id}", query={"history": "1"} if args.history else None
        )
    if status == 200 and not args.history and not args.json and isinstance(doc, dict) and "rego" in doc:
        print(doc["rego"], end="" if doc["rego"].endswith("\n") else "\n")
        return 0
    return print_reply(status, doc)


async def cmd_list(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        return print_reply(*await call("GET", "policies"))


async def cmd_delete(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        return print_reply(*await call("DELETE", f"policies/{args.policy_id}"))


def _guess_tee(claims: dict[str, Any]) -> str:
    # The vTPM TEEs carry claims of several layers (snp.*, tpm.*, azure.*): the most specific first.
    if any(k.startswith("azure.") for k in claims):
        return "az-tdx-vtpm" if any(k.startswith("tdx.") for k in claims) else "az-snp-vtpm"
    if any(k.startswith("gcp.") for k in claims):
        return "gcp-vtpm"
    for tee in ("snp", "tdx", "sgx", "tpm", "sample"):
        if any(k.startswith(f"{tee}.") for k in claims):
            return tee
    return ""


def policy_input(doc: dict[str, Any], kind: str, tee: str | None) -> dict[str, Any]:
    """A full attestation input from what the operator gave: the claims alone get an all-affirming
    platform vector and nothing else (no violations, references or revocations)."""
    if kind == "resource" or "claims" in doc or "token" in doc:
        return doc
    tee = tee or _guess_tee(doc)
    vector = {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2}
    if tee in ("snp", "tdx"):
        vector["runtime-opaque"] = 2
    return {
        "tee": tee,
        "claims": doc,
        "platform_vector": vector,
        "violations": [],
        "reference": {},
        "revocations": [],
        "notes": [],
    }


def cmd_test(args: argparse.Namespace) -> int:
    from shared.policy.engine import PolicyError, compile_policy, explain

    rego = Path(args.file).read_text()
    kind = args.kind or ("resource" if "package remits.resource" in rego else "attestation")
    try:
        doc = json.loads(Path(args.input).read_text())
    except (OSError, ValueError) as exc:
        print(f"remits policy test: --input: {exc}", file=sys.stderr)
        return 2
    if not isinstance(doc, dict):
        print("remits policy test: --input must hold a JSON object", file=sys.stderr)
        return 2
    full = policy_input(doc, kind, args.tee)
    policy_id = "resource" if kind == "resource" else f"attestation.{full.get('tee') or 'unknown'}"
    try:
        policy = compile_policy(policy_id, kind, rego)
        result = policy.evaluate(full)
    except PolicyError as exc:
        print(f"remits policy test: {exc}", file=sys.stderr)
        return 2
    for line in explain(policy, full, result):
        print(line)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
