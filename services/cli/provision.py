"""`remits refval`, `remits resource`, `remits revoke`, `remits kek`: what counts as good, the
secrets, what no longer counts, and the key the secrets are sealed under. All but `kek` go
through the admin API (or straight to the store with --local)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from services.cli.admin_client import add_admin_client_flags, add_local_flags, admin_session, print_reply
from services.cli.refval_se import register as register_se_header
from services.cli.refval_sev import register as register_sev_measure


def expiry(value: str) -> float:
    """--expires: unix seconds, an ISO date/time (UTC unless it says), or +DURATION (30d, 12h, 90m)."""
    text = value.strip()
    if text.startswith("+"):
        units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
        if text[-1] not in units or not text[1:-1].isdigit():
            raise argparse.ArgumentTypeError("a duration is +N followed by s, m, h or d")
        return time.time() + int(text[1:-1]) * units[text[-1]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected unix seconds, an ISO date, or +30d") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _register_refval(sub)
    _register_resource(sub)
    _register_revoke(sub)
    kek = sub.add_parser("kek", help="the key-encryption key secrets are sealed under")
    kek_actions = kek.add_subparsers(dest="kek_command", required=True)
    rotate = kek_actions.add_parser("rotate", help="a new KEK; every resource's data key re-wrapped under it")
    add_local_flags(rotate)
    rotate.add_argument("--keep-old", action="store_true", help="keep the old KEKs in the key file")
    rotate.set_defaults(run=lambda args: asyncio.run(cmd_kek_rotate(args)))


def _register_refval(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    refval = sub.add_parser("refval", help="reference values (what measurements count as good)")
    actions = refval.add_subparsers(dest="refval_command", required=True)
    add = actions.add_parser("add", help="store reference values for one TEE and name")
    add.add_argument("tee", help="sample, snp, tdx or sgx")
    add.add_argument("name", help="e.g. measurement, host_data, mr_td, rtmr0, min_svn, allow_debug")
    add.add_argument("values", nargs="+")
    add.add_argument(
        "--expires", type=expiry, help="after this the values never match (unix s, ISO date, +30d)"
    )
    add.add_argument("--id", default="", help="record id (default: derived from the values)")
    add_admin_client_flags(add)
    add.set_defaults(run=lambda args: asyncio.run(cmd_refval_add(args)))

    list_ = actions.add_parser("list", help="stored reference values, with provenance and expiry")
    list_.add_argument("--tee")
    list_.add_argument("--name")
    add_admin_client_flags(list_)
    list_.set_defaults(run=lambda args: asyncio.run(cmd_refval_list(args)))

    delete = actions.add_parser("delete", help="remove one record")
    # dest "record": "key" is taken by --key (the admin's private key)
    delete.add_argument("record", metavar="KEY", help="<tee>.<name>.<id>, as `refval list` shows")
    add_admin_client_flags(delete)
    delete.set_defaults(run=lambda args: asyncio.run(cmd_refval_delete(args)))

    imp = actions.add_parser("import", help="import a manifest signed by a trusted provisioner key (JWS)")
    imp.add_argument("manifest", help="the compact JWS")
    add_admin_client_flags(imp)
    imp.set_defaults(run=lambda args: asyncio.run(cmd_refval_import(args)))

    sign = actions.add_parser("sign-manifest", help="sign a manifest (JSON payload) with a provisioner key")
    sign.add_argument("payload", help='JSON: {"iss": ..., "iat": ..., "reference_values": [...]}')
    sign.add_argument("--key", required=True, help="provisioner private key (PEM, Ed25519 or P-256)")
    sign.set_defaults(run=cmd_sign_manifest)

    measure = actions.add_parser(
        "snp-measure", help="compute an SEV-SNP launch digest (sev-snp-measure) and store it"
    )
    measure.add_argument("--ovmf", required=True, type=Path)
    measure.add_argument("--kernel", type=Path)
    measure.add_argument("--initrd", type=Path)
    measure.add_argument("--append")
    measure.add_argument("--vcpus", required=True, type=int)
    measure.add_argument("--vcpu-type", required=True, help="e.g. EPYC-v4, EPYC-Milan, EPYC-Genoa")
    measure.add_argument("--vmm-type", default="QEMU", help="QEMU or ec2")
    measure.add_argument("--guest-features", type=lambda v: int(v, 0), default=None)
    measure.add_argument("--name", required=True, help="record id for this image (e.g. web-frontend-v3)")
    measure.add_argument("--expires", type=expiry)
    measure.add_argument("--dry-run", action="store_true", help="print the digest and inputs; store nothing")
    add_admin_client_flags(measure)
    measure.set_defaults(run=lambda args: asyncio.run(cmd_snp_measure(args)))
    register_sev_measure(actions)
    register_se_header(actions)


def _register_resource(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    resource = sub.add_parser("resource", help="secret resources (sealed at rest)")
    actions = resource.add_subparsers(dest="resource_command", required=True)
    put = actions.add_parser("put", help="store a secret and what a token must meet to get it")
    put.add_argument("path", help="<repository>/<type>/<tag>")
    put.add_argument("--file", required=True, help="file holding the secret")
    put.add_argument("--tee", action="append", default=[], help="only tokens from this TEE (repeatable)")
    put.add_argument("--measurement", action="append", default=[], help="only this measurement (repeatable)")
    put.add_argument("--allow-sample", action="store_true", help="also the sample TEE (tests and demos only)")
    put.add_argument(
        "--init-data", action="append", default=[], metavar="HEX",
        help="only a workload launched with init-data of this digest (its identity; repeatable)",
    )  # fmt: skip
    put.add_argument(
        "--bind-tenant", action="append", default=[], metavar="TENANT",
        help="only tokens of this tenant (repeatable; a resource is only ever its own tenant's)",
    )  # fmt: skip
    add_admin_client_flags(put)
    put.set_defaults(run=lambda args: asyncio.run(cmd_resource_put(args)))
    for name, help_text in (
        ("list", "resource paths (never values)"),
        ("get", "a resource's binding and revision"),
    ):
        action = actions.add_parser(name, help=help_text)
        if name == "get":
            action.add_argument("path")
        add_admin_client_flags(action)
        action.set_defaults(run=lambda args: asyncio.run(cmd_resource_read(args)))
    delete = actions.add_parser("delete", help="remove a resource")
    delete.add_argument("path")
    add_admin_client_flags(delete)
    delete.set_defaults(run=lambda args: asyncio.run(cmd_resource_delete(args)))


def _register_revoke(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    revoke = sub.add_parser("revoke", help="revoke a measurement, chip, FMSPC or token")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--measurement", metavar="HEX")
    which.add_argument("--chip-id", metavar="HEX")
    which.add_argument("--fmspc", metavar="HEX")
    which.add_argument("--token-id", metavar="JTI")
    which.add_argument("--list", action="store_true", help="list the revocations")
    revoke.add_argument("--reason", default="", help="why (recorded, and given as the reason of refusals)")
    revoke.add_argument("--undo", action="store_true", help="withdraw the revocation instead")
    add_admin_client_flags(revoke)
    revoke.set_defaults(run=lambda args: asyncio.run(cmd_revoke(args)))


async def cmd_refval_add(args: argparse.Namespace) -> int:
    body = {"tee": args.tee, "name": args.name, "values": list(args.values), "source": "cli"}
    if args.expires is not None:
        body["expires_at"] = args.expires
    if args.id:
        body["id"] = args.id
    async with admin_session(args) as call:
        return print_reply(*await call("POST", "reference-values", json.dumps(body).encode()))


async def cmd_refval_list(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("tee", args.tee), ("name", args.name)) if v}
    async with admin_session(args) as call:
        return print_reply(*await call("GET", "reference-values", query=query))


async def cmd_refval_delete(args: argparse.Namespace) -> int:
    from shared.trust.buckets import split_refval_key

    tee, name, record_id = split_refval_key(args.record)
    async with admin_session(args) as call:
        return print_reply(*await call("DELETE", f"reference-values/{tee}/{name}/{record_id}"))


async def cmd_refval_import(args: argparse.Namespace) -> int:
    jws = await asyncio.to_thread(Path(args.manifest).read_bytes)
    async with admin_session(args) as call:
        return print_reply(*await call("POST", "reference-values/manifest", jws))


def cmd_sign_manifest(args: argparse.Namespace) -> int:
    from shared.manifest import ManifestError, sign_manifest

    try:
        print(sign_manifest(Path(args.key).read_bytes(), json.loads(Path(args.payload).read_text())))
    except (ManifestError, ValueError, OSError) as exc:
        print(f"remits refval sign-manifest: {exc}", file=sys.stderr)
        return 2
    return 0


async def cmd_snp_measure(args: argparse.Namespace) -> int:
    from shared.platforms.snp.launch import LaunchInputError, LaunchInputs, expected_launch_digest

    inputs = LaunchInputs(
        ovmf=args.ovmf, kernel=args.kernel, initrd=args.initrd, append=args.append, vcpus=args.vcpus,
        vcpu_type=args.vcpu_type, vmm_type=args.vmm_type,
        guest_features=0x1 if args.guest_features is None else args.guest_features,
    )  # fmt: skip
    try:
        digest = expected_launch_digest(inputs)
    except LaunchInputError as exc:
        print(f"remits refval snp-measure: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(
            json.dumps({"measurement": digest.measurement, "inputs": digest.inputs}, indent=2, sort_keys=True)
        )
        return 0
    body = {
        "tee": "snp", "name": "measurement", "values": [digest.measurement], "id": args.name,
        "source": digest.inputs.get("tool", "sev-snp-measure"), "inputs": digest.inputs,
    }  # fmt: skip
    if args.expires is not None:
        body["expires_at"] = args.expires
    async with admin_session(args) as call:
        return print_reply(*await call("POST", "reference-values", json.dumps(body).encode()))


async def cmd_resource_put(args: argparse.Namespace) -> int:
    secret = await asyncio.to_thread(Path(args.file).read_bytes)
    binding: dict[str, object] = {}
    if args.tee:
        binding["tees"] = args.tee
    if args.measurement:
        binding["measurements"] = args.measurement
    if args.allow_sample:
        binding["allow_sample"] = True
    if args.init_data:
        binding["init_data"] = args.init_data
    if args.bind_tenant:
        binding["tenants"] = args.bind_tenant
    body = json.dumps({"value": base64.b64encode(secret).decode(), "binding": binding}).encode()
    async with admin_session(args) as call:
        return print_reply(*await call("PUT", f"resources/{args.path}", body))


async def cmd_resource_read(args: argparse.Namespace) -> int:
    path = f"resources/{args.path}" if getattr(args, "path", None) else "resources"
    async with admin_session(args) as call:
        return print_reply(*await call("GET", path))


async def cmd_resource_delete(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        return print_reply(*await call("DELETE", f"resources/{args.path}"))


async def cmd_revoke(args: argparse.Namespace) -> int:
    async with admin_session(args) as call:
        if args.list:
            return print_reply(*await call("GET", "revocations"))
        kind, value = next(
            (k, v) for k, v in (("measurement", args.measurement), ("chip_id", args.chip_id),
                                ("fmspc", args.fmspc), ("token_id", args.token_id)) if v
        )  # fmt: skip
        value = value if kind == "token_id" else value.lower()
        if args.undo:
            return print_reply(*await call("DELETE", f"revocations/{kind}/{value}"))
        body = json.dumps({"kind": kind, "value": value, "reason": args.reason}).encode()
        return print_reply(*await call("POST", "revocations", body))


async def cmd_kek_rotate(args: argparse.Namespace) -> int:
    """Local only: it needs the key file. Release replicas read the file again when they meet a
    key id they do not know; with per-component credential copies, copy the new file to them
    before running this."""
    from services.cli.admin_client import operator_name, operator_nats
    from shared import credentials
    from shared.bus import JetStreamPublisher
    from shared.connections import identity_of, with_custody
    from shared.sealing import KeyRing, rotate
    from shared.trust.admin import TrustAdmin

    async with operator_nats(args) as (settings, nc, js):
        identity = identity_of(settings, credentials.ADMIN)
        path = settings.kek_file or identity.kek_path
        if path is None:
            print(
                "remits kek rotate: no KEK file (REMITS_KEK_FILE or kek.json in the credentials)",
                file=sys.stderr,
            )
            return 2
        if settings.pkcs11_module and settings.pkcs11_kek:
            # The HSM-held KEK is current: every record is rewrapped under it, and the file keys
            # stay only for what is still wrapped under them (with --keep-old).
            ring = with_custody(settings, KeyRing.load_or_create(path))
        else:
            ring = rotate(KeyRing.load_or_create(path))
            ring.save(path)
        publisher = JetStreamPublisher(nc, auth=identity.auth)
        await publisher.start()
        try:
            admin = TrustAdmin(js, publisher, keyring=lambda: ring)
            count = await admin.rewrap_resources(f"{operator_name(args)} (local)")
        finally:
            await publisher.stop()
        if not args.keep_old and not (settings.pkcs11_module and settings.pkcs11_kek):
            for kid in [k for k in ring.kids if k != ring.current_kid]:
                ring = ring.retire(kid)
            ring.save(path)
        print(json.dumps({"kek": ring.current_kid, "rewrapped": count, "file": str(path)}))
    return 0
