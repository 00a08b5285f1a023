"""`remits token verify TOKEN (--jwks URL|FILE | --issuer URL) [--nonce HEX] [--policy FILE] [--at ISO8601] [--json]`:
check an EAR token the way a relying party does (passport mode), against the issuer's published keys.

TOKEN is the JWT itself, a file holding it, or ``-`` for stdin. ``--nonce`` is the hex of the
challenge's bytes (a non-hex value is taken as the literal ``eat_nonce`` string); ``--policy`` is a
relying-party policy JSON (see :func:`shared.passport.load_policy`). Without ``--policy`` the default
policy applies: the token's status must be affirming, so a warning or contraindicated token fails
(``token.policy.status``, exit 1); a policy ``{"min_status": "warning"}`` accepts warning tokens.

Exit codes: 0 verified, 1 a check failed (``{"verified": false, "check", "detail"}``; an unreachable
JWKS is the check ``token.jwks_unavailable``), 2 usage error (unreadable file, malformed policy or JWKS
file, bad URL or time).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli.verify_common import UsageError, report
from shared.errors import ParseError
from shared.passport import JwksSource, Passport, RelyingPartyPolicy, load_policy, verify_passport

_JWT_RE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})+")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    token = sub.add_parser("token", help="EAR attestation tokens, as a relying party sees them")
    actions = token.add_subparsers(dest="token_command", required=True)
    verify = actions.add_parser("verify", help="verify a token against the issuer's JWKS (passport mode)")
    verify.add_argument("token", metavar="TOKEN", help="the JWT, a file holding it, or - for stdin")
    add_issuer_flags(verify)
    verify.add_argument("--nonce", metavar="HEX", help="the expected nonce: hex of its bytes, or the string")
    verify.set_defaults(run=main)


def add_issuer_flags(parser: argparse.ArgumentParser) -> None:
    """--jwks | --issuer, --policy, --at and --json: how a relying party names whom it trusts."""
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", metavar="URL|FILE", help="the issuer's JWKS: an http(s) URL or a file")
    keys.add_argument("--issuer", metavar="URL", help="the issuer's base URL (serves /.well-known/jwks.json)")
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help='relying-party policy JSON (default: status must be affirming; {"min_status": "warning"} lowers it)',
    )
    parser.add_argument("--at", metavar="ISO8601", help="verification time, ISO 8601 (default: now)")
    parser.add_argument("--json", action="store_true")


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a JWT is longer than a file name may be
        return False


def _token(arg: str) -> str:
    if arg == "-":
        return sys.stdin.read().strip()
    if _JWT_RE.fullmatch(arg) and not _is_file(arg):
        return arg
    try:
        return _read(arg).decode("ascii").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{arg}: not a token (not ASCII)") from None


def _jwks(args: argparse.Namespace) -> JwksSource:
    try:
        if args.issuer is not None:
            return JwksSource.from_issuer(args.issuer)
        if re.match(r"(?i)https?://", args.jwks):
            return JwksSource.from_url(args.jwks)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    # A local file is read here, so an unreadable one is a usage error rather than a failed check.
    raw = _read(args.jwks)
    try:
        return JwksSource.from_keys(json.loads(raw))
    except (ValueError, ParseError) as exc:
        raise UsageError(f"{args.jwks}: not a JWKS: {exc}") from None


def _nonce(text: str | None) -> str | bytes | None:
    if text is None:
        return None
    return bytes.fromhex(text) if _HEX_RE.fullmatch(text) else text


def _moment(text: str | None) -> int:
    if text is None:
        return int(time.time())
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: not an ISO 8601 time: {text!r}") from None
    # A time without a zone is read as UTC, as the token's NumericDates are.
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def relying_party_policy(args: argparse.Namespace) -> RelyingPartyPolicy | None:
    """The --policy file, read and checked, or None without one (verify_passport then applies the
    default policy: an affirming status)."""
    if args.policy is None:
        return None
    try:
        return load_policy(_read(args.policy))
    except ParseError as err:
        raise UsageError(f"{args.policy}: {err}") from None


def verify_token(args: argparse.Namespace) -> dict[str, Any]:
    token = _token(args.token)
    jwks = _jwks(args)
    passport = verify_passport(
        token, jwks, now=_moment(args.at), nonce=_nonce(args.nonce), policy=relying_party_policy(args)
    )
    return _result(passport)


def _result(passport: Passport) -> dict[str, Any]:
    return {
        "verified": True,
        "tee": passport.tee,
        "status": passport.status,
        "kid": passport.kid,
        "iat": passport.claims.get("iat"),
        "exp": passport.claims.get("exp"),
        "nonce": passport.claims.get("eat_nonce"),
        "tee_pubkey": passport.tee_pubkey,
        "claims": passport.tee_claims,
    }


def _print_text(result: dict[str, Any]) -> None:
    print(f"verified: {result['tee']} token, status {result['status']}")
    print(f"  key      {result['kid']}")
    print(f"  valid    {_utc(result['iat'])} .. {_utc(result['exp'])}")
    if result["nonce"] is not None:
        print(f"  nonce    {result['nonce']}")
    print(f"  TEE key  {'bound' if result['tee_pubkey'] else 'none'}")
    for name, value in sorted(result["claims"].items()):
        print(f"  {name} = {value}")


def _utc(stamp: Any) -> str:
    if isinstance(stamp, int):
        return datetime.fromtimestamp(stamp, UTC).isoformat().replace("+00:00", "Z")
    return str(stamp)


def main(args: argparse.Namespace) -> int:
    return report(args, lambda: verify_token(args), _print_text)
