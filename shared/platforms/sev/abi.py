"""Legacy AMD SEV / SEV-ES certificates (AMD binary format, little-endian, not X.509).

Two formats (SEV API spec appendices B and C):

**AMD CA certificate** (ARK, ASK) -- 832 bytes for RSA-2048 (Naples), 1600 bytes for RSA-4096:

======  ==================  =================================================
offset  field               notes
======  ==================  =================================================
0x00    VERSION u32         must be 1
0x04    KEY_ID [16]
0x14    CERTIFYING_ID [16]  KEY_ID of the signer (the ARK names itself)
0x24    KEY_USAGE u32       ARK 0x0000, ASK 0x0013
0x28    reserved [16]       must be zero
0x38    PUBEXP_SIZE u32     bits (2048 or 4096)
0x3C    MODULUS_SIZE u32    bits (2048 or 4096)
0x40    PUBEXP, MODULUS, SIGNATURE   little-endian, PUBEXP_SIZE/8, MODULUS_SIZE/8, MODULUS_SIZE/8
======  ==================  =================================================

**SEV certificate** (OCA, PEK, PDH, CEK, and the guest owner's GODH) -- 0x824 = 2084 bytes:

======  ==================  =================================================
0x000   VERSION u32         must be 1
0x004   API_MAJOR u8, API_MINOR u8, reserved u16 (zero)
0x008   PUBKEY_USAGE u32    OCA 0x1001, PEK 0x1002, PDH 0x1003, CEK 0x1004
0x00C   PUBKEY_ALGO u32     0x1/0x101 RSA, 0x2/0x102 ECDSA, 0x3/0x103 ECDH (SHA-256 / SHA-384)
0x010   PUBKEY [0x404]      EC: CURVE u32, QX [72] LE, QY [72] LE, reserved (zero)
                            RSA: MODULUS_SIZE u32 (bits), PUBEXP [0x200] LE, MODULUS [0x200] LE
0x414   SIG1: USAGE u32, ALGO u32, SIG [0x200]
0x61C   SIG2: USAGE u32, ALGO u32, SIG [0x200]
======  ==================  =================================================

Signed data is bytes [0, 0x414) for SEV certificates and [0, end of MODULUS) for CA certificates.
An empty signature slot has usage 0x1000, algo 0 and an all-zero signature (as every real certificate
and the kbs-types guest-owner certificate have it). ECDSA signatures are R [72] LE || S [72] LE, the
rest of the slot zero; RSA signatures fill the slot (little-endian).

Every malformed input raises ``ParseError`` naming the field (``<prefix>.pubkey.qx`` ...); the prefix
defaults to ``sev.ca_cert`` / ``sev.cert`` and ``verify`` passes the certificate's role
(``sev.pdh`` ...). ``encode()`` is the exact inverse of parsing: ``parse(b).encode() == b``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shared.errors import ParseError
from shared.platforms.binary import as_bytes

__all__ = [
    "CA_CERT_HEADER_SIZE",
    "EC_COORD_SIZE",
    "SEV_CERT_SIZE",
    "SEV_SIGNED_END",
    "SIG_SLOT_SIZE",
    "Algo",
    "AmdCaCert",
    "Curve",
    "EcPubKey",
    "RsaPubKey",
    "SevCert",
    "SignatureSlot",
    "Usage",
    "ec_signature_from_slot",
    "ec_signature_to_slot",
    "godh_cert",
    "parse_ca_cert",
    "parse_sev_cert",
    "rsa_signature_to_slot",
]

CA_CERT_VERSION = 1
SEV_CERT_VERSION = 1
CA_CERT_HEADER_SIZE = 0x40
CA_KEY_SIZES = frozenset({2048, 4096})
SEV_CERT_SIZE = 0x824
SEV_SIGNED_END = 0x414
PUBKEY_OFFSET = 0x10
PUBKEY_SIZE = 0x404
SIG_SLOT_OFFSETS = (0x414, 0x61C)
SIG_SLOT_SIZE = 0x200
EC_COORD_SIZE = 72
RSA_FIELD_SIZE = 0x200  # pubexp / modulus in an SEV-format RSA key (up to 4096 bits)

_U32 = struct.Struct("<I")


class Usage(IntEnum):
    """KEY_USAGE / PUBKEY_USAGE / SIG_USAGE values."""

    ARK = 0x0000
    ASK = 0x0013
    INVALID = 0x1000  # empty signature slot
    OCA = 0x1001
    PEK = 0x1002
    PDH = 0x1003
    CEK = 0x1004


_CA_USAGES = frozenset({Usage.ARK, Usage.ASK})
_PUBKEY_USAGES = frozenset({Usage.OCA, Usage.PEK, Usage.PDH, Usage.CEK})


class Algo(IntEnum):
    """PUBKEY_ALGO / SIG_ALGO values. ``INVALID`` only in an empty signature slot."""

    INVALID = 0x0
    RSA_SHA256 = 0x1
    ECDSA_SHA256 = 0x2
    ECDH_SHA256 = 0x3
    RSA_SHA384 = 0x101
    ECDSA_SHA384 = 0x102
    ECDH_SHA384 = 0x103

    @property
    def is_rsa(self) -> bool:
        return self in (Algo.RSA_SHA256, Algo.RSA_SHA384)

    @property
    def is_ecdsa(self) -> bool:
        return self in (Algo.ECDSA_SHA256, Algo.ECDSA_SHA384)

    @property
    def is_ecdh(self) -> bool:
        return self in (Algo.ECDH_SHA256, Algo.ECDH_SHA384)

    @property
    def is_ec(self) -> bool:
        return self.is_ecdsa or self.is_ecdh

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        if self is Algo.INVALID:
            raise ValueError("the invalid algorithm has no hash")
        return hashes.SHA384() if self.value & 0x100 else hashes.SHA256()


class Curve(IntEnum):
    P256 = 1
    P384 = 2

    @property
    def size(self) -> int:
        """Coordinate size in bytes (the rest of the 72-byte field is zero)."""
        return 32 if self is Curve.P256 else 48

    def cryptography_curve(self) -> ec.EllipticCurve:
        return ec.SECP256R1() if self is Curve.P256 else ec.SECP384R1()

    @classmethod
    def of(cls, curve: ec.EllipticCurve) -> Curve:
        if isinstance(curve, ec.SECP256R1):
            return cls.P256
        if isinstance(curve, ec.SECP384R1):
            return cls.P384
        raise ValueError(f"unsupported curve {curve.name}")


# ----------------------------------------------------------------------------------------- helpers


def _u32(data: bytes, offset: int) -> int:
    return _U32.unpack_from(data, offset)[0]


def _le(data: bytes) -> int:
    return int.from_bytes(data, "little")


def _enum(cls: type[IntEnum], value: int, field: str, allowed: frozenset | None = None) -> IntEnum:  # type: ignore[type-arg]
    try:
        member = cls(value)
    except ValueError:
        raise ParseError(field, f"unknown value {value:#x}") from None
    if allowed is not None and member not in allowed:
        raise ParseError(field, f"{member.name} ({value:#x}) not allowed here")
    return member


def _zero(data: bytes, start: int, end: int, field: str) -> None:
    if any(data[start:end]):
        first = next(i for i in range(start, end) if data[i])
        raise ParseError(
            field, f"reserved bytes {start:#x}-{end - 1:#x} must be zero (byte {first:#x} is not)"
        )


def _rsa_check(exponent: int, modulus: int, field: str) -> None:
    if modulus % 2 == 0:
        raise ParseError(field, "modulus is even")
    if exponent < 3 or exponent % 2 == 0:
        raise ParseError(
            field.rsplit(".", 1)[0] + ".pubexp", f"public exponent {exponent} is not an odd integer >= 3"
        )
    try:
        rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError as exc:
        raise ParseError(field, f"not a valid RSA public key: {exc}") from None


def ec_signature_to_slot(r: int, s: int) -> bytes:
    """R [72] LE || S [72] LE, padded with zeros to the 0x200-byte slot."""
    return (r.to_bytes(EC_COORD_SIZE, "little") + s.to_bytes(EC_COORD_SIZE, "little")).ljust(
        SIG_SLOT_SIZE, b"\0"
    )


def ec_signature_from_slot(sig: bytes) -> tuple[int, int]:
    return _le(sig[:EC_COORD_SIZE]), _le(sig[EC_COORD_SIZE : 2 * EC_COORD_SIZE])


def rsa_signature_to_slot(signature_be: bytes) -> bytes:
    """A big-endian RSA signature (as ``cryptography`` returns it) -> little-endian slot bytes."""
    if len(signature_be) > SIG_SLOT_SIZE:
        raise ValueError("RSA signature larger than the slot")
    return signature_be[::-1].ljust(SIG_SLOT_SIZE, b"\0")


# ---------------------------------------------------------------------------------- CA certificate


@dataclass(frozen=True, slots=True)
class AmdCaCert:
    """ARK or ASK. ``pubexp``/``modulus`` are integers; ``signature`` is little-endian as stored."""

    version: int
    key_id: bytes
    certifying_id: bytes
    key_usage: Usage
    pubexp_bits: int
    modulus_bits: int
    pubexp: int
    modulus: int
    signature: bytes

    @property
    def size(self) -> int:
        return CA_CERT_HEADER_SIZE + self.pubexp_bits // 8 + 2 * (self.modulus_bits // 8)

    @property
    def self_signed(self) -> bool:
        return self.key_id == self.certifying_id

    def public_key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(self.pubexp, self.modulus).public_key()

    def signed_bytes(self) -> bytes:
        return self.encode()[: self.size - self.modulus_bits // 8]

    def signature_be(self) -> bytes:
        return self.signature[::-1]

    def encode(self) -> bytes:
        out = bytearray()
        out += _U32.pack(self.version)
        out += self.key_id + self.certifying_id
        out += _U32.pack(int(self.key_usage))
        out += bytes(16)
        out += _U32.pack(self.pubexp_bits) + _U32.pack(self.modulus_bits)
        out += self.pubexp.to_bytes(self.pubexp_bits // 8, "little")
        out += self.modulus.to_bytes(self.modulus_bits // 8, "little")
        if len(self.signature) != self.modulus_bits // 8:
            raise ValueError("signature size must equal the modulus size")
        out += self.signature
        return bytes(out)


def parse_ca_cert(data: object, field: str = "sev.ca_cert") -> AmdCaCert:
    """ARK/ASK bytes -> ``AmdCaCert``; the whole buffer must be exactly one certificate."""
    raw = as_bytes(data, field)
    if len(raw) < CA_CERT_HEADER_SIZE:
        raise ParseError(f"{field}.size", f"{len(raw)} bytes, header alone is {CA_CERT_HEADER_SIZE}")
    version = _u32(raw, 0x00)
    if version != CA_CERT_VERSION:
        raise ParseError(f"{field}.version", f"expected {CA_CERT_VERSION}, got {version}")
    usage = _enum(Usage, _u32(raw, 0x24), f"{field}.key_usage", _CA_USAGES)
    _zero(raw, 0x28, 0x38, f"{field}.reserved")
    pubexp_bits = _u32(raw, 0x38)
    modulus_bits = _u32(raw, 0x3C)
    if pubexp_bits not in CA_KEY_SIZES:
        raise ParseError(f"{field}.pubexp_size", f"{pubexp_bits} bits, expected 2048 or 4096")
    if modulus_bits not in CA_KEY_SIZES:
        raise ParseError(f"{field}.modulus_size", f"{modulus_bits} bits, expected 2048 or 4096")
    e_len, n_len = pubexp_bits // 8, modulus_bits // 8
    expected = CA_CERT_HEADER_SIZE + e_len + 2 * n_len
    if len(raw) != expected:
        raise ParseError(f"{field}.size", f"{len(raw)} bytes, the declared key sizes need {expected}")
    off = CA_CERT_HEADER_SIZE
    pubexp = _le(raw[off : off + e_len])
    modulus = _le(raw[off + e_len : off + e_len + n_len])
    if modulus.bit_length() != modulus_bits:
        raise ParseError(
            f"{field}.modulus", f"modulus is {modulus.bit_length()} bits, header says {modulus_bits}"
        )
    _rsa_check(pubexp, modulus, f"{field}.modulus")
    return AmdCaCert(
        version=version,
        key_id=raw[0x04:0x14],
        certifying_id=raw[0x14:0x24],
        key_usage=Usage(usage),
        pubexp_bits=pubexp_bits,
        modulus_bits=modulus_bits,
        pubexp=pubexp,
        modulus=modulus,
        signature=raw[off + e_len + n_len :],
    )


# --------------------------------------------------------------------------------- SEV certificate


@dataclass(frozen=True, slots=True)
class EcPubKey:
    curve: Curve
    qx: int
    qy: int

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicNumbers(self.qx, self.qy, self.curve.cryptography_curve()).public_key()

    def encode(self) -> bytes:
        body = _U32.pack(int(self.curve)) + self.qx.to_bytes(EC_COORD_SIZE, "little")
        return (body + self.qy.to_bytes(EC_COORD_SIZE, "little")).ljust(PUBKEY_SIZE, b"\0")

    @classmethod
    def of(cls, key: ec.EllipticCurvePublicKey) -> EcPubKey:
        numbers = key.public_numbers()
        return cls(Curve.of(key.curve), numbers.x, numbers.y)


@dataclass(frozen=True, slots=True)
class RsaPubKey:
    modulus_bits: int
    pubexp: int
    modulus: int

    def public_key(self) -> rsa.RSAPublicKey:
        return rsa.RSAPublicNumbers(self.pubexp, self.modulus).public_key()

    def encode(self) -> bytes:
        return (
            _U32.pack(self.modulus_bits)
            + self.pubexp.to_bytes(RSA_FIELD_SIZE, "little")
            + self.modulus.to_bytes(RSA_FIELD_SIZE, "little")
        )


@dataclass(frozen=True, slots=True)
class SignatureSlot:
    usage: Usage
    algo: Algo
    signature: bytes  # the 0x200 stored bytes (little-endian)

    @property
    def empty(self) -> bool:
        return self.usage is Usage.INVALID

    def encode(self) -> bytes:
        return _U32.pack(int(self.usage)) + _U32.pack(int(self.algo)) + self.signature

    @classmethod
    def none(cls) -> SignatureSlot:
        return cls(Usage.INVALID, Algo.INVALID, bytes(SIG_SLOT_SIZE))


@dataclass(frozen=True, slots=True)
class SevCert:
    """OCA, PEK, PDH, CEK or a guest owner's GODH."""

    version: int
    api_major: int
    api_minor: int
    pubkey_usage: Usage
    pubkey_algo: Algo
    pubkey: EcPubKey | RsaPubKey
    sig1: SignatureSlot
    sig2: SignatureSlot

    @property
    def signatures(self) -> tuple[SignatureSlot, SignatureSlot]:
        return (self.sig1, self.sig2)

    def slot_for(self, usage: Usage) -> SignatureSlot | None:
        """The signature slot whose usage names ``usage`` as signer (None if there is none)."""
        for slot in self.signatures:
            if slot.usage is usage:
                return slot
        return None

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self.pubkey.public_key()

    def signed_bytes(self) -> bytes:
        return self.encode()[:SEV_SIGNED_END]

    def encode(self) -> bytes:
        head = struct.pack(
            "<IBBHII", self.version, self.api_major, self.api_minor, 0, self.pubkey_usage, self.pubkey_algo
        )
        return head + self.pubkey.encode() + self.sig1.encode() + self.sig2.encode()

    def with_signatures(self, sig1: SignatureSlot, sig2: SignatureSlot | None = None) -> SevCert:
        return SevCert(
            self.version,
            self.api_major,
            self.api_minor,
            self.pubkey_usage,
            self.pubkey_algo,
            self.pubkey,
            sig1,
            sig2 or SignatureSlot.none(),
        )


