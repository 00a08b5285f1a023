"""Byte layouts of IBM Secure Execution: the generic UV request header, the attestation flags, the
Ultravisor's EC point encoding, and the SE image header ("boot request control block").
All integers are big-endian (s390x).

UV request header (48 bytes)::

    0x00 magic (8)   0x08 version u32   0x0c total length u32   0x10 IV (12)   0x1c reserved (4)
    0x20 reserved (7)   0x27 number of key slots u8   0x28 reserved (4)   0x2c size of encrypted area u32

SE image header: the same first 0x20 bytes (magic ``IBMSecEx``, version 0x100, header size), then
nks u64, sea u64, nep u64, pcf u64, the image builder's public key (160), PLD, ALD, TLD (64 each,
at 0xe0/0x120/0x160); the header's GCM tag is its last 16 bytes. ``parse_*`` raise only
``ParseError`` (reason ``parse.se.<field>``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from shared.errors import ParseError
from shared.platforms.binary import as_bytes

PREFIX = "parse.se"

REQUEST_HEADER_SIZE = 48
GCM_TAG_SIZE = 16
IV_SIZE = 12
COORD_SIZE = 80  # P-521 coordinates are 66 bytes; the UV wants each padded to 80
PUBLIC_KEY_SIZE = 2 * COORD_SIZE
PHKH_SIZE = 32
KEY_SLOT_SIZE = PHKH_SIZE + 32 + GCM_TAG_SIZE  # host key hash, wrapped ARPK, slot tag

DIGEST_SIZE = 64
TAG_SIZE = 16
BOOT_HDR_TAGS_SIZE = 3 * DIGEST_SIZE + TAG_SIZE  # 0xd0
SE_HDR_MAGIC = b"IBMSecEx"
SE_HDR_VERSION = 0x100
_SE_HDR_HEAD_SIZE = 0x1A0
_SE_HDR_PLD_OFFSET = 0xE0

_REQUEST_HEADER = struct.Struct(">8sII12s4s7sB4sI")
_SE_HDR_PREFIX = struct.Struct(">8sII")


def _err(field: str, detail: str) -> ParseError:
    return ParseError(field, detail, prefix=PREFIX)


# Attestation flags: a u64 whose bit n is counted from the most significant bit (s390 numbering).
def flag_bit(n: int) -> int:
    return 1 << (63 - n)


FLAG_NONCE = flag_bit(1)
FLAG_IMAGE_PHKH = flag_bit(2)
FLAG_ATTEST_PHKH = flag_bit(3)
FLAG_SECRET_STORE_HASH = flag_bit(4)
FLAG_FIRMWARE_STATE = flag_bit(5)

SECRET_STORE_HASH_SIZE = 64
FIRMWARE_STATE_SIZE = 320
# Additional-data fields in the order the UV appends them, with the flag asking for each.
ADDITIONAL_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("image_phkh", FLAG_IMAGE_PHKH, PHKH_SIZE),
    ("attestation_phkh", FLAG_ATTEST_PHKH, PHKH_SIZE),
    ("secret_store_hash", FLAG_SECRET_STORE_HASH, SECRET_STORE_HASH_SIZE),
    ("firmware_state", FLAG_FIRMWARE_STATE, FIRMWARE_STATE_SIZE),
)

MAI_HMAC_SHA512 = 1
MEASUREMENT_SIZE = 64
MEASUREMENT_KEY_SIZE = 64
NONCE_SIZE = 16
CUID_SIZE = 16
USER_DATA_MAX = 256
ADDITIONAL_MAX = 8 * 4096  # the uvdevice hands out at most 8 pages


def expected_additional_size(flags: int) -> int:
    return sum(size for _, flag, size in ADDITIONAL_FIELDS if flags & flag)


@dataclass(frozen=True)
class RequestHeader:
    magic: bytes
    version: int
    length: int
    iv: bytes
    key_slots: int
    encrypted_size: int

    def to_bytes(self) -> bytes:
        return _REQUEST_HEADER.pack(
            self.magic,
            self.version,
            self.length,
            self.iv,
            b"\0" * 4,
            b"\0" * 7,
            self.key_slots,
            b"\0" * 4,
            self.encrypted_size,
        )


def parse_request_header(raw: bytes) -> RequestHeader:
    raw = as_bytes(raw, "request.header")
    if len(raw) < REQUEST_HEADER_SIZE:
        raise _err("request.header", f"needs {REQUEST_HEADER_SIZE} bytes, got {len(raw)}")
    magic, version, length, iv, _, _, nks, _, sea = _REQUEST_HEADER.unpack_from(raw)
    return RequestHeader(magic, version, length, iv, nks, sea)


def ecdh_coordinates(key: ec.EllipticCurvePublicKey) -> bytes:
    """X ‖ Y, each left-padded to 80 bytes: how the UV expects (and hashes) a P-521 point."""
    if not isinstance(key.curve, ec.SECP521R1):
        raise ValueError(f"Secure Execution keys are EC P-521, got {key.curve.name}")
    numbers = key.public_numbers()
    return numbers.x.to_bytes(COORD_SIZE, "big") + numbers.y.to_bytes(COORD_SIZE, "big")


def public_key_from_coordinates(raw: bytes, field: str = "public_key") -> ec.EllipticCurvePublicKey:
    if len(raw) != PUBLIC_KEY_SIZE:
        raise _err(field, f"needs {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    x = int.from_bytes(raw[:COORD_SIZE], "big")
    y = int.from_bytes(raw[COORD_SIZE:], "big")
    try:
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP521R1()).public_key()
    except ValueError as exc:
        raise _err(field, f"not a P-521 point: {exc}") from None


def host_key_hash(key: ec.EllipticCurvePublicKey) -> bytes:
    """The phkh naming a host key in key slots and additional data."""
    return hashlib.sha256(ecdh_coordinates(key)).digest()


@dataclass(frozen=True)
class BootHdrTags:
    """What identifies an SE image: page/address/tweak list digests and the header's GCM tag."""

    pld: bytes
    ald: bytes
    tld: bytes
    tag: bytes

    def __post_init__(self) -> None:
        for name, size in (
            ("pld", DIGEST_SIZE),
            ("ald", DIGEST_SIZE),
            ("tld", DIGEST_SIZE),
            ("tag", TAG_SIZE),
        ):
            if len(getattr(self, name)) != size:
                raise _err(f"image_tags.{name}", f"needs {size} bytes, got {len(getattr(self, name))}")

    def to_bytes(self) -> bytes:
        return self.pld + self.ald + self.tld + self.tag

    @classmethod
    def from_bytes(cls, raw: bytes) -> BootHdrTags:
        raw = as_bytes(raw, "image_tags")
        if len(raw) != BOOT_HDR_TAGS_SIZE:
            raise _err("image_tags", f"needs {BOOT_HDR_TAGS_SIZE} bytes, got {len(raw)}")
        d = DIGEST_SIZE
        return cls(raw[:d], raw[d : 2 * d], raw[2 * d : 3 * d], raw[3 * d :])

    def hex(self) -> str:
        return self.to_bytes().hex()

    @classmethod
    def from_hex(cls, text: str) -> BootHdrTags:
        if not isinstance(text, str):
            raise _err("image_tags", f"expected a hex string, got {type(text).__name__}")
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise _err("image_tags", f"not hex: {exc}") from None
        return cls.from_bytes(raw)


