"""Arm CCA as the pipeline sees it: a CCA token in, verified claims and an appraisal out.

The endorsement is one trust anchor (a CPAK and the implementation/instance ids it belongs to),
fetched from ``ta_url`` or an offline directory under the key ``cca-ta:<impl>:<inst>``. No vendor
serves CPAK endorsements publicly yet, so deployments provision anchors themselves.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict
from datetime import datetime
from threading import Lock
from typing import Any

from shared.errors import VerificationError
from shared.platforms.base import Appraisal, EndorsementRequest, EvidenceInfo
from shared.platforms.cca.abi import CcaToken, decode_evidence, decode_token
from shared.platforms.cca.tastore import decode_anchor
from shared.platforms.cca.validate import REFERENCE_NAMES, claims, references_from_named, validate
from shared.platforms.cca.verify import verify_token

TEE = "cca"
# A platform's anchor document is the same bytes for every realm on it: its JWK is read once.
_anchor = functools.lru_cache(maxsize=4096)(lambda document: decode_anchor(document))
_VERDICT_CACHE_SIZE = 65536


def endorsement_cache_key(token: CcaToken) -> str:
    platform = token.platform_claims
    return f"cca-ta:{platform.implementation_id.hex()}:{platform.instance_id.hex()}"


class CcaPlatform:
    tee = TEE
    reference_names = REFERENCE_NAMES

    def __init__(self, ta_url: str = "") -> None:
        self.ta_url = ta_url.rstrip("/")
        # Keys of (platform token, anchor) pairs whose CPAK signature verified. Only successes are
        # kept, so a failure is always re-derived and reported with its reason.
        self._verdicts: OrderedDict[bytes, None] = OrderedDict()
        self._lock = Lock()

    def forget_platform_tokens(self) -> None:
        """Drop the verified platform tokens (benchmarks measure the path of a token never seen)."""
        with self._lock:
            self._verdicts.clear()

    # -- intake ----------------------------------------------------------------------------
    def parse_evidence(self, primary_evidence: bytes) -> EvidenceInfo:
        raw = decode_evidence(primary_evidence)
        token = decode_token(raw)
        return EvidenceInfo(
            evidence=raw,
            report_data=token.realm_claims.challenge,
            endorsement_key=endorsement_cache_key(token),
            init_data_binding=token.realm_claims.personalization_value,
        )

    # -- endorsement -----------------------------------------------------------------------
    def endorsement_requests(self, evidence: bytes, carried: tuple[bytes, ...]) -> list[EndorsementRequest]:
        token = decode_token(evidence)
        platform = token.platform_claims
        url = (
            f"{self.ta_url}/{platform.implementation_id.hex()}/{platform.instance_id.hex()}"
            if self.ta_url
            else ""
        )
        return [EndorsementRequest(cache_key=endorsement_cache_key(token), url=url)]

    def assemble_endorsement(self, documents: list[bytes | None], carried: tuple[bytes, ...]) -> list[bytes]:
        """[the trust-anchor document]."""
        anchor = next((d for d in documents if d), None)
        if anchor is None:
            raise VerificationError("endorsement.not_found", "no CCA trust anchor for this platform")
        return [anchor]

    def document_ttl(self, request: EndorsementRequest, document: bytes, now: datetime) -> int | None:
        return None

    # -- identity --------------------------------------------------------------------------
    def verify_identity(self, evidence: bytes, endorsement: list[bytes], now: datetime) -> dict[str, Any]:
        if len(endorsement) != 1:
            raise VerificationError(
                "endorsement.chain_invalid", f"expected [trust anchor], got {len(endorsement)} items"
            )
        token = decode_token(evidence)
        # The RMM asks the platform for its token once per RAK and hands the same bytes to every
        # attestation after it: a platform token seen before under this anchor is not re-verified
        # (one ECDSA saved per token). The realm token, fresh each time, always is.
        platform = token.platform
        # Each part hashed on its own: bytes moved between header and payload are another token.
        parts = (platform.protected, platform.payload, platform.signature, endorsement[0])
        key = hashlib.sha256(b"".join(hashlib.sha256(part).digest() for part in parts)).digest()
        with self._lock:
            hit = key in self._verdicts
            if hit:  # least recently used goes first: a busy machine's token stays
                self._verdicts.move_to_end(key)
        # No expected challenge here: intake already compared report_data (the realm challenge).
        verify_token(token, _anchor(endorsement[0]), platform_verified=hit)
        if not hit:
            with self._lock:
                self._verdicts[key] = None
                if len(self._verdicts) > _VERDICT_CACHE_SIZE:
                    self._verdicts.popitem(last=False)
        return claims(token)

    # -- measurement and policy ------------------------------------------------------------
    def appraise(
        self, evidence: bytes, claims: dict[str, Any], references: dict[str, frozenset[str]]
    ) -> Appraisal:
        token = decode_token(evidence)
        refs = references_from_named(references)
        vector = {
            "instance-identity": 2,
            "hardware": 2,
            "configuration": 2,
            "executables": 2,
            "runtime-opaque": 2,  # realm memory is isolated from the host by the RMM and GPC
        }
        notes: list[str] = []
        if not refs.rim:
            vector["executables"] = 33  # nothing provisioned: unrecognized runtime (warning tier)
            notes.append("measurement.no_reference_values")
        return Appraisal(vector=vector, violations=validate(token, refs), notes=notes)
