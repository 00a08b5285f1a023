"""The small subset of CBOR (RFC 8949) that CCA tokens use, decoded strictly.

A token is attacker-controlled input, so the decoder accepts only definite lengths, bounds nesting,
checks every length against the bytes actually present before allocating, rejects duplicate map
keys and trailing bytes, and raises nothing but ``ParseError``. It also reports the exact encoded
bytes of each top-level map value: the realm-key binding hashes claim 44237 as encoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from shared.errors import ParseError

_MAX_DEPTH = 16
# Exact types: a bool is an int to isinstance, and `true` must not stand in for the label 1.
_MAP_KEY_TYPES = (int, str, bytes)


@dataclass(frozen=True)
class Tag:
    number: int
    value: Any


class _Decoder:
    def __init__(self, data: bytes, field: str) -> None:
        self.data = data
        self.pos = 0
        self.field = field

    def fail(self, detail: str) -> ParseError:
        return ParseError(self.field, f"{detail} (CBOR offset {self.pos})")

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"needs {n} bytes, {len(self.data) - self.pos} left")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def head(self) -> tuple[int, int, int]:
        """(major type, additional info, argument)."""
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise self.fail("needs 1 bytes, 0 left")
        initial = data[pos]
        self.pos = pos + 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info < 28:
            return major, info, int.from_bytes(self.take(1 << (info - 24)), "big")
        raise self.fail("indefinite length or reserved additional information")

    def length(self, n: int, unit: int = 1) -> int:
        # Every element takes at least one byte, so a count beyond what is left cannot be honest.
        if n * unit > len(self.data) - self.pos:
            raise self.fail(f"length {n} exceeds the remaining {len(self.data) - self.pos} bytes")
        return n

    def item(self, depth: int = 0) -> Any:
        # The head and the string cases are inlined: this runs for every item of every token,
        # and the method calls were most of the decoding cost.
        if depth > _MAX_DEPTH:
            raise self.fail("nested too deeply")
        data, pos = self.data, self.pos
        size = len(data)
        if pos >= size:
            raise self.fail("needs 1 bytes, 0 left")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            arg = info
        elif info < 28:
            width = 1 << (info - 24)
            if pos + width > size:
                self.pos = pos
                raise self.fail(f"needs {width} bytes, {size - pos} left")
            arg = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        else:
            self.pos = pos
            raise self.fail("indefinite length or reserved additional information")
        self.pos = pos
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2 or major == 3:
            if arg > size - pos:
                raise self.fail(f"length {arg} exceeds the remaining {size - pos} bytes")
            self.pos = pos + arg
            if major == 2:
                return data[pos : pos + arg]
            try:
                return data[pos : pos + arg].decode("utf-8")
            except UnicodeDecodeError:
                self.pos = pos
                raise self.fail("text string is not UTF-8") from None
        if major == 4:
            return [self.item(depth + 1) for _ in range(self.length(arg))]
        if major == 5:
            out: dict[Any, Any] = {}
            for _ in range(self.length(arg, 2)):
                key = self.item(depth + 1)
                if type(key) not in _MAP_KEY_TYPES:
                    raise self.fail("map key is not an integer or a string")
                if key in out:
                    raise self.fail(f"duplicate map key {key!r}")
                out[key] = self.item(depth + 1)
            return out
        if major == 6:
            return Tag(arg, self.item(depth + 1))
        return self.simple(info, arg)

    def simple(self, info: int, arg: int) -> Any:
        if info == 25:
            return struct.unpack(">e", arg.to_bytes(2, "big"))[0]
        if info == 26:
            return struct.unpack(">f", arg.to_bytes(4, "big"))[0]
        if info == 27:
            return struct.unpack(">d", arg.to_bytes(8, "big"))[0]
        values = {20: False, 21: True, 22: None, 23: None}
        if info in values:
            return values[info]
        raise self.fail(f"unsupported simple value {arg}")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def decode(data: bytes, field: str) -> Any:
    """One complete CBOR item; ``field`` names it in any ParseError."""
    dec = _Decoder(bytes(data), field)
    value = dec.item()
    dec.end()
    return value


def decode_map_raw(data: bytes, field: str) -> dict[Any, tuple[Any, bytes]]:
    """A top-level map as key -> (decoded value, the value's exact encoded bytes)."""
    dec = _Decoder(bytes(data), field)
    major, _, count = dec.head()
    if major != 5:
        raise ParseError(field, "not a CBOR map")
    out: dict[Any, tuple[Any, bytes]] = {}
    for _ in range(dec.length(count, 2)):
        key = dec.item(1)
        if type(key) not in _MAP_KEY_TYPES:
            raise dec.fail("map key is not an integer or a string")
        if key in out:
            raise dec.fail(f"duplicate map key {key!r}")
        start = dec.pos
        value = dec.item(1)
        out[key] = (value, dec.data[start : dec.pos])
    dec.end()
    return out


def _head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("integer too large for CBOR")


def encode(value: Any) -> bytes:
    """Preferred-serialisation encoding of ints, bytes, text, lists, maps (in insertion order) and
    tags: enough for COSE structures, whose Sig_structure must be encoded exactly one way."""
    if isinstance(value, bool) or value is None:
        return bytes([0xF5 if value is True else 0xF4 if value is False else 0xF6])
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, bytes | bytearray):
        return _head(2, len(value)) + bytes(value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _head(3, len(raw)) + raw
    if isinstance(value, list | tuple):
        return _head(4, len(value)) + b"".join(encode(v) for v in value)
    if isinstance(value, dict):
        return _head(5, len(value)) + b"".join(encode(k) + encode(v) for k, v in value.items())
    if isinstance(value, Tag):
        return _head(6, value.number) + encode(value.value)
    raise TypeError(f"cannot encode {type(value).__name__} as CBOR")
