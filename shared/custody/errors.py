"""The one error type of key custody, kept apart so software-only users need no PKCS#11 library."""

from __future__ import annotations

from shared.errors import RemitsError


class CustodyError(RemitsError):
    """A key that cannot be found, opened or used. ``reason`` is ``custody.<what failed>`` (e.g.
    ``custody.pin``); the detail names the token or key label, never a PIN or key bytes."""
