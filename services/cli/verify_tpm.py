"""`remits verify tpm EVIDENCE [--ak FILE] [--nonce HEX] [--eventlog FILE] [--json]`: verify one plain
TPM 2.0 evidence (Trustee's TPM shape: ak_public, tpm_quote {message, signature, pcrs}, optional
eventlog) offline, outside the pipeline.

What is checked: the quote's signature under the AK, the PCR values against the quoted digest, the
extraData against ``--nonce`` when given, and the event log (the evidence's, or ``--eventlog``,
which replaces it) replayed against the PCRs it extends. Whether the AK is trustworthy is the
caller's knowledge: ``--ak`` pins it (the evidence's key must be that key, check
``tpm.ak_mismatch``); without it the output says ``"ak_pinned": false``: the quote only proves
that *some* key signed it. No reference values or policy are applied.

Exit codes: 0 verified (claims on stdout), 1 a check failed ({"verified": false, "check", ...}),
2 usage error (unreadable file, bad argument).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hmac
from typing import Any

from services.cli.verify_common import UsageError, read_input, report
from shared.errors import ParseError, VerificationError

TEES = ("tpm",)


def add_parsers(verify_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = verify_sub.add_parser(
        "tpm", help="a plain TPM 2.0 quote (Trustee TPM evidence JSON: ak_public, tpm_quote, eventlog)"
    )
    parser.add_argument("evidence", help="the evidence JSON file")
    parser.add_argument(
        "--ak", help="pin the AK: PEM or DER SubjectPublicKeyInfo, TPMT_PUBLIC or TPM2B_PUBLIC"
    )
    parser.add_argument("--nonce", help="the expected extraData, hex (default: not checked)")
    parser.add_argument("--eventlog", help="a binary TCG event log to replay (replaces the evidence's)")
    parser.add_argument("--json", action="store_true")


def _pinned_spki(path: str) -> bytes:
    from shared.platforms.tpm.evidence import ak_spki
    from shared.platforms.tpm.verify import load_ak

    try:
        return ak_spki(load_ak(read_input(path, "--ak")))
    except ParseError as err:
        raise UsageError(f"--ak {path}: not a public key ({err.reason}: {err.detail})") from None


def _nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise UsageError(f"--nonce: not hex: {text!r}") from None


def verify_tpm(
    evidence_path: str, *, ak_path: str | None, nonce_hex: str | None, eventlog_path: str | None
) -> dict[str, Any]:
    from shared.platforms.tpm.evidence import decode_evidence
    from shared.platforms.tpm.platform import verify_evidence
    from shared.platforms.tpm.verify import nest_pcr_claims

    raw = read_input(evidence_path, "evidence")
    pinned = _pinned_spki(ak_path) if ak_path else None
    nonce = _nonce(nonce_hex)
    log = read_input(eventlog_path, "--eventlog") if eventlog_path else None
    evidence = decode_evidence(raw)
    if log is not None:
        evidence = dataclasses.replace(evidence, eventlog=log)
    if pinned is not None and not hmac.compare_digest(pinned, evidence.ak_spki):
        raise VerificationError(
            "tpm.ak_mismatch",
            f"the evidence's AK {evidence.ak_sha256} is not the pinned AK",
        )
    claims = nest_pcr_claims(verify_evidence(evidence, nonce))
    return {
        "verified": True,
        "ak_pinned": pinned is not None,
        "ak": base64.b64encode(evidence.ak_spki).decode(),
        "nonce_checked": nonce is not None,
        "eventlog_checked": evidence.eventlog is not None,
        "claims": claims,
    }


def _text(result: dict[str, Any]) -> str:
    claims = result["claims"]
    pin = "pinned" if result["ak_pinned"] else "NOT pinned: the quote only proves that this key signed it"
    lines = [
        f"verified: TPM 2.0 quote by AK sha256:{claims['tpm.ak.sha256']} ({pin})",
        f"  nonce (extraData) = {claims['nonce'] or '-'}"
        + ("" if result["nonce_checked"] else " (not checked)"),
        f"  clock = {claims['tpm.clock']}  reset_count = {claims['tpm.reset_count']}  "
        f"restart_count = {claims['tpm.restart_count']}  safe = {claims['tpm.safe']}",
        f"  firmware_version = {int(claims['tpm.firmware_version']):#018x}",
    ]
    for bank, values in claims["pcrs"].items():
        lines.append(f"  {bank} PCRs")
        lines.extend(f"    {int(index):>2}  {value}" for index, value in values.items())
    if result["eventlog_checked"]:
        lines.append(f"  event log replayed for PCRs {', '.join(str(i) for i in claims['eventlog.pcrs'])}")
        for name in ("eventlog.secure_boot", "eventlog.kernel_digest", "eventlog.kernel_cmdline"):
            lines.append(f"    {name} = {claims.get(name)}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    return report(
        args,
        lambda: verify_tpm(args.evidence, ak_path=args.ak, nonce_hex=args.nonce, eventlog_path=args.eventlog),
        lambda result: print(_text(result)),
    )
