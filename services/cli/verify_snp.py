"""`remits verify snp`: verify one SEV-SNP report offline or against KDS, outside the pipeline.

Exit codes: 0 verified (claims on stdout), 1 a check failed ({"verified": false, "check", ...}),
2 usage error (unreadable file, bad time)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli.verify_common import UsageError, report
from shared.errors import RemitsError
from shared.fetch import EndorsementFetcher
from shared.platforms.base import EndorsementRequest
from shared.platforms.snp.abi import REPORT_SIZE
from shared.platforms.snp.certs import VekKind, load_certificate, parse_vek_extensions, vek_kind
from shared.platforms.snp.evidence import decode_evidence
from shared.platforms.snp.platform import SnpPlatform, parse

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


def read_report(path: Path) -> tuple[bytes, tuple[bytes, ...]]:
    """A raw 1184-byte report, or guest evidence JSON (which may carry the VEK)."""
    data = path.read_bytes()
    if len(data) == REPORT_SIZE and not data.lstrip().startswith((b"{", b'"')):
        return data, ()
    evidence = decode_evidence(data)
    return evidence.report, tuple(der for kind, der in evidence.certificates if kind in ("VCEK", "VLEK"))


def _matches(report_raw: bytes, der: bytes) -> bool:
    """Is this certificate the VEK that should have signed the report (kind, TCB and chip)?"""
    try:
        cert = load_certificate(der, "vek")
        kind = vek_kind(cert)
        if kind is None:
            return False
        ext = parse_vek_extensions(cert)
        report = parse(report_raw)
    except RemitsError:
        return False
    tcb = report.reported_tcb
    if (ext.bl_spl, ext.tee_spl, ext.snp_spl, ext.ucode_spl) != (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode):
        return False
    if kind is VekKind.VLEK:
        return True
    return ext.hw_id is not None and report.chip_id.startswith(ext.hw_id)


def find_in_dir(directory: Path, report_raw: bytes) -> tuple[bytes | None, bytes | None]:
    """The matching VEK (and a CRL, if one is there) among the files of an offline directory."""
    vek = crl = None
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() == ".crl":
            crl = path.read_bytes()
        elif path.suffix.lower() in CERT_SUFFIXES and vek is None:
            data = path.read_bytes()
            der = _pem_to_der(data)
            if _matches(report_raw, der):
                vek = der
    return vek, crl


def _pem_to_der(data: bytes) -> bytes:
    if data.lstrip().startswith(b"-----BEGIN"):
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
        except ValueError:
            return data
    return data


async def fetch_from_kds(platform: SnpPlatform, report_raw: bytes) -> tuple[bytes, bytes]:
    """The same plan the endorsement stage follows: the VEK (with fallbacks), the optional CRL."""
    documents: list[bytes | None] = []
    async with EndorsementFetcher() as fetcher:
        for request in platform.endorsement_requests(report_raw, ()):
            documents.append(await _first_found(fetcher, request))
    vek, crl = platform.assemble_endorsement(documents, ())
    return vek, crl


async def _first_found(fetcher: EndorsementFetcher, request: EndorsementRequest) -> bytes | None:
    urls = [u for u in (request.url, *request.fallback_urls) if u]
    failure: RemitsError = RemitsError("endorsement.not_found", f"{request.cache_key}: KDS does not serve it")
    for url in urls:
        try:
            return await fetcher.get(url)
        except RemitsError as err:
            failure = err
            if err.reason != "endorsement.not_found":
                break
    if request.optional:
        return None
    raise failure


def verify_snp(
    report_path: Path,
    *,
    vek_path: Path | None,
    certs_dir: Path | None,
    kds_url: str,
    at: datetime,
    roots: dict | None = None,  # type: ignore[type-arg]
) -> dict[str, Any]:
    from shared.platforms.snp.certs import pinned_roots

    platform = SnpPlatform(roots or pinned_roots(), kds_url)
    try:
        report_raw, carried = read_report(report_path)
    except OSError as exc:
        raise UsageError(f"cannot read {report_path}: {exc}") from None
    crl = b""
    if vek_path is not None:
        try:
            vek = _pem_to_der(vek_path.read_bytes())
        except OSError as exc:
            raise UsageError(f"cannot read {vek_path}: {exc}") from None
    elif certs_dir is not None:
        if not certs_dir.is_dir():
            raise UsageError(f"{certs_dir} is not a directory")
        found, crl_found = find_in_dir(certs_dir, report_raw)
        if found is None:
            raise RemitsError("endorsement.not_found", f"no VEK in {certs_dir} matches the report's kind, TCB and chip")
        vek, crl = found, crl_found or b""
    elif carried:
        vek = carried[0]
    else:
        vek, crl = asyncio.run(fetch_from_kds(platform, report_raw))
    claims = platform.verify_identity(report_raw, [vek, crl], at)
    return {"verified": True, **claims}


def parse_time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def load_roots_dir(directory: str | None) -> dict | None:  # type: ignore[type-arg]
    if not directory:
        return None
    from shared.platforms.snp.abi import Product
    from shared.platforms.snp.certs import load_roots

    base = Path(directory)
    return {p: load_roots(base / p.value.lower(), p) for p in Product if (base / p.value.lower() / "ark.pem").exists()}


def main_verify(args: Any) -> int:
    return report(
        args,
        lambda: verify_snp(
            Path(args.report),
            vek_path=Path(args.vek) if args.vek else None,
            certs_dir=Path(args.certs_dir) if args.certs_dir else None,
            kds_url=args.kds,
            at=parse_time(args.at),
            roots=load_roots_dir(args.roots_dir),
        ),
        _print_text,
    )


def _print_text(result: dict[str, Any]) -> None:
    print(f"verified: {result['snp.product']} {result['snp.signing_key']} report v{result['snp.version']}")
    for name in ("snp.measurement", "snp.chip_id", "snp.report_data", "snp.host_data"):
        print(f"  {name} = {result[name]}")
    tcb = {k.rsplit('.', 1)[1]: v for k, v in result.items() if k.startswith("snp.reported_tcb.")}
    print(f"  snp.reported_tcb = {tcb}")

