"""TPM 2.0 credential protection (TCG TPM 2.0 Library, Part 1 "Credential Protection"; Part 3
TPM2_MakeCredential / TPM2_ActivateCredential): how a verifier learns that an attestation key
lives in the same TPM as an endorsement key it trusts.

The verifier picks a secret and wraps it for the EK, bound to the AK's Name. Only the TPM holding
the EK's private key can unwrap it, and it does so only for an object loaded under that Name, so a
node that answers with the secret proves that this exact AK (its TPMT_PUBLIC, attributes
included) is resident in the EK's TPM::

    seed          random, digest size of the EK's nameAlg
    encSecret     RSA-OAEP(EK, seed, hash = nameAlg, label = "IDENTITY\\0")    (TPM2B_ENCRYPTED_SECRET)
    symKey        KDFa(nameAlg, seed, "STORAGE", akName, "", symmetric key bits)
    encIdentity   AES-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))
    hmacKey       KDFa(nameAlg, seed, "INTEGRITY", "", "", digest bits)
    outerHMAC     HMAC_nameAlg(hmacKey, encIdentity || akName)
    credential    TPM2B_ID_OBJECT: size || TPM2B_DIGEST(outerHMAC) || encIdentity

Supported EK: RSA 2048 with nameAlg SHA-256 and AES-128-CFB, the TCG default (template L-1).
Pure: no I/O. Malformed bytes raise ``ParseError`` (``parse.tpm.<field>``), failed checks
``VerificationError`` with a dotted name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 keeps CFB with the legacy modes; TPMs still use it for credentials
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment]

from shared.errors import ParseError, VerificationError
from shared.platforms.binary import as_bytes
from shared.platforms.tpm import abi

PREFIX = abi.PREFIX

TPM_ALG_AES = 0x0006
TPM_ALG_CFB = 0x0043

# Object attributes (TPMA_OBJECT bits).
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
ADMIN_WITH_POLICY = 1 << 7
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN = 1 << 18

# The TCG EK Credential Profile's default RSA EK (template L-1): fixedTPM, fixedParent,
# sensitiveDataOrigin, adminWithPolicy, restricted, decrypt.
EK_ATTRIBUTES = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT
# What an attestation key must be for its quotes to speak for the TPM: created in it and never
# leaving it (fixedTPM, fixedParent, sensitiveDataOrigin), signing only what the TPM produced
# (restricted, sign) and not a decryption key.
AK_REQUIRED_ATTRIBUTES = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN

IDENTITY_LABEL = b"IDENTITY\x00"
STORAGE_LABEL = b"STORAGE"
INTEGRITY_LABEL = b"INTEGRITY"

_HASHES: dict[int, Callable[[], hashes.HashAlgorithm]] = {
    abi.TPM_ALG_SHA1: hashes.SHA1,
    abi.TPM_ALG_SHA256: hashes.SHA256,
    abi.TPM_ALG_SHA384: hashes.SHA384,
    abi.TPM_ALG_SHA512: hashes.SHA512,
}
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_MAX_KDF_BITS = 1 << 20  # far more than any key; bounds the loop


def _hash_name(hash_alg: int) -> str:
    try:
        return abi.BANK_NAMES[hash_alg]
    except KeyError:
        raise ValueError(f"unknown hash algorithm 0x{hash_alg:04x}") from None


def kdfa(hash_alg: int, key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa (Part 1, 11.4.10.2): SP 800-108 counter mode with HMAC_hash_alg. Each block is
    HMAC(key, [i]32 || label || 0x00 || contextU || contextV || [bits]32); the label's terminating
    NUL is added unless it is already there. The result is ceil(bits/8) bytes, with the unused
    high bits of the first byte cleared when ``bits`` is not a multiple of 8."""
    if not 0 < bits <= _MAX_KDF_BITS:
        raise ValueError(f"KDFa of {bits} bits")
    name = _hash_name(hash_alg)
    if not label.endswith(b"\x00"):
        label += b"\x00"
    size = (bits + 7) // 8
    tail = label + context_u + context_v + _U32.pack(bits)
    out = bytearray()
    counter = 0
    while len(out) < size:
        counter += 1
        out += hmac.new(key, _U32.pack(counter) + tail, name).digest()
    result = bytearray(out[:size])
    if bits % 8:
        result[0] &= (1 << (bits % 8)) - 1
    return bytes(result)


# ---------------------------------------------------------------------------------------------
# The EK


