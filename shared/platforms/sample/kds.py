"""Endorsement URLs of the sample vendor's key distribution service ("KDS").

Device ids appear in lowercase hex only: one canonical URL per device keeps caches keyed by URL
from holding the same certificate twice.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from shared.errors import ParseError
from shared.platforms.sample.abi import DEVICE_ID_SIZE

DEVICE_PATH = "/sample/v1/device/"
CHAIN_PATH = "/sample/v1/cert_chain"

_DEVICE_PATH_RE = re.compile(rf"/sample/v1/device/([0-9a-f]{{{2 * DEVICE_ID_SIZE}}})")


def _base(base_url: str) -> str:
    return base_url.rstrip("/")


def device_cert_url(base_url: str, device_id: bytes) -> str:
    """URL of the DER certificate of ``device_id`` on the KDS at ``base_url``."""
    if not isinstance(device_id, bytes) or len(device_id) != DEVICE_ID_SIZE:
        raise ParseError("kds.device_id", f"device id must be {DEVICE_ID_SIZE} bytes")
    return f"{_base(base_url)}{DEVICE_PATH}{device_id.hex()}"


def cert_chain_url(base_url: str) -> str:
    """URL of the PEM chain (intermediate, then root) on the KDS at ``base_url``."""
    return f"{_base(base_url)}{CHAIN_PATH}"


def parse_device_cert_url(url: str) -> bytes:
    """Device id from a device certificate URL or bare path (the base may carry a path prefix)."""
    if not isinstance(url, str):
        raise ParseError("kds.url", f"expected str, got {type(url).__name__}")
    try:
        path = urlsplit(url).path
    except ValueError as exc:
        raise ParseError("kds.url", f"malformed URL: {exc}") from None
    idx = path.rfind(DEVICE_PATH)
    match = _DEVICE_PATH_RE.fullmatch(path[idx:]) if idx >= 0 else None
    if match is None:
        raise ParseError("kds.url", f"not a sample device certificate URL: {url!r}")
    return bytes.fromhex(match.group(1))
