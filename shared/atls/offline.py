"""Evidence verification inside the relying process: the platform pipeline without NATS or Redis.

An aTLS peer verifies evidence during connection setup, so it cannot wait for the attestation
service; it runs the same platform code (parse, endorse, verify identity, appraise) with
endorsement documents from a callable (a local directory, a cache, a test PKI).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from shared.ear import status_of, tier_of
from shared.errors import VerificationError
from shared.platforms.base import EndorsementRequest, Platform

EndorsementSource = Callable[[Platform, EndorsementRequest], bytes | None]
# Claim under which the appraisal is returned next to the platform's claims, so a caller can
# refuse e.g. a warning-tier result (an unrecognised measurement is a note, not a violation).
APPRAISAL_CLAIM = "atls.appraisal"
# Acceptable appraisal statuses per minimum (as for a relying party's token policy): "none" and
# "contraindicated" never pass.
_ACCEPTED_STATUS: Final = {
    "affirming": frozenset({"affirming"}),
    "warning": frozenset({"affirming", "warning"}),
}


class OfflineEvidenceVerifier:
    """``verify_evidence(tee, evidence) -> (report_data, claims)`` for ``EvidencePeerVerifier``.

    Evidence is accepted only if its appraisal has no violation and a status of at least
    ``min_status``: "affirming" by default, so a peer whose runtime is merely unrecognised (e.g. no
    reference values for its TEE, as a misspelt ``references`` key would leave it) is refused with
    ``atls.policy.status``. Lower it to "warning" only to accept such peers on purpose."""

    def __init__(
        self,
        platforms: Mapping[str, Platform],
        endorsements: EndorsementSource,
        references: Mapping[str, Mapping[str, frozenset[str]]],
        clock: Callable[[], float] = time.time,
        *,
        min_status: str = "affirming",
    ) -> None:
        if min_status not in _ACCEPTED_STATUS:
            raise ValueError(f"min_status must be one of {sorted(_ACCEPTED_STATUS)}")
        self._min_status = min_status
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
        status = status_of(appraisal.vector)
        if status not in _ACCEPTED_STATUS[self._min_status]:
            # Say why the status is what it is: the platform's notes and the claims below affirming.
            below = [
                f"{name}={value}"
                for name, value in sorted(appraisal.vector.items())
                if tier_of(value) in ("warning", "contraindicated")
            ]
            reasons = ", ".join(list(appraisal.notes) + below) or "no trust claims"
            raise VerificationError(
                "atls.policy.status",
                f"{tee} appraisal status {status!r}, at least {self._min_status!r} needed ({reasons})",
            )
        out = dict(claims)
        out[APPRAISAL_CLAIM] = {
            "status": status,
            "vector": dict(appraisal.vector),
            "notes": list(appraisal.notes),
        }
        return info.report_data, out
