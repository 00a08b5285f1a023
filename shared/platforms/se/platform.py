"""IBM Secure Execution as the pipeline sees it. Unlike the report-and-certificate TEEs, the
evidence is a MAC under a key the verifier chose: it is checked against its own request (held
sealed by the identity stage, services.seattest), not with an endorsement. What remains here is
pure: the answer's user data for the challenge binding, and the appraisal of the verified claims.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.errors import VerificationError
from shared.platforms.base import Appraisal, EvidenceInfo, NoEndorsementToFetch, Violation
from shared.platforms.se.evidence import decode_evidence

TEE = "se"
# The user data starts with SHA-512 of the KBS runtime data: the whole REPORT_DATA-sized field.
BINDING_SIZE = 64
_HOST_KEY_CLAIMS = ("image_phkh", "attestation_phkh")


class SePlatform(NoEndorsementToFetch):  # the host key documents were checked when the request was built
    tee = TEE
    reference_names = ("image_tags", "host_key_hash")

    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        response = decode_evidence(primary_evidence)
        return EvidenceInfo(
            evidence=primary_evidence,
            report_data=response.user_data[:BINDING_SIZE],
            # No vendor document: the host key documents were checked when the request was built.
            endorsement_key="se:request",
        )

    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        # Only the request's creator can check a measurement: there is nothing to verify here alone.
        raise VerificationError("se.session_unknown", "an SE answer is verified against its own request")

    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal:
        violations: list[Violation] = []
        allowed = references.get("host_key_hash", frozenset())
        notes: list[str] = []
        if allowed:
            for name in _HOST_KEY_CLAIMS:
                value = claims.get(f"se.{name}")
                if isinstance(value, str) and value and value.lower() not in allowed:
                    violations.append(Violation(name, value, "one of host_key_hash"))
        else:
            notes.append("se.host_key_hash.not_provisioned")
        vector = {
            # The answer opened only on a machine whose host key document chains to IBM.
            "instance-identity": 2,
            "hardware": 2,
            "configuration": 2,
            # The measurement was recomputed for an approved image, else it would not have verified.
            "executables": 2,
            "runtime-opaque": 2,
        }
        return Appraisal(vector=vector, violations=violations, notes=notes)
