"""Deciding whether a peer's aTLS certificate is trustworthy: the only place trust comes from.

The TLS handshake has already proven that the peer holds the private key of the certificate it
presented; these verifiers establish that this key belongs to an attested TEE, either because the
TEE's evidence commits to it or because a REMITS token names it as the TEE's key.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.atls.cert import Attestation, Kind, PublicKey, evidence_binding, read_attestation
from shared.atls.errors import AttestedTlsError
from shared.ear import CPU_SUBMOD, K_EVIDENCE, tee_pubkey_from_claims
from shared.errors import ProtocolError
from shared.kbs.wire import KNOWN_TEES, tee_public_key

# (tee, primary evidence JSON) -> (report_data, verified claims); raises on anything it refuses.
EvidenceVerifyFn = Callable[[str, bytes], tuple[bytes, dict[str, Any]]]
# compact EAR -> its claims after signature and validity checks; raises VerificationError.
TokenVerifyFn = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class PeerIdentity:
    """An accepted peer: what was verified about it and the key its channel is bound to."""

    kind: Kind
    tee: str | None
    public_key: PublicKey
    spki_sha256: str  # lowercase hex: a stable name for the peer's key (logs, allow-lists)
    claims: dict[str, Any] = field(default_factory=dict)
    token: str | None = None


class PeerVerifier(Protocol):
    def verify(self, cert_der: bytes) -> PeerIdentity: ...


def _read(cert_der: bytes, kind: Kind) -> Attestation:
    try:
        attestation = read_attestation(cert_der)
    except AttestedTlsError as exc:
        if exc.reason == "atls.no_attestation":
            raise AttestedTlsError(f"atls.no_{kind}", exc.detail) from None
        raise
    _check_kind(attestation, kind)
    return attestation


def _check_kind(attestation: Attestation, kind: Kind) -> None:
    if attestation.kind != kind:
        raise AttestedTlsError(f"atls.no_{kind}", f"the certificate carries a {attestation.kind}, not {kind}")


def _check_validity(attestation: Attestation, now: float) -> None:
    at = datetime.fromtimestamp(now, UTC)
    if at < attestation.not_before:
        raise AttestedTlsError(
            "atls.certificate_not_yet_valid", f"valid from {attestation.not_before.isoformat()}, now {at.isoformat()}"
        )
    if at > attestation.not_after:
        raise AttestedTlsError(
            "atls.certificate_expired", f"expired at {attestation.not_after.isoformat()}, now {at.isoformat()}"
        )


def _spki_sha256(attestation: Attestation) -> str:
    return hashlib.sha256(attestation.spki).hexdigest()


class EvidencePeerVerifier:
    """Accepts a certificate whose evidence verifies and whose report_data binds the certificate key.

    ``max_age_s`` bounds how long ago the certificate says it was made. That date is the peer's own
    statement, so it limits how long one certificate is used, not how old the evidence is: evidence
    freshness comes from ``expected_nonce`` (a challenge the peer must have put in its report) or from
    the key never leaving the TEE."""

    def __init__(
        self,
        verify_evidence: EvidenceVerifyFn,
        *,
        clock: Callable[[], float] = time.time,
        max_age_s: int = 3600,
        expected_nonce: bytes | None = None,
    ) -> None:
        self._verify_evidence = verify_evidence
        self._clock = clock
        self._max_age_s = max_age_s
        self._expected_nonce = expected_nonce

    def verify(self, cert_der: bytes) -> PeerIdentity:
        return self.verify_attestation(_read(cert_der, "evidence"))

    def verify_attestation(self, attestation: Attestation) -> PeerIdentity:
        """As ``verify``, for a certificate's attestation already read (``read_attestation``)."""
        _check_kind(attestation, "evidence")
        assert attestation.tee is not None and attestation.nonce is not None and attestation.evidence is not None
        now = self._clock()
        _check_validity(attestation, now)
        age = now - attestation.not_before.timestamp()
        if age > self._max_age_s:
            raise AttestedTlsError("atls.stale", f"certificate made {int(age)} s ago, at most {self._max_age_s} s")
        if self._expected_nonce is not None and not hmac.compare_digest(attestation.nonce, self._expected_nonce):
            raise AttestedTlsError("atls.nonce", "the evidence answers another challenge")
        report_data, claims = self._verify_evidence(attestation.tee, attestation.evidence)
        # Genuine evidence proves a TEE exists; only this equality proves the TLS key is that TEE's.
        if not hmac.compare_digest(report_data, evidence_binding(attestation.spki, attestation.nonce)):
            raise AttestedTlsError("atls.unbound_key", "the evidence's report_data does not bind the certificate key")
        return PeerIdentity(
            kind="evidence",
            tee=attestation.tee,
            public_key=attestation.public_key,
            spki_sha256=_spki_sha256(attestation),
            claims=claims,
        )


