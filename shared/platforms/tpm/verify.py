"""TPM2_Quote verification: an attestation key, a signed TPMS_ATTEST and the PCR values it covers.

``verify_quote`` checks, in order: the structures parse; the message was produced by a TPM
(``magic``); it is a quote; the signing scheme and hash are ones we accept; the AK's signature;
the PCR digest recomputed from the supplied PCR values; the nonce in ``extraData``. The first
failure raises ``VerificationError`` with a stable check name (``tpm.*``), malformed bytes raise
``ParseError`` (``parse.tpm.*``). How the AK is trusted (certificate, HCL report, pinning) is the
caller's business: this module only proves that the given key signed these values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from shared.errors import ParseError, VerificationError
from shared.platforms.tpm.abi import (
    BANK_NAMES,
    DIGEST_SIZES,
    PREFIX,
    TPM_ALG_ECDSA,
    TPM_ALG_RSAPSS,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    TPM_ALG_SHA384,
    TPM_ALG_SHA512,
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    PcrSelection,
    Public,
    Signature,
    parse_attest,
    parse_public,
    parse_signature,
)
from shared.platforms.tpm.validate import ClockState

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# SHA-1 is refused for signatures: quotes are only as strong as the hash the AK signs, and SHA-1
# collisions are practical. (A SHA-1 PCR *bank* may still be selected; its values are then
# covered by the strong signing hash.)
SIGNING_HASHES: dict[int, hashes.HashAlgorithm] = {
    TPM_ALG_SHA256: hashes.SHA256(),
    TPM_ALG_SHA384: hashes.SHA384(),
    TPM_ALG_SHA512: hashes.SHA512(),
}
_HASHLIB: dict[int, Callable[[bytes], Any]] = {
    TPM_ALG_SHA256: hashlib.sha256,
    TPM_ALG_SHA384: hashlib.sha384,
    TPM_ALG_SHA512: hashlib.sha512,
}
_PKCS1 = padding.PKCS1v15()
_JWK_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}
_SCHEME_NAMES = {TPM_ALG_RSASSA: "RSASSA", TPM_ALG_RSAPSS: "RSAPSS", TPM_ALG_ECDSA: "ECDSA"}


@dataclass(frozen=True)
class QuoteClaims:
    """What a verified quote proves. ``nonce`` is the extraData hex, ``signer`` the
    qualifiedSigner hex, ``pcrs`` the quoted PCR values as ``{bank: {index: hex}}``."""

    nonce: str
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    pcrs: dict[str, dict[int, str]]
    signer: str

    def as_claims(self) -> dict[str, str | int]:
        """Flat dotted claims, the names reference values are written against."""
        claims: dict[str, str | int] = {
            "tpm.nonce": self.nonce,
            "tpm.clock": self.clock,
            "tpm.reset_count": self.reset_count,
            "tpm.restart_count": self.restart_count,
            # A string: the 64-bit value exceeds what JSON consumers hold exactly (2**53).
            "tpm.firmware_version": str(self.firmware_version),
        }
        for bank, values in self.pcrs.items():
            for index, value in values.items():
                claims[f"tpm.pcr.{bank}.{index}"] = value
        return claims

    def clock_state(self) -> ClockState:
        return ClockState(self.clock, self.reset_count, self.restart_count)


# ---------------------------------------------------------------------------------------------
# Attestation keys


def load_ak(material: object) -> PublicKey:
    """The AK as a ``cryptography`` public key, from a key object, a ``Public``, a JWK dict, or
    bytes (PEM or DER SubjectPublicKeyInfo, TPM2B_PUBLIC, TPMT_PUBLIC); a ``str`` is PEM text or
    the base64 / base64url of one of the byte forms."""
    if isinstance(material, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return material
    if isinstance(material, Public):
        return material.key
    if isinstance(material, Mapping):
        return _load_jwk(material)
    if isinstance(material, str):
        text = material.strip()
        if text.startswith("-----BEGIN"):
            return _load_bytes(text.encode())
        return _load_bytes(_b64decode(text, "ak"))
    if isinstance(material, bytes | bytearray | memoryview):
        return _load_bytes(bytes(material))
    raise ParseError("ak", f"unsupported AK material {type(material).__name__}", prefix=PREFIX)


def _load_bytes(data: bytes) -> PublicKey:
    if data.startswith(b"-----BEGIN"):
        return _checked(_spki(data, serialization.load_pem_public_key))
    if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        return parse_public(data[2:]).key  # TPM2B_PUBLIC
    if data[:1] == b"\x30":
        # A TPMT_PUBLIC starts with its key type (0x0001 / 0x0023), never with a DER SEQUENCE.
        return _checked(_spki(data, serialization.load_der_public_key))
    return parse_public(data).key


def _spki(data: bytes, loader: Callable[[bytes], object]) -> object:
    try:
        return loader(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ParseError("ak", f"not a SubjectPublicKeyInfo: {exc}", prefix=PREFIX) from None


def _checked(key: object) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        return key
    raise ParseError("ak", f"AK must be RSA or EC, got {type(key).__name__}", prefix=PREFIX)


def _b64decode(text: str, name: str) -> bytes:
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ParseError(name, f"not base64: {exc}", prefix=PREFIX) from None


def _jwk_int(jwk: Mapping[Any, Any], member: str) -> int:
    value = jwk.get(member)
    if not isinstance(value, str) or not value:
        raise ParseError(f"ak.jwk.{member}", "missing or not a string", prefix=PREFIX)
    return int.from_bytes(_b64decode(value, f"ak.jwk.{member}"), "big")


def _load_jwk(jwk: Mapping[Any, Any]) -> PublicKey:
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            return rsa.RSAPublicNumbers(_jwk_int(jwk, "e"), _jwk_int(jwk, "n")).public_key()
        if kty == "EC":
            curve = _JWK_CURVES.get(jwk.get("crv"))  # type: ignore[arg-type]
            if curve is None:
                raise ParseError("ak.jwk.crv", f"unsupported curve {jwk.get('crv')!r}", prefix=PREFIX)
            numbers = ec.EllipticCurvePublicNumbers(_jwk_int(jwk, "x"), _jwk_int(jwk, "y"), curve)
            return numbers.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ParseError("ak.jwk", f"not a valid public key: {exc}", prefix=PREFIX) from None
    raise ParseError("ak.jwk.kty", f"unsupported key type {kty!r}", prefix=PREFIX)


# ---------------------------------------------------------------------------------------------
# PCRs


def pcr_digest(
    selections: Sequence[PcrSelection], pcrs: Mapping[str, Mapping[int, bytes]], hash_alg: int
) -> bytes:
    """H_hash_alg of the selected PCR values, bank by bank in selection order, ascending index
    within a bank: the pcrDigest a TPM puts in TPMS_QUOTE_INFO."""
    digest_of = _HASHLIB.get(hash_alg)
    if digest_of is None:
        raise VerificationError("tpm.unsupported_algorithm", f"PCR digest hash 0x{hash_alg:04x}")
    return digest_of(b"".join(_selected_values(selections, pcrs))).digest()


def _selected_values(
    selections: Sequence[PcrSelection], pcrs: Mapping[str, Mapping[int, bytes]]
) -> list[bytes]:
    values = []
    for selection in selections:
        bank = BANK_NAMES.get(selection.hash_alg)
        if bank is None:
            raise VerificationError("tpm.unsupported_algorithm", f"PCR bank 0x{selection.hash_alg:04x}")
        bank_values = pcrs.get(bank, {})
        size = DIGEST_SIZES[selection.hash_alg]
        for index in selection.pcrs:
            value = bank_values.get(index)
            if value is None:
                raise VerificationError(
                    "tpm.pcr_missing", f"{bank} PCR {index} is quoted but was not supplied"
                )
            if len(value) != size:
                raise VerificationError(
                    "tpm.pcr_malformed", f"{bank} PCR {index} has {len(value)} bytes, not {size}"
                )
            values.append(value)
    return values


# ---------------------------------------------------------------------------------------------
# Quotes


@cache
def _pss(hash_alg: int) -> padding.PSS:
    # TPMs use either the digest length or the maximum as salt length; AUTO accepts any valid one.
    return padding.PSS(mgf=padding.MGF1(SIGNING_HASHES[hash_alg]), salt_length=padding.PSS.AUTO)


def _check_signature(key: PublicKey, signature: Signature, message: bytes) -> None:
    algorithm = SIGNING_HASHES[signature.hash_alg]
    scheme = _SCHEME_NAMES[signature.sig_alg]
    try:
        if signature.sig_alg == TPM_ALG_ECDSA:
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise VerificationError(
                    "tpm.signature_invalid", f"{scheme} signature but the AK is not an EC key"
                )
            key.verify(signature.signature, message, ec.ECDSA(algorithm))
            return
        if not isinstance(key, rsa.RSAPublicKey):
            raise VerificationError(
                "tpm.signature_invalid", f"{scheme} signature but the AK is not an RSA key"
            )
        pad = _PKCS1 if signature.sig_alg == TPM_ALG_RSASSA else _pss(signature.hash_alg)
        key.verify(signature.signature, message, pad, algorithm)
    except InvalidSignature:
        raise VerificationError(
            "tpm.signature_invalid", f"{scheme} signature does not verify under the AK"
        ) from None


def verify_quote(
    message: bytes,
    signature: bytes | Signature,
    ak: object,
    pcrs: Mapping[str, Mapping[int, bytes]],
    nonce: bytes | None,
) -> QuoteClaims:
    """Verify a TPM2_Quote: ``message`` is the TPMS_ATTEST, ``signature`` the marshalled
    TPMT_SIGNATURE (or an already built ``Signature``, e.g. a bare RSASSA signature some vTPM
    formats ship), ``ak`` anything ``load_ak`` takes (pass a loaded key on hot paths), ``pcrs``
    the PCR values by bank name and index, ``nonce`` the expected extraData (``None``: not checked)."""
    attest = parse_attest(message)
    sig = signature if isinstance(signature, Signature) else parse_signature(signature)
    key = load_ak(ak)
    if attest.magic != TPM_GENERATED_VALUE:
        raise VerificationError(
            "tpm.not_tpm_generated", f"magic 0x{attest.magic:08x}, not TPM_GENERATED_VALUE"
        )
    if attest.type != TPM_ST_ATTEST_QUOTE:
        raise VerificationError(
            "tpm.not_a_quote", f"attestation type 0x{attest.type:04x}, not TPM_ST_ATTEST_QUOTE"
        )
    # The algorithm is judged before the signature so a SHA-1 signature is never even verified.
    if sig.sig_alg not in _SCHEME_NAMES:
        raise VerificationError("tpm.unsupported_algorithm", f"signature scheme 0x{sig.sig_alg:04x}")
    if sig.hash_alg not in SIGNING_HASHES:
        raise VerificationError(
            "tpm.unsupported_algorithm", f"signature hash 0x{sig.hash_alg:04x} (SHA-256/384/512 only)"
        )
    _check_signature(key, sig, attest.raw)
    expected = pcr_digest(attest.pcr_selections, pcrs, sig.hash_alg)
    if not hmac.compare_digest(expected, attest.pcr_digest):
        raise VerificationError(
            "tpm.pcr_digest_mismatch", "the supplied PCR values do not hash to the quoted pcrDigest"
        )
    if nonce is not None and not hmac.compare_digest(bytes(nonce), attest.extra_data):
        raise VerificationError(
            "tpm.nonce_mismatch", f"extraData {attest.extra_data.hex()} is not the expected nonce"
        )
    return QuoteClaims(
        nonce=attest.extra_data.hex(),
        clock=attest.clock,
        reset_count=attest.reset_count,
        restart_count=attest.restart_count,
        safe=attest.safe,
        firmware_version=attest.firmware_version,
        pcrs=_quoted_pcrs(attest.pcr_selections, pcrs),
        signer=attest.qualified_signer.hex(),
    )


def _quoted_pcrs(
    selections: Sequence[PcrSelection], pcrs: Mapping[str, Mapping[int, bytes]]
) -> dict[str, dict[int, str]]:
    quoted: dict[str, dict[int, str]] = {}
    for selection in selections:
        bank = BANK_NAMES[selection.hash_alg]
        values = pcrs[bank]
        quoted.setdefault(bank, {}).update({index: values[index].hex() for index in selection.pcrs})
    return quoted


def nest_pcr_claims(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Flat claims as the verify commands print them: ``tpm.pcr.<bank>.<index>`` gathered into
    ``pcrs`` = {bank: {index: hex}} (indices ascending), the quote's extraData as ``nonce``."""
    claims: dict[str, Any] = {}
    pcrs: dict[str, dict[str, str]] = {}
    for name, value in flat.items():
        if name.startswith("tpm.pcr."):
            _, _, bank, index = name.split(".")
            pcrs.setdefault(bank, {})[index] = value
        else:
            claims[name] = value
    claims["pcrs"] = {bank: dict(sorted(values.items(), key=lambda kv: int(kv[0]))) for bank, values in pcrs.items()}
    claims["nonce"] = flat.get("tpm.nonce", "")
    return claims

