"""AMD SEV / SEV-ES LAUNCH_START session: what the guest owner (REMITS) sends the firmware.

The guest owner picks a transport encryption key (TEK) and a transport integrity key (TIK), wraps
them for the platform's PDH (an ECDH P-384 key certified by the platform chain) and binds the guest
policy to the TIK. Only the owner and the firmware then know TEK/TIK: the TIK authenticates the launch
measurement (``measure.py``) and the pair protects the injected secret (``secret.py``).

Key schedule (SEV API, LAUNCH_START; see ``shared/notes/platforms.md`` 1.2)::

    Z      = ECDH(owner ephemeral P-384 private key "GODH", PDH public key)  (raw x coordinate)
    master = KDF(Z, 16, "sev-master-secret", NONCE)
    KEK    = KDF(master, 16, "sev-kek", "")      KIK = KDF(master, 16, "sev-kik", "")
    WRAP_TK    = AES-128-CTR(KEK, IV, TEK || TIK)
    WRAP_MAC   = HMAC-SHA256(KIK, WRAP_TK)
    POLICY_MAC = HMAC-SHA256(TIK, POLICY u32 LE)
    session    = NONCE[16] || WRAP_TK[32] || WRAP_IV[16] || WRAP_MAC[32] || POLICY_MAC[32]   (128 B)

KDF is NIST SP 800-108 counter mode with HMAC-SHA256, each block's input being
``i (u32 LE) || label || 0x00 || context || L in bits (u32 LE)``.

Pure functions: every random value (keys, nonces, the ephemeral key) can be passed in, so published
vectors reproduce. ``unwrap_session`` is the firmware's side, for the simulator and the tests.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.errors import ParseError, VerificationError

# check names (VerificationError.check)
WRAP_MAC = "sev.wrap_mac"
POLICY_MAC = "sev.policy_mac"
PDH_KEY = "sev.pdh_key"

KEY_SIZE = 16  # TEK, TIK, KEK, KIK, master secret
NONCE_SIZE = 16
IV_SIZE = 16
MAC_SIZE = 32
SESSION_SIZE = NONCE_SIZE + 2 * KEY_SIZE + IV_SIZE + 2 * MAC_SIZE  # 128

LABEL_MASTER = b"sev-master-secret"
LABEL_KEK = b"sev-kek"
LABEL_KIK = b"sev-kik"

_U32 = struct.Struct("<I")
_CURVE = ec.SECP384R1


class SevParseError(ParseError):
    """SEV bytes or values without the expected layout; ``field`` names the failing field."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(field, detail, prefix="sev")


def need_bytes(field: str, value: object, size: int) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview) or len(value) != size:
        got = len(value) if isinstance(value, bytes | bytearray | memoryview) else type(value).__name__
        raise SevParseError(field, f"must be {size} bytes, got {got}")
    return bytes(value)


def u32(value: int, field: str = "policy") -> bytes:
    if type(value) is not int or not 0 <= value < 1 << 32:
        raise SevParseError(field, f"must be a 32-bit unsigned integer, got {value!r}")
    return _U32.pack(value)


# --- policy ---------------------------------------------------------------------------------------

_FLAG_BITS = {"nodbg": 0, "noks": 1, "es": 2, "nosend": 3, "domain": 4, "sev": 5}
_RESERVED_MASK = 0x0000FFC0  # bits 6..15