def marshal_ek_public(key: rsa.RSAPublicKey) -> bytes:
    """The TPMT_PUBLIC of an RSA 2048 EK made from the default template (L-1): nameAlg SHA-256,
    the PolicySecret(TPM_RH_ENDORSEMENT) auth policy, AES-128-CFB, no scheme."""
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size != 2048:
        raise TypeError("the default EK template is an RSA 2048 key")
    numbers = key.public_numbers()
    return (
        _U16.pack(abi.TPM_ALG_RSA)
        + _U16.pack(abi.TPM_ALG_SHA256)
        + _U32.pack(EK_ATTRIBUTES)
        + abi.tpm2b(default_ek_policy())
        + _U16.pack(TPM_ALG_AES)
        + _U16.pack(128)
        + _U16.pack(TPM_ALG_CFB)
        + _U16.pack(abi.TPM_ALG_NULL)
        + _U16.pack(2048)
        + _U32.pack(0 if numbers.e == abi.DEFAULT_RSA_EXPONENT else numbers.e)
        + abi.tpm2b(numbers.n.to_bytes(256, "big"))
    )


def default_ek_policy() -> bytes:
    """The default EK's authPolicy: TPM2_PolicySecret(TPM_RH_ENDORSEMENT) from a zero digest,
    policyDigest = H(H(0^32 || TPM_CC_PolicySecret || Name(TPM_RH_ENDORSEMENT)) || policyRef="")."""
    tpm_cc_policy_secret = 0x00000151
    tpm_rh_endorsement = 0x4000000B
    step = hashlib.sha256(
        bytes(32) + _U32.pack(tpm_cc_policy_secret) + _U32.pack(tpm_rh_endorsement)
    ).digest()
    return hashlib.sha256(step).digest()


def _ek_symmetric(raw: bytes) -> tuple[int, int, int]:
    """(algorithm, key bits, mode) of a TPMT_PUBLIC's symmetric field; (NULL, 0, NULL) if none."""
    reader = abi._Reader(raw)
    reader.take(8, "ek.header")  # type, nameAlg, objectAttributes
    reader.tpm2b("ek.auth_policy")
    algorithm = reader.u16("ek.symmetric")
    if algorithm == abi.TPM_ALG_NULL:
        return algorithm, 0, abi.TPM_ALG_NULL
    return algorithm, reader.u16("ek.symmetric.key_bits"), reader.u16("ek.symmetric.mode")


def _ek_key(ek_public: rsa.RSAPublicKey | abi.Public) -> tuple[rsa.RSAPublicKey, int, int]:
    """(key, nameAlg, symmetric key bits) of an EK given as a key or a parsed TPMT_PUBLIC."""
    if isinstance(ek_public, rsa.RSAPublicKey):
        key = ek_public
    elif isinstance(ek_public, abi.Public):
        if ek_public.type != abi.TPM_ALG_RSA or not isinstance(ek_public.key, rsa.RSAPublicKey):
            raise VerificationError("tpm.ek_unsupported", "the EK is not an RSA key")
        if ek_public.name_alg != abi.TPM_ALG_SHA256:
            raise VerificationError(
                "tpm.ek_unsupported", f"EK nameAlg 0x{ek_public.name_alg:04x}, not SHA-256"
            )
        if _ek_symmetric(ek_public.raw) != (TPM_ALG_AES, 128, TPM_ALG_CFB):
            raise VerificationError("tpm.ek_unsupported", "the EK's symmetric algorithm is not AES-128-CFB")
        if ek_public.attributes & (RESTRICTED | DECRYPT) != RESTRICTED | DECRYPT:
            raise VerificationError("tpm.ek_unsupported", "the EK is not a restricted decryption key")
        key = ek_public.key
    else:
        raise TypeError(f"an EK is an RSA public key or a parsed TPMT_PUBLIC, not {type(ek_public).__name__}")
    if key.key_size != 2048:
        raise VerificationError("tpm.ek_unsupported", f"RSA {key.key_size} EK (RSA 2048 only)")
    return key, abi.TPM_ALG_SHA256, 128


# ---------------------------------------------------------------------------------------------
# Names and blobs


def check_name(name: bytes, field: str = "credential.ak_name") -> int:
    """A TPM Name of an object: nameAlg (u16) || digest of that algorithm's size. Its nameAlg."""
    raw = as_bytes(name, field)
    if len(raw) < 2:
        raise ParseError(field, f"a Name of {len(raw)} bytes", prefix=PREFIX)
    (alg,) = _U16.unpack_from(raw)
    size = abi.DIGEST_SIZES.get(alg)
    if size is None or len(raw) != 2 + size:
        raise ParseError(
            field, f"not a Name (algorithm 0x{alg:04x}, {len(raw) - 2}-byte digest)", prefix=PREFIX
        )
    return alg


