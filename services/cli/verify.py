"""`remits verify snp|tdx|sgx|tpm|az-snp-vtpm|az-tdx-vtpm|gcp-vtpm|sev-chain|cca|se`: one piece of evidence, offline or against the vendor, outside the pipeline."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    verify = sub.add_parser("verify", help="verify evidence offline (outside the pipeline)")
    verify_sub = verify.add_subparsers(dest="verify_tee", required=True)
    vsnp = verify_sub.add_parser("snp", help="an AMD SEV-SNP report (raw 1184 bytes or guest evidence JSON)")
    vsnp.add_argument("report")
    vsnp.add_argument("--vek", help="the VCEK/VLEK (DER or PEM)")
    vsnp.add_argument("--certs-dir", help="offline directory holding the VEK (and optionally a .crl)")
    vsnp.add_argument("--kds", default="https://kdsintf.amd.com", help="AMD KDS base URL when no VEK is given")
    vsnp.add_argument("--at", help="verification time, ISO 8601 (default: now)")
    vsnp.add_argument("--json", action="store_true")
    vsnp.add_argument("--roots-dir", help=argparse.SUPPRESS)  # test vendors only
    # Imported here: `python -m services.cli.verify_dcap` must not find itself imported already.
    from services.cli.verify_dcap import add_verify_parsers

    add_verify_parsers(verify_sub)
    from services.cli import verify_azure, verify_cca, verify_gcp, verify_se, verify_sev, verify_tpm

    for module in (verify_tpm, verify_azure, verify_gcp, verify_sev, verify_cca, verify_se):
        module.add_parsers(verify_sub)
    verify.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    if args.verify_tee in ("tdx", "sgx"):
        from services.cli.verify_dcap import main_verify_dcap

        return main_verify_dcap(args)
    from services.cli import verify_azure, verify_cca, verify_gcp, verify_se, verify_tpm

    for module in (verify_tpm, verify_azure, verify_gcp, verify_cca, verify_se):
        if args.verify_tee in module.TEES:
            return int(module.main(args))
    from services.cli.verify_snp import main_verify

    return main_verify(args)
