"""`remits verify tdx|sgx`: verify one Intel DCAP quote offline (collateral files) or against Intel
PCS / a PCCS, outside the pipeline.

    remits verify tdx QUOTE [--collateral DIR] [--pcs URL] [--eventlog FILE] [--at ISO8601] [--json]
    remits verify sgx QUOTE [--collateral DIR] [--pcs URL] [--at ISO8601] [--json]

QUOTE is a raw quote, the same as hex text, or Confidential Containers' guest evidence JSON
``{"cc_eventlog": <base64 | null>, "quote": <base64>}`` (standard or URL-safe base64, padding
optional). An event log (``--eventlog``, else the one the evidence carries) is replayed against
RTMR0-3 of the verified quote.

Exit codes: 0 verified (claims on stdout, with ``"verified": true``), 1 a check failed
(``{"verified": false, "check", "detail"}``; checks are ``tdx.*`` names, ``parse.*`` for
unreadable evidence or collateral, ``endorsement.*`` when PCS could not be asked), 2 usage error
(unreadable file, bad time). The TCB status is reported, not judged: OutOfDate still exits 0.

Collateral without CRLs fails closed (``tdx.root_crl_signature``) unless ``--allow-missing-crls``.
Standalone (tests, no ``remits`` entry point): ``python -m services.cli.verify_dcap verify tdx QUOTE ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import json
import string
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp
from cryptography.x509.oid import NameOID

from services.cli.verify_common import UsageError, report
from shared.errors import EndorsementError, ParseError, VerificationError
from shared.fetch import MAX_BODY_BYTES, EndorsementFetcher
from shared.platforms.tdx import checks, pcs, pinned_root_der
from shared.platforms.tdx.abi import CertificationDataType, Quote, TdReport, parse_quote
from shared.platforms.tdx.certs import der, load_certificates, order_chain
from shared.platforms.tdx.collateral import Collateral, load_collateral
from shared.platforms.tdx.eventlog import parse_event_log, verify_rtmrs
from shared.platforms.tdx.pck import pck_extension
from shared.platforms.tdx.validate import claims
from shared.platforms.tdx.verify import verify_quote

DEFAULT_TIMEOUT_S = 10.0
_ATTEMPTS = 3
_BACKOFF_S = 0.25
_HEX_DIGITS = frozenset(string.hexdigits.encode())
_URLSAFE = str.maketrans("-_", "+/")
_MISSING_CRL_HINT = " (--allow-missing-crls verifies without revocation checks)"


# -- evidence ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DcapEvidence:
    quote: bytes
    event_log: bytes | None = None  # CCEL data, when the guest sent one


def b64decode_any(text: str, field: str) -> bytes:
    """Standard or URL-safe base64, padded or not: guests differ, the bytes do not."""
    cleaned = "".join(text.split()).translate(_URLSAFE).rstrip("=")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise ParseError(field, "not base64") from None


def decode_evidence(data: bytes) -> DcapEvidence:
    """A raw quote, a hex-encoded quote, or CoCo's ``{"cc_eventlog", "quote"}`` JSON."""
    stripped = data.strip()
    if stripped.startswith(b"{"):
        try:
            obj = json.loads(stripped)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError("evidence", f"malformed JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("quote"), str):
            raise ParseError("evidence.quote", "expected a JSON object with a base64 'quote'")
        log = obj.get("cc_eventlog")
        if log is not None and not isinstance(log, str):
            raise ParseError("evidence.cc_eventlog", "expected base64 or null")
        return DcapEvidence(
            quote=b64decode_any(obj["quote"], "evidence.quote"),
            event_log=b64decode_any(log, "evidence.cc_eventlog") if log else None,
        )
    # A quote's first byte is its version (3, 4 or 5), never an ASCII hex digit.
    if stripped and len(stripped) % 2 == 0 and all(b in _HEX_DIGITS for b in stripped):
        return DcapEvidence(bytes.fromhex(stripped.decode("ascii")))
    return DcapEvidence(data)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


# -- collateral --------------------------------------------------------------------------------


_REQUIRED_FILES = ("tcb_info.json", "tcb_info_issuer_chain.pem", "qe_identity.json")
_OPTIONAL_FILES = ("qe_identity_issuer_chain.pem", "pck_crl.der", "pck_crl_issuer_chain.pem", "root_ca_crl.der")


def read_collateral_dir(directory: Path) -> dict[str, bytes | None]:
    """The files of the test-vector layout (``UsageError`` when a required one cannot be read):
    ``tcb_info.json``, ``tcb_info_issuer_chain.pem``, ``qe_identity.json`` and optionally
    ``qe_identity_issuer_chain.pem`` (else the TCB Info's), ``pck_crl.der``,
    ``pck_crl_issuer_chain.pem``, ``root_ca_crl.der``."""
    if not directory.is_dir():
        raise UsageError(f"--collateral: {directory} is not a directory")
    files: dict[str, bytes | None] = {name: _read(directory / name, "collateral file") for name in _REQUIRED_FILES}
    for name in _OPTIONAL_FILES:
        path = directory / name
        files[name] = _read(path, "collateral file") if path.exists() else None
    return files


def collateral_from_files(files: Mapping[str, bytes | None]) -> Collateral:
    """Parse what ``read_collateral_dir`` read (``ParseError`` names the malformed document)."""
    tcb_info, tcb_chain, qe_identity = (files[name] for name in _REQUIRED_FILES)
    if tcb_info is None or tcb_chain is None or qe_identity is None:
        raise ParseError("collateral", "tcb_info.json, tcb_info_issuer_chain.pem and qe_identity.json are required")
    return load_collateral(
        tcb_info=tcb_info,
        tcb_info_issuer_chain=tcb_chain,
        qe_identity=qe_identity,
        qe_identity_issuer_chain=files.get("qe_identity_issuer_chain.pem"),
        pck_crl=files.get("pck_crl.der"),
        pck_crl_issuer_chain=files.get("pck_crl_issuer_chain.pem"),
        root_ca_crl=files.get("root_ca_crl.der"),
    )


def load_collateral_dir(directory: Path) -> Collateral:
    return collateral_from_files(read_collateral_dir(directory))


@dataclass(frozen=True, slots=True)
class CollateralLocator:
    """Which documents a quote needs: its TEE, its platform's FMSPC and its PCK's CA."""

    tee: pcs.Tee
    fmspc: bytes
    ca: pcs.PckCa


def locate_collateral(quote: Quote) -> CollateralLocator:
    """Read the PCK leaf out of the quote (not yet trusted: it only picks URLs; verification
    later checks the same certificate against the documents fetched here)."""
    cert = quote.qe.certification
    if cert.cert_type != CertificationDataType.PCK_CHAIN:
        raise VerificationError(
            checks.PCK_CHAIN_PARSES, f"certification data type {cert.cert_type} carries no PCK chain to locate collateral by"
        )
    try:
        ordered = order_chain(load_certificates(cert.data, "pck_chain"))
    except ParseError as exc:
        raise VerificationError(checks.PCK_CHAIN_PARSES, exc.detail) from None
    if not ordered:
        raise VerificationError(checks.PCK_CHAIN_PARSES, "the PCK certificates do not form a chain")
    leaf = ordered[0]
    issuer = leaf.issuer.rfc4514_string()
    names = [a.value for a in leaf.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names or not isinstance(names[0], str):
        raise VerificationError(checks.PCK_CHAIN_PROFILE, f"PCK issuer {issuer} has no common name")
    try:
        ca = pcs.pck_ca_of_issuer(names[0])
    except ParseError as exc:
        raise VerificationError(checks.PCK_CHAIN_PROFILE, exc.detail) from None
    try:
        fmspc = pck_extension(leaf).fmspc
    except ParseError as exc:
        raise VerificationError(checks.PCK_CHAIN_PROFILE, exc.detail) from None
    return CollateralLocator(pcs.Tee.TDX if quote.is_tdx else pcs.Tee.SGX, fmspc, ca)


_Response = tuple[bytes, Mapping[str, str]]


async def _get_with_headers(session: aiohttp.ClientSession, url: str, timeout_s: float) -> _Response:
    """GET with the response headers (``EndorsementFetcher.get`` returns the body only and PCS
    puts the issuer chains in headers). Same failure vocabulary and retry policy as the fetcher:
    429, 5xx, timeouts and connection errors are retried; other answers fail at once."""
    last = "no attempt made"
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with asyncio.timeout(timeout_s), session.get(url) as resp:
                if resp.status == 200:
                    if resp.content_length is not None and resp.content_length > MAX_BODY_BYTES:
                        raise EndorsementError("endorsement.too_large", f"{url}: {resp.content_length} bytes")
                    # Content-Length may be absent or wrong (chunked, compressed): count what is read.
                    body = bytearray()
                    async for chunk in resp.content.iter_chunked(64 * 1024):
                        body += chunk
                        if len(body) > MAX_BODY_BYTES:
                            raise EndorsementError("endorsement.too_large", f"{url}: body exceeds {MAX_BODY_BYTES} bytes")
                    return bytes(body), dict(resp.headers)
                if resp.status == 404:
                    raise EndorsementError("endorsement.not_found", url)
                if resp.status != 429 and resp.status < 500:
                    raise EndorsementError("endorsement.fetch_failed", f"{url}: HTTP {resp.status}")
                last = f"HTTP {resp.status}"
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, aiohttp.ClientResponseError) as exc:
            raise EndorsementError("endorsement.fetch_failed", f"{url}: {exc!r}") from None
        except TimeoutError:
            last = f"timed out after {timeout_s}s"
        except aiohttp.ClientError as exc:
            last = repr(exc)
        if attempt < _ATTEMPTS:
            await asyncio.sleep(_BACKOFF_S * 2 ** (attempt - 1))
    raise EndorsementError("endorsement.unavailable", f"{url}: {_ATTEMPTS} attempts failed, last: {last}")


def root_ca_crl_url_for(base_url: str) -> str:
    """Intel publishes the Root CA CRL on its certificates host; a PCCS serves its own copy."""
    if base_url.rstrip("/") == pcs.DEFAULT_BASE_URL:
        return pcs.root_ca_crl_url()
    return pcs.root_ca_crl_url(base_url=base_url)


async def fetch_collateral(
    locator: CollateralLocator,
    base_url: str = pcs.DEFAULT_BASE_URL,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    session: aiohttp.ClientSession | None = None,
) -> Collateral:
    """TCB Info, QE Identity, the PCK CRL of the PCK's CA and the Root CA CRL from PCS or a PCCS,
    fetched concurrently, issuer chains taken from the response headers."""
    own = session is None
    client = session or aiohttp.ClientSession(headers={"User-Agent": "remits-verify/0.1"})
    try:
        fetcher = EndorsementFetcher(session=client, timeout_s=timeout_s)
        results = await asyncio.gather(
            _get_with_headers(client, pcs.tcb_info_url(locator.fmspc, locator.tee, base_url=base_url), timeout_s),
            _get_with_headers(client, pcs.qe_identity_url(locator.tee, base_url=base_url), timeout_s),
            _get_with_headers(client, pcs.pck_crl_url(locator.ca, base_url=base_url), timeout_s),
            fetcher.get(root_ca_crl_url_for(base_url)),
            # Every request runs to its end before the session closes; the first failure in
            # document order is the one reported, whichever finished first.
            return_exceptions=True,
        )
    finally:
        if own:
            await client.close()
    failure = next((r for r in results if isinstance(r, BaseException)), None)
    if failure is not None:
        raise failure
    tcb_body, tcb_headers = cast(_Response, results[0])
    qe_body, qe_headers = cast(_Response, results[1])
    crl_body, crl_headers = cast(_Response, results[2])
    root_crl = cast(bytes, results[3])
    tcb_chain = pcs.tcb_info_issuer_chain(tcb_headers)
    return load_collateral(
        tcb_info=tcb_body,
        tcb_info_issuer_chain=tcb_chain,
        qe_identity=qe_body,
        # The QE Identity is signed by the same TCB Signing key; PCCSs sometimes omit its header.
        qe_identity_issuer_chain=_optional_chain(qe_headers, pcs.ENCLAVE_IDENTITY_ISSUER_CHAIN) or tcb_chain,
        pck_crl=crl_body,
        # Informational only: the verifier checks the CRL under the PCK's own issuer.
        pck_crl_issuer_chain=_optional_chain(crl_headers, pcs.PCK_CRL_ISSUER_CHAIN),
        root_ca_crl=root_crl,
    )


def _optional_chain(headers: Mapping[str, str], name: str) -> bytes | None:
    if name.lower() not in {k.lower() for k in headers}:
        return None
    return pcs.issuer_chain_from_headers(headers, name)


# -- verification ------------------------------------------------------------------------------


def parse_time(text: str | None) -> datetime:
    if not text:
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def load_root(path: Path | None) -> bytes:
    """The pinned Intel SGX Root CA, or (tests, simulated vendors) a root given as a file."""
    if path is None:
        return pinned_root_der()
    try:
        return der(load_certificates(_read(path, "root certificate"), "root")[0])
    except ParseError as exc:
        raise UsageError(f"--root: {exc.detail}") from None


def verify_dcap(
    tee: str,
    quote_path: Path,
    *,
    collateral_dir: Path | None = None,
    pcs_url: str = pcs.DEFAULT_BASE_URL,
    eventlog_path: Path | None = None,
    at: datetime | None = None,
    root_der: bytes | None = None,
    allow_missing_crls: bool = False,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Verify one quote; the claims (``verified: True``) or a ``RemitsError`` naming the check.
    ``UsageError`` for files that cannot be read."""
    when = at or datetime.now(UTC)
    # Every file is read before anything is parsed, so an unreadable one is always a usage error.
    raw = _read(quote_path, "quote")
    log_file = _read(eventlog_path, "event log") if eventlog_path is not None else None
    files = read_collateral_dir(collateral_dir) if collateral_dir is not None else None

    evidence = decode_evidence(raw)
    event_log = log_file if log_file is not None else evidence.event_log
    collateral = collateral_from_files(files) if files is not None else None
    quote = parse_quote(evidence.quote)
    if (tee == "tdx") != quote.is_tdx:
        raise VerificationError(
            f"{tee}.quote.header.tee_type",
            f"a {'TDX' if quote.is_tdx else 'SGX'} quote (TEE type {quote.header.tee_type:#x}); use `verify "
            f"{'tdx' if quote.is_tdx else 'sgx'}`",
        )
    if collateral is None:
        collateral = asyncio.run(fetch_collateral(locate_collateral(quote), pcs_url, timeout_s=timeout_s))

    try:
        verified = verify_quote(
            evidence.quote,
            collateral,
            root_der if root_der is not None else pinned_root_der(),
            when,
            require_crls=not allow_missing_crls,
        )
    except VerificationError as err:
        crl_absent = (err.check == checks.ROOT_CRL_SIGNATURE and collateral.root_ca_crl is None) or (
            err.check == checks.PCK_CRL_SIGNATURE and collateral.pck_crl is None
        )
        if crl_absent:
            raise VerificationError(err.check, err.detail + _MISSING_CRL_HINT) from None
        raise

    out: dict[str, Any] = {"verified": True, **claims(quote, verified)}
    prefix = verified.tee
    start, end = verified.valid_window
    out[f"{prefix}.crl_checked"] = collateral.pck_crl is not None and collateral.root_ca_crl is not None
    out[f"{prefix}.valid_window"] = [start.isoformat(), end.isoformat()]
    out["verified_at"] = when.isoformat()
    if isinstance(quote.body, TdReport):
        out["tdx.eventlog.replayed"] = False
        if event_log is not None:
            log = parse_event_log(event_log)
            verify_rtmrs(log, quote.body.rtmrs)  # only a log that reproduces the quoted RTMRs counts
            out["tdx.eventlog.replayed"] = True
            out["tdx.eventlog.events"] = len(log.events)
    return out


# -- command line ------------------------------------------------------------------------------


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("quote", help="raw or hex quote, or CoCo evidence JSON {cc_eventlog, quote}")
    parser.add_argument("--collateral", metavar="DIR", help="offline collateral directory (tcb_info.json, ...)")
    parser.add_argument(
        "--pcs", metavar="URL", default=pcs.DEFAULT_BASE_URL, help="Intel PCS or PCCS base URL when no --collateral is given"
    )
    parser.add_argument("--at", metavar="ISO8601", help="verification time, ISO 8601 (default: now)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--allow-missing-crls",
        action="store_true",
        help="accept collateral without PCK/Root CA CRLs (revocation is then not checked)",
    )
    parser.add_argument("--timeout", metavar="SECONDS", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per PCS request")
    parser.add_argument("--root", metavar="FILE", help=argparse.SUPPRESS)  # test vendors only: a non-Intel root CA


def add_verify_parsers(verify_subparsers: Any) -> None:
    """Add ``tdx`` and ``sgx`` to the ``remits verify`` subparsers; both dispatch to
    ``main_verify_dcap`` (``args.dcap_tee`` says which)."""
    tdx = verify_subparsers.add_parser("tdx", help="an Intel TDX quote (v4/v5), optionally with its CCEL event log")
    _add_common(tdx)
    tdx.add_argument("--eventlog", metavar="FILE", help="CCEL event log data to replay against RTMR0-3")
    tdx.set_defaults(dcap_tee="tdx")
    sgx = verify_subparsers.add_parser("sgx", help="an Intel SGX DCAP quote (v3)")
    _add_common(sgx)
    sgx.set_defaults(dcap_tee="sgx")


def _print_human(result: Mapping[str, Any], tee: str) -> None:
    status = result[f"{tee}.tcb_status"]
    advisories = ", ".join(result[f"{tee}.advisory_ids"]) or "none"
    version = result[f"{tee}.quote.header.version"]
    print(f"verified: {tee.upper()} quote v{version}, TCB {status} (advisories: {advisories})")
    names = (
        ("tdx.quote.body.mr_td", *(f"tdx.quote.body.rtmr_{i}" for i in range(4)), "tdx.quote.body.mr_config_id")
        if tee == "tdx"
        else ("sgx.quote.body.mr_enclave", "sgx.quote.body.mr_signer")
    )
    for name in (*names, f"{tee}.quote.body.report_data", f"{tee}.fmspc"):
        print(f"  {name} = {result[name]}")
    debug = result.get("tdx.td_attributes.debug", result.get("sgx.attributes.debug"))
    print(f"  debug = {str(debug).lower()}; CRLs checked = {str(result[f'{tee}.crl_checked']).lower()}")
    if tee == "tdx" and result.get("tdx.eventlog.replayed"):
        print(f"  event log: {result['tdx.eventlog.events']} events replay to RTMR0-3")


def main_verify_dcap(args: argparse.Namespace) -> int:
    tee = getattr(args, "dcap_tee", None) or getattr(args, "verify_tee", "tdx")
    eventlog = getattr(args, "eventlog", None)
    return report(
        args,
        lambda: verify_dcap(
            tee,
            Path(args.quote),
            collateral_dir=Path(args.collateral) if args.collateral else None,
            pcs_url=args.pcs,
            eventlog_path=Path(eventlog) if eventlog else None,
            at=parse_time(args.at),
            root_der=load_root(Path(args.root) if args.root else None),
            allow_missing_crls=args.allow_missing_crls,
            timeout_s=args.timeout,
        ),
        lambda result: _print_human(result, tee),
    )


def build_parser() -> argparse.ArgumentParser:
    """``verify tdx|sgx`` alone, the way ``services.cli`` nests it."""
    parser = argparse.ArgumentParser(prog="remits")
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="verify evidence offline (outside the pipeline)")
    add_verify_parsers(verify.add_subparsers(dest="verify_tee", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return main_verify_dcap(args)


if __name__ == "__main__":
    sys.exit(main())