def _parse_ec_key(raw: bytes, field: str) -> EcPubKey:
    base = PUBKEY_OFFSET
    curve = Curve(_enum(Curve, _u32(raw, base), f"{field}.pubkey.curve"))
    coords = []
    for index, name in enumerate(("qx", "qy")):
        start = base + 4 + index * EC_COORD_SIZE
        _zero(raw, start + curve.size, start + EC_COORD_SIZE, f"{field}.pubkey.{name}")
        coords.append(_le(raw[start : start + curve.size]))
    _zero(raw, base + 4 + 2 * EC_COORD_SIZE, SEV_SIGNED_END, f"{field}.pubkey.reserved")
    key = EcPubKey(curve, coords[0], coords[1])
    try:
        key.public_key()
    except ValueError:
        raise ParseError(f"{field}.pubkey.point", f"(QX, QY) is not a point on {curve.name}") from None
    return key


def _parse_rsa_key(raw: bytes, field: str) -> RsaPubKey:
    base = PUBKEY_OFFSET
    bits = _u32(raw, base)
    if bits not in CA_KEY_SIZES:
        raise ParseError(f"{field}.pubkey.modulus_size", f"{bits} bits, expected 2048 or 4096")
    e_raw = raw[base + 4 : base + 4 + RSA_FIELD_SIZE]
    n_raw = raw[base + 4 + RSA_FIELD_SIZE : base + 4 + 2 * RSA_FIELD_SIZE]
    key = RsaPubKey(bits, _le(e_raw), _le(n_raw))
    if key.modulus.bit_length() != bits:
        raise ParseError(
            f"{field}.pubkey.modulus", f"modulus is {key.modulus.bit_length()} bits, header says {bits}"
        )
    if key.pubexp.bit_length() > bits:
        raise ParseError(f"{field}.pubkey.pubexp", "exponent larger than the modulus size")
    _rsa_check(key.pubexp, key.modulus, f"{field}.pubkey.modulus")
    return key


