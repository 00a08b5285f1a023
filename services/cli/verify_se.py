"""`remits verify se --request-state FILE --response FILE [--hdr FILE]... [--json]`: check an IBM
Secure Execution attestation response offline.

``--request-state`` is the JSON written when the ARCB was built (``SeRequestState.to_json()``); it
holds the measurement key, so it is a secret. It may carry ``"image_tags"`` (hex of the 0xd0-byte
PLD ‖ ALD ‖ TLD ‖ tag, or a list of them) naming the expected image(s); ``--hdr`` adds the tags of
SE headers (``pvextract-hdr`` output). ``--response`` is the evidence JSON (base64 ``measurement``,
``additional_data``, ``user_data``, ``cuid``) or a performed pvattest exchange file.

Exit codes: 0 verified, 1 a check failed (``{"verified": false, "check", "detail"}``), 2 usage
error (unreadable file, malformed request state or header, no expected image).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
from typing import Any

from services.cli.verify_common import UsageError, read_input, report
from shared.errors import RemitsError, VerificationError

TEES = ("se",)


def add_parsers(verify_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = verify_sub.add_parser(
        "se", help="an IBM Secure Execution attestation response (evidence JSON or pvattest exchange file)"
    )
    parser.add_argument("--request-state", required=True, metavar="FILE", help="request state JSON (secret)")
    parser.add_argument("--response", required=True, metavar="FILE", help="evidence JSON or exchange file")
    parser.add_argument(
        "--hdr",
        action="append",
        default=[],
        metavar="FILE",
        help="SE header of an expected image (repeatable)",
    )
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=main)


def _load_state(path: str) -> tuple[Any, list[Any]]:
    from shared.platforms.se.abi import BootHdrTags
    from shared.platforms.se.arcb import SeRequestState

    try:
        doc = json.loads(read_input(path))
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON: {exc}") from None
    try:
        state = SeRequestState.from_json(doc)
        tags = doc.get("image_tags", [])
        tags = [tags] if isinstance(tags, str) else tags
        if not isinstance(tags, list):
            raise UsageError(f"{path}: image_tags must be a hex string or a list of them")
        return state, [BootHdrTags.from_hex(t) for t in tags]
    except RemitsError as err:
        raise UsageError(f"{path}: {err}") from None


def _load_response(path: str, state: Any) -> Any:
    from shared.platforms.se.evidence import EXCHANGE_MAGIC, decode_evidence, parse_exchange_file

    raw = read_input(path)
    if not raw.startswith(EXCHANGE_MAGIC):
        return decode_evidence(raw)
    exchange = parse_exchange_file(raw)
    arcb = exchange.arcb.data or b""
    # The exchange file repeats the request: it must be the one this state was kept for.
    if not hmac.compare_digest(hashlib.sha256(arcb).hexdigest(), state.arcb_sha256):
        raise VerificationError("se.arcb", "the exchange file carries another attestation request")
    return exchange.to_response()


def verify_files(state_path: str, response_path: str, hdr_paths: list[str]) -> dict[str, Any]:
    from shared.platforms.se.abi import parse_se_header
    from shared.platforms.se.measurement import claims, verify_response

    state, candidates = _load_state(state_path)
    for hdr in hdr_paths:
        try:
            candidates.append(parse_se_header(read_input(hdr)))
        except RemitsError as err:
            raise UsageError(f"{hdr}: {err}") from None
    if not candidates:
        raise UsageError("no expected image: give --hdr or image_tags in the request state")
    verified = verify_response(state, _load_response(response_path, state), candidates)
    return {"verified": True, **claims(verified)}


def main(args: argparse.Namespace) -> int:
    return report(args, lambda: verify_files(args.request_state, args.response, list(args.hdr or [])), _print_text)


def _print_text(result: dict[str, Any]) -> None:
    print("verified: IBM Secure Execution guest (measurement matches the expected image)")
    for name, value in result.items():
        if name != "verified":
            print(f"  {name} = {value}")
