"""A simulated AMD SEV / SEV-ES platform, for the demo and the tests.

Part 1 (``SimulatedAmdSev``): a complete legacy certificate chain in AMD's real binary formats with
real cryptography -- an RSA ARK and ASK (4096-bit, RSASSA-PSS/SHA-384 for Rome and later; 2048-bit,
SHA-256 for Naples), a P-384 CEK signed by the ASK, a self-signed P-384 OCA, a P-384 PEK signed by
both OCA and CEK, and a P-384 ECDH PDH signed by the PEK. Only the trust anchor differs from AMD's:
``roots`` is a ``SevRoots`` holding the simulated ARK/ASK, which ``verify_chain`` accepts in place of
``pinned_roots()``. The PDH private key is exposed because the simulated firmware needs it for the
LAUNCH_START key agreement.

The firmware-side session logic (LAUNCH_START/MEASURE/SECRET) lives in its own class below, separate
from the certificate chain.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from shared.platforms.sev.abi import (
    Algo,
    AmdCaCert,
    EcPubKey,
    SevCert,
    SignatureSlot,
    Usage,
    ec_signature_to_slot,
    rsa_signature_to_slot,
)
from shared.platforms.sev.verify import Generation, SevRootPair, SevRoots

__all__ = ["SimulatedAmdSev"]

# ================================================================================================
# Part 1: the simulated AMD certificate chain (legacy SEV formats)
# ================================================================================================

# API version the simulated firmware puts in its certificates (the real Milan chain says 1.51; the
# CEK is issued by AMD at 0.14 on every real chain seen).
_DEFAULT_API = (1, 51)
_CEK_API = (0, 14)


def _pss_hash(bits: int) -> hashes.HashAlgorithm:
    return hashes.SHA256() if bits == 2048 else hashes.SHA384()


def _ca_cert(
    key: rsa.RSAPrivateKey, key_id: bytes, certifying_id: bytes, usage: Usage, signer: rsa.RSAPrivateKey
) -> AmdCaCert:
    numbers = key.public_key().public_numbers()
    bits = key.key_size
    unsigned = AmdCaCert(
        version=1,
        key_id=key_id,
        certifying_id=certifying_id,
        key_usage=usage,
        pubexp_bits=bits,
        modulus_bits=bits,
        pubexp=numbers.e,
        modulus=numbers.n,
        signature=bytes(bits // 8),
    )
    algorithm = _pss_hash(signer.key_size)
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    signature = signer.sign(unsigned.signed_bytes(), pss, algorithm)
    return AmdCaCert(**{**_fields(unsigned), "signature": signature[::-1]})


def _fields(cert: AmdCaCert) -> dict[str, object]:
    return {name: getattr(cert, name) for name in AmdCaCert.__slots__}  # type: ignore[attr-defined]


def _sev_body(key: ec.EllipticCurvePublicKey, usage: Usage, algo: Algo, api: tuple[int, int]) -> SevCert:
    return SevCert(
        1, api[0], api[1], usage, algo, EcPubKey.of(key), SignatureSlot.none(), SignatureSlot.none()
    )


def _ecdsa_slot(body: SevCert, signer: ec.EllipticCurvePrivateKey, signer_usage: Usage) -> SignatureSlot:
    der = signer.sign(body.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return SignatureSlot(signer_usage, Algo.ECDSA_SHA256, ec_signature_to_slot(r, s))


def _rsa_slot(body: SevCert, signer: rsa.RSAPrivateKey) -> SignatureSlot:
    algorithm = _pss_hash(signer.key_size)
    pss = padding.PSS(mgf=padding.MGF1(algorithm), salt_length=algorithm.digest_size)
    signature = signer.sign(body.signed_bytes(), pss, algorithm)
    algo = Algo.RSA_SHA256 if signer.key_size == 2048 else Algo.RSA_SHA384
    return SignatureSlot(Usage.ASK, algo, rsa_signature_to_slot(signature))


@dataclass(frozen=True)
class SimulatedAmdSev:
    """A simulated AMD vendor (ARK, ASK) and one SEV platform (CEK, OCA, PEK, PDH)."""

    generation: Generation
    chip_id: bytes
    ark: bytes
    ask: bytes
    cek: bytes
    oca: bytes
    pek: bytes
    pdh: bytes
    pdh_private_key: ec.EllipticCurvePrivateKey
    roots: SevRoots
    api_major: int
    api_minor: int

    @classmethod
    def generate(cls, product: str = "Milan", api: tuple[int, int] = _DEFAULT_API) -> SimulatedAmdSev:
        generation = Generation(product)
        bits = 2048 if generation is Generation.NAPLES else 4096
        ark_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        ask_key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        ark_id, ask_id = os.urandom(16), os.urandom(16)
        ark = _ca_cert(ark_key, ark_id, ark_id, Usage.ARK, ark_key)
        ask = _ca_cert(ask_key, ask_id, ark_id, Usage.ASK, ark_key)

        curve = ec.SECP384R1()
        cek_key, oca_key, pek_key, pdh_key = (ec.generate_private_key(curve) for _ in range(4))
        cek_body = _sev_body(cek_key.public_key(), Usage.CEK, Algo.ECDSA_SHA256, _CEK_API)
        cek = cek_body.with_signatures(_rsa_slot(cek_body, ask_key))
        oca_body = _sev_body(oca_key.public_key(), Usage.OCA, Algo.ECDSA_SHA256, api)
        oca = oca_body.with_signatures(_ecdsa_slot(oca_body, oca_key, Usage.OCA))
        pek_body = _sev_body(pek_key.public_key(), Usage.PEK, Algo.ECDSA_SHA256, api)
        pek = pek_body.with_signatures(
            _ecdsa_slot(pek_body, oca_key, Usage.OCA), _ecdsa_slot(pek_body, cek_key, Usage.CEK)
        )
        pdh_body = _sev_body(pdh_key.public_key(), Usage.PDH, Algo.ECDH_SHA256, api)
        pdh = pdh_body.with_signatures(_ecdsa_slot(pdh_body, pek_key, Usage.PEK))
        return cls(
            generation=generation,
            chip_id=os.urandom(64),
            ark=ark.encode(),
            ask=ask.encode(),
            cek=cek.encode(),
            oca=oca.encode(),
            pek=pek.encode(),
            pdh=pdh.encode(),
            pdh_private_key=pdh_key,
            roots=SevRoots((SevRootPair(generation, ark, ask),)),
            api_major=api[0],
            api_minor=api[1],
        )

    def chain(self) -> tuple[bytes, bytes, bytes, bytes, bytes, bytes]:
        """(ark, ask, cek, oca, pek, pdh): ``verify_chain``'s positional order."""
        return (self.ark, self.ask, self.cek, self.oca, self.pek, self.pdh)

    def sev_request_chain(self) -> dict[str, dict[str, list[int]]]:
        """The chain as kbs-types ``SevRequest.chain`` (serde byte arrays)."""
        return {
            "ca": {"ark": list(self.ark), "ask": list(self.ask)},
            "sev": {
                "pdh": list(self.pdh),
                "pek": list(self.pek),
                "oca": list(self.oca),
                "cek": list(self.cek),
            },
        }


# ================================================================================================
# Part 2: simulated firmware session logic (LAUNCH_START / MEASURE / SECRET) -- added separately.
# ================================================================================================
