"""`remits refval se-header HDR [--json]`: the reference value of an IBM Secure Execution image.

HDR is the image's SE header as ``pvextract-hdr`` writes it (magic ``IBMSecEx``). What the
Ultravisor's measurement covers of the image is its header's tags: the page, address and tweak
list digests and the header's GCM tag (PLD ‖ ALD ‖ TLD ‖ tag, 208 bytes). Store the printed value
with ``remits refval add se image_tags <hex>``; REMITS recomputes each answer's measurement for
the approved images only.

Exit 0 prints the value (``--json``: ``{"tee": "se", "name": "image_tags", "value", "pld", "ald",
"tld", "tag"}``); exit 2 when the file is unreadable or not an SE header.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared.errors import ParseError


def register(actions: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``se-header`` to the ``remits refval`` subcommands."""
    parser = actions.add_parser("se-header", help="an IBM SE image's header tags (reference value se/image_tags); prints it")
    parser.add_argument("header", help="the SE header (pvextract-hdr output)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from shared.platforms.se.abi import parse_se_header

    try:
        tags = parse_se_header(Path(args.header).read_bytes())
    except OSError as exc:
        print(f"remits refval se-header: cannot read {args.header}: {exc}", file=sys.stderr)
        return 2
    except ParseError as err:
        print(f"remits refval se-header: {err.reason}: {err.detail}", file=sys.stderr)
        return 2
    value = tags.to_bytes().hex()
    if args.json:
        print(json.dumps({
            "tee": "se", "name": "image_tags", "value": value,
            "pld": tags.pld.hex(), "ald": tags.ald.hex(), "tld": tags.tld.hex(), "tag": tags.tag.hex(),
        }))  # fmt: skip
    else:
        print(value)
    return 0
