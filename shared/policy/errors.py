"""The policy core's one error type."""

from __future__ import annotations

from typing import Final

from shared.errors import RemitsError

# A policy that cannot be used at all (syntax, wrong package, no `result`): found when it is stored.
INVALID: Final = "policy.invalid"
# A valid policy that gave no usable answer for one input: the request is refused, never waved through.
EVALUATION_FAILED: Final = "policy.evaluation_failed"


class PolicyError(RemitsError):
    """``field`` names the part at fault: ``id``, ``kind``, ``rego`` (syntax, with line:column in the
    detail), ``package``, ``result`` (missing, undefined, conflicting or malformed) or ``input``."""

    def __init__(self, field: str, detail: str, *, reason: str = INVALID) -> None:
        super().__init__(reason, detail)
        self.field = field
