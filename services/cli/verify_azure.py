"""`remits verify az-snp-vtpm|az-tdx-vtpm`: one Azure confidential-VM (paravisor vTPM) evidence,
outside the pipeline.

    remits verify az-snp-vtpm EVIDENCE [--certs-dir DIR] [--nonce HEX] [--at ISO8601] [--eventlog FILE] [--json]
    remits verify az-tdx-vtpm EVIDENCE [--collateral DIR | --pcs URL] [--nonce HEX] [--at ISO8601] [--eventlog FILE] [--json]

EVIDENCE is the KBS primary evidence JSON (shapes v0, v1, v2). Three layers are checked, in order:

* ``vtpm``: the var data's attestation key (HCLAkPub) signed the TPM quote over the supplied PCRs,
  and the quote's extraData is ``--nonce`` (hex; not compared when omitted);
* ``binding``: SHA-256(var data) is the hardware report's REPORT_DATA[0:32] (TDX: and the HCL's
  TDREPORT is the quoted TD); v2: the var data's user-data starts with the nonce;
* ``hardware``: SNP -- the report's signature under the VCEK (from ``--certs-dir``, else the one
  the evidence carries) chained to AMD's pinned roots; TDX -- the TD quote under Intel's
  collateral (``--collateral`` directory, or fetched from ``--pcs``). With neither, the TD quote
  cannot be verified: ``endorsement.not_found``, and the layers already verified are reported.

``--eventlog`` replays a TCG measured-boot log against the quoted PCRs and adds its claims.

Exit codes: 0 verified (``{"verified": true, "claims": {..., "pcrs": {bank: {index: hex}},
"nonce": hex}}``), 1 a check failed (``{"verified": false, "layer", "check", "detail", "layers",
"claims"}``, claims of the layers that passed), 2 usage error (unreadable file, bad hex or time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from services.cli.verify_common import UsageError, usage_error
from shared.errors import RemitsError, VerificationError
from shared.platforms.azure.evidence import (
    TEE_SNP,
    AzureEvidence,
    check_evidence_bindings,
    parse_azure_evidence,
)
from shared.platforms.azure.platform import layer_claims, quote_extra_data, verify_vtpm_layer

TEES = (TEE_SNP, "az-tdx-vtpm")
LAYERS = ("vtpm", "binding", "hardware")


class LayerFailed(Exception):
    """A check of ``layer`` failed; ``claims`` are those of the layers verified before it."""

    def __init__(self, layer: str, error: RemitsError, claims: dict[str, Any]) -> None:
        super().__init__(error.reason)
        self.layer = layer
        self.error = error
        self.claims = claims


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def _nonce(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        raise UsageError(f"--nonce: not hex: {text!r}") from None
    if not value:
        raise UsageError("--nonce: empty")
    return value


# -- layers ------------------------------------------------------------------------------------


def _snp_layer(ev: AzureEvidence, certs_dir: Path | None, roots: dict | None, at: datetime) -> dict[str, Any]:  # type: ignore[type-arg]
    from services.cli.verify_snp import find_in_dir
    from shared.platforms.snp.certs import pinned_roots
    from shared.platforms.snp.platform import SnpPlatform

    report = ev.hcl.hardware_report
    assert ev.vcek_der is not None
    vcek, crl = ev.vcek_der, b""
    if certs_dir is not None:
        found, crl_found = find_in_dir(certs_dir, report)
        if found is None:
            raise RemitsError(
                "endorsement.not_found", f"no VEK in {certs_dir} matches the report's kind, TCB and chip"
            )
        vcek, crl = found, crl_found or b""
    return SnpPlatform(roots or pinned_roots()).verify_identity(report, [vcek, crl], at)


def _tdx_layer(
    ev: AzureEvidence,
    files: dict[str, bytes | None] | None,
    pcs_url: str | None,
    root_der: bytes | None,
    at: datetime,
    allow_missing_crls: bool,
) -> dict[str, Any]:
    from services.cli.verify_dcap import collateral_from_files, fetch_collateral, locate_collateral
    from shared.platforms.tdx import pinned_root_der
    from shared.platforms.tdx.abi import parse_quote
    from shared.platforms.tdx.validate import claims
    from shared.platforms.tdx.verify import verify_quote

    assert ev.td_quote is not None
    quote = parse_quote(ev.td_quote)
    if files is not None:
        collateral = collateral_from_files(files)
    elif pcs_url:
        collateral = asyncio.run(fetch_collateral(locate_collateral(quote), pcs_url))
    else:
        # The same reason the pipeline gives when Intel's TCB info and QE identity are missing.
        raise VerificationError(
            "endorsement.not_found",
            "the TD quote needs Intel's collateral (TCB info, QE identity): give --collateral DIR or --pcs URL",
        )
    verified = verify_quote(
        ev.td_quote, collateral, root_der or pinned_root_der(), at, require_crls=not allow_missing_crls
    )
    out: dict[str, Any] = dict(claims(quote, verified))
    out["tdx.crl_checked"] = collateral.pck_crl is not None and collateral.root_ca_crl is not None
    return out


def verify_azure(
    tee: str,
    evidence_path: Path,
    *,
    nonce: bytes | None,
    at: datetime,
    certs_dir: Path | None = None,
    collateral_dir: Path | None = None,
    pcs_url: str | None = None,
    eventlog_path: Path | None = None,
    roots: dict | None = None,  # type: ignore[type-arg]
    root_der: bytes | None = None,
    allow_missing_crls: bool = False,
) -> dict[str, Any]:
    """The claims of a verified evidence. ``LayerFailed`` names the layer whose check failed (with
    ``.claims`` of the layers verified before it), ``UsageError`` an unreadable input."""
    from services.cli.verify_dcap import read_collateral_dir

    data = _read(evidence_path, "evidence")
    log_data = _read(eventlog_path, "event log") if eventlog_path is not None else None
    if certs_dir is not None and not certs_dir.is_dir():
        raise UsageError(f"--certs-dir: {certs_dir} is not a directory")
    files = read_collateral_dir(collateral_dir) if collateral_dir is not None else None

    claims: dict[str, Any] = {}
    layer = "evidence"
    try:
        ev = parse_azure_evidence(tee, data)
        layer = "vtpm"
        quote, ak_sha256 = verify_vtpm_layer(ev, nonce)
        claims.update(layer_claims(ev, quote, ak_sha256))
        claims["pcrs"] = {bank: {str(i): v for i, v in values.items()} for bank, values in quote.pcrs.items()}
        claims["nonce"] = quote.nonce
        claims["nonce_checked"] = nonce is not None
        if log_data is not None:
            claims.update(_eventlog_claims(log_data, ev))
        layer = "binding"
        extra_data = quote_extra_data(ev)
        check_evidence_bindings(ev, nonce or extra_data)  # v2: user-data starts with the nonce
        layer = "hardware"
        if tee == TEE_SNP:
            hardware = _snp_layer(ev, certs_dir, roots, at)
        else:
            hardware = _tdx_layer(ev, files, pcs_url, root_der, at, allow_missing_crls)
    except RemitsError as err:
        raise LayerFailed(layer, err, claims) from None
    claims.update(hardware)
    claims["verified_at"] = at.isoformat()
    return claims


def _eventlog_claims(log_data: bytes, ev: AzureEvidence) -> dict[str, Any]:
    from shared.platforms.tpm import eventlog

    log = eventlog.parse(log_data)
    explained = set(eventlog.extended_pcrs(log))
    quoted = {
        bank: {i: v for i, v in values.items() if i in explained} for bank, values in ev.pcr_banks.items()
    }
    eventlog.verify_against(log, quoted)
    return {**eventlog.claims(log), "eventlog.replayed": True}


# -- command line ------------------------------------------------------------------------------


def add_parsers(verify_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    helps = {
        TEE_SNP: "an Azure SEV-SNP confidential VM's vTPM evidence (SNP report + HCL var data + TPM quote)",
        "az-tdx-vtpm": "an Azure TDX confidential VM's vTPM evidence (TD quote + HCL var data + TPM quote)",
    }
    for tee in TEES:
        parser = verify_sub.add_parser(tee, help=helps[tee])
        parser.add_argument("evidence", help="the KBS primary evidence JSON (v0, v1 or v2)")
        parser.add_argument(
            "--nonce", metavar="HEX", help="the expected TPM quote extraData (the KBS report data)"
        )
        parser.add_argument("--at", metavar="ISO8601", help="verification time, ISO 8601 (default: now)")
        parser.add_argument(
            "--eventlog", metavar="FILE", help="a TCG measured-boot log to replay against the PCRs"
        )
        parser.add_argument("--json", action="store_true")
        if tee == TEE_SNP:
            parser.add_argument(
                "--certs-dir", metavar="DIR", help="offline directory with the VCEK (and a .crl)"
            )
            parser.add_argument("--roots-dir", help=argparse.SUPPRESS)  # test vendors only
        else:
            parser.add_argument(
                "--collateral", metavar="DIR", help="offline Intel collateral directory (tcb_info.json, ...)"
            )
            parser.add_argument("--pcs", metavar="URL", help="fetch the collateral from Intel PCS or a PCCS")
            parser.add_argument(
                "--allow-missing-crls", action="store_true", help="accept collateral without CRLs"
            )
            parser.add_argument("--root", metavar="FILE", help=argparse.SUPPRESS)  # test vendors only


def _print_human(tee: str, claims: dict[str, Any]) -> None:
    hardware = (
        f"SNP {claims['snp.product']}" if tee == TEE_SNP else f"TDX (TCB {claims.get('tdx.tcb_status')})"
    )
    print(
        f"verified: {tee} evidence v{claims['azure.evidence_version']}, {hardware}, HCL v{claims['azure.hcl.version']}"
    )
    measurement = "snp.measurement" if tee == TEE_SNP else "tdx.quote.body.mr_td"
    print(f"  {measurement} = {claims[measurement]}")
    print(f"  nonce = {claims['nonce']}{'' if claims['nonce_checked'] else ' (not compared: no --nonce)'}")
    print(f"  tpm.ak.sha256 = {claims['tpm.ak.sha256']}")
    for index, value in claims["pcrs"].get("sha256", {}).items():
        print(f"  pcr{index} = {value}")


def main(args: argparse.Namespace) -> int:
    tee = args.verify_tee
    try:
        from services.cli.verify_dcap import load_root
        from services.cli.verify_dcap import parse_time as dcap_time
        from services.cli.verify_snp import load_roots_dir

        roots_dir = getattr(args, "roots_dir", None)
        root = getattr(args, "root", None)
        certs_dir = getattr(args, "certs_dir", None)
        collateral = getattr(args, "collateral", None)
        claims = verify_azure(
            tee,
            Path(args.evidence),
            nonce=_nonce(args.nonce),
            at=dcap_time(args.at),
            certs_dir=Path(certs_dir) if certs_dir else None,
            collateral_dir=Path(collateral) if collateral else None,
            pcs_url=getattr(args, "pcs", None),
            eventlog_path=Path(args.eventlog) if args.eventlog else None,
            roots=load_roots_dir(roots_dir) if roots_dir else None,
            root_der=load_root(Path(root)) if root else None,
            allow_missing_crls=bool(getattr(args, "allow_missing_crls", False)),
        )
    except UsageError as exc:
        return usage_error(exc)
    except LayerFailed as failed:
        index = LAYERS.index(failed.layer) if failed.layer in LAYERS else -1
        layers = {
            name: ("verified" if i < index else "failed" if i == index else "not checked")
            for i, name in enumerate(LAYERS)
        }
        out = {
            "verified": False,
            "layer": failed.layer,
            "check": failed.error.reason,
            "detail": failed.error.detail,
            "layers": layers,
            "claims": failed.claims,
        }
        print(json.dumps(out, default=str))
        return 1
    if args.json:
        print(json.dumps({"verified": True, "claims": claims}, default=str))
    else:
        _print_human(tee, claims)
    return 0
