"""Init-data (the TOML document a guest was launched with) and its binding into the evidence.

The digest is ``algorithm`` over the whole TOML bytes; the TEE carries it in a launch-time field
(SNP HOST_DATA, 32 bytes; TDX MRCONFIGID, 48 bytes), padded with zeros or truncated to fit."""

from __future__ import annotations

import hashlib
import hmac
import tomllib
from typing import Any

from shared.errors import ParseError

_ALGORITHMS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384, "sha512": hashlib.sha512}
MAX_INIT_DATA_BYTES = 64 * 1024


def parse_init_data(fmt: str, body: str) -> tuple[dict[str, Any], bytes]:
    """(parsed document, digest). Only the TOML format exists."""
    if fmt != "toml":
        raise ParseError("init_data.format", f"only 'toml' is supported, got {fmt!r}")
    raw = body.encode()
    if len(raw) > MAX_INIT_DATA_BYTES:
        raise ParseError("init_data.body", f"larger than {MAX_INIT_DATA_BYTES} bytes")
    try:
        document = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise ParseError("init_data.body", f"not TOML: {exc}") from None
    algorithm = document.get("algorithm")
    if algorithm not in _ALGORITHMS:
        raise ParseError("init_data.algorithm", f"expected one of {sorted(_ALGORITHMS)}, got {algorithm!r}")
    return document, _ALGORITHMS[algorithm](raw).digest()


def binding_matches(field_value: bytes, digest: bytes) -> bool:
    expected = digest[: len(field_value)].ljust(len(field_value), b"\x00")
    return hmac.compare_digest(field_value, expected)
