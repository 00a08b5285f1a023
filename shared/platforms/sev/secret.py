"""AMD SEV / SEV-ES LAUNCH_SECRET: the secret the guest owner injects once the measurement verified.

Packet (SEV API, LAUNCH_SECRET)::

    header  = FLAGS (u32 LE; bit 0 COMPRESSED) || IV[16] || MAC[32]                 (52 bytes)
    payload = AES-128-CTR(TEK, IV, plaintext)
    MAC     = HMAC-SHA256(TIK, 0x01 || FLAGS || IV || GUEST_LENGTH (u32) || TRANS_LENGTH (u32)
                               || payload || MEASURE)

The MAC covers the MEASURE just verified, so the firmware only accepts the secret for that launch.

Plaintext layouts: with QEMU + OVMF, the EFI secret table (read by Linux's ``efi_secret`` driver)::

    GUID 1e74f542-71dd-4d66-963e-ef4287ff173b || u32 total length || entries, zero-padded to 16 bytes
    entry = GUID (EFI little-endian byte order) || u32 length (16 + 4 + len(data)) || data

With libkrun, the bare secret zero-padded to 512 bytes (``libkrun_plaintext``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from shared.errors import VerificationError
from shared.platforms.sev.session import IV_SIZE, KEY_SIZE, MAC_SIZE, SevParseError, aes128_ctr, need_bytes

SECRET_MAC = "sev.secret_mac"  # check name (VerificationError.check)

HEADER_SIZE = 4 + IV_SIZE + MAC_SIZE  # 52
MEASURE_SIZE = 32
SECRET_CONTEXT = 0x01
FLAG_COMPRESSED = 0x1
SECRET_TABLE_GUID = uuid.UUID("1e74f542-71dd-4d66-963e-ef4287ff173b")
LIBKRUN_SECRET_SIZE = 512

_HEADER = struct.Struct("<I16s32s")
_TABLE_HEAD = struct.Struct("<16sI")  # GUID, u32 length (table header and each entry)


@dataclass(frozen=True)
class LaunchSecret:
    """A LAUNCH_SECRET packet: ``header`` (52 bytes) and ``payload`` (the ciphertext)."""

    flags: int
    iv: bytes
    mac: bytes
    payload: bytes

    @property
    def header(self) -> bytes:
        return _HEADER.pack(self.flags, self.iv, self.mac)

    @classmethod
    def parse(cls, header: bytes, payload: bytes) -> LaunchSecret:
        flags, iv, mac = _HEADER.unpack(need_bytes("secret.header", header, HEADER_SIZE))
        return cls(flags, iv, mac, bytes(payload))


def _u32(field: str, value: object) -> bytes:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise SevParseError(field, f"must be a 32-bit unsigned integer, got {value!r}")
    return value.to_bytes(4, "little")


def secret_mac(
    tik: bytes,
    flags: int,
    iv: bytes,
    payload: bytes,
    measure: bytes,
    *,
    guest_length: int | None = None,
    trans_length: int | None = None,
) -> bytes:
    """The packet header's MAC. Both lengths default to ``len(payload)`` (an uncompressed secret)."""
    message = (
        bytes((SECRET_CONTEXT,))
        + _u32("secret.flags", flags)
        + need_bytes("secret.iv", iv, IV_SIZE)
        + _u32("secret.guest_length", len(payload) if guest_length is None else guest_length)
        + _u32("secret.trans_length", len(payload) if trans_length is None else trans_length)
        + bytes(payload)
        + need_bytes("measure", measure, MEASURE_SIZE)
    )
    return hmac.digest(need_bytes("tik", tik, KEY_SIZE), message, hashlib.sha256)


def build_secret(
    plaintext: bytes,
    tek: bytes,
    tik: bytes,
    measure: bytes,
    *,
    iv: bytes | None = None,
    rng: Callable[[int], bytes] = os.urandom,
    flags: int = 0,
) -> LaunchSecret:
    """Encrypt ``plaintext`` (an EFI secret table, or ``libkrun_plaintext(...)``) for the launch
    whose verified MEASURE is ``measure``. ``iv`` defaults to 16 bytes from ``rng``."""
    iv = need_bytes("secret.iv", rng(IV_SIZE) if iv is None else iv, IV_SIZE)
    if flags & FLAG_COMPRESSED:
        raise SevParseError("secret.flags", "compressed secrets are not supported")
    payload = aes128_ctr(need_bytes("tek", tek, KEY_SIZE), iv, plaintext)
    return LaunchSecret(flags, iv, secret_mac(tik, flags, iv, payload, measure), payload)


