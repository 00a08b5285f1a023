"""The ``sev`` TEE as the pipeline's generic steps see it, for the attestation of a launch (the
second phase; the first, the launch session, is ``broker.open_launch``).

The evidence is the firmware's MEASURE ‖ MNONCE (48 bytes). It carries no report_data: it is bound
to its session by the TIK, which only REMITS and the firmware know. So nothing here can check it
alone: the measure stage opens the session's sealed state and runs ``broker.appraise_launch``
(the HMAC against the workload's launch digests) before ``appraise`` judges the claims it produced.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.errors import VerificationError
from shared.platforms.base import Appraisal, EvidenceInfo, NoEndorsementToFetch, Violation
from shared.platforms.sev import measure, wire
from shared.platforms.sev.session import SevPolicy

TEE = "sev"


class SevPlatform(NoEndorsementToFetch):  # the platform chain was verified when the launch session was opened
    tee = TEE
    reference_names: tuple[str, ...] = ()  # per workload: the measure stage reads them (services.sevlaunch)

    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        measure_bytes, mnonce = wire.decode_measurement(primary_evidence.decode("utf-8", "replace"))
        return EvidenceInfo(evidence=measure_bytes + mnonce, report_data=b"", endorsement_key="")

    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        if len(evidence) != 48:
            raise VerificationError("sev.measurement", f"{len(evidence)} bytes, expected MEASURE ‖ MNONCE (48)")
        return {"sev.measure": evidence[:32].hex(), "sev.mnonce": evidence[32:].hex()}

    def appraise(self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]) -> Appraisal:
        if not claims.get("sev.launch_digest"):
            # Only the measure stage's check (broker.appraise_launch) sets it: without it, nothing
            # says the launch ran the registered image.
            raise VerificationError("sev.measurement_unchecked", "the launch measurement was not checked")
        try:
            policy = SevPolicy.decode(int(claims["sev.policy"]))
            major, minor = (int(x) for x in str(claims["sev.api_version"]).split("."))
            firmware = measure.FirmwareVersion(major, minor, int(claims["sev.build"]))
        except (KeyError, ValueError, TypeError) as exc:
            raise VerificationError("sev.claims", f"the launch's claims are incomplete: {exc!r}") from None
        requirements = measure.PolicyRequirements(allow_debug=bool(claims.get("sev.allow_debug", False)))
        violations: list[Violation] = list(measure.validate_policy(policy, requirements, firmware))
        vector = {
            "instance-identity": 2,  # MEASURE verifies under this launch's TIK: it is this launch
            "hardware": 2,  # the PDH chains to AMD's pinned ARK (checked before the session)
            "executables": 2,  # the launch digest is one registered for the workload
            "configuration": 2,
            # Memory is encrypted (SEV); register state too only with SEV-ES.
            "runtime-opaque": 2 if policy.es else 32,
        }
        notes = [] if policy.es else ["sev.no_encrypted_state"]
        return Appraisal(vector=vector, violations=violations, notes=notes)
