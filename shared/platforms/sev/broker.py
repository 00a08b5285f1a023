"""The guest owner's side of a SEV/SEV-ES launch, as the pipeline stages will call it: pure
functions over values, with the roots, the sealing key and the time passed in.

- ``open_launch`` (identity, after the chain): verify the platform chain, derive the launch session
  for the workload's policy, and return the challenge the VMM receives together with the session
  state, sealed.
- ``appraise_launch`` (measure): open the state, check the firmware's MEASURE against the workload's
  registered launch digests and the guest policy against the workload's requirements.
- ``secret_answer`` (release): the LAUNCH_SECRET packet for the verified measurement.

The session state (TEK, TIK, policy, firmware version, workload) is the only secret a launch has.
It is sealed with AES-256-GCM under a key that only the components that need it hold, bound to the
session id, so that a store it is kept in (Redis) learns nothing and cannot swap one session's
state for another's. The session itself is derived from that key and the request id (HMAC), so a
redelivered request yields the very same challenge instead of a second, conflicting one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import VerificationError
from shared.platforms.sev import abi, measure, secret, verify, wire
from shared.platforms.sev.session import SevPolicy, start_session

STATE_VERSION = 1
SEALED_STATE = "sev.session_state"  # check name: a sealed state that does not open
UNKNOWN_WORKLOAD = "sev.unknown_workload"
_P384_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973


class SessionState(msgspec.Struct, forbid_unknown_fields=True, repr_omit_defaults=True):
    """What the guest owner keeps between the challenge and the secret (sealed at rest)."""

    version: int
    workload_id: str
    tek: bytes
    tik: bytes
    policy: int
    api_major: int
    api_minor: int
    build: int
    generation: str
    pdh_sha256: str

    def __repr__(self) -> str:  # TEK and TIK stay out of logs and tracebacks
        return f"SessionState(workload_id={self.workload_id!r}, policy={self.policy:#x})"


def seal_state(key: bytes, session_id: str, state: SessionState, *, nonce: bytes | None = None) -> bytes:
    iv = nonce if nonce is not None else os.urandom(12)
    return iv + AESGCM(key).encrypt(iv, msgspec.msgpack.encode(state), f"sev-session:{session_id}".encode())


def open_state(key: bytes, session_id: str, sealed: bytes) -> SessionState:
    try:
        plain = AESGCM(key).decrypt(sealed[:12], sealed[12:], f"sev-session:{session_id}".encode())
        state = msgspec.msgpack.decode(plain, type=SessionState)
    except (InvalidTag, ValueError, msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise VerificationError(SEALED_STATE, f"the session's state does not open: {type(exc).__name__}") from None
    if state.version != STATE_VERSION:
        raise VerificationError(SEALED_STATE, f"state version {state.version}, expected {STATE_VERSION}")
    return state


class _Stream:
    """Bytes from HMAC-SHA256(key, label ‖ counter): the session's randomness, reproducible from
    the sealing key and the request id only."""

    def __init__(self, key: bytes, label: bytes) -> None:
        self._key, self._label, self._counter = key, label, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self._counter += 1
            out += hmac.new(self._key, self._label + self._counter.to_bytes(4, "big"), hashlib.sha256).digest()
        return out[:n]


def derived_owner_key(key: bytes, request_id: str) -> ec.EllipticCurvePrivateKey:
    seed = _Stream(key, f"sev-godh:{request_id}".encode())(64)
    scalar = int.from_bytes(seed, "big") % (_P384_ORDER - 1) + 1
    return ec.derive_private_key(scalar, ec.SECP384R1())


class ChainVerifier:
    """``verify.verify_chain`` with the verdicts of chains seen before kept (by the SHA-256 of the
    six certificates): a host's chain is checked once, not at every launch on it."""

    def __init__(self, roots: verify.SevRoots, capacity: int = 4096) -> None:
        self.roots = roots
        self._capacity = capacity
        self._verified: dict[bytes, verify.VerifiedChain] = {}

    def verify(self, certs: dict[str, bytes]) -> verify.VerifiedChain:
        names = ("ark", "ask", "cek", "oca", "pek", "pdh")
        key = hashlib.sha256(b"".join(len(certs[n]).to_bytes(4, "big") + certs[n] for n in names)).digest()
        chain = self._verified.get(key)
        if chain is None:
            chain = verify.verify_chain(*(certs[n] for n in names), pinned=self.roots)
            if len(self._verified) >= self._capacity:
                self._verified.pop(next(iter(self._verified)))
            self._verified[key] = chain
        return chain


