"""`remits verify gcp-vtpm`: verify one Google Cloud vTPM attestation offline, outside the pipeline.

The evidence file is the go-tpm-tools ``attest.Attestation`` protobuf as raw bytes, or the KBS
``primary_evidence`` JSON (a base64 string, or ``{"attestation": base64}``). Nothing is fetched:
the AK certificate is in the evidence and Google's roots and intermediates ship with REMITS.

Exit codes: 0 verified (claims on stdout), 1 a check failed ({"verified": false, "check", ...}),
2 usage error (unreadable file, bad nonce or time)."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli.verify_common import UsageError, report
from shared.platforms.gcp.attestation import parse_attestation
from shared.platforms.gcp.platform import decode_evidence, load_roots_pem, verify_attestation
from shared.platforms.tpm.verify import nest_pcr_claims

TEES = ("gcp-vtpm",)


def add_parsers(verify_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for tee in TEES:
        parser = verify_sub.add_parser(
            tee, help="a Google Cloud vTPM attestation (go-tpm-tools protobuf, raw or KBS JSON)"
        )
        parser.add_argument("evidence", help="the attest.Attestation protobuf (or KBS evidence JSON)")
        parser.add_argument("--nonce", help="expected quote nonce (extraData), hex; '' for an empty one")
        parser.add_argument("--at", help="verification time, ISO 8601 (default: now)")
        parser.add_argument("--roots", help="PEM file of roots replacing Google's (test vendors only)")
        parser.add_argument("--eventlog", help="a TCG measured-boot log replacing the one in the attestation")
        parser.add_argument("--json", action="store_true")


def read_evidence(path: Path) -> bytes:
    """The protobuf bytes: the file as is, unless it is the KBS JSON form."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    if data.lstrip()[:1] in (b"{", b'"'):
        return decode_evidence(data)
    return data


def parse_time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise UsageError(f"--nonce: not hex: {text!r}") from None


def verify_gcp(
    evidence_path: Path,
    *,
    nonce: bytes | None,
    at: datetime,
    roots_path: Path | None,
    eventlog_path: Path | None = None,
) -> dict[str, Any]:
    roots = None
    if roots_path is not None:
        if not roots_path.is_file():
            raise UsageError(f"--roots: {roots_path} is not a file")
        roots = load_roots_pem(roots_path)
    raw = read_evidence(evidence_path)
    att = parse_attestation(raw)
    if eventlog_path is not None:
        try:
            att = dataclasses.replace(att, event_log=eventlog_path.read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read {eventlog_path}: {exc}") from None
    flat, _ = verify_attestation(
        att, at, roots=roots, known_intermediates=None if roots is None else (), nonce=nonce
    )
    return {"verified": True, "claims": nest_pcr_claims(flat)}


def main(args: argparse.Namespace) -> int:
    return report(
        args,
        lambda: verify_gcp(
            Path(args.evidence),
            nonce=parse_nonce(args.nonce),
            at=parse_time(args.at),
            roots_path=Path(args.roots) if args.roots else None,
            eventlog_path=Path(args.eventlog) if args.eventlog else None,
        ),
        _print_text,
    )


def _print_text(result: dict[str, Any]) -> None:
    claims = result["claims"]
    print(f"verified: GCE instance {claims.get('gcp.instance_name')} ({claims.get('gcp.instance_id')})")
    for name in (
        "gcp.project_id",
        "gcp.zone",
        "tpm.ak.sha256",
        "nonce",
        "eventlog.secure_boot",
        "eventlog.kernel_digest",
    ):
        if name in claims:
            print(f"  {name} = {claims[name]}")
    for bank, values in claims["pcrs"].items():
        print(f"  {bank} PCR 0 = {values.get('0', '-')}")
