"""A KBS protocol client for one simulated guest: auth, attest with evidence bound to the
challenge, fetch a resource and decrypt it. Used by `remits demo` and the end-to-end tests."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from services.demo.snp_sim import SimulatedSnpGuest
from shared.jwe import unwrap_secret
from shared.kbs.binding import expected_report_data
from shared.kbs.wire import b64url_encode
from shared.platforms.sample.pki import SimulatedDevice

KBS_VERSION = "0.4.0"


def p256_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "alg": "ECDH-ES+A256KW",
        "x": b64url_encode(numbers.x.to_bytes(32, "big")),
        "y": b64url_encode(numbers.y.to_bytes(32, "big")),
    }


def rsa_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "alg": "RSA-OAEP-256",
        "n": b64url_encode(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url_encode(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
    }


@dataclass
class HttpResult:
    status: int
    body: Any

    @property
    def reason(self) -> str:
        if isinstance(self.body, dict):
            return str(self.body.get("detail", "")).split(":", 1)[0]
        return ""


@dataclass
class GuestClient:
    """One guest with its own cookie jar and TEE key (the key the secrets are wrapped to)."""

    base_url: str
    http: aiohttp.ClientSession
    tee_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @classmethod
    def new(cls, base_url: str, connector: aiohttp.BaseConnector | None = None) -> GuestClient:
        http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            connector=connector,
            connector_owner=connector is None,
            timeout=aiohttp.ClientTimeout(total=60),
        )
        return cls(base_url.rstrip("/"), http)

    async def close(self) -> None:
        await self.http.close()

    @property
    def tee_pubkey(self) -> dict[str, str]:
        if isinstance(self.tee_key, rsa.RSAPrivateKey):
            return rsa_jwk(self.tee_key)
        return p256_jwk(self.tee_key)

    async def _send(self, method: str, path: str, **kwargs: Any) -> HttpResult:
        async with self.http.request(method, f"{self.base_url}{path}", **kwargs) as resp:
            raw = await resp.read()
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
            return HttpResult(resp.status, body)

    async def auth(self, tee: str = "sample", extra_params: dict[str, Any] | None = None) -> HttpResult:
        return await self._send(
            "POST", "/kbs/v0/auth", json={"version": KBS_VERSION, "tee": tee, "extra-params": extra_params or {}}
        )

    def attestation_body(self, nonce: str, primary_evidence: Any) -> dict[str, Any]:
        return {
            "runtime-data": {"nonce": nonce, "tee-pubkey": self.tee_pubkey},
            "tee-evidence": {"primary_evidence": primary_evidence, "additional_evidence": ""},
        }

    async def attest(self, body: dict[str, Any]) -> HttpResult:
        return await self._send("POST", "/kbs/v0/attest", json=body)

    async def resource(self, path: str, token: str = "") -> HttpResult:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self._send("GET", f"/kbs/v0/resource/{path}", headers=headers)

    def decrypt(self, jwe: dict[str, Any]) -> bytes:
        return unwrap_secret(jwe, self.tee_key)


def sample_evidence(device: SimulatedDevice, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool = False) -> dict[str, str]:
    """The sample TEE's primary evidence, bound to the challenge like a real attester binds it."""
    report = bytearray(device.make_report(expected_report_data(nonce, tee_pubkey)))
    if tamper:
        report[0x18] ^= 0x01  # one bit of the measurement, after signing
    return {"report": base64.b64encode(bytes(report)).decode()}


def snp_evidence(guest: SimulatedSnpGuest, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool = False) -> dict[str, str]:
    """SNP evidence in the raw-report shape: {"report": base64 of the 1184-byte report}."""
    report = bytearray(guest.make_report(expected_report_data(nonce, tee_pubkey)))
    if tamper:
        report[0x090] ^= 0x01  # one bit of MEASUREMENT, after signing
    return {"report": base64.b64encode(bytes(report)).decode()}
