"""The error every aTLS refusal of our own raises; verifier callables keep their own errors."""

from __future__ import annotations

from shared.errors import RemitsError


class AttestedTlsError(RemitsError):
    """A certificate or channel that cannot be accepted; ``reason`` is ``atls.<check>``."""
