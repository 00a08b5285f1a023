"""What the stages share for a SEV/SEV-ES launch (the pure steps are shared.platforms.sev.broker):
the workload's registration in the trust configuration, the process's chain-verdict cache, and
the sealed session state in Redis.

A workload ``W`` is registered by the operator as reference values of TEE ``sev``:
``policy.W`` (one value: the guest policy, hex u32, e.g. ``0x5``), ``launch_digest.W`` (the
launch digests, hex, from `remits refval sev-measure`), and optionally ``allow_debug.W``
("true"); its secret is the resource ``sev/workload/W``.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from pathlib import Path

from services.common import StageContext
from shared import schemas
from shared.errors import ParseError, VerificationError
from shared.platforms.sev import broker, measure, verify, wire
from shared.trust.snapshot import TrustSnapshot

TEE = "sev"
SESSION_PREFIX = "remits:sev-session:"
WORKLOAD = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
CERTIFICATES = ("ark", "ask", "cek", "oca", "pek", "pdh")


def resource_path(workload_id: str) -> str:
    return f"sev/workload/{workload_id}"


def check_workload_id(workload_id: str) -> str:
    if not WORKLOAD.fullmatch(workload_id):
        raise ParseError(
            "workload_id", f"{workload_id!r}: 1-64 lowercase letters, digits, - and _ (a reference-value name part)",
            prefix="sev",
        )
    return workload_id


@cache
def _verifier(roots_dir: Path | None) -> broker.ChainVerifier:
    roots = verify.pinned_roots() if roots_dir is None else verify.load_roots(roots_dir, _present(roots_dir))
    return broker.ChainVerifier(roots)


def _present(directory: Path) -> tuple[verify.Generation, ...]:
    return tuple(g for g in verify.Generation if (directory / g.value.lower() / "ark.cert").exists())


def chain_verifier(ctx: StageContext) -> broker.ChainVerifier:
    """This process's verifier: the pinned roots (or a test vendor's), and the verdicts so far."""
    return _verifier(ctx.settings.sev_roots_dir)


def _values(snapshot: TrustSnapshot, name: str, now: float) -> list[str]:
    entries = snapshot.refvals.get((TEE, name), ())
    return [v for e in entries if e.record.expires_at is None or now < e.record.expires_at for v in e.record.values]


def workload_policy(snapshot: TrustSnapshot, workload_id: str, now: float) -> int:
    """The guest policy registered for the workload; ``VerificationError`` if it is not registered."""
    values = _values(snapshot, f"policy.{workload_id}", now)
    if len(values) != 1:
        raise VerificationError(
            broker.UNKNOWN_WORKLOAD,
            f"workload {workload_id!r}: {'no' if not values else 'more than one'} live reference value "
            f"policy.{workload_id} (its guest policy)",
        )
    try:
        return int(values[0], 16) if values[0].lower().startswith("0x") else int(values[0])
    except ValueError:
        raise VerificationError(broker.UNKNOWN_WORKLOAD, f"policy.{workload_id}: {values[0]!r} is not a u32") from None


def launch_digests(snapshot: TrustSnapshot, workload_id: str, now: float) -> list[str]:
    return _values(snapshot, f"launch_digest.{workload_id}", now)


def requirements(snapshot: TrustSnapshot, workload_id: str, now: float) -> measure.PolicyRequirements:
    allow_debug = "true" in _values(snapshot, f"allow_debug.{workload_id}", now)
    return measure.PolicyRequirements(allow_debug=allow_debug)


def request_of(message: schemas.SevLaunchRequest) -> wire.SevRequest:
    """The kbs-types request again, from what travelled on the bus."""
    certs = message.certificates
    missing = [name for name in CERTIFICATES if name not in certs]
    if missing:
        raise ParseError("chain", f"missing certificates: {', '.join(missing)}", prefix="sev")
    return wire.SevRequest(
        workload_id=message.workload_id,
        build=wire.Build(wire.Version(message.api_major, message.api_minor), message.build),
        chain=wire.Chain(
            wire.CaChain(list(certs["ark"]), list(certs["ask"])),
            wire.PlatformChain(list(certs["pdh"]), list(certs["pek"]), list(certs["oca"]), list(certs["cek"])),
        ),
    )


async def store_state(ctx: StageContext, session_id: str, sealed: bytes) -> None:
    ttl_ms = int(ctx.settings.nonce_ttl_s * 1000) + 60_000  # the challenge's life, and the secret after it
    await ctx.store.client.execute("SET", SESSION_PREFIX + session_id, sealed, "PX", ttl_ms)


async def load_state(ctx: StageContext, session_id: str) -> broker.SessionState:
    if not ctx.sev_key:
        raise VerificationError("sev.unavailable", f"{ctx.component} holds no SEV session key")
    sealed = await ctx.store.client.execute("GET", SESSION_PREFIX + session_id)
    if not isinstance(sealed, bytes):
        raise VerificationError("sev.session_unknown", "no launch session for this session (expired, or never opened)")
    return broker.open_state(ctx.sev_key, session_id, sealed)


# (the roots, SHA-256 of ARK ‖ ASK ‖ CEK) -> the generation they verified for
_ENDORSED: dict[tuple[int, bytes], str] = {}
_ENDORSED_MAX = 4096


def endorse_sev(roots: verify.SevRoots, certificates: dict[str, bytes]) -> str:
    """AMD's part of a host's chain: the ARK and ASK are the pinned ones of their generation and
    the CEK (the chip's key) is signed by that ASK. Each CEK is verified once per process."""
    key = (id(roots), hashlib.sha256(b"".join(certificates.get(n, b"") for n in ("ark", "ask", "cek"))).digest())
    generation = _ENDORSED.get(key)
    if generation is not None:
        return generation
    generation = verify.verify_endorsement(
        certificates["ark"], certificates["ask"], certificates["cek"], pinned=roots
    ).value
    if len(_ENDORSED) >= _ENDORSED_MAX:
        _ENDORSED.pop(next(iter(_ENDORSED)))
    _ENDORSED[key] = generation
    return generation
