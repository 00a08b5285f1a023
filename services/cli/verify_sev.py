"""`remits verify sev-chain FILES... [--json]`: verify a legacy AMD SEV certificate chain offline
against the pinned ARK/ASK (Naples, Rome, Milan).

FILES are either the six certificates (ARK, ASK, CEK, OCA, PEK, PDH in any order: each is recognised
by its size and usage field) or one kbs-types JSON (``Request`` with ``extra-params``, a
``SevRequest``, or just its ``chain``) whose certificates are serde byte arrays.

Exit codes: 0 verified, 1 a check failed (``{"verified": false, "check", "detail"}``), 2 usage
error (unreadable file, not a chain)."""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path
from typing import Any

from services.cli.verify_common import UsageError, report

TEES = ("sev-chain",)
ROLES = ("ark", "ask", "cek", "oca", "pek", "pdh")
_CA_SIZES = (832, 1600)
_SEV_SIZE = 0x824
_CA_ROLE = {0x0000: "ark", 0x0013: "ask"}
_SEV_ROLE = {0x1001: "oca", 0x1002: "pek", 0x1003: "pdh", 0x1004: "cek"}


def add_parsers(verify_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = verify_sub.add_parser(
        "sev-chain",
        help="a legacy AMD SEV chain (ARK ASK CEK OCA PEK PDH files, or a kbs-types SevRequest JSON)",
    )
    parser.add_argument("files", nargs="+", help="six certificate files, or one kbs-types JSON")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=main)


def _role(data: bytes, name: str) -> str:
    """Which certificate this is, from its size and usage field alone (parsing comes later)."""
    if len(data) in _CA_SIZES:
        usage = struct.unpack_from("<I", data, 0x24)[0]
        table = _CA_ROLE
    elif len(data) == _SEV_SIZE:
        usage = struct.unpack_from("<I", data, 0x08)[0]
        table = _SEV_ROLE
    else:
        raise UsageError(f"{name}: {len(data)} bytes is neither an AMD CA certificate nor an SEV certificate")
    if usage not in table:
        raise UsageError(f"{name}: unknown certificate usage {usage:#x}")
    return table[usage]


def _chain_from_json(doc: Any, name: str) -> dict[str, bytes]:
    if isinstance(doc, dict) and "extra-params" in doc:
        doc = doc["extra-params"]
    if isinstance(doc, dict) and "chain" in doc:
        doc = doc["chain"]
    try:
        certs = {**doc["ca"], **doc["sev"]}
        return {role: bytes(certs[role]) for role in ROLES}
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{name}: not a kbs-types SEV chain ({exc!r})") from None


def read_chain(paths: list[Path]) -> dict[str, bytes]:
    """role -> certificate bytes, from six files or one kbs-types JSON."""
    blobs = []
    for path in paths:
        try:
            blobs.append((path, path.read_bytes()))
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
    if len(blobs) == 1 and blobs[0][1].lstrip().startswith(b"{"):
        path, data = blobs[0]
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise UsageError(f"{path}: not JSON: {exc}") from None
        return _chain_from_json(doc, str(path))
    chain: dict[str, bytes] = {}
    for path, data in blobs:
        role = _role(data, str(path))
        if role in chain:
            raise UsageError(f"{path}: a second {role.upper()} certificate")
        chain[role] = data
    missing = [role.upper() for role in ROLES if role not in chain]
    if missing:
        raise UsageError(f"missing certificate(s): {', '.join(missing)}")
    return chain


def verify_files(paths: list[Path], pinned: Any = None) -> dict[str, Any]:
    from shared.platforms.sev.verify import describe, pinned_roots, verify_chain

    chain = read_chain(paths)
    verified = verify_chain(*(chain[role] for role in ROLES), pinned=pinned or pinned_roots())
    certs = {role: getattr(verified, role) for role in ROLES}
    return {
        "verified": True,
        "generation": verified.generation.value,
        "certificates": {role: describe(cert) for role, cert in certs.items()},
        "checks": {check: "passed" for check in verified.checks},
        "pdh_public_key": {
            "curve": verified.pdh_public_key.curve.name,
            "x": f"{verified.pdh_public_key.public_numbers().x:x}",
            "y": f"{verified.pdh_public_key.public_numbers().y:x}",
        },
    }


def main(args: argparse.Namespace) -> int:
    return report(args, lambda: verify_files([Path(p) for p in args.files]), _print_text)


def _print_text(result: dict[str, Any]) -> None:
    print(f"verified: AMD SEV chain, {result['generation']} (ARK/ASK pinned)")
    for role, info in result["certificates"].items():
        extra = f" algo={info['algo']} api={info['api_version']}" if info["format"] == "sev" else ""
        print(f"  {role.upper():3} usage={info['usage']} key={info['key']} key_id={info['key_id']}{extra}")
    for check in result["checks"]:
        print(f"  ok {check}")
