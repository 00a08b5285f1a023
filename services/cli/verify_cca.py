"""`remits verify cca TOKEN --ta-store FILE [--nonce HEX] [--json]`: verify an Arm CCA attestation
token offline against a trust-anchor store.

TOKEN is the raw CBOR token (tag 399) or the guest-components JSON ``{"token": ...}``. The store is
the rust-ccatoken / Trustee JSON array of ``{"implementation-id", "instance-id", "pkey"}``.
``--nonce`` is the expected realm challenge, zero-padded to 64 bytes.

Exit codes: 0 verified, 1 a check failed (``{"verified": false, "check", "detail"}``), 2 usage
error (unreadable file, not a token)."""

from __future__ import annotations

import argparse
from typing import Any

from services.cli.verify_common import UsageError, read_input, report
from shared.errors import ParseError

TEES = ("cca",)


def add_parsers(verify_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = verify_sub.add_parser(
        "cca", help="an Arm CCA attestation token (CBOR, or guest-components JSON)"
    )
    parser.add_argument("token", metavar="TOKEN", help="token file")
    parser.add_argument("--ta-store", required=True, metavar="FILE", help="trust-anchor store (JSON array)")
    parser.add_argument("--nonce", metavar="HEX", help="expected realm challenge (zero-padded to 64 bytes)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=main)


def verify_file(token_path: str, store_path: str, nonce: str | None) -> dict[str, Any]:
    from shared.platforms.cca.abi import decode_evidence, decode_token
    from shared.platforms.cca.tastore import find_anchor, load_ta_store
    from shared.platforms.cca.validate import cli_json
    from shared.platforms.cca.verify import verify_token

    raw_token, raw_store = read_input(token_path, "token"), read_input(store_path, "trust-anchor store")
    expected = None
    if nonce is not None:
        try:
            expected = bytes.fromhex(nonce)
        except ValueError:
            raise UsageError(f"--nonce {nonce!r} is not hex") from None
        if len(expected) > 64:
            raise UsageError("--nonce is longer than the 64-byte realm challenge")
    # A file that is not a token or a store is the caller's mistake, not a failed check.
    try:
        anchors = load_ta_store(raw_store)
        token = decode_token(decode_evidence(raw_token))
    except ParseError as err:
        raise UsageError(f"{err.reason}: {err.detail}") from None
    anchor = find_anchor(anchors, token.platform_claims.implementation_id, token.platform_claims.instance_id)
    verify_token(token, anchor, expected_challenge=expected)
    return {"verified": True, **cli_json(token)}


def main(args: argparse.Namespace) -> int:
    return report(args, lambda: verify_file(args.token, args.ta_store, args.nonce), lambda r: _print_text(r, args.nonce))


def _print_text(result: dict[str, Any], nonce: str | None) -> None:
    realm, platform = result["realm"], result["platform"]
    print(f"verified: Arm CCA token ({result['form']} collection), platform key from the trust-anchor store")
    print(f"  platform  profile={platform['profile']} lifecycle={platform['lifecycle']:#06x}")
    print(f"            implementation={platform['implementation_id']}")
    print(f"            instance={platform['instance_id']}")
    for sw in platform["sw_components"]:
        print(f"    {sw['type'] or '?':14} {sw['measurement']} {sw['version'] or ''}")
    print(f"  realm     profile={realm['profile']} hash={realm['hash_alg']}")
    print(f"    challenge {realm['challenge']}")
    print(f"    rim       {realm['rim']}")
    for i, rem in enumerate(realm["rems"]):
        print(f"    rem{i}      {rem}")
    print(f"    rpv       {realm['rpv']}")
    if nonce is None:
        print("  note: no --nonce given, the realm challenge was not checked (no freshness)")
