"""Helpers shared by the per-platform binary parsers."""

from __future__ import annotations

from shared.errors import ParseError


def as_bytes(data: object, field: str) -> bytes:
    """The bytes of a buffer. Evidence comes from untrusted clients: anything that is not a byte
    buffer is a ``ParseError`` naming ``field``, never a TypeError escaping from struct or bytes()."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        try:
            return bytes(data)
        except (TypeError, ValueError, BufferError) as exc:
            raise ParseError(field, f"unreadable buffer: {exc}") from None
    raise ParseError(field, f"expected bytes, got {type(data).__name__}")
