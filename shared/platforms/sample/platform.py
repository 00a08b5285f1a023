"""The sample platform as the pipeline sees it: evidence JSON in, claims and an appraisal out.

Evidence (KBS primary_evidence): ``{"report": "<standard base64 of the binary report>"}``.
Endorsement: the device certificate (by device id) and the vendor chain, from the sample KDS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import OrderedDict
from datetime import UTC, datetime
from threading import Lock
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from shared.errors import ParseError, VerificationError
from shared.platforms.base import Appraisal, EndorsementRequest, EvidenceInfo, Violation
from shared.platforms.sample import abi, kds, validate, verify

TEE = "sample"
_VERDICT_CACHE_SIZE = 65536


def _not_expired(cert: x509.Certificate, now: datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


class SamplePlatform:
    tee = TEE
    reference_names = ("measurement", "min_svn", "allow_debug")

    def __init__(self, root: x509.Certificate, kds_url: str) -> None:
        self.root = root
        self.kds_url = kds_url
        # The vendor chain is cached per pinned root, so two deployments (or a re-keyed sample
        # vendor) sharing one Redis never read each other's chain.
        self._chain_cache_key = "cert_chain:" + root.fingerprint(hashes.SHA256()).hex()[:32]
        # Verified chains, so a warm device costs one signature check, not three. Keyed by the
        # exact endorsement bytes; validity is re-checked at every use against the given time.
        self._verdicts: OrderedDict[bytes, x509.Certificate] = OrderedDict()
        self._vendor_chains: dict[bytes, x509.Certificate] = {}
        self._lock = Lock()

    # -- intake ----------------------------------------------------------------------------
    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        try:
            doc = json.loads(primary_evidence)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError("evidence", f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or set(doc) != {"report"} or not isinstance(doc["report"], str):
            raise ParseError("evidence", 'expected {"report": "<base64>"}')
        try:
            raw = base64.b64decode(doc["report"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ParseError("evidence.report", f"not base64: {exc}") from None
        report = abi.parse_report(raw)
        return EvidenceInfo(
            evidence=raw, report_data=report.report_data, endorsement_key=report.device_id.hex()
        )

    # -- endorsement -----------------------------------------------------------------------
    def endorsement_requests(self, evidence: bytes, carried: tuple[bytes, ...]) -> list[EndorsementRequest]:
        device_id = abi.parse_report(evidence).device_id
        return [
            EndorsementRequest(f"device:{device_id.hex()}", kds.device_cert_url(self.kds_url, device_id)),
            EndorsementRequest(self._chain_cache_key, kds.cert_chain_url(self.kds_url)),
        ]

    def assemble_endorsement(self, documents: list[bytes | None], carried: tuple[bytes, ...]) -> list[bytes]:
        if any(doc is None for doc in documents):
            raise VerificationError("endorsement.not_found", "a required sample endorsement is missing")
        return [doc for doc in documents if doc is not None]  # [device certificate DER, vendor chain PEM]

    def document_ttl(self, request: EndorsementRequest, document: bytes, now: datetime) -> int | None:
        return None

    # -- identity --------------------------------------------------------------------------
    def _verified_vendor_chain(self, chain_pem: bytes, now: datetime) -> x509.Certificate:
        """The vendor intermediate, verified to the pinned root once per chain document."""
        with self._lock:
            intermediate = self._vendor_chains.get(chain_pem)
        if intermediate is None:
            intermediate, kds_root = verify.load_chain(chain_pem)
            verify.verify_vendor_chain(intermediate, kds_root, now, pinned_root=self.root)
            with self._lock:
                self._vendor_chains[chain_pem] = intermediate
        elif not (_not_expired(intermediate, now) and _not_expired(self.root, now)):
            raise VerificationError("endorsement.expired", "the vendor chain is outside its validity")
        return intermediate

    def _verified_chain(self, endorsement: list[bytes], now: datetime) -> x509.Certificate:
        if len(endorsement) != 2:
            raise VerificationError("endorsement.chain_invalid", f"expected 2 documents, got {len(endorsement)}")
        intermediate = self._verified_vendor_chain(endorsement[1], now)
        key = hashlib.sha256(endorsement[0] + b"\x00" + endorsement[1]).digest()
        with self._lock:
            leaf = self._verdicts.get(key)
        if leaf is not None:
            if _not_expired(leaf, now):
                return leaf
            raise VerificationError("endorsement.expired", "the device certificate is outside its validity")
        leaf = verify.verify_device_cert(endorsement[0], intermediate, now)
        with self._lock:
            self._verdicts[key] = leaf
            if len(self._verdicts) > _VERDICT_CACHE_SIZE:
                self._verdicts.popitem(last=False)
        return leaf

    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        now = now.astimezone(UTC)
        report = abi.parse_report(evidence)
        leaf = self._verified_chain(endorsement, now)
        verify.verify_report(evidence, report, leaf)
        return validate.claims(report)

    # -- measurement and policy ------------------------------------------------------------
    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal:
        report = abi.parse_report(evidence)
        measurements = references.get("measurement", frozenset())
        vector = {"instance-identity": 2, "hardware": 2, "configuration": 2, "executables": 2}
        notes: list[str] = []
        try:
            min_svn = max((int(v) for v in references.get("min_svn", frozenset())), default=0)
        except ValueError:
            raise ParseError("reference_values.min_svn", "not an integer", prefix="config") from None
        refs = validate.ReferenceValues(
            measurements=frozenset(bytes.fromhex(m) for m in measurements),
            min_svn=min_svn,
            allow_debug="true" in references.get("allow_debug", frozenset()),
        )
        found = validate.validate(report, refs)
        if not measurements:
            # Nothing provisioned: the runtime is unrecognized (warning tier), not approved.
            found = [v for v in found if v.field != "measurement"]
            vector["executables"] = 33
            notes.append("measurement.no_reference_values")
        if report.debug:
            vector["configuration"] = 32
        violations = [Violation(v.field, v.got, v.want) for v in found]
        return Appraisal(vector=vector, violations=violations, notes=notes)