def check_ak_attributes(ak: abi.Public) -> None:
    """An AK worth enrolling: fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign, and
    not decrypt. Credential activation proves the TPM holds an object with exactly this public
    area, so these attributes are what the TPM then enforces on the key."""
    missing = AK_REQUIRED_ATTRIBUTES & ~ak.attributes
    if missing:
        raise VerificationError("tpm.ak_attributes", f"the AK lacks attributes 0x{missing:08x}")
    if ak.attributes & DECRYPT:
        raise VerificationError("tpm.ak_attributes", "the AK is also a decryption key")


def parse_id_object(blob: bytes) -> tuple[bytes, bytes]:
    """A TPM2B_ID_OBJECT -> (integrityHMAC, encIdentity)."""
    raw = as_bytes(blob, "credential_blob")
    reader = abi._Reader(raw)
    inner = reader.tpm2b("credential_blob.size")
    reader.finish("credential_blob")
    body = abi._Reader(inner)
    integrity = body.tpm2b("credential_blob.integrity")
    enc_identity = inner[body.pos :]
    if not integrity:
        raise ParseError("credential_blob.integrity", "an empty integrity HMAC", prefix=PREFIX)
    if len(enc_identity) < 2:
        raise ParseError(
            "credential_blob.identity", f"{len(enc_identity)} bytes of encIdentity", prefix=PREFIX
        )
    return integrity, enc_identity


def parse_encrypted_secret(data: bytes) -> bytes:
    """A TPM2B_ENCRYPTED_SECRET -> the encrypted seed."""
    raw = as_bytes(data, "encrypted_secret")
    reader = abi._Reader(raw)
    secret = reader.tpm2b("encrypted_secret.size")
    reader.finish("encrypted_secret")
    if not secret:
        raise ParseError("encrypted_secret.size", "an empty encrypted secret", prefix=PREFIX)
    return secret


def _cfb(key: bytes, data: bytes, *, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), CFB(bytes(16)))
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def _oaep(name_alg: int) -> padding.OAEP:
    algorithm = _HASHES[name_alg]()
    return padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=IDENTITY_LABEL)


def _outer_hmac(name_alg: int, seed: bytes, enc_identity: bytes, ak_name: bytes) -> bytes:
    digest_bits = 8 * abi.DIGEST_SIZES[name_alg]
    hmac_key = kdfa(name_alg, seed, INTEGRITY_LABEL, b"", b"", digest_bits)
    return hmac.new(hmac_key, enc_identity + ak_name, _hash_name(name_alg)).digest()


# ---------------------------------------------------------------------------------------------
# MakeCredential / ActivateCredential


def make_credential(
    ek_public: rsa.RSAPublicKey | abi.Public,
    ak_name: bytes,
    secret: bytes,
    rng: Callable[[int], bytes] = secrets.token_bytes,
) -> tuple[bytes, bytes]:
    """TPM2_MakeCredential done in software: (credential_blob TPM2B_ID_OBJECT,
    encrypted_secret TPM2B_ENCRYPTED_SECRET) that only the EK's TPM opens, for the object named
    ``ak_name``. ``rng(n)`` gives the n-byte seed."""
    key, name_alg, sym_bits = _ek_key(ek_public)
    check_name(ak_name)
    digest_size = abi.DIGEST_SIZES[name_alg]
    if not 0 < len(secret) <= digest_size:
        raise ValueError(f"a credential is 1 to {digest_size} bytes (TPM2B_DIGEST of the EK's nameAlg)")
    seed = rng(digest_size)
    if len(seed) != digest_size:
        raise ValueError(f"the seed must be {digest_size} bytes")
    encrypted_seed = key.encrypt(seed, _oaep(name_alg))
    sym_key = kdfa(name_alg, seed, STORAGE_LABEL, ak_name, b"", sym_bits)
    enc_identity = _cfb(sym_key, abi.tpm2b(secret), encrypt=True)
    integrity = _outer_hmac(name_alg, seed, enc_identity, ak_name)
    blob = abi.tpm2b(abi.tpm2b(integrity) + enc_identity)
    return blob, abi.tpm2b(encrypted_seed)


