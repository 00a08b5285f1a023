"""Pure verification of a legacy SEV certificate chain, roots passed in:

    ARK (self-signed, pinned) -> ASK (pinned) -> CEK -> PEK <- OCA (self-signed)
                                                        |
                                                       PDH

* CA certificates (ARK, ASK): RSASSA-PSS over [0, end of MODULUS), SHA-256 for 2048-bit keys (Naples),
  SHA-384 for 4096-bit keys, MGF1 with the same hash, salt = hash length, little-endian integers.
  The ASK's CERTIFYING_ID must be the ARK's KEY_ID.
* CEK: SIG slot with usage ASK, RSA-PSS as above with the ASK key; the slot's algo must agree.
* OCA self-signed, PEK signed by OCA *and* CEK (each slot found by its usage), PDH signed by PEK:
  ECDSA, R [72] LE || S [72] LE, hash per the slot's algo (real certificates: P-384 keys with
  ECDSA-SHA256), signed data = bytes [0, 0x414).

Every failure is a ``VerificationError`` whose ``check`` names the certificate and the check
(``sev.pek.signed_by_cek``); malformed bytes are ``ParseError`` named ``parse.sev.<role>.<field>``.
The generation comes from the ARK's KEY_ID, and the ARK and ASK presented must equal the pinned ones
for that generation byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from functools import cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from shared.errors import VerificationError
from shared.platforms.sev.abi import (
    AmdCaCert,
    EcPubKey,
    SevCert,
    SignatureSlot,
    Usage,
    ec_signature_from_slot,
    parse_ca_cert,
    parse_sev_cert,
)

__all__ = [
    "ALL_CHECKS",
    "Generation",
    "SevRootPair",
    "SevRoots",
    "VerifiedChain",
    "check_usage",
    "describe",
    "load_roots",
    "pinned_roots",
    "verify_ark",
    "verify_ask",
    "verify_cek",
    "verify_chain",
    "verify_oca",
    "verify_pdh",
    "verify_pek",
]

# Check names, in the order ``verify_chain`` runs them.
ARK_USAGE = "sev.ark.usage"
ASK_USAGE = "sev.ask.usage"
CEK_USAGE = "sev.cek.usage"
OCA_USAGE = "sev.oca.usage"
PEK_USAGE = "sev.pek.usage"
PDH_USAGE = "sev.pdh.usage"
GENERATION = "sev.ark.generation"  # no pinned roots with the ARK's KEY_ID
ARK_PINNED = "sev.ark.pinned"
ASK_PINNED = "sev.ask.pinned"
ARK_SELF_SIGNED = "sev.ark.self_signed"
ASK_CERTIFYING_ID = "sev.ask.certifying_id"
ASK_SIGNED_BY_ARK = "sev.ask.signed_by_ark"
CEK_SIGNED_BY_ASK = "sev.cek.signed_by_ask"
OCA_SELF_SIGNED = "sev.oca.self_signed"
PEK_SIGNED_BY_OCA = "sev.pek.signed_by_oca"
PEK_SIGNED_BY_CEK = "sev.pek.signed_by_cek"
PDH_SIGNED_BY_PEK = "sev.pdh.signed_by_pek"

ALL_CHECKS = (
    ARK_USAGE,
    ASK_USAGE,
    CEK_USAGE,
    OCA_USAGE,
    PEK_USAGE,
    PDH_USAGE,
    GENERATION,
    ARK_PINNED,
    ASK_PINNED,
    ARK_SELF_SIGNED,
    ASK_CERTIFYING_ID,
    ASK_SIGNED_BY_ARK,
    CEK_SIGNED_BY_ASK,
    OCA_SELF_SIGNED,
    PEK_SIGNED_BY_OCA,
    PEK_SIGNED_BY_CEK,
    PDH_SIGNED_BY_PEK,
)

_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_P384_ORDER = (
    0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973
)


class Generation(str, Enum):
    """Product families with legacy-format ARK/ASK shipped in ``roots/``.

    Genoa and Turin also have legacy-format ARK/ASK (virtee/sev ``src/certs/sev/builtin/{genoa,turin}``),
    but those files are not among the vectors this package was built from, so they are not pinned here.
    """

    NAPLES = "Naples"
    ROME = "Rome"
    MILAN = "Milan"


@dataclass(frozen=True, slots=True)
class SevRootPair:
    generation: Generation
    ark: AmdCaCert
    ask: AmdCaCert


@dataclass(frozen=True, slots=True)
class SevRoots:
    """The trusted ARK/ASK pairs; ``verify_chain`` picks the pair whose ARK KEY_ID the chain names."""

    pairs: tuple[SevRootPair, ...]

    def by_ark_key_id(self, key_id: bytes) -> SevRootPair | None:
        return next((pair for pair in self.pairs if pair.ark.key_id == key_id), None)

    def for_generation(self, generation: Generation) -> SevRootPair:
        return next(pair for pair in self.pairs if pair.generation is generation)


@dataclass(frozen=True, slots=True)
class VerifiedChain:
    generation: Generation
    ark: AmdCaCert
    ask: AmdCaCert
    cek: SevCert
    oca: SevCert
    pek: SevCert
    pdh: SevCert
    checks: tuple[str, ...]

    @property
    def pdh_public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.pdh.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)  # parse guarantees: a PDH is ECDH
        return key


# ------------------------------------------------------------------------------------------- roots

_ROOTS_DIR = Path(__file__).with_name("roots")
_PINNED_SHA256 = {
    Generation.NAPLES: {
        "ark": "dedabca561e1dece8cc00b7bda864cf5f20b95017864408cfe18eaee0dce24b9",
        "ask": "c6f30cf923f526c3bcd5c8c221db51e0db65911782f046de17a6603131cdfd7f",
    },
    Generation.ROME: {
        "ark": "865977b268c16d5b27772b00aaefb4e737ba9499e818ed8e9f65b0cecefbc529",
        "ask": "7754a69407d25540fe3a695be6b02c58a53bffd12594f5c30793d6cb62875706",
    },
    Generation.MILAN: {
        "ark": "1246469862b78a7a8625579b0378d1f8e975eb8b82a1623b579d7968a5969888",
        "ask": "c7c73765561c58003a3d09adb2c76993027dd3a1ec4e9be876024c035e015cec",
    },
}


def load_roots(directory: Path, generations: Iterable[Generation] = tuple(Generation)) -> SevRoots:
    """``<directory>/<generation lowercase>/{ark,ask}.cert`` for each generation (no pin check)."""
    pairs = []
    for generation in generations:
        base = directory / generation.value.lower()
        ark = parse_ca_cert((base / "ark.cert").read_bytes(), f"sev.roots.{generation.value.lower()}.ark")
        ask = parse_ca_cert((base / "ask.cert").read_bytes(), f"sev.roots.{generation.value.lower()}.ask")
        pairs.append(SevRootPair(generation, ark, ask))
    return SevRoots(tuple(pairs))


@cache
def pinned_roots() -> SevRoots:
    """The legacy ARK/ASK shipped with REMITS (Naples, Rome, Milan), checked against pinned SHA-256
    digests; ``RuntimeError`` if a shipped file does not match (packaging/tampering, not evidence)."""
    for generation, names in _PINNED_SHA256.items():
        for name, digest in names.items():
            data = (_ROOTS_DIR / generation.value.lower() / f"{name}.cert").read_bytes()
            if hashlib.sha256(data).hexdigest() != digest:
                raise RuntimeError(f"shipped SEV {generation.value} {name} does not match its pinned SHA-256")
    return load_roots(_ROOTS_DIR)


# -------------------------------------------------------------------------------------- primitives


def _pss_hash(modulus_bits: int) -> hashes.HashAlgorithm:
    return hashes.SHA256() if modulus_bits <= 2048 else hashes.SHA384()


def _rsa_pss_verify(
    key: rsa.RSAPublicKey, signature_be: bytes, data: bytes, algorithm: hashes.HashAlgorithm
) -> bool:
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    try:
        key.verify(signature_be, data, pss, algorithm)
    except InvalidSignature:
        return False
    return True


def _fail(check: str, detail: str) -> VerificationError:
    return VerificationError(check, detail)


def _verify_ca_signature(cert: AmdCaCert, signer: AmdCaCert, check: str) -> None:
    if cert.modulus_bits != signer.modulus_bits:
        raise _fail(check, f"signature is {cert.modulus_bits} bits, signer key {signer.modulus_bits}")
    algorithm = _pss_hash(signer.modulus_bits)
    if not _rsa_pss_verify(signer.public_key(), cert.signature_be(), cert.signed_bytes(), algorithm):
        raise _fail(check, f"RSA-PSS/{algorithm.name} signature does not verify")


def _slot(cert: SevCert, usage: Usage, check: str) -> SignatureSlot:
    slot = cert.slot_for(usage)
    if slot is None:
        raise _fail(check, f"no signature slot with usage {usage.name} ({usage.value:#x})")
    return slot


def _verify_slot_rsa(cert: SevCert, slot: SignatureSlot, signer: rsa.RSAPublicKey, check: str) -> None:
    if not slot.algo.is_rsa:
        raise _fail(check, f"signer key is RSA, slot algo is {slot.algo.name}")
    n_len = (signer.key_size + 7) // 8
    expected = _pss_hash(signer.key_size)
    if slot.algo.hash_algorithm().name != expected.name:
        raise _fail(
            check, f"slot algo {slot.algo.name} but a {signer.key_size}-bit key signs with {expected.name}"
        )
    if any(slot.signature[n_len:]):
        raise _fail(check, f"signature longer than the {signer.key_size}-bit signer modulus")
    if not _rsa_pss_verify(signer, slot.signature[:n_len][::-1], cert.signed_bytes(), expected):
        raise _fail(check, f"RSA-PSS/{expected.name} signature does not verify")


def _verify_slot(
    cert: SevCert, usage: Usage, signer: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, check: str
) -> None:
    slot = _slot(cert, usage, check)
    if isinstance(signer, rsa.RSAPublicKey):
        _verify_slot_rsa(cert, slot, signer, check)
        return
    if not slot.algo.is_ecdsa:
        raise _fail(check, f"signer key is EC, slot algo is {slot.algo.name}")
    order = _P384_ORDER if isinstance(signer.curve, ec.SECP384R1) else _P256_ORDER
    r, s = ec_signature_from_slot(slot.signature)
    if not (0 < r < order and 0 < s < order):
        raise _fail(check, "ECDSA R or S outside [1, n-1]")
    try:
        signer.verify(encode_dss_signature(r, s), cert.signed_bytes(), ec.ECDSA(slot.algo.hash_algorithm()))
    except InvalidSignature:
        raise _fail(check, f"ECDSA/{slot.algo.hash_algorithm().name} signature does not verify") from None


# ----------------------------------------------------------------------------------- single links


def check_usage(cert: AmdCaCert | SevCert, usage: Usage, check: str) -> None:
    """The certificate is the kind its position in the chain needs."""
    got = cert.key_usage if isinstance(cert, AmdCaCert) else cert.pubkey_usage
    if got is not usage:
        raise _fail(check, f"usage is {got.name} ({got.value:#x}), expected {usage.name} ({usage.value:#x})")


def verify_ark(ark: AmdCaCert) -> None:
    """ARK: CERTIFYING_ID is its own KEY_ID and the RSA-PSS self-signature verifies."""
    if not ark.self_signed:
        raise _fail(ARK_SELF_SIGNED, "CERTIFYING_ID differs from KEY_ID")
    _verify_ca_signature(ark, ark, ARK_SELF_SIGNED)


def verify_ask(ask: AmdCaCert, ark: AmdCaCert) -> None:
    if ask.certifying_id != ark.key_id:
        raise _fail(
            ASK_CERTIFYING_ID,
            f"CERTIFYING_ID {ask.certifying_id.hex()} is not the ARK KEY_ID {ark.key_id.hex()}",
        )
    _verify_ca_signature(ask, ark, ASK_SIGNED_BY_ARK)


def verify_cek(cek: SevCert, ask: AmdCaCert) -> None:
    _verify_slot(cek, Usage.ASK, ask.public_key(), CEK_SIGNED_BY_ASK)


def verify_oca(oca: SevCert) -> None:
    _verify_slot(oca, Usage.OCA, oca.public_key(), OCA_SELF_SIGNED)


def verify_pek(pek: SevCert, oca: SevCert, cek: SevCert) -> None:
    _verify_slot(pek, Usage.OCA, oca.public_key(), PEK_SIGNED_BY_OCA)
    _verify_slot(pek, Usage.CEK, cek.public_key(), PEK_SIGNED_BY_CEK)


def verify_pdh(pdh: SevCert, pek: SevCert) -> None:
    _verify_slot(pdh, Usage.PEK, pek.public_key(), PDH_SIGNED_BY_PEK)


# ------------------------------------------------------------------------------------------ chain


def _ca(value: AmdCaCert | bytes, role: str) -> AmdCaCert:
    return value if isinstance(value, AmdCaCert) else parse_ca_cert(value, f"sev.{role}")


def _sev(value: SevCert | bytes, role: str) -> SevCert:
    return value if isinstance(value, SevCert) else parse_sev_cert(value, f"sev.{role}")


def _verify_amd_part(ark: AmdCaCert, ask: AmdCaCert, cek: SevCert, pinned: SevRoots) -> SevRootPair:
    """ARK and ASK are the pinned pair of their generation, and the CEK is signed by that ASK."""
    pair = pinned.by_ark_key_id(ark.key_id)
    if pair is None:
        raise _fail(GENERATION, f"no pinned ARK with KEY_ID {ark.key_id.hex()}")
    if ark != pair.ark:
        raise _fail(ARK_PINNED, f"ARK differs from the pinned {pair.generation.value} ARK")
    if ask != pair.ask:
        raise _fail(ASK_PINNED, f"ASK differs from the pinned {pair.generation.value} ASK")
    verify_ark(ark)
    verify_ask(ask, ark)
    verify_cek(cek, ask)
    return pair


def verify_endorsement(ark: AmdCaCert | bytes, ask: AmdCaCert | bytes, cek: SevCert | bytes, *, pinned: SevRoots) -> Generation:
    """AMD's part of a host's chain alone (what the endorse stage checks): usages, the pinned
    ARK/ASK of the generation, and the CEK under the ASK. Returns the generation."""
    ark_c, ask_c, cek_c = _ca(ark, "ark"), _ca(ask, "ask"), _sev(cek, "cek")
    check_usage(ark_c, Usage.ARK, ARK_USAGE)
    check_usage(ask_c, Usage.ASK, ASK_USAGE)
    check_usage(cek_c, Usage.CEK, CEK_USAGE)
    return _verify_amd_part(ark_c, ask_c, cek_c, pinned).generation


def verify_chain(
    ark: AmdCaCert | bytes,
    ask: AmdCaCert | bytes,
    cek: SevCert | bytes,
    oca: SevCert | bytes,
    pek: SevCert | bytes,
    pdh: SevCert | bytes,
    *,
    pinned: SevRoots,
) -> VerifiedChain:
    """Parse (if bytes) and verify the whole chain against ``pinned``; every check in ``ALL_CHECKS``
    order. Raises ``ParseError`` (``parse.sev.<role>.<field>``) or ``VerificationError``."""
    if not isinstance(pinned, SevRoots):
        raise TypeError("pinned must be SevRoots")
    ark_c, ask_c = _ca(ark, "ark"), _ca(ask, "ask")
    cek_c, oca_c, pek_c, pdh_c = _sev(cek, "cek"), _sev(oca, "oca"), _sev(pek, "pek"), _sev(pdh, "pdh")
    for cert, usage, check in (
        (ark_c, Usage.ARK, ARK_USAGE),
        (ask_c, Usage.ASK, ASK_USAGE),
        (cek_c, Usage.CEK, CEK_USAGE),
        (oca_c, Usage.OCA, OCA_USAGE),
        (pek_c, Usage.PEK, PEK_USAGE),
        (pdh_c, Usage.PDH, PDH_USAGE),
    ):
        check_usage(cert, usage, check)
    pair = _verify_amd_part(ark_c, ask_c, cek_c, pinned)
    verify_oca(oca_c)
    verify_pek(pek_c, oca_c, cek_c)
    verify_pdh(pdh_c, pek_c)
    return VerifiedChain(pair.generation, ark_c, ask_c, cek_c, oca_c, pek_c, pdh_c, ALL_CHECKS)


def describe(cert: AmdCaCert | SevCert) -> dict[str, object]:
    """A JSON-friendly summary of one certificate (for the CLI and logs)."""
    if isinstance(cert, AmdCaCert):
        return {
            "format": "amd-ca",
            "key_id": cert.key_id.hex(),
            "certifying_id": cert.certifying_id.hex(),
            "usage": cert.key_usage.name,
            "key": f"RSA-{cert.modulus_bits}",
        }
    key = cert.pubkey
    if isinstance(key, EcPubKey):
        key_text = key.curve.name
        key_id = hashlib.sha256(key.encode()).hexdigest()[:32]
    else:
        key_text = f"RSA-{key.modulus_bits}"
        key_id = hashlib.sha256(key.encode()).hexdigest()[:32]
    return {
        "format": "sev",
        "key_id": key_id,  # SEV certificates have no KEY_ID: first 16 bytes of SHA-256(PUBKEY field)
        "usage": cert.pubkey_usage.name,
        "algo": cert.pubkey_algo.name,
        "key": key_text,
        "api_version": f"{cert.api_major}.{cert.api_minor}",
        "signatures": [
            {"usage": slot.usage.name, "algo": slot.algo.name} for slot in cert.signatures if not slot.empty
        ],
    }
