"""The crypto floor: the raw signature checks, signatures and key agreements one attestation needs,
timed with ``cryptography`` alone on this machine. It is what no implementation can avoid, so the
bench reports the service's rate against ``cores / floor``.

Per attestation, every TEE costs: the evidence signature check(s) (never cacheable: the evidence
is fresh), one ES256 signature (the EAR), one ES256 check (the release stage verifies the EAR
before it marks a session attested or releases a secret) and one ECDH-ES on P-256 (an ephemeral key
and one key agreement, to wrap the secret to the TEE's key). A boot storm adds the check of each
new chip's endorsement (the vendor's signature over the device certificate); chains above it and
revocation lists are verified once per vendor and cached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from services.bench.timing import per_call_us

# (operation, count) per attestation, by TEE; and what a new chip adds. Every TEE's list holds the
# EAR's ES256 signature and check (one p256 sign, one p256 verify) and the secret's ECDH-ES.
OPERATIONS: dict[str, tuple[tuple[str, int], ...]] = {
    "sample": (("ecdsa_p384_verify", 1), ("ecdsa_p256_sign", 1), ("ecdsa_p256_verify", 1), ("ecdh_p256", 1)),
    "snp": (("ecdsa_p384_verify", 1), ("ecdsa_p256_sign", 1), ("ecdsa_p256_verify", 1), ("ecdh_p256", 1)),
    # The quote (attestation key) and the QE report (PCK key) are two P-256 checks, plus the EAR's.
    "tdx": (("ecdsa_p256_verify", 3), ("ecdsa_p256_sign", 1), ("ecdh_p256", 1)),
}
NEW_CHIP: dict[str, tuple[tuple[str, int], ...]] = {
    "sample": (("ecdsa_p384_verify", 1),),  # device certificate, signed by the vendor's P-384 CA
    "snp": (("rsa4096_pss_verify", 1),),  # VCEK, signed by the ASK (RSA-4096 PSS)
    "tdx": (("ecdsa_p256_verify", 1),),  # PCK certificate, signed by the platform CA
}
TEES = tuple(OPERATIONS)


@dataclass(frozen=True)
class CryptoFloor:
    us: float  # per attestation, one core
    operations_us: dict[str, float]  # each operation's measured cost
    per_attestation: dict[str, float]  # how many of each one attestation needs (averaged for mix)


def operation_costs(iterations: int = 300, repeats: int = 7) -> dict[str, float]:
    """Each operation's cost in µs, best of ``repeats`` runs (the least disturbed)."""
    message = b"\x5a" * 1184  # an SNP report's size; the hash is a negligible part of the cost
    p384 = ec.generate_private_key(ec.SECP384R1())
    p384_sig = p384.sign(message, ec.ECDSA(hashes.SHA384()))
    p384_pub = p384.public_key()
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256_sig = p256.sign(message, ec.ECDSA(hashes.SHA256()))
    p256_pub = p256.public_key()
    rsa_key = rsa.generate_private_key(65537, 4096)
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
    rsa_sig = rsa_key.sign(message, pss, hashes.SHA384())
    rsa_pub = rsa_key.public_key()
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()

    def ecdh() -> bytes:
        return ec.generate_private_key(ec.SECP256R1()).exchange(ec.ECDH(), peer)

    ops: dict[str, Callable[[], object]] = {
        "ecdsa_p384_verify": lambda: p384_pub.verify(p384_sig, message, ec.ECDSA(hashes.SHA384())),
        "ecdsa_p256_verify": lambda: p256_pub.verify(p256_sig, message, ec.ECDSA(hashes.SHA256())),
        "ecdsa_p256_sign": lambda: p256.sign(message, ec.ECDSA(hashes.SHA256())),
        "rsa4096_pss_verify": lambda: rsa_pub.verify(rsa_sig, message, pss, hashes.SHA384()),
        "ecdh_p256": ecdh,
    }
    return {name: per_call_us(fn, iterations, repeats) for name, fn in ops.items()}


def operations_for(tees: tuple[str, ...], new_chip: bool) -> dict[str, float]:
    """Operations per attestation; a mix of TEEs (attested in turn) averages them."""
    counts: dict[str, float] = {}
    for tee in tees:
        for name, n in OPERATIONS[tee] + (NEW_CHIP[tee] if new_chip else ()):
            counts[name] = counts.get(name, 0.0) + n / len(tees)
    return counts


def floor_us(costs: dict[str, float], counts: dict[str, float]) -> float:
    return sum(costs[name] * n for name, n in counts.items())


def measure(tees: tuple[str, ...], new_chip: bool, iterations: int = 300) -> CryptoFloor:
    costs = operation_costs(iterations)
    counts = operations_for(tees, new_chip)
    return CryptoFloor(
        us=round(floor_us(costs, counts), 1),
        operations_us={name: round(costs[name], 1) for name in counts},
        per_attestation=counts,
    )
