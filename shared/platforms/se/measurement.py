"""The attestation measurement and its check.

The UV returns HMAC-SHA512(measurement key, items) over::

    PLD (64) ‖ ALD (64) ‖ TLD (64) ‖ SE header tag (16) ‖ CUID (16) ‖ len(user data) u16 ‖ 00 00
    ‖ len(additional data) u32 ‖ user data (0..256) ‖ nonce (16, only when the nonce flag is set)
    ‖ additional data (fields chosen by the flags: image phkh, attestation phkh, ...)

The key never leaves the request creator and the UV, so this is a MAC, not a signature: a match
means "the UV that opened my ARCB runs the image with these tags", for nobody but the key holder.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.errors import VerificationError
from shared.platforms.se import abi
from shared.platforms.se.abi import BootHdrTags
from shared.platforms.se.arcb import SeRequestState

SE_VERSION = 0x100
_LENGTHS = struct.Struct(">HHI")


@dataclass(frozen=True)
class SeResponse:
    """What the guest sends back from the Retrieve Attestation Measurement UVC."""

    measurement: bytes
    additional_data: bytes
    cuid: bytes
    user_data: bytes


@dataclass(frozen=True)
class VerifiedSe:
    tags: BootHdrTags
    cuid: bytes
    user_data: bytes
    image_phkh: bytes | None
    attestation_phkh: bytes | None


def compute_measurement(
    key: bytes,
    tags: BootHdrTags,
    cuid: bytes,
    user_data: bytes,
    nonce: bytes | None,
    additional: bytes | None,
) -> bytes:
    if len(cuid) != abi.CUID_SIZE:
        raise ValueError(f"cuid must be {abi.CUID_SIZE} bytes, got {len(cuid)}")
    if len(user_data) > abi.USER_DATA_MAX:
        raise ValueError(f"user data is at most {abi.USER_DATA_MAX} bytes, got {len(user_data)}")
    if nonce is not None and len(nonce) != abi.NONCE_SIZE:
        raise ValueError(f"nonce must be {abi.NONCE_SIZE} bytes, got {len(nonce)}")
    additional = additional or b""
    if len(additional) > abi.ADDITIONAL_MAX:
        raise ValueError(f"additional data is at most {abi.ADDITIONAL_MAX} bytes, got {len(additional)}")
    items = (
        tags.to_bytes()
        + cuid
        + _LENGTHS.pack(len(user_data), 0, len(additional))
        + user_data
        + (nonce or b"")
        + additional
    )
    return hmac.new(key, items, "sha512").digest()


def split_additional(additional: bytes, flags: int) -> dict[str, bytes]:
    """Field name -> value, in the order the flags ask for them. The UV fills exactly what was asked,
    so any other size means the response does not belong to this request."""
    expected = abi.expected_additional_size(flags)
    if len(additional) != expected:
        raise VerificationError(
            "se.additional_data", f"flags {flags:#018x} ask for {expected} bytes, got {len(additional)}"
        )
    fields = {}
    offset = 0
    for name, flag, size in abi.ADDITIONAL_FIELDS:
        if flags & flag:
            fields[name] = additional[offset : offset + size]
            offset += size
    return fields


def verify_response(
    state: SeRequestState, response: SeResponse, candidates: Sequence[BootHdrTags]
) -> VerifiedSe:
    """Check the measurement against each acceptable image; the first that matches is the result."""
    if state.mai != abi.MAI_HMAC_SHA512:
        raise VerificationError("se.mai", f"unsupported measurement algorithm {state.mai}")
    if len(response.measurement) != abi.MEASUREMENT_SIZE:
        raise VerificationError(
            "se.measurement", f"expected {abi.MEASUREMENT_SIZE} bytes, got {len(response.measurement)}"
        )
    if len(response.cuid) != abi.CUID_SIZE or len(response.user_data) > abi.USER_DATA_MAX:
        raise VerificationError("se.measurement", "config UID or user data of impossible size")
    fields = split_additional(response.additional_data, state.flags)
    if not candidates:
        raise VerificationError("se.measurement", "no reference image to compare with")
    nonce = state.nonce if state.flags & abi.FLAG_NONCE else None
    matched = None
    for tags in candidates:
        expected = compute_measurement(
            state.measurement_key, tags, response.cuid, response.user_data, nonce, response.additional_data
        )
        # Every candidate is computed and compared, so timing says nothing about which one matched.
        if hmac.compare_digest(expected, response.measurement) and matched is None:
            matched = tags
    if matched is None:
        raise VerificationError(
            "se.measurement", f"the measurement matches none of the {len(candidates)} expected image(s)"
        )
    known = set(state.host_key_hashes)
    for name in ("image_phkh", "attestation_phkh"):
        value = fields.get(name)
        if value is not None and value.hex() not in known:
            raise VerificationError("se.host_key", f"{name} {value.hex()} is none of the request's host keys")
    return VerifiedSe(
        tags=matched,
        cuid=response.cuid,
        user_data=response.user_data,
        image_phkh=fields.get("image_phkh"),
        attestation_phkh=fields.get("attestation_phkh"),
    )


def claims(verified: VerifiedSe) -> dict[str, Any]:
    """Claim names follow Trustee's SE verifier (``se.*`` reference values in policy)."""
    return {
        "se.version": SE_VERSION,
        "se.cuid": verified.cuid.hex(),
        "se.tag": verified.tags.tag.hex(),
        "se.image_phkh": verified.image_phkh.hex() if verified.image_phkh is not None else "",
        "se.attestation_phkh": verified.attestation_phkh.hex()
        if verified.attestation_phkh is not None
        else "",
        "se.user_data": verified.user_data.hex(),
        "se.pld": verified.tags.pld.hex(),
        "se.ald": verified.tags.ald.hex(),
        "se.tld": verified.tags.tld.hex(),
    }