def _parse_slot(raw: bytes, offset: int, field: str) -> SignatureSlot:
    usage = Usage(_enum(Usage, _u32(raw, offset), f"{field}.usage"))
    algo = Algo(_enum(Algo, _u32(raw, offset + 4), f"{field}.algo"))
    sig = raw[offset + 8 : offset + 8 + SIG_SLOT_SIZE]
    if usage is Usage.INVALID:
        if algo is not Algo.INVALID:
            raise ParseError(f"{field}.algo", f"empty slot (usage 0x1000) with algo {algo:#x}")
        _zero(raw, offset + 8, offset + 8 + SIG_SLOT_SIZE, f"{field}.signature")
        return SignatureSlot(usage, algo, sig)
    if usage is Usage.PDH:
        raise ParseError(f"{field}.usage", "a PDH (key agreement key) cannot sign")
    if algo is Algo.INVALID or algo.is_ecdh:
        raise ParseError(f"{field}.algo", f"{algo.name} is not a signature algorithm")
    if algo.is_ecdsa:
        _zero(raw, offset + 8 + 2 * EC_COORD_SIZE, offset + 8 + SIG_SLOT_SIZE, f"{field}.signature")
    return SignatureSlot(usage, algo, sig)


def parse_sev_cert(data: object, field: str = "sev.cert") -> SevCert:
    """2084 bytes -> ``SevCert``. Reserved bytes must be zero and EC points on their curve."""
    raw = as_bytes(data, field)
    if len(raw) != SEV_CERT_SIZE:
        raise ParseError(f"{field}.size", f"{len(raw)} bytes, expected {SEV_CERT_SIZE}")
    version, api_major, api_minor, reserved, usage_v, algo_v = struct.unpack_from("<IBBHII", raw, 0)
    if version != SEV_CERT_VERSION:
        raise ParseError(f"{field}.version", f"expected {SEV_CERT_VERSION}, got {version}")
    if reserved:
        raise ParseError(f"{field}.reserved", "bytes 0x6-0x7 must be zero")
    usage = Usage(_enum(Usage, usage_v, f"{field}.pubkey_usage", _PUBKEY_USAGES))
    algo = Algo(_enum(Algo, algo_v, f"{field}.pubkey_algo"))
    if algo is Algo.INVALID:
        raise ParseError(f"{field}.pubkey_algo", "invalid algorithm 0")
    if usage is Usage.PDH and not algo.is_ecdh:
        raise ParseError(f"{field}.pubkey_algo", f"a PDH key must be ECDH, got {algo.name}")
    if usage is not Usage.PDH and algo.is_ecdh:
        raise ParseError(f"{field}.pubkey_algo", f"a {usage.name} key must sign, got {algo.name}")
    pubkey: EcPubKey | RsaPubKey = _parse_ec_key(raw, field) if algo.is_ec else _parse_rsa_key(raw, field)
    sig1 = _parse_slot(raw, SIG_SLOT_OFFSETS[0], f"{field}.sig1")
    sig2 = _parse_slot(raw, SIG_SLOT_OFFSETS[1], f"{field}.sig2")
    return SevCert(version, api_major, api_minor, usage, algo, pubkey, sig1, sig2)


def godh_cert(public_key: ec.EllipticCurvePublicKey, api_major: int = 0, api_minor: int = 0) -> bytes:
    """The guest owner's unsigned Diffie-Hellman certificate sent with LAUNCH_START: usage PDH,
    algo ECDH-SHA256, the key's curve (P-384 in practice), both signature slots empty (0x1000)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise TypeError("the GODH key must be an EC public key")
    if not (0 <= api_major <= 0xFF and 0 <= api_minor <= 0xFF):
        raise ValueError("api_major / api_minor must fit in a byte")
    cert = SevCert(
        version=SEV_CERT_VERSION,
        api_major=api_major,
        api_minor=api_minor,
        pubkey_usage=Usage.PDH,
        pubkey_algo=Algo.ECDH_SHA256,
        pubkey=EcPubKey.of(public_key),
        sig1=SignatureSlot.none(),
        sig2=SignatureSlot.none(),
    )
    return cert.encode()