def activate_credential(
    ek_private_key: rsa.RSAPrivateKey, ak_name: bytes, credential_blob: bytes, encrypted_secret: bytes
) -> bytes:
    """TPM2_ActivateCredential as a TPM does it, for an RSA 2048 default-template EK: recover the
    seed with the EK, check the outer HMAC over encIdentity || akName (a blob for another object,
    or a changed one, fails with ``tpm.credential_integrity``) and only then decrypt the secret."""
    if not isinstance(ek_private_key, rsa.RSAPrivateKey):
        raise TypeError("the EK is an RSA private key")
    name_alg = abi.TPM_ALG_SHA256
    digest_size = abi.DIGEST_SIZES[name_alg]
    check_name(ak_name)
    integrity, enc_identity = parse_id_object(credential_blob)
    encrypted_seed = parse_encrypted_secret(encrypted_secret)
    try:
        seed = ek_private_key.decrypt(encrypted_seed, _oaep(name_alg))
    except (ValueError, UnsupportedAlgorithm):
        raise VerificationError("tpm.credential_secret", "the seed does not decrypt with this EK") from None
    if not 0 < len(seed) <= digest_size:
        raise VerificationError("tpm.credential_secret", f"a {len(seed)}-byte seed")
    expected = _outer_hmac(name_alg, seed, enc_identity, ak_name)
    if not hmac.compare_digest(expected, integrity):
        raise VerificationError(
            "tpm.credential_integrity", "the credential is not for this object, or was altered"
        )
    sym_key = kdfa(name_alg, seed, STORAGE_LABEL, ak_name, b"", 128)
    plain = _cfb(sym_key, enc_identity, encrypt=False)
    (size,) = _U16.unpack_from(plain)
    if size != len(plain) - 2 or size > digest_size:
        raise VerificationError("tpm.credential_size", f"a {size}-byte credential in {len(plain) - 2} bytes")
    return plain[2:]


# ---------------------------------------------------------------------------------------------
# EK certificates


def load_certificate(der_or_pem: bytes | x509.Certificate, field: str = "ek_cert") -> x509.Certificate:
    """One X.509 certificate, DER or PEM. Extensions are not decoded here: EK certificates carry
    a critical subjectAltName of TCG attributes and an empty subject, which strict path validators
    refuse; only the key and the signature matter for enrolment."""
    if isinstance(der_or_pem, x509.Certificate):
        return der_or_pem
    raw = as_bytes(der_or_pem, field)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except (ValueError, TypeError) as exc:
        raise ParseError(field, f"not an X.509 certificate: {exc}", prefix=PREFIX) from None


def load_certificates(data: bytes, field: str = "ek_ca") -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, or the one certificate of a DER file."""
    raw = as_bytes(data, field)
    if b"-----BEGIN" in raw:
        try:
            certs = x509.load_pem_x509_certificates(raw)
        except ValueError as exc:
            raise ParseError(field, f"not a PEM certificate bundle: {exc}", prefix=PREFIX) from None
        return list(certs)
    return [load_certificate(raw, field)]


def ek_certificate_key(der_or_pem: bytes | x509.Certificate) -> rsa.RSAPublicKey:
    """The RSA public key of an EK certificate."""
    cert = load_certificate(der_or_pem)
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ParseError("ek_cert.key", f"unreadable public key: {exc}", prefix=PREFIX) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise VerificationError(
            "tpm.ek_unsupported", f"the EK certificate holds a {type(key).__name__}, not RSA"
        )
    return key


def verify_ek_certificate(
    cert: bytes | x509.Certificate, ca_certs: Iterable[x509.Certificate], now: float
) -> x509.Certificate:
    """The EK certificate is within its validity and signed by one of ``ca_certs`` (every
    certificate the operator gave is a trust anchor, intermediates included), itself within its
    validity at ``now``. Returns the issuing certificate."""
    ek = load_certificate(cert)
    moment = datetime.fromtimestamp(now, UTC)
    if not ek.not_valid_before_utc <= moment <= ek.not_valid_after_utc:
        raise VerificationError(
            "tpm.ek_cert_expired",
            f"valid {ek.not_valid_before_utc:%Y-%m-%d} to {ek.not_valid_after_utc:%Y-%m-%d}",
        )
    reasons = []
    for ca in ca_certs:
        if ca.subject != ek.issuer:
            continue
        try:
            ek.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            reasons.append(str(exc) or type(exc).__name__)
            continue
        if not ca.not_valid_before_utc <= moment <= ca.not_valid_after_utc:
            raise VerificationError(
                "tpm.ek_cert_expired", f"the issuing CA {ca.subject.rfc4514_string()} is expired"
            )
        return ca
    detail = "; ".join(reasons) or f"no given CA is named {ek.issuer.rfc4514_string()!r}"
    raise VerificationError("tpm.ek_cert_chain", detail)
