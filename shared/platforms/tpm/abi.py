"""TPM 2.0 structures (TCG TPM 2.0 Library, Part 2) -> typed values, and back. Big-endian throughout.

Parsed here:

* ``TPMS_ATTEST`` carrying a ``TPMS_QUOTE_INFO`` (the message a TPM2_Quote signs)::

      magic u32 | type u16 | qualifiedSigner TPM2B_NAME | extraData TPM2B_DATA
      | clockInfo {clock u64, resetCount u32, restartCount u32, safe u8} | firmwareVersion u64
      | TPML_PCR_SELECTION {count u32, count x (hash u16, sizeofSelect u8, bitmap)} | pcrDigest TPM2B

* ``TPMT_SIGNATURE`` (RSASSA / RSAPSS: hash u16 + TPM2B sig; ECDSA and the other ECC schemes:
  hash u16 + TPM2B r + TPM2B s; HMAC: TPMT_HA; NULL: nothing);
* ``TPMT_PUBLIC`` for RSA and ECC keys, and its ``TPM2B_PUBLIC`` wrapper.

Every parser raises only ``ParseError`` (reason ``parse.tpm.<field>``) whatever the input, and
rejects trailing bytes so one buffer has one reading. The ``marshal_*`` functions are the exact
inverses, for tests and simulators.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from shared.errors import ParseError
from shared.platforms.binary import as_bytes

PREFIX = "parse.tpm"

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018

TPM_ALG_RSA = 0x0001
TPM_ALG_SHA1 = 0x0004
TPM_ALG_HMAC = 0x0005
TPM_ALG_KEYEDHASH = 0x0008
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_SHA512 = 0x000D
TPM_ALG_NULL = 0x0010
TPM_ALG_SM3_256 = 0x0012
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAES = 0x0015
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_OAEP = 0x0017
TPM_ALG_ECDSA = 0x0018
TPM_ALG_ECDH = 0x0019
TPM_ALG_ECDAA = 0x001A
TPM_ALG_SM2 = 0x001B
TPM_ALG_ECSCHNORR = 0x001C
TPM_ALG_ECC = 0x0023
TPM_ALG_SYMCIPHER = 0x0025

TPM_ECC_NIST_P256 = 0x0003
TPM_ECC_NIST_P384 = 0x0004
TPM_ECC_NIST_P521 = 0x0005

BANK_NAMES: dict[int, str] = {
    TPM_ALG_SHA1: "sha1",
    TPM_ALG_SHA256: "sha256",
    TPM_ALG_SHA384: "sha384",
    TPM_ALG_SHA512: "sha512",
}
DIGEST_SIZES: dict[int, int] = {
    TPM_ALG_SHA1: 20,
    TPM_ALG_SHA256: 32,
    TPM_ALG_SHA384: 48,
    TPM_ALG_SHA512: 64,
}

# Object attributes of a typical attestation key: fixedTPM, fixedParent, sensitiveDataOrigin,
# userWithAuth, restricted, sign. Only used as the default when marshalling.
AK_ATTRIBUTES = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18)

# TPML_PCR_SELECTION holds at most one selection per implemented hash (HASH_COUNT); anything
# larger is garbage, and capping it keeps a hostile count from driving a long loop.
MAX_PCR_SELECTIONS = 16
DEFAULT_SIZE_OF_SELECT = 3  # 24 PCRs, what every PC-client TPM reports
RSA_KEY_BITS = (1024, 2048, 3072, 4096)
DEFAULT_RSA_EXPONENT = 65537

# Signature schemes whose TPMU_SIGNATURE arm is TPMS_SIGNATURE_ECC (hash, r, s).
ECC_SIGNATURE_SCHEMES = frozenset({TPM_ALG_ECDSA, TPM_ALG_ECDAA, TPM_ALG_SM2, TPM_ALG_ECSCHNORR})
RSA_SIGNATURE_SCHEMES = frozenset({TPM_ALG_RSASSA, TPM_ALG_RSAPSS})

_CURVES: dict[int, type[ec.EllipticCurve]] = {
    TPM_ECC_NIST_P256: ec.SECP256R1,
    TPM_ECC_NIST_P384: ec.SECP384R1,
    TPM_ECC_NIST_P521: ec.SECP521R1,
}
_CURVE_IDS: dict[str, int] = {cls.name: curve_id for curve_id, cls in _CURVES.items()}

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_ATTEST_HEAD = struct.Struct(">IH")
_CLOCK_INFO = struct.Struct(">QIIBQ")  # clockInfo followed by firmwareVersion


@dataclass(frozen=True)
class PcrSelection:
    """One bank of a TPMS_PCR_SELECTION: the hash algorithm and the selected PCR indices."""

    hash_alg: int
    pcrs: tuple[int, ...]
    # Bitmap length on the wire; kept so a parsed selection marshals back byte for byte, but
    # not part of equality (two selections of the same PCRs mean the same thing).
    size_of_select: int = field(default=DEFAULT_SIZE_OF_SELECT, compare=False)


@dataclass(frozen=True)
class Attest:
    """A parsed TPMS_ATTEST. ``raw`` is the exact signed message. For types other than a quote
    the attested union is not decoded: ``pcr_selections`` is empty and ``pcr_digest`` is empty."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcr_selections: tuple[PcrSelection, ...]
    pcr_digest: bytes
    raw: bytes