@dataclass(frozen=True)
class Launch:
    """The challenge's ``extra-params`` (a JSON string), the sealed state to keep under the
    session, and the claims the chain established."""

    challenge_params: str
    sealed_state: bytes
    claims: dict[str, Any]


def open_launch(
    request: wire.SevRequest,
    *,
    policy: int,
    roots: verify.SevRoots | ChainVerifier,
    key: bytes,
    request_id: str,
    session_id: str,
) -> Launch:
    """Verify the platform chain and open the launch session for ``request.workload_id`` with
    ``policy`` (the workload's, from its reference values). Raises ``ParseError`` or
    ``VerificationError`` naming the failing certificate and check."""
    certs = request.chain.certificates()
    verifier = roots if isinstance(roots, ChainVerifier) else ChainVerifier(roots, capacity=1)
    chain = verifier.verify(certs)
    SevPolicy.decode(policy)  # a policy with reserved bits is the operator's error: refused here
    session = start_session(
        chain.pdh_public_key,
        policy,
        rng=_Stream(key, f"sev-session:{request_id}".encode()),
        owner_key=derived_owner_key(key, request_id),
    )
    build = request.build
    state = SessionState(
        version=STATE_VERSION,
        workload_id=request.workload_id,
        tek=session.tek,
        tik=session.tik,
        policy=policy,
        api_major=build.version.major,
        api_minor=build.version.minor,
        build=build.build,
        generation=chain.generation.value,
        pdh_sha256=hashlib.sha256(certs["pdh"]).hexdigest(),
    )
    godh = abi.godh_cert(session.godh_public)
    params = wire.challenge_params(session_id, policy, godh, session.session)
    claims = {
        "sev.workload_id": request.workload_id,
        "sev.generation": chain.generation.value,
        "sev.api_version": f"{build.version.major}.{build.version.minor}",
        "sev.build": build.build,
        "sev.policy": policy,
        "sev.pdh_sha256": state.pdh_sha256,
        "sev.chain_checks": list(chain.checks),
    }
    return Launch(params, seal_state(key, session_id, state), claims)


@dataclass(frozen=True)
class LaunchVerdict:
    claims: dict[str, Any]
    violations: list[Any]


def appraise_launch(
    state: SessionState,
    measure_bytes: bytes,
    mnonce: bytes,
    launch_digests: Iterable[bytes | str],
    requirements: measure.PolicyRequirements,
) -> LaunchVerdict:
    """The firmware's MEASURE checked against the workload's launch digests (raises
    ``VerificationError("sev.measurement_mismatch")``), then the guest policy against the
    workload's requirements (every violation reported together)."""
    matched = measure.check_measurement(
        measure_bytes + mnonce,
        state.tik,
        api_major=state.api_major,
        api_minor=state.api_minor,
        build=state.build,
        policy=state.policy,
        launch_digests=launch_digests,
    )
    firmware = measure.FirmwareVersion(state.api_major, state.api_minor, state.build)
    violations = measure.validate_policy(state.policy, requirements, firmware)
    policy = SevPolicy.decode(state.policy)
    claims = {
        "sev.workload_id": state.workload_id,
        "sev.launch_digest": matched.hex(),
        "sev.measure": measure_bytes.hex(),
        "sev.mnonce": mnonce.hex(),
        "sev.policy": state.policy,
        "sev.policy.nodbg": policy.nodbg,
        "sev.policy.noks": policy.noks,
        "sev.policy.es": policy.es,
        "sev.api_version": f"{state.api_major}.{state.api_minor}",
        "sev.build": state.build,
        "sev.generation": state.generation,
    }
    return LaunchVerdict(claims, violations)


def secret_answer(state: SessionState, measure_bytes: bytes, plaintext: bytes, *, iv: bytes | None = None) -> bytes:
    """The key broker's answer: ``plaintext`` zero-padded to 512 bytes (libkrun's layout), sealed
    into a LAUNCH_SECRET packet under the session's TEK/TIK and bound to ``measure_bytes``."""
    packet = secret.build_secret(secret.libkrun_plaintext(plaintext), state.tek, state.tik, measure_bytes, iv=iv)
    return wire.secret_body(packet.flags, packet.iv, packet.mac, packet.payload)
