"""SEV-SNP as the pipeline sees it: guest evidence in, verified claims and an appraisal out.

Trust roots (the pinned AMD ARK/ASK/ASVK per product) and the KDS base URL are bound at
construction; every method is pure over bytes, time is passed in.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime
from threading import Lock
from typing import Any

from cryptography.hazmat.primitives import hashes

from shared.errors import ParseError, VerificationError
from shared.platforms.base import Appraisal, EndorsementRequest, EvidenceInfo, Violation
from shared.platforms.snp import checks, kds
from shared.platforms.snp.abi import Product, SigningKey, SnpReport, parse_report
from shared.platforms.snp.certs import AmdRoots, VekKind, load_certificate, load_crl, vek_kind
from shared.platforms.snp.chain import VerifiedVek, verify_vek_chain
from shared.platforms.snp.evidence import decode_evidence
from shared.platforms.snp.validate import MinimumTcb, SnpPolicy, claims, validate
from shared.platforms.snp.verify import verify_report_with_vek

TEE = "snp"
_VERDICT_CACHE_SIZE = 65536
_KIND_OF_SIGNER = {SigningKey.VCEK: VekKind.VCEK, SigningKey.VLEK: VekKind.VLEK}
_TCB_NAMES = ("bootloader", "tee", "snp", "microcode", "fmc")


def _kind_of(der: bytes) -> VekKind | None:
    try:
        return vek_kind(load_certificate(der, "vek"))
    except ParseError:
        return None


def _v2_guess(raw: bytes) -> Product:
    # Version 2 reports carry no CPUID. A chip id whose last 56 bytes are zero is Turin's 8-byte
    # id; otherwise Milan, the v2-era product. The VEK's issuer settles it during verification.
    chip_id = raw[0x1A0:0x1E0]
    return Product.TURIN if any(chip_id[:8]) and not any(chip_id[8:]) else Product.MILAN


def parse(raw: bytes, product: Product | None = None) -> SnpReport:
    """parse_report, with a provisional product for version 2 reports when none is known."""
    try:
        return parse_report(raw, product)
    except ParseError as err:
        if err.reason != "parse.report.product":
            raise
        return parse_report(raw, _v2_guess(raw))


def _has_cpuid(report: SnpReport) -> bool:
    return report.cpuid_fam_id is not None


def endorsement_cache_key(report: SnpReport) -> str:
    """One VEK per (product, kind, chip, reported TCB): the key the fleet-wide fetch lock uses."""
    kind = _KIND_OF_SIGNER.get(report.signing_key)
    if kind is VekKind.VLEK:
        # A VLEK is per cloud provider, not per chip: the chip id is masked and not part of it.
        return f"vlek:{report.product.value}:{report.reported_tcb.raw.hex()}"
    return f"vcek:{report.product.value}:{report.chip_id.hex()}:{report.reported_tcb.raw.hex()}"


class SnpPlatform:
    tee = TEE
    reference_names = (
        "measurement",
        "host_data",
        "allow_debug",
        "allow_migration_agent",
        "min_guest_svn",
        *(f"min_tcb.{name}" for name in _TCB_NAMES),
    )

    def __init__(self, roots: Mapping[Product, AmdRoots], kds_url: str = kds.DEFAULT_KDS_BASE) -> None:
        self.roots = dict(roots)
        self.kds_url = kds_url
        self._ark_ids = {
            product: r.ark.fingerprint(hashes.SHA256()).hex()[:16] for product, r in self.roots.items()
        }
        # Verified VEK chains keyed by the exact VEK and CRL bytes: a warm chip costs one ECDSA
        # verify. Each use re-checks validity at the given time (VerifiedVek.check_valid_at).
        self._verdicts: OrderedDict[bytes, VerifiedVek] = OrderedDict()
        self._lock = Lock()

    # -- intake ----------------------------------------------------------------------------
    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        evidence = decode_evidence(primary_evidence)
        report = parse(evidence.report)
        # Only certificates of the kind that signed this report: a VLEK sent along with a VCEK
        # report (or the reverse) must not stand in for the missing one.
        wanted = {SigningKey.VCEK: "VCEK", SigningKey.VLEK: "VLEK"}.get(report.signing_key)
        carried = tuple(der for kind, der in evidence.certificates if kind == wanted)
        return EvidenceInfo(
            evidence=evidence.report,
            report_data=report.report_data,
            endorsement_key=endorsement_cache_key(report),
            carried_endorsement=carried,
            init_data_binding=report.host_data,
        )

    # -- endorsement -----------------------------------------------------------------------
    def endorsement_requests(self, evidence: bytes, carried: tuple[bytes, ...]) -> list[EndorsementRequest]:
        report = parse(evidence)
        kind = _KIND_OF_SIGNER.get(report.signing_key)
        if kind is None:
            raise VerificationError(checks.SIGNING_KEY_MISMATCH, "the report names no signing key")
        requests: list[EndorsementRequest] = []
        if not any(_kind_of(der) is kind for der in carried):
            url, fallbacks = "", ()
            if kind is VekKind.VCEK:
                url = kds.vcek_url(report.product, report.chip_id, report.reported_tcb, base=self.kds_url)
                if not _has_cpuid(report) and report.product is Product.MILAN:
                    # v2 without CPUID: if KDS does not know the chip as Milan, ask as Genoa.
                    genoa = parse_report(evidence, Product.GENOA)
                    fallbacks = (kds.vcek_url(Product.GENOA, genoa.chip_id, genoa.reported_tcb, base=self.kds_url),)
            requests.append(EndorsementRequest(endorsement_cache_key(report), url, fallback_urls=fallbacks))
        kind_path = "vcek" if kind is VekKind.VCEK else "vlek"
        requests.append(
            EndorsementRequest(
                # Per pinned ARK: deployments (or a test vendor) sharing one Redis never mix CRLs.
                f"crl:{kind_path}:{report.product.value}:{self._ark_ids.get(report.product, 'unpinned')}",
                kds.crl_url(report.product, kind, base=self.kds_url),
                optional=True,
            )
        )
        return requests

    def assemble_endorsement(self, documents: list[bytes | None], carried: tuple[bytes, ...]) -> list[bytes]:
        """[VEK DER, CRL DER or b""]."""
        *veks, crl = documents
        vek = next((d for d in veks if d is not None), None) or next(iter(carried), None)
        if vek is None:
            raise VerificationError("endorsement.not_found", "no VEK for this report")
        return [vek, crl or b""]

    def document_ttl(self, request: EndorsementRequest, document: bytes, now: datetime) -> int | None:
        try:
            if request.cache_key.startswith("crl:"):
                next_update = load_crl(document).next_update_utc
                return None if next_update is None else int((next_update - now).total_seconds())
            cert = load_certificate(document, "vek")
            return int((cert.not_valid_after_utc - now).total_seconds())
        except (ValueError, ParseError):
            return 60  # unreadable: keep briefly; identity verification will reject it anyway

    # -- identity --------------------------------------------------------------------------
    def _verified_vek(self, vek_der: bytes, crl_der: bytes, product: Product | None, now: datetime) -> VerifiedVek:
        key = hashlib.sha256(vek_der + b"\x00" + crl_der).digest()
        with self._lock:
            hit = self._verdicts.get(key)
        if hit is not None:
            return hit
        crl = load_crl(crl_der) if crl_der else None
        if product is not None and product not in self.roots:
            raise VerificationError(checks.ARK_NOT_PINNED, f"no pinned ARK for {product.value}")
        verified = verify_vek_chain(vek_der, self.roots, now, crl=crl, product=product, pinned=self.roots)
        with self._lock:
            self._verdicts[key] = verified
            if len(self._verdicts) > _VERDICT_CACHE_SIZE:
                self._verdicts.popitem(last=False)
        return verified

    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        if len(endorsement) != 2:
            raise VerificationError("endorsement.chain_invalid", f"expected [VEK, CRL], got {len(endorsement)} items")
        report = parse(evidence)
        # Without CPUID (v2) the product is the VEK issuer's.
        product = report.product if _has_cpuid(report) else None
        vek = self._verified_vek(endorsement[0], endorsement[1], product, now)
        verified = verify_report_with_vek(evidence, vek, now)
        out = claims(verified.report)
        out["snp.vek.not_after"] = vek.not_after.isoformat()
        out["snp.crl_checked"] = bool(endorsement[1])
        return out

    # -- measurement and policy ------------------------------------------------------------
    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal:
        report = parse(evidence)
        policy = policy_from_references(references)
        found = validate(report, policy)
        vector = {
            "instance-identity": 2,
            "hardware": 2,
            "configuration": 2,
            "executables": 2,
            "runtime-opaque": 2,  # SNP encrypts guest memory with a key the host cannot read
        }
        notes: list[str] = []
        if not policy.allowed_measurements:
            vector["executables"] = 33  # nothing provisioned: unrecognized runtime (warning tier)
            notes.append("measurement.no_reference_values")
        violations = [Violation(v.field, v.got, v.want) for v in found]
        return Appraisal(vector=vector, violations=violations, notes=notes)


def _single_int(references: dict[str, frozenset[str]], name: str) -> int:
    values = references.get(name, frozenset())
    try:
        return max((int(v, 0) for v in values), default=0)
    except ValueError:
        raise ParseError(f"reference_values.{name}", "not an integer", prefix="config") from None


def policy_from_references(references: dict[str, frozenset[str]]) -> SnpPolicy:
    """The appraisal policy from provisioned reference values (RVPS-style named value sets)."""
    try:
        measurements = frozenset(bytes.fromhex(m) for m in references.get("measurement", frozenset()))
        host_data = references.get("host_data", frozenset())
        expected_host_data = bytes.fromhex(next(iter(host_data))) if len(host_data) == 1 else None
    except ValueError:
        raise ParseError("reference_values.measurement", "not hex", prefix="config") from None
    return SnpPolicy(
        allow_debug="true" in references.get("allow_debug", frozenset()),
        allow_migration_agent="true" in references.get("allow_migration_agent", frozenset()),
        min_guest_svn=_single_int(references, "min_guest_svn"),
        min_tcb=MinimumTcb(**{name: _single_int(references, f"min_tcb.{name}") for name in _TCB_NAMES}),
        allowed_measurements=measurements,
        expected_host_data=expected_host_data,
    )