def same_public_key(a: Any, b: Any) -> bool:
    """Equal EC or RSA public keys, compared by their numbers (encodings may differ)."""
    if isinstance(a, ec.EllipticCurvePublicKey) and isinstance(b, ec.EllipticCurvePublicKey):
        return a.curve.name == b.curve.name and a.public_numbers() == b.public_numbers()
    if isinstance(a, rsa.RSAPublicKey) and isinstance(b, rsa.RSAPublicKey):
        return a.public_numbers() == b.public_numbers()
    return False


def tee_of_token_claims(claims: dict[str, Any]) -> str | None:
    """The TEE whose claims the token's annotated evidence files under its name, if exactly one."""
    submods = claims.get("submods")
    cpu = submods.get(CPU_SUBMOD) if isinstance(submods, dict) else None
    evidence = cpu.get(K_EVIDENCE) if isinstance(cpu, dict) else None
    if not isinstance(evidence, dict):
        return None
    tees = [name for name, value in evidence.items() if name in KNOWN_TEES and isinstance(value, dict)]
    return tees[0] if len(tees) == 1 else None


class TokenPeerVerifier:
    """Accepts a certificate carrying a token that ``verify_token`` accepts and whose tee-pubkey is
    the certificate key. This class checks no status itself: ``verify_token`` is the relying party's
    policy. :func:`shared.passport.verify_passport` is one that refuses a non-affirming token unless
    the policy it is given lowers ``min_status``; a bare ``EarVerifier.verify`` checks signature and
    validity only, and would accept a contraindicated token."""

    def __init__(self, verify_token: TokenVerifyFn, *, clock: Callable[[], float] = time.time) -> None:
        self._verify_token = verify_token
        self._clock = clock

    def verify(self, cert_der: bytes) -> PeerIdentity:
        return self.verify_attestation(_read(cert_der, "token"))

    def verify_attestation(self, attestation: Attestation) -> PeerIdentity:
        """As ``verify``, for a certificate's attestation already read (``read_attestation``)."""
        _check_kind(attestation, "token")
        assert attestation.token is not None
        _check_validity(attestation, self._clock())
        claims = self._verify_token(attestation.token)
        try:
            bound = tee_public_key(tee_pubkey_from_claims(claims))
        except ProtocolError as exc:
            raise AttestedTlsError("atls.unbound_key", f"the token's tee-pubkey is unusable: {exc.detail}") from None
        # A valid token proves some TEE was attested; only this proves the TLS key is that TEE's.
        if not same_public_key(bound, attestation.public_key):
            raise AttestedTlsError("atls.unbound_key", "the token's tee-pubkey is not the certificate key")
        return PeerIdentity(
            kind="token",
            tee=tee_of_token_claims(claims),
            public_key=attestation.public_key,
            spki_sha256=_spki_sha256(attestation),
            claims=claims,
            token=attestation.token,
        )


class AnyPeerVerifier:
    """Dispatches on what the certificate carries; a kind without a verifier is refused."""

    def __init__(
        self, *, evidence: EvidencePeerVerifier | None = None, token: TokenPeerVerifier | None = None
    ) -> None:
        if evidence is None and token is None:
            raise ValueError("AnyPeerVerifier needs at least one verifier")
        self._by_kind: dict[str, EvidencePeerVerifier | TokenPeerVerifier | None] = {
            "evidence": evidence,
            "token": token,
        }

    def verify(self, cert_der: bytes) -> PeerIdentity:
        attestation = read_attestation(cert_der)  # read once; the chosen verifier reuses it
        verifier = self._by_kind[attestation.kind]
        if verifier is None:
            raise AttestedTlsError(
                "atls.kind_not_accepted", f"certificates carrying a {attestation.kind} are not accepted here"
            )
        return verifier.verify_attestation(attestation)
