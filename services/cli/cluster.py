"""`remits cluster verify URL (--jwks URL|FILE | --issuer URL) [--cluster NAME] [--policy FILE] [--at ISO8601]
[--json]`: a user's check of a confidential cluster before sending it data.

URL is the cluster's statement (``GET <gateway>/cluster/<name>/attestation``) or a file holding
it. The statement must be for the cluster the user means (``--cluster``, else the ``<name>`` of
such a URL; a file with no ``--cluster`` checks whichever cluster it names), signed by a key of
the JWKS and current; then every member's token is
checked on its own, as a passport: its digest is the one the statement lists, its signature,
expiry and the relying-party policy (``--policy``: minimum status, TEEs, allowed measurements).

Exit codes: 0 every member verified; 1 the statement or a member failed (``{"verified": false,
...}`` with each member's check); 2 usage error."""

from __future__ import annotations

import argparse
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from services.cli.token import _jwks, _moment, _read, add_issuer_flags, relying_party_policy
from services.cli.verify_common import UsageError, check_failed, usage_error
from shared.errors import RemitsError

_MAX_STATEMENT = 4 * 1024 * 1024
_STATEMENT_PATH = re.compile(r"/cluster/([^/]+)/attestation/?")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cluster = sub.add_parser("cluster", help="confidential clusters, as their users check them")
    actions = cluster.add_subparsers(dest="cluster_command", required=True)
    verify = actions.add_parser("verify", help="verify a cluster's signed membership and every member's token")
    verify.add_argument("url", metavar="URL", help="GET <gateway>/cluster/<name>/attestation, or a file")
    add_issuer_flags(verify)
    verify.add_argument(
        "--cluster", metavar="NAME", help="the cluster meant (default: <name> of a /cluster/<name>/attestation URL)"
    )
    verify.set_defaults(run=main)


def read_statement(location: str, timeout_s: float = 10.0) -> str:
    if re.match(r"(?i)https?://", location):
        try:
            with urllib.request.urlopen(location, timeout=timeout_s) as resp:
                raw = resp.read(_MAX_STATEMENT + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise UsageError(f"{location}: {exc}") from None
    else:
        raw = _read(location)
    try:
        body = json.loads(raw)
        statement = body["statement"] if isinstance(body, dict) else body
    except (ValueError, KeyError) as exc:
        raise UsageError(f"{location}: not a cluster statement ({exc!r})") from None
    if not isinstance(statement, str):
        raise UsageError(f"{location}: not a cluster statement")
    return statement


def expected_cluster(location: str, flag: str | None) -> str | None:
    """The cluster the user means: ``--cluster``, else the ``<name>`` of a statement URL; None for
    a file without the flag. The statement's own claim is what is checked, never what is trusted."""
    if flag:
        return flag
    if not re.match(r"(?i)https?://", location):
        return None
    found = _STATEMENT_PATH.fullmatch(urllib.parse.urlsplit(location).path)
    return urllib.parse.unquote(found.group(1)) if found else None


def main(args: argparse.Namespace) -> int:
    from services.join.statement import verify_cluster

    try:
        statement = read_statement(args.url)
        jwks = _jwks(args)
        verdict = verify_cluster(
            statement, jwks, now=_moment(args.at), policy=relying_party_policy(args),
            expected_cluster=expected_cluster(args.url, getattr(args, "cluster", None)),
        )  # fmt: skip
    except UsageError as exc:
        return usage_error(exc)
    except RemitsError as err:
        return check_failed(err)
    result: dict[str, Any] = verdict.to_json()
    if args.json:
        print(json.dumps(result))
    else:
        print(f"cluster {verdict.cluster}: {'verified' if verdict.verified else 'NOT verified'} (policy {verdict.policy_id})")
        for member in verdict.members:
            state = member.status if member.verified else f"refused: {member.check} {member.detail}"
            print(f"  {member.node:24} {state}")
        if not verdict.members:
            print("  no members")
    return 0 if verdict.verified else 1
