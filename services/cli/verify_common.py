"""What every `remits verify <tee>` command shares: its exit codes and how it reports.

Exit 0: verified, the result printed (JSON with ``--json``, else the command's own text);
exit 1: a check failed, ``{"verified": false, "check", "detail"}`` on stdout;
exit 2: a usage error (unreadable file, not the expected format), ``{"error"}`` on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.errors import RemitsError


class UsageError(Exception):
    """The input cannot be verified at all (exit 2), as opposed to failing a check (exit 1)."""


def read_input(path: str, what: str = "") -> bytes:
    """A file the command was given, or a UsageError naming it (and what it was to hold)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what + ' ' if what else ''}{path}: {exc}") from None


def usage_error(exc: Exception) -> int:
    print(json.dumps({"error": str(exc)}), file=sys.stderr)
    return 2


def check_failed(err: RemitsError) -> int:
    print(json.dumps({"verified": False, "check": err.reason, "detail": err.detail}))
    return 1


def report(args: argparse.Namespace, verify: Callable[[], Any], text: Callable[[Any], None]) -> int:
    """Run ``verify`` and report its result or its failure with the shared exit codes."""
    try:
        result = verify()
    except UsageError as exc:
        return usage_error(exc)
    except RemitsError as err:
        return check_failed(err)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        text(result)
    return 0