def parse_se_header(raw: bytes) -> BootHdrTags:
    """The tags of an SE header as ``pvextract-hdr`` writes it (the header alone, from its magic)."""
    raw = as_bytes(raw, "se_header")
    if len(raw) < _SE_HDR_HEAD_SIZE + TAG_SIZE:
        raise _err("se_header", f"needs at least {_SE_HDR_HEAD_SIZE + TAG_SIZE} bytes, got {len(raw)}")
    magic, version, size = _SE_HDR_PREFIX.unpack_from(raw)
    if magic != SE_HDR_MAGIC:
        raise _err("se_header.magic", f"expected {SE_HDR_MAGIC!r}, got {magic!r}")
    if version != SE_HDR_VERSION:
        raise _err("se_header.version", f"expected {SE_HDR_VERSION:#x}, got {version:#x}")
    # The tag sits at the end of the header as the header declares it, not of the buffer given.
    if not _SE_HDR_HEAD_SIZE + TAG_SIZE <= size <= len(raw):
        raise _err("se_header.size", f"header says {size} bytes, buffer has {len(raw)}")
    o = _SE_HDR_PLD_OFFSET
    d = DIGEST_SIZE
    return BootHdrTags(
        raw[o : o + d], raw[o + d : o + 2 * d], raw[o + 2 * d : o + 3 * d], raw[size - TAG_SIZE : size]
    )