@dataclass(frozen=True)
class SevPolicy:
    """The guest policy u32 of LAUNCH_START. Bits: 0 NODBG (debugging forbidden), 1 NOKS (no key
    sharing with other guests), 2 ES (SEV-ES required), 3 NOSEND (no migration), 4 DOMAIN (migrate
    only within the domain), 5 SEV (only to SEV platforms); byte 2 the minimum firmware API major,
    byte 3 the minimum API minor. Bits 6..15 are reserved and must be zero."""

    nodbg: bool = False
    noks: bool = False
    es: bool = False
    nosend: bool = False
    domain: bool = False
    sev: bool = False
    api_major: int = 0
    api_minor: int = 0

    def __post_init__(self) -> None:
        for name in ("api_major", "api_minor"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= 0xFF:
                raise SevParseError(f"policy.{name}", f"must be 0..255, got {value!r}")

    def encode(self) -> int:
        value = self.api_major << 16 | self.api_minor << 24
        for name, bit in _FLAG_BITS.items():
            if getattr(self, name):
                value |= 1 << bit
        return value

    def to_bytes(self) -> bytes:
        return _U32.pack(self.encode())

    @classmethod
    def decode(cls, value: int) -> SevPolicy:
        if type(value) is not int or not 0 <= value < 1 << 32:
            raise SevParseError("policy", f"must be a 32-bit unsigned integer, got {value!r}")
        if value & _RESERVED_MASK:
            raise SevParseError("policy.reserved", f"reserved bits set in {value:#010x}")
        flags = {name: bool(value >> bit & 1) for name, bit in _FLAG_BITS.items()}
        return cls(**flags, api_major=value >> 16 & 0xFF, api_minor=value >> 24 & 0xFF)


def policy_value(policy: SevPolicy | int) -> int:
    """The u32 of ``policy`` (a ``SevPolicy`` or an int, checked to be a valid policy)."""
    return policy.encode() if isinstance(policy, SevPolicy) else SevPolicy.decode(policy).encode()


# --- KDF and wrapping -----------------------------------------------------------------------------


def kdf(key: bytes, length: int, label: bytes, context: bytes = b"") -> bytes:
    """NIST SP 800-108 KDF in counter mode, PRF HMAC-SHA256; ``length`` in bytes."""
    if type(length) is not int or not 0 < length < 1 << 28:
        raise SevParseError("kdf.length", f"must be a positive byte count, got {length!r}")
    tail = b"\x00" + bytes(context) + _U32.pack(length * 8)
    out = bytearray()
    counter = 1
    while len(out) < length:
        out += hmac.digest(key, _U32.pack(counter) + bytes(label) + tail, hashlib.sha256)
        counter += 1
    return bytes(out[:length])


def master_secret(z: bytes, nonce: bytes) -> bytes:
    return kdf(z, KEY_SIZE, LABEL_MASTER, need_bytes("nonce", nonce, NONCE_SIZE))


def kek_kik(master: bytes) -> tuple[bytes, bytes]:
    """(KEK, KIK) from the master secret."""
    return kdf(master, KEY_SIZE, LABEL_KEK), kdf(master, KEY_SIZE, LABEL_KIK)


def aes128_ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-128 in CTR mode (the 16-byte IV is the initial big-endian counter block). Its own inverse."""
    transform = Cipher(
        algorithms.AES(need_bytes("key", key, KEY_SIZE)), modes.CTR(need_bytes("iv", iv, IV_SIZE))
    )
    enc = transform.encryptor()
    return enc.update(bytes(data)) + enc.finalize()


def policy_mac(tik: bytes, policy: SevPolicy | int) -> bytes:
    return hmac.digest(need_bytes("tik", tik, KEY_SIZE), _U32.pack(policy_value(policy)), hashlib.sha256)


@dataclass(frozen=True)
class SessionBlob:
    """The 128-byte LAUNCH_START session buffer, split into its fields."""

    nonce: bytes
    wrap_tk: bytes
    wrap_iv: bytes
    wrap_mac: bytes
    policy_mac: bytes

    def to_bytes(self) -> bytes:
        return self.nonce + self.wrap_tk + self.wrap_iv + self.wrap_mac + self.policy_mac

    @classmethod
    def parse(cls, blob: bytes) -> SessionBlob:
        data = need_bytes("session", blob, SESSION_SIZE)
        return cls(data[0:16], data[16:48], data[48:64], data[64:96], data[96:128])


def build_session(
    z: bytes, policy: SevPolicy | int, *, tek: bytes, tik: bytes, nonce: bytes, iv: bytes
) -> bytes:
    """The 128-byte session blob for the shared secret ``z`` (deterministic: the vector form)."""
    tek, tik = need_bytes("tek", tek, KEY_SIZE), need_bytes("tik", tik, KEY_SIZE)
    nonce, iv = need_bytes("nonce", nonce, NONCE_SIZE), need_bytes("iv", iv, IV_SIZE)
    kek, kik = kek_kik(master_secret(bytes(z), nonce))
    wrap_tk = aes128_ctr(kek, iv, tek + tik)
    wrap_mac = hmac.digest(kik, wrap_tk, hashlib.sha256)
    return SessionBlob(nonce, wrap_tk, iv, wrap_mac, policy_mac(tik, policy)).to_bytes()


def unwrap_with_secret(blob: bytes, z: bytes, policy: SevPolicy | int) -> tuple[bytes, bytes]:
    """The firmware's side given the shared secret: (TEK, TIK), after checking WRAP_MAC then
    POLICY_MAC (``VerificationError`` ``sev.wrap_mac`` / ``sev.policy_mac``)."""
    parts = SessionBlob.parse(blob)
    kek, kik = kek_kik(master_secret(bytes(z), parts.nonce))
    if not hmac.compare_digest(hmac.digest(kik, parts.wrap_tk, hashlib.sha256), parts.wrap_mac):
        raise VerificationError(WRAP_MAC, "WRAP_MAC does not authenticate WRAP_TK under the session KIK")
    keys = aes128_ctr(kek, parts.wrap_iv, parts.wrap_tk)
    tek, tik = keys[:KEY_SIZE], keys[KEY_SIZE:]
    if not hmac.compare_digest(policy_mac(tik, policy), parts.policy_mac):
        raise VerificationError(POLICY_MAC, f"POLICY_MAC does not match policy {policy_value(policy):#010x}")
    return tek, tik


# --- ECDH -----------------------------------------------------------------------------------------


def _check_p384_public(key: object, field: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVE):
        raise VerificationError(PDH_KEY, f"{field} must be an EC P-384 public key, got {type(key).__name__}")
    return key


def shared_secret(private: ec.EllipticCurvePrivateKey, public: ec.EllipticCurvePublicKey) -> bytes:
    """Z: the raw ECDH output (x coordinate, 48 bytes big-endian), as OpenSSL derives it."""
    if not isinstance(private, ec.EllipticCurvePrivateKey) or not isinstance(private.curve, _CURVE):
        raise VerificationError(PDH_KEY, "the private key must be an EC P-384 key")
    return private.exchange(ec.ECDH(), _check_p384_public(public, "public key"))


@dataclass(frozen=True, repr=False)
class LaunchSession:
    """What the guest owner keeps for one launch (TEK/TIK are secrets: not in ``repr``) and what it
    sends: ``session`` (the 128-byte blob), ``policy`` and ``godh_public`` (to be put in a GODH cert)."""

    tek: bytes
    tik: bytes
    policy: int
    nonce: bytes
    iv: bytes
    session: bytes
    godh_public: ec.EllipticCurvePublicKey

    def __repr__(self) -> str:
        return f"LaunchSession(policy={self.policy:#010x}, nonce={self.nonce.hex()})"

    def godh_point_le(self, width: int = 72) -> tuple[bytes, bytes]:
        """(QX, QY) of the GODH key, little-endian and zero-padded to ``width`` bytes (the SEV
        certificate's ECDH public key layout)."""
        numbers = self.godh_public.public_numbers()
        return numbers.x.to_bytes(width, "little"), numbers.y.to_bytes(width, "little")


def start_session(
    pdh_public: ec.EllipticCurvePublicKey,
    policy: SevPolicy | int,
    *,
    rng: Callable[[int], bytes] = os.urandom,
    owner_key: ec.EllipticCurvePrivateKey | None = None,
) -> LaunchSession:
    """A fresh LAUNCH_START session for the platform whose PDH is ``pdh_public``.

    ``rng`` supplies TEK, TIK, NONCE and IV (in that order, 16 bytes each); ``owner_key`` is the
    ephemeral GODH private key (generated when omitted). The caller must have verified the PDH's
    certificate chain first."""
    pdh_public = _check_p384_public(pdh_public, "pdh_public")
    value = policy_value(policy)
    if owner_key is None:
        owner_key = ec.generate_private_key(_CURVE())
    z = shared_secret(owner_key, pdh_public)
    tek, tik, nonce, iv = (need_bytes(name, rng(16), 16) for name in ("tek", "tik", "nonce", "iv"))
    blob = build_session(z, value, tek=tek, tik=tik, nonce=nonce, iv=iv)
    return LaunchSession(tek, tik, value, nonce, iv, blob, owner_key.public_key())


def unwrap_session(
    blob: bytes,
    pdh_private: ec.EllipticCurvePrivateKey,
    godh_public: ec.EllipticCurvePublicKey,
    policy: SevPolicy | int,
) -> tuple[bytes, bytes]:
    """The firmware's LAUNCH_START: (TEK, TIK) from the session blob, or ``VerificationError``
    (``sev.wrap_mac``, ``sev.policy_mac``)."""
    return unwrap_with_secret(blob, shared_secret(pdh_private, godh_public), policy)
