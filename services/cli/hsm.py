"""`remits hsm keygen`: create the service's keys inside the HSM (PKCS#11), where they stay: the
EAR signing key (the default one, or a tenant's `<label>.<tenant>`) and the key-encryption key.
The token comes from REMITS_PKCS11_MODULE, REMITS_PKCS11_TOKEN and REMITS_PKCS11_PIN."""

from __future__ import annotations

import argparse
import json
import sys

from services.cli.verify_common import UsageError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    hsm = sub.add_parser("hsm", help="keys held in an HSM through PKCS#11")
    actions = hsm.add_subparsers(dest="hsm_command", required=True)
    keygen = actions.add_parser(
        "keygen",
        help="create a signing key or a KEK in the token (sensitive, never extractable)",
        description="Creates the key in the token named by REMITS_PKCS11_MODULE/TOKEN/PIN and prints its "
        "label and id as JSON. A label already in use is refused. Exit 0 created, 1 refused by the token, "
        "2 usage.",
    )
    what = keygen.add_mutually_exclusive_group(required=True)
    what.add_argument("--signing", metavar="LABEL", nargs="?", const="", help="an EC P-256 EAR signing key "
                      "(default label: REMITS_PKCS11_SIGNING_KEY, or <it>.<tenant> with --tenant)")  # fmt: skip
    what.add_argument("--kek", metavar="LABEL", nargs="?", const="", help="an AES-256 KEK (default label: REMITS_PKCS11_KEK)")
    keygen.add_argument("--tenant", help="the tenant's own signing key: label <signing key label>.<tenant>")
    keygen.set_defaults(run=cmd_keygen)


def _label(args: argparse.Namespace, settings: object) -> tuple[str, str]:
    from shared import tenants

    if args.kek is not None:
        if args.tenant:
            raise UsageError("--tenant names a signing key; the KEK is the service's")
        label = args.kek or getattr(settings, "pkcs11_kek", "")
        if not label:
            raise UsageError("no KEK label: --kek LABEL or REMITS_PKCS11_KEK")
        return "kek", label
    label = args.signing or getattr(settings, "pkcs11_signing_key", "")
    if not label:
        raise UsageError("no signing key label: --signing LABEL or REMITS_PKCS11_SIGNING_KEY")
    if args.tenant:
        try:
            label = f"{label}.{tenants.check_name(args.tenant, '--tenant')}"
        except tenants.BadTenant as exc:
            raise UsageError(str(exc)) from None
    return "signing", label


def cmd_keygen(args: argparse.Namespace) -> int:
    from services.custody import pkcs11_config
    from shared.config import Settings
    from shared.errors import RemitsError

    settings = Settings.from_env()
    try:
        config = pkcs11_config(settings)
        if config is None:
            raise UsageError("no HSM configured: set REMITS_PKCS11_MODULE, REMITS_PKCS11_TOKEN and REMITS_PKCS11_PIN")
        kind, label = _label(args, settings)
    except UsageError as exc:
        print(f"remits hsm keygen: {exc}", file=sys.stderr)
        return 2
    except RemitsError as exc:  # e.g. an unreadable PIN file
        print(f"remits hsm keygen: {exc.reason}: {exc.detail}", file=sys.stderr)
        return 1
    try:
        if kind == "kek":
            from shared.custody.kek import generate_pkcs11_kek

            result = {"kind": "kek", "label": label, "kid": generate_pkcs11_kek(config, label)}
        else:
            from shared.custody.signer import generate_pkcs11_es256_key, p256_public_jwk
            from shared.ear import jwk_thumbprint

            jwk = p256_public_jwk(generate_pkcs11_es256_key(config, label))
            result = {"kind": "signing", "label": label, "kid": jwk_thumbprint(jwk), "jwk": jwk}
    except RemitsError as exc:
        print(f"remits hsm keygen: {exc.reason}: {exc.detail}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0
