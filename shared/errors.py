"""Typed errors. Every rejection carries a stable dotted reason (e.g. ``evidence.signature_invalid``)
that ends up in the decision, the audit log and the HTTP error body."""

from __future__ import annotations


class RemitsError(Exception):
    """Base class: ``reason`` is the stable machine-readable name, ``detail`` the human text."""

    reason: str = "remits.error"

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ParseError(RemitsError):
    """Bytes or JSON that do not have the expected layout. ``field`` names the failing field."""

    def __init__(self, field: str, detail: str, *, prefix: str = "parse") -> None:
        super().__init__(f"{prefix}.{field}", detail)
        self.field = field


class VerificationError(RemitsError):
    """A cryptographic or binding check failed. ``check`` is the check's name."""

    def __init__(self, check: str, detail: str = "") -> None:
        super().__init__(check, detail)
        self.check = check


class EndorsementError(RemitsError):
    """An endorsement (vendor certificate) could not be obtained or is not acceptable."""


class ProtocolError(RemitsError):
    """A client request that does not follow the KBS protocol (bad body, unknown TEE, ...)."""