def open_secret(header: bytes, payload: bytes, tek: bytes, tik: bytes, measure: bytes) -> bytes:
    """The firmware's LAUNCH_SECRET: the plaintext, after checking the header MAC
    (``VerificationError`` ``sev.secret_mac``)."""
    packet = LaunchSecret.parse(header, payload)
    want = secret_mac(tik, packet.flags, packet.iv, packet.payload, measure)
    if not hmac.compare_digest(want, packet.mac):
        raise VerificationError(SECRET_MAC, "the LAUNCH_SECRET header MAC does not verify under TIK/MEASURE")
    if packet.flags & FLAG_COMPRESSED:
        raise SevParseError("secret.flags", "compressed secrets are not supported")
    return aes128_ctr(need_bytes("tek", tek, KEY_SIZE), packet.iv, packet.payload)


# --- plaintext layouts ----------------------------------------------------------------------------


def _as_guid(field: str, value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise SevParseError(field, f"not a GUID: {value!r}") from None


def build_secret_table(entries: Iterable[tuple[uuid.UUID | str, bytes]]) -> bytes:
    """The OVMF EFI secret table holding ``entries`` (GUID, data) in order, zero-padded to 16 bytes.
    The table's length field counts the header and entries, not the padding."""
    body = bytearray()
    for index, (guid, data) in enumerate(entries):
        data = bytes(data)
        length = _TABLE_HEAD.size + len(data)
        body += _TABLE_HEAD.pack(_as_guid(f"secret_table.entries[{index}].guid", guid).bytes_le, length)
        body += data
    total = _TABLE_HEAD.size + len(body)
    table = _TABLE_HEAD.pack(SECRET_TABLE_GUID.bytes_le, total) + bytes(body)
    return table + bytes(-len(table) % 16)


def parse_secret_table(data: bytes) -> list[tuple[uuid.UUID, bytes]]:
    """The entries of an EFI secret table (the padding after its length is ignored)."""
    data = bytes(data)
    if len(data) < _TABLE_HEAD.size:
        raise SevParseError("secret_table", f"{len(data)} bytes: shorter than the table header")
    guid, total = _TABLE_HEAD.unpack_from(data)
    if uuid.UUID(bytes_le=guid) != SECRET_TABLE_GUID:
        raise SevParseError(
            "secret_table.guid", f"{uuid.UUID(bytes_le=guid)} is not the EFI secret table GUID"
        )
    if not _TABLE_HEAD.size <= total <= len(data):
        raise SevParseError("secret_table.length", f"{total} outside {_TABLE_HEAD.size}..{len(data)}")
    out: list[tuple[uuid.UUID, bytes]] = []
    offset = _TABLE_HEAD.size
    while offset < total:
        field = f"secret_table.entries[{len(out)}]"
        if total - offset < _TABLE_HEAD.size:
            raise SevParseError(field, "truncated entry header")
        guid, length = _TABLE_HEAD.unpack_from(data, offset)
        if not _TABLE_HEAD.size <= length <= total - offset:
            raise SevParseError(f"{field}.length", f"{length} outside {_TABLE_HEAD.size}..{total - offset}")
        out.append((uuid.UUID(bytes_le=guid), data[offset + _TABLE_HEAD.size : offset + length]))
        offset += length
    return out


def libkrun_plaintext(secret: bytes, size: int = LIBKRUN_SECRET_SIZE) -> bytes:
    """libkrun's layout: the secret zero-padded to ``size`` (512) bytes, no table."""
    secret = bytes(secret)
    if len(secret) > size:
        raise SevParseError("secret", f"{len(secret)} bytes: longer than the {size}-byte libkrun secret area")
    return secret + bytes(size - len(secret))


def libkrun_secret(secret: bytes) -> bytes:
    """The secret back from libkrun's padded plaintext (trailing zero bytes removed)."""
    return bytes(secret).rstrip(b"\x00")
