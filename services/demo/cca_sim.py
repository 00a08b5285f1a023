"""A simulated Arm CCA platform and its realms, for the demo and the tests.

The tokens are in the real format so that the real verification path runs: a P-384 CPAK signs the
platform token (ES384), a fresh P-384 RAK per realm signs the realm token, and the platform
challenge is the hash of the RAK claim. Only the trust anchor differs: a generated CPAK that the
service must be told to trust explicitly (``ta_entry`` / ``trust_anchor``).

Claims are encoded with cbor2, not with the verifier's own encoder, so the two CBOR codecs check
each other.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric import ec

from shared.platforms.cca.abi import PROFILE_PLATFORM, PROFILE_REALM
from shared.platforms.cca.cose import sign1
from shared.platforms.cca.tastore import TrustAnchor, key_to_jwk

ES384 = -35
# The decoder does not pin CMW content formats; these stand in for the formats CCA's registrations
# will assign to the platform and realm tokens.
CMW_PLATFORM_FORMAT = 10001
CMW_REALM_FORMAT = 10002
_HASHES = {"sha-256": hashlib.sha256, "sha-384": hashlib.sha384, "sha-512": hashlib.sha512}
_DEFAULT_COMPONENTS = ("RSE_BL1_2", "RSE_BL2", "RSE_S", "AP_BL1", "AP_BL2", "AP_BL31", "RMM")


@dataclass(frozen=True)
class SimulatedComponent:
    type: str
    measurement: bytes
    version: str = "1.0.0"
    signer_id: bytes = bytes(32)

    def claims(self) -> dict[int, Any]:
        return {1: self.type, 2: self.measurement, 4: self.version, 5: self.signer_id, 6: "sha-256"}


def _default_components() -> tuple[SimulatedComponent, ...]:
    signer = hashlib.sha256(b"simulated firmware signer").digest()
    return tuple(
        SimulatedComponent(name, hashlib.sha256(f"simulated {name}".encode()).digest(), signer_id=signer)
        for name in _DEFAULT_COMPONENTS
    )


@dataclass
class SimulatedRealm:
    platform: SimulatedCcaPlatform
    rim: bytes
    rems: tuple[bytes, ...]
    rpv: bytes
    rak_form: str = "raw"
    rak_hash_alg: str = "sha-256"
    rak: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))
    _platform_tokens: dict[bytes, bytes] = field(default_factory=dict, repr=False)

    def rak_claim(self) -> bytes:
        """Claim 44237's bytes: the raw SEC1 point or a bstr-wrapped COSE_Key (EC2, P-384)."""
        numbers = self.rak.public_key().public_numbers()
        if self.rak_form == "raw":
            return b"\x04" + numbers.x.to_bytes(48, "big") + numbers.y.to_bytes(48, "big")
        if self.rak_form == "cose_key":
            return cbor2.dumps(
                {1: 2, -1: 2, -2: numbers.x.to_bytes(48, "big"), -3: numbers.y.to_bytes(48, "big")}
            )
        raise ValueError(f"unknown RAK form {self.rak_form!r}")

    def token(self, challenge: bytes, *, form: str = "legacy", break_binding: bool = False) -> bytes:
        rak_claim = self.rak_claim()
        realm_claims = {
            265: PROFILE_REALM,
            10: challenge[:64].ljust(64, b"\x00"),
            44235: self.rpv,
            44236: "sha-256",
            44237: rak_claim,
            44238: self.rim,
            44239: list(self.rems),
            44240: self.rak_hash_alg,
        }
        binding = _HASHES[self.rak_hash_alg](rak_claim).digest()
        if break_binding:
            binding = bytes([binding[0] ^ 1]) + binding[1:]
        # Like the RMM, ask the platform once per RAK (and binding) and reuse its token.
        platform_token = self._platform_tokens.get(binding)
        if platform_token is None:
            platform_token = self._platform_tokens[binding] = self.platform.platform_token(binding)
        realm_token = sign1(cbor2.dumps(realm_claims), self.rak, ES384)
        if form == "legacy":
            collection: dict[int, Any] = {44234: platform_token, 44241: realm_token}
        elif form == "cmw":
            collection = {
                44234: [CMW_PLATFORM_FORMAT, platform_token],
                44241: [CMW_REALM_FORMAT, realm_token],
            }
        else:
            raise ValueError(f"unknown collection form {form!r}")
        return cbor2.dumps(cbor2.CBORTag(399, collection))


@dataclass
class SimulatedCcaPlatform:
    """One CCA platform: its CPAK, identity, firmware and security lifecycle."""

    implementation_id: bytes | None = None
    instance_id: bytes | None = None
    sw_components: tuple[SimulatedComponent, ...] | None = None
    lifecycle: int = 0x3003
    config: bytes = b"\xcf\xcf\xcf\xcf"
    cpak: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP384R1()))

    def __post_init__(self) -> None:
        if self.implementation_id is None:
            self.implementation_id = os.urandom(32)
        if self.instance_id is None:
            # Instance ids are a UEID: type byte 0x01 (RAND) and 32 bytes.
            self.instance_id = (
                b"\x01"
                + hashlib.sha256(self.cpak.public_key().public_numbers().x.to_bytes(48, "big")).digest()
            )
        if self.sw_components is None:
            self.sw_components = _default_components()

    def trust_anchor(self) -> TrustAnchor:
        assert self.implementation_id is not None and self.instance_id is not None
        return TrustAnchor(self.implementation_id, self.instance_id, self.cpak.public_key())

    def ta_entry(self) -> dict[str, Any]:
        assert self.implementation_id is not None and self.instance_id is not None
        return {
            "implementation-id": self.implementation_id.hex(),
            "instance-id": self.instance_id.hex(),
            "pkey": key_to_jwk(self.cpak.public_key()),
        }

    def platform_token(self, challenge: bytes) -> bytes:
        assert self.sw_components is not None
        claims = {
            265: PROFILE_PLATFORM,
            10: challenge,
            2396: self.implementation_id,
            256: self.instance_id,
            2401: self.config,
            2395: self.lifecycle,
            2402: "sha-256",
            2400: "https://veraison.example/.well-known/veraison/verification",
            2399: [component.claims() for component in self.sw_components],
        }
        return sign1(cbor2.dumps(claims), self.cpak, ES384)

    def realm(
        self,
        rim: bytes,
        rems: tuple[bytes, ...] | list[bytes] | None = None,
        rpv: bytes = bytes(64),
        rak_form: str = "raw",
        rak_hash_alg: str = "sha-256",
    ) -> SimulatedRealm:
        return SimulatedRealm(
            platform=self,
            rim=rim,
            rems=tuple(rems) if rems is not None else (bytes(len(rim)),) * 4,
            rpv=rpv,
            rak_form=rak_form,
            rak_hash_alg=rak_hash_alg,
        )
