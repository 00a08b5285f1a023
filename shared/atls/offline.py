"""Evidence verification inside the relying process: the platform pipeline without NATS or Redis.

An aTLS peer verifies evidence during connection setup, so it cannot wait for the attestation
service; it runs the same platform code (parse, endorse, verify identity, appraise) with
endorsement documents from a callable (a local directory, a cache, a test PKI).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from shared.ear import status_of
from shared.errors import VerificationError
from shared.platforms.base import EndorsementRequest, Platform

EndorsementSource = Callable[[Platform, EndorsementRequest], bytes | None]
# Claim under which the appraisal is returned next to the platform's claims, so a caller can
# refuse e.g. a warning-tier result (an unrecognised measurement is a note, not a violation).
APPRAISAL_CLAIM = "atls.appraisal"


class OfflineEvidenceVerifier:
    """``verify_evidence(tee, evidence) -> (report_data, claims)`` for ``EvidencePeerVerifier``."""

    def __init__(
        self,
        platforms: Mapping[str, Platform],
        endorsements: EndorsementSource,
        references: Mapping[str, Mapping[str, frozenset[str]]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._platforms = dict(platforms)
        self._endorsements = endorsements
        self._references = references
        self._clock = clock

    def __call__(self, tee: str, evidence: bytes) -> tuple[bytes, dict[str, Any]]:
        platform = self._platforms.get(tee)
        if platform is None:
            raise VerificationError("atls.unsupported_tee", f"no platform for TEE {tee!r}")
        info = platform.parse_evidence(evidence)
        documents: list[bytes | None] = []
        for request in platform.endorsement_requests(info.evidence, info.carried_endorsement):
            document = self._endorsements(platform, request)
            if document is None and not request.optional:
                raise VerificationError("endorsement.not_found", f"no document for {request.cache_key}")
            documents.append(document)
        endorsement = platform.assemble_endorsement(documents, info.carried_endorsement)
        now = datetime.fromtimestamp(self._clock(), UTC)
        claims = platform.verify_identity(info.evidence, endorsement, now)
        appraisal = platform.appraise(info.evidence, claims, dict(self._references.get(tee, {})))
        if appraisal.violations:
            # Every violation in the detail, so an operator fixes them all in one go.
            detail = "; ".join(f"{v.field}: got {v.got}, want {v.want}" for v in appraisal.violations)
            raise VerificationError(f"atls.policy.{appraisal.violations[0].field}", detail)
        out = dict(claims)
        out[APPRAISAL_CLAIM] = {
            "status": status_of(appraisal.vector),
            "vector": dict(appraisal.vector),
            "notes": list(appraisal.notes),
        }
        return info.report_data, out
