"""Attestation Request Control Block (ARCB): what the verifier sends to the guest, which passes it to
the Ultravisor. Layout after the 48-byte request header (``abi``)::

    0x30 flags u64   0x38 MAI u32 (1 = HMAC-SHA512)   0x3c reserved u32
    0x40 customer ECDH public key X ‖ Y (2×80)
    0xe0 key slots, 80 bytes each: SHA-256 of the host key coordinates (32), ARPK wrapped (32), tag (16)
         -- header .. last slot is the GCM additional data --
         AES-256-GCM(ARPK, IV from the header): measurement key (64) ‖ nonce (16)
         GCM tag (16)

A slot's wrapping key is SHA-256(ECDH(customer private, host public) x-coordinate (66 bytes, as
ECDH outputs it for P-521) ‖ 00 00 00 01), i.e. a one-block NIST concatenation KDF with no other
info; the ARPK is wrapped with AES-256-GCM under it with an all-zero IV and no additional data.
Only the UV holding a slot's host private key can recover the ARPK.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import ParseError, VerificationError
from shared.platforms.binary import as_bytes
from shared.platforms.se import abi

ARCB_MAGIC = b"\0" * 8
ARCB_VERSION = 0x100
ARPK_SIZE = 32
# The nonce is architecturally optional; like s390-tools we always send one (it is the freshness).
DEFAULT_FLAGS = abi.FLAG_NONCE | abi.FLAG_IMAGE_PHKH | abi.FLAG_ATTEST_PHKH
_AUTH = struct.Struct(">QII")
_AUTH_END = abi.REQUEST_HEADER_SIZE + _AUTH.size
_CUST_KEY_END = _AUTH_END + abi.PUBLIC_KEY_SIZE
_CONFIDENTIAL_SIZE = abi.MEASUREMENT_KEY_SIZE + abi.NONCE_SIZE
_SLOT_IV = b"\0" * abi.IV_SIZE
_KDF_COUNTER = b"\0\0\0\1"


def _err(field: str, detail: str) -> ParseError:
    return ParseError(field, detail, prefix=abi.PREFIX)


def derive_slot_key(private_key: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    """The AES-256 key wrapping the ARPK in a key slot; symmetric in (customer, host) by ECDH."""
    shared = private_key.exchange(ec.ECDH(), peer)
    return hashlib.sha256(shared + _KDF_COUNTER).digest()


@dataclass(frozen=True)
class KeySlot:
    phkh: bytes
    wrapped_key: bytes
    tag: bytes

    def to_bytes(self) -> bytes:
        return self.phkh + self.wrapped_key + self.tag


@dataclass(frozen=True)
class Arcb:
    version: int
    length: int
    iv: bytes
    flags: int
    mai: int
    customer_public_key: bytes  # X ‖ Y, 2×80
    key_slots: tuple[KeySlot, ...]
    encrypted: bytes
    tag: bytes
    aad: bytes  # header through the last key slot, as authenticated by the GCM tag

    @property
    def host_key_hashes(self) -> tuple[bytes, ...]:
        return tuple(slot.phkh for slot in self.key_slots)


def parse_arcb(raw: bytes) -> Arcb:
    """Structure only: nothing here is authenticated until a UV opens the request."""
    raw = as_bytes(raw, "arcb")
    header = abi.parse_request_header(raw)
    if header.magic != ARCB_MAGIC:
        raise _err("arcb.magic", f"expected zeros, got {header.magic.hex()}")
    if header.version != ARCB_VERSION:
        raise _err("arcb.version", f"expected {ARCB_VERSION:#x}, got {header.version:#x}")
    if header.length != len(raw):
        raise _err("arcb.length", f"header says {header.length} bytes, got {len(raw)}")
    if header.key_slots == 0:
        raise _err("arcb.key_slots", "no host key slot")
    if header.encrypted_size != _CONFIDENTIAL_SIZE:
        # 64 alone would mean no nonce; we never send such requests and do not accept them.
        raise _err("arcb.encrypted_size", f"expected {_CONFIDENTIAL_SIZE}, got {header.encrypted_size}")
    aad_size = _CUST_KEY_END + header.key_slots * abi.KEY_SLOT_SIZE
    if aad_size + header.encrypted_size + abi.GCM_TAG_SIZE != len(raw):
        raise _err("arcb.length", f"{header.key_slots} key slot(s) do not fit {len(raw)} bytes")
    flags, mai, _ = _AUTH.unpack_from(raw, abi.REQUEST_HEADER_SIZE)
    if mai != abi.MAI_HMAC_SHA512:
        raise _err("arcb.mai", f"expected {abi.MAI_HMAC_SHA512} (HMAC-SHA512), got {mai}")
    slots = []
    for offset in range(_CUST_KEY_END, aad_size, abi.KEY_SLOT_SIZE):
        slot = raw[offset : offset + abi.KEY_SLOT_SIZE]
        slots.append(
            KeySlot(
                slot[: abi.PHKH_SIZE],
                slot[abi.PHKH_SIZE : abi.PHKH_SIZE + ARPK_SIZE],
                slot[-abi.GCM_TAG_SIZE :],
            )
        )
    return Arcb(
        version=header.version,
        length=header.length,
        iv=header.iv,
        flags=flags,
        mai=mai,
        customer_public_key=raw[_AUTH_END:_CUST_KEY_END],
        key_slots=tuple(slots),
        encrypted=raw[aad_size : aad_size + header.encrypted_size],
        tag=raw[-abi.GCM_TAG_SIZE :],
        aad=raw[:aad_size],
    )


@dataclass(frozen=True)
class SeRequestState:
    """What the verifier keeps between sending an ARCB and checking the response: the measurement
    key makes this a secret (whoever has it can forge measurements)."""

    measurement_key: bytes
    nonce: bytes
    flags: int
    mai: int
    host_key_hashes: tuple[str, ...]  # lowercase hex phkh, one per key slot
    arcb_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "measurement_key": self.measurement_key.hex(),
            "nonce": self.nonce.hex(),
            "flags": self.flags,
            "mai": self.mai,
            "host_key_hashes": list(self.host_key_hashes),
            "arcb_sha256": self.arcb_sha256,
        }

    @classmethod
    def from_json(cls, doc: Any) -> SeRequestState:
        if not isinstance(doc, dict):
            raise _err("request_state", "expected an object")

        def hex_field(name: str, size: int) -> bytes:
            value = doc.get(name)
            if not isinstance(value, str):
                raise _err(f"request_state.{name}", "expected a hex string")
            try:
                raw = bytes.fromhex(value)
            except ValueError as exc:
                raise _err(f"request_state.{name}", f"not hex: {exc}") from None
            if len(raw) != size:
                raise _err(f"request_state.{name}", f"needs {size} bytes, got {len(raw)}")
            return raw

        def int_field(name: str, bits: int) -> int:
            value = doc.get(name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
                raise _err(f"request_state.{name}", f"expected an unsigned {bits}-bit integer")
            return value

        hashes = doc.get("host_key_hashes")
        if not isinstance(hashes, list) or not hashes:
            raise _err("request_state.host_key_hashes", "expected a non-empty list")
        phkhs = []
        for item in hashes:
            try:
                ok = isinstance(item, str) and len(bytes.fromhex(item)) == abi.PHKH_SIZE
            except ValueError:
                ok = False
            if not ok:
                raise _err("request_state.host_key_hashes", f"not a {abi.PHKH_SIZE}-byte hex hash: {item!r}")
            phkhs.append(item.lower())
        mai = int_field("mai", 32)
        if mai != abi.MAI_HMAC_SHA512:
            raise _err("request_state.mai", f"expected {abi.MAI_HMAC_SHA512} (HMAC-SHA512), got {mai}")
        return cls(
            measurement_key=hex_field("measurement_key", abi.MEASUREMENT_KEY_SIZE),
            nonce=hex_field("nonce", abi.NONCE_SIZE),
            flags=int_field("flags", 64),
            mai=mai,
            host_key_hashes=tuple(phkhs),
            arcb_sha256=hex_field("arcb_sha256", 32).hex(),
        )


def _fixed(value: bytes | None, size: int, name: str) -> bytes:
    if value is None:
        return os.urandom(size)
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")
    return bytes(value)


def build_arcb(
    host_keys: Sequence[ec.EllipticCurvePublicKey],
    *,
    flags: int = DEFAULT_FLAGS,
    arpk: bytes | None = None,
    iv: bytes | None = None,
    measurement_key: bytes | None = None,
    nonce: bytes | None = None,
    customer_key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[bytes, SeRequestState]:
    """An ARCB any of ``host_keys`` (already verified HKD keys) can open, and the state to check the
    response with. Unset secrets are random; fixing them is for reproducing vectors only."""
    if not host_keys:
        raise ValueError("an ARCB needs at least one host key")
    if len(host_keys) > 0xFF:
        raise ValueError(f"at most 255 host keys fit an ARCB, got {len(host_keys)}")
    if not 0 <= flags < 1 << 64:
        raise ValueError("flags is a u64")
    flags |= abi.FLAG_NONCE
    arpk = _fixed(arpk, ARPK_SIZE, "arpk")
    iv = _fixed(iv, abi.IV_SIZE, "iv")
    measurement_key = _fixed(measurement_key, abi.MEASUREMENT_KEY_SIZE, "measurement_key")
    nonce = _fixed(nonce, abi.NONCE_SIZE, "nonce")
    if customer_key is None:
        customer_key = ec.generate_private_key(ec.SECP521R1())

    slots = []
    for host_key in host_keys:
        wrapped = AESGCM(derive_slot_key(customer_key, host_key)).encrypt(_SLOT_IV, arpk, None)
        slots.append(abi.host_key_hash(host_key) + wrapped)
    body = (
        _AUTH.pack(flags, abi.MAI_HMAC_SHA512, 0)
        + abi.ecdh_coordinates(customer_key.public_key())
        + b"".join(slots)
    )
    length = abi.REQUEST_HEADER_SIZE + len(body) + _CONFIDENTIAL_SIZE + abi.GCM_TAG_SIZE
    header = abi.RequestHeader(ARCB_MAGIC, ARCB_VERSION, length, iv, len(slots), _CONFIDENTIAL_SIZE)
    aad = header.to_bytes() + body
    raw = aad + AESGCM(arpk).encrypt(iv, measurement_key + nonce, aad)
    state = SeRequestState(
        measurement_key=measurement_key,
        nonce=nonce,
        flags=flags,
        mai=abi.MAI_HMAC_SHA512,
        host_key_hashes=tuple(slot[: abi.PHKH_SIZE].hex() for slot in slots),
        arcb_sha256=hashlib.sha256(raw).hexdigest(),
    )
    return raw, state


@dataclass(frozen=True)
class OpenedArcb:
    arcb: Arcb
    phkh: bytes  # the slot that was opened
    measurement_key: bytes
    nonce: bytes


def open_arcb(raw: bytes, host_key: ec.EllipticCurvePrivateKey) -> OpenedArcb:
    """The Ultravisor's side (used by the simulator and tests): find the slot for ``host_key``,
    unwrap the ARPK and decrypt. A request not meant for this host is ``se.arcb.no_slot``."""
    arcb = parse_arcb(raw)
    phkh = abi.host_key_hash(host_key.public_key())
    slot = next((s for s in arcb.key_slots if s.phkh == phkh), None)
    if slot is None:
        raise VerificationError("se.arcb.no_slot", "no key slot for this host key")
    customer = abi.public_key_from_coordinates(arcb.customer_public_key, "arcb.customer_public_key")
    try:
        arpk = AESGCM(derive_slot_key(host_key, customer)).decrypt(
            _SLOT_IV, slot.wrapped_key + slot.tag, None
        )
    except InvalidTag:
        raise VerificationError(
            "se.arcb.key_slot", "the key slot does not unwrap with this host key"
        ) from None
    try:
        plain = AESGCM(arpk).decrypt(arcb.iv, arcb.encrypted + arcb.tag, arcb.aad)
    except InvalidTag:
        raise VerificationError("se.arcb.tag", "the request does not authenticate") from None
    return OpenedArcb(arcb, phkh, plain[: abi.MEASUREMENT_KEY_SIZE], plain[abi.MEASUREMENT_KEY_SIZE :])