@dataclass(frozen=True)
class Signature:
    """A TPMT_SIGNATURE. ``signature`` is what ``cryptography`` verifies: the raw signature for RSA,
    the DER ``Ecdsa-Sig-Value`` for the ECC schemes (whose wire ``r`` and ``s`` are kept as well,
    so marshalling reproduces their exact padding), the digest for HMAC, empty for NULL."""

    sig_alg: int
    hash_alg: int
    signature: bytes
    r: bytes = b""
    s: bytes = b""

    def der(self) -> bytes:
        return self.signature


@dataclass(frozen=True)
class Public:
    """A parsed TPMT_PUBLIC of an RSA or ECC key. ``raw`` is the marshalled TPMT_PUBLIC (without
    the TPM2B size), the input of the Name."""

    type: int
    name_alg: int
    attributes: int
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    raw: bytes
    auth_policy: bytes = b""
    scheme: int = TPM_ALG_NULL
    scheme_hash: int = TPM_ALG_NULL

    def name(self) -> bytes:
        """The TPM Name: nameAlg (u16) || H_nameAlg(TPMT_PUBLIC)."""
        return _U16.pack(self.name_alg) + hashlib.new(BANK_NAMES[self.name_alg], self.raw).digest()


class _Reader:
    """Sequential big-endian reads over a buffer; every short read is a ``ParseError``."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int, name: str) -> bytes:
        end = self.pos + size
        if end > len(self.data):
            raise ParseError(
                name,
                f"needs {size} bytes at offset {self.pos}, {len(self.data) - self.pos} left",
                prefix=PREFIX,
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, layout: struct.Struct, name: str) -> tuple[int, ...]:
        return layout.unpack(self.take(layout.size, name))

    def u8(self, name: str) -> int:
        return self.unpack(_U8, name)[0]

    def u16(self, name: str) -> int:
        return self.unpack(_U16, name)[0]

    def u32(self, name: str) -> int:
        return self.unpack(_U32, name)[0]

    def tpm2b(self, name: str) -> bytes:
        return self.take(self.u16(name), name)

    def finish(self, name: str) -> None:
        if self.pos != len(self.data):
            raise ParseError(
                name, f"{len(self.data) - self.pos} trailing bytes after the structure", prefix=PREFIX
            )


def _hash_alg(value: int, name: str) -> int:
    if value not in DIGEST_SIZES:
        raise ParseError(name, f"unknown hash algorithm 0x{value:04x}", prefix=PREFIX)
    return value


# ---------------------------------------------------------------------------------------------
# TPMS_ATTEST


def parse_attest(data: bytes) -> Attest:
    """Parse a TPMS_ATTEST. Any magic and type are accepted so the verifier can name that check."""
    raw = as_bytes(data, "attest")
    reader = _Reader(raw)
    magic, attest_type = reader.unpack(_ATTEST_HEAD, "attest.magic")
    qualified_signer = reader.tpm2b("attest.qualified_signer")
    extra_data = reader.tpm2b("attest.extra_data")
    clock, reset_count, restart_count, safe, firmware_version = reader.unpack(
        _CLOCK_INFO, "attest.clock_info"
    )
    if safe > 1:
        raise ParseError("attest.safe", f"TPMI_YES_NO must be 0 or 1, got {safe}", prefix=PREFIX)
    selections: tuple[PcrSelection, ...] = ()
    pcr_digest = b""
    if attest_type == TPM_ST_ATTEST_QUOTE:
        selections = _read_pcr_selections(reader, "attest.pcr_select")
        pcr_digest = reader.tpm2b("attest.pcr_digest")
        reader.finish("attest")
    return Attest(
        magic=magic,
        type=attest_type,
        qualified_signer=qualified_signer,
        extra_data=extra_data,
        clock=clock,
        reset_count=reset_count,
        restart_count=restart_count,
        safe=bool(safe),
        firmware_version=firmware_version,
        pcr_selections=selections,
        pcr_digest=pcr_digest,
        raw=raw,
    )


def _read_pcr_selections(reader: _Reader, name: str) -> tuple[PcrSelection, ...]:
    count = reader.u32(f"{name}.count")
    if count > MAX_PCR_SELECTIONS:
        raise ParseError(f"{name}.count", f"{count} selections, at most {MAX_PCR_SELECTIONS}", prefix=PREFIX)
    selections = []
    for _ in range(count):
        hash_alg = reader.u16(f"{name}.hash")
        size_of_select = reader.u8(f"{name}.size")
        bitmap = reader.take(size_of_select, f"{name}.bitmap")
        pcrs = tuple(8 * i + bit for i, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1)
        selections.append(PcrSelection(hash_alg, pcrs, size_of_select))
    return tuple(selections)


def marshal_pcr_selections(selections: tuple[PcrSelection, ...] | list[PcrSelection]) -> bytes:
    out = [_U32.pack(len(selections))]
    for selection in selections:
        needed = max(selection.pcrs, default=-1) // 8 + 1
        size = max(selection.size_of_select, needed)
        bitmap = bytearray(size)
        for index in selection.pcrs:
            bitmap[index // 8] |= 1 << (index % 8)
        out.append(_U16.pack(selection.hash_alg) + _U8.pack(size) + bytes(bitmap))
    return b"".join(out)


def tpm2b(payload: bytes) -> bytes:
    """``payload`` with its u16 size prefix."""
    if len(payload) > 0xFFFF:
        raise ValueError("TPM2B payload longer than 65535 bytes")
    return _U16.pack(len(payload)) + payload


def marshal_attest(
    *,
    extra_data: bytes = b"",
    pcr_selections: tuple[PcrSelection, ...] | list[PcrSelection] = (),
    pcr_digest: bytes = b"",
    magic: int = TPM_GENERATED_VALUE,
    type: int = TPM_ST_ATTEST_QUOTE,
    qualified_signer: bytes = b"",
    clock: int = 0,
    reset_count: int = 0,
    restart_count: int = 0,
    safe: bool = True,
    firmware_version: int = 0,
    attested: bytes | None = None,
) -> bytes:
    """A TPMS_ATTEST. ``attested`` replaces the TPMS_QUOTE_INFO with arbitrary bytes (to build
    attestations of other types); otherwise the quote info is built from the selections and digest."""
    body = attested
    if body is None:
        body = marshal_pcr_selections(pcr_selections) + tpm2b(pcr_digest)
    return (
        _ATTEST_HEAD.pack(magic, type)
        + tpm2b(qualified_signer)
        + tpm2b(extra_data)
        + _CLOCK_INFO.pack(clock, reset_count, restart_count, int(safe), firmware_version)
        + body
    )


# ---------------------------------------------------------------------------------------------
# TPMT_SIGNATURE


def parse_signature(data: bytes) -> Signature:
    """Parse a TPMT_SIGNATURE (no size prefix)."""
    raw = as_bytes(data, "signature")
    reader = _Reader(raw)
    sig_alg = reader.u16("signature.sig_alg")
    if sig_alg == TPM_ALG_NULL:
        signature = Signature(sig_alg, TPM_ALG_NULL, b"")
    elif sig_alg in RSA_SIGNATURE_SCHEMES:
        # Any hash id is kept: refusing an algorithm is the verifier's named check, not a parse error.
        hash_alg = reader.u16("signature.hash_alg")
        signature = Signature(sig_alg, hash_alg, reader.tpm2b("signature.sig"))
    elif sig_alg in ECC_SIGNATURE_SCHEMES:
        hash_alg = reader.u16("signature.hash_alg")
        r = reader.tpm2b("signature.r")
        s = reader.tpm2b("signature.s")
        der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
        signature = Signature(sig_alg, hash_alg, der, r, s)
    elif sig_alg == TPM_ALG_HMAC:
        hash_alg = _hash_alg(reader.u16("signature.hash_alg"), "signature.hash_alg")
        signature = Signature(sig_alg, hash_alg, reader.take(DIGEST_SIZES[hash_alg], "signature.digest"))
    else:
        raise ParseError("signature.sig_alg", f"unknown signature scheme 0x{sig_alg:04x}", prefix=PREFIX)
    reader.finish("signature")
    return signature


def marshal_signature(signature: Signature) -> bytes:
    """The TPMT_SIGNATURE of ``signature``. ECC signatures use the kept ``r``/``s`` when present,
    else the DER value's integers at their minimal length."""
    head = _U16.pack(signature.sig_alg)
    if signature.sig_alg == TPM_ALG_NULL:
        return head
    head += _U16.pack(signature.hash_alg)
    if signature.sig_alg in ECC_SIGNATURE_SCHEMES:
        r, s = signature.r, signature.s
        if not r and not s:
            r_int, s_int = decode_dss_signature(signature.signature)
            r = r_int.to_bytes(max(1, (r_int.bit_length() + 7) // 8), "big")
            s = s_int.to_bytes(max(1, (s_int.bit_length() + 7) // 8), "big")
        return head + tpm2b(r) + tpm2b(s)
    if signature.sig_alg == TPM_ALG_HMAC:
        return head + signature.signature
    return head + tpm2b(signature.signature)


def ecdsa_signature(
    der: bytes, hash_alg: int, coordinate_size: int, sig_alg: int = TPM_ALG_ECDSA
) -> Signature:
    """A TPM ECC signature from a DER signature, with r and s padded to the curve size as TPMs do."""
    r_int, s_int = decode_dss_signature(der)
    r = r_int.to_bytes(coordinate_size, "big")
    s = s_int.to_bytes(coordinate_size, "big")
    return Signature(sig_alg, hash_alg, encode_dss_signature(r_int, s_int), r, s)


# ---------------------------------------------------------------------------------------------
# TPMT_PUBLIC


def parse_public(data: bytes) -> Public:
    """Parse a TPMT_PUBLIC of an RSA or ECC key (no size prefix)."""
    raw = as_bytes(data, "public")
    reader = _Reader(raw)
    key_type = reader.u16("public.type")
    if key_type not in (TPM_ALG_RSA, TPM_ALG_ECC):
        raise ParseError(
            "public.type", f"unsupported key type 0x{key_type:04x} (RSA or ECC only)", prefix=PREFIX
        )
    name_alg = _hash_alg(reader.u16("public.name_alg"), "public.name_alg")
    attributes = reader.u32("public.attributes")
    auth_policy = reader.tpm2b("public.auth_policy")
    _read_symmetric(reader)
    scheme, scheme_hash = _read_scheme(reader)
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    if key_type == TPM_ALG_RSA:
        key = _read_rsa_key(reader)
    else:
        key = _read_ecc_key(reader)
    reader.finish("public")
    return Public(key_type, name_alg, attributes, key, raw, auth_policy, scheme, scheme_hash)


def parse_public_2b(data: bytes) -> Public:
    """Parse a TPM2B_PUBLIC: a u16 size then exactly that many bytes of TPMT_PUBLIC."""
    raw = as_bytes(data, "public")
    reader = _Reader(raw)
    inner = reader.tpm2b("public.size")
    reader.finish("public.size")
    return parse_public(inner)


def _read_symmetric(reader: _Reader) -> None:
    # Signing keys carry TPM_ALG_NULL here; storage parents name a cipher, key size and mode.
    if reader.u16("public.symmetric") != TPM_ALG_NULL:
        reader.take(4, "public.symmetric")


def _read_scheme(reader: _Reader) -> tuple[int, int]:
    scheme = reader.u16("public.scheme")
    if scheme in (TPM_ALG_NULL, TPM_ALG_RSAES):
        return scheme, TPM_ALG_NULL  # no details in the union arm
    scheme_hash = reader.u16("public.scheme_hash")
    if scheme == TPM_ALG_ECDAA:
        reader.u16("public.scheme_count")
    return scheme, scheme_hash


def _read_rsa_key(reader: _Reader) -> rsa.RSAPublicKey:
    key_bits = reader.u16("public.key_bits")
    exponent = reader.u32("public.exponent") or DEFAULT_RSA_EXPONENT
    modulus = reader.tpm2b("public.unique")
    if key_bits not in RSA_KEY_BITS:
        raise ParseError("public.key_bits", f"unsupported RSA size {key_bits}", prefix=PREFIX)
    if len(modulus) != key_bits // 8:
        raise ParseError(
            "public.unique", f"{len(modulus)}-byte modulus for a {key_bits}-bit key", prefix=PREFIX
        )
    try:
        return rsa.RSAPublicNumbers(exponent, int.from_bytes(modulus, "big")).public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ParseError("public.unique", f"not an RSA public key: {exc}", prefix=PREFIX) from None


def _read_ecc_key(reader: _Reader) -> ec.EllipticCurvePublicKey:
    curve_id = reader.u16("public.curve_id")
    if reader.u16("public.kdf") != TPM_ALG_NULL:
        reader.u16("public.kdf_hash")
    x = reader.tpm2b("public.unique.x")
    y = reader.tpm2b("public.unique.y")
    curve_cls = _CURVES.get(curve_id)
    if curve_cls is None:
        raise ParseError("public.curve_id", f"unsupported curve 0x{curve_id:04x}", prefix=PREFIX)
    curve = curve_cls()
    size = (curve.key_size + 7) // 8
    if not 0 < len(x) <= size or not 0 < len(y) <= size:
        raise ParseError(
            "public.unique", f"coordinates of {len(x)}/{len(y)} bytes for {curve.name}", prefix=PREFIX
        )
    point = b"\x04" + x.rjust(size, b"\x00") + y.rjust(size, b"\x00")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(curve, point)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ParseError("public.unique", f"not a point on {curve.name}: {exc}", prefix=PREFIX) from None


def marshal_public(
    key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    name_alg: int = TPM_ALG_SHA256,
    attributes: int = AK_ATTRIBUTES,
    auth_policy: bytes = b"",
    scheme: int = TPM_ALG_NULL,
    scheme_hash: int = TPM_ALG_NULL,
) -> bytes:
    """The TPMT_PUBLIC of a software key, shaped like a TPM signing key (no symmetric, no KDF).
    ``scheme`` must be NULL or a scheme whose details are a single hash."""
    if isinstance(key, rsa.RSAPublicKey):
        key_type = TPM_ALG_RSA
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type = TPM_ALG_ECC
    else:
        raise TypeError(f"unsupported key {type(key).__name__}")
    out = _U16.pack(key_type) + _U16.pack(name_alg) + _U32.pack(attributes) + tpm2b(auth_policy)
    out += _U16.pack(TPM_ALG_NULL) + _U16.pack(scheme)
    if scheme not in (TPM_ALG_NULL, TPM_ALG_RSAES):
        out += _U16.pack(scheme_hash)
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        exponent = 0 if numbers.e == DEFAULT_RSA_EXPONENT else numbers.e
        return (
            out
            + _U16.pack(key.key_size)
            + _U32.pack(exponent)
            + tpm2b(numbers.n.to_bytes(key.key_size // 8, "big"))
        )
    size = (key.curve.key_size + 7) // 8
    point = key.public_numbers()
    out += _U16.pack(_CURVE_IDS[key.curve.name]) + _U16.pack(TPM_ALG_NULL)
    return out + tpm2b(point.x.to_bytes(size, "big")) + tpm2b(point.y.to_bytes(size, "big"))
