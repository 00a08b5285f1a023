"""Human-readable account of one evaluation, for ``remits policy test``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared.ear import TRUST_CLAIMS, status_of, tier_of

if TYPE_CHECKING:  # the engine re-exports explain: importing it at run time would be circular
    from shared.policy.engine import CompiledPolicy


def explain(policy: CompiledPolicy, input: Mapping[str, Any], result: Mapping[str, Any]) -> list[str]:
    """The status, the vector with each claim's tier, the reject reason and the notes."""
    lines = [f"policy: {policy.id} (revision {policy.revision}, sha256 {policy.digest[:12]})"]
    if policy.kind == "resource":
        lines.append(f"resource: {input.get('resource', {}).get('path', '?')}")
        lines.append(
            f"decision: {'allow' if result.get('allow') is True else 'deny'} ({result.get('reason')})"
        )
        return lines
    vector: Mapping[str, int] = result.get("vector", {})
    lines.append(f"tee: {input.get('tee')}")
    if "reject" in result:
        # A refusal ends the attestation: the vector below is what the platform saw, not a verdict.
        lines.append(f"status: rejected ({result['reject']})")
        if result.get("detail"):
            lines.append(f"detail: {result['detail']}")
    else:
        lines.append(f"status: {status_of(dict(vector))}")
    lines.append("vector:")
    # AR4SI order, so two explanations line up; unset claims are "no claim" (0).
    lines.extend(
        f"  {name}: {vector[name]} ({tier_of(vector[name])})" for name in TRUST_CLAIMS if name in vector
    )
    notes = result.get("notes", [])
    lines.append("notes:" if notes else "notes: none")
    lines.extend(f"  - {note}" for note in notes)
    return lines
