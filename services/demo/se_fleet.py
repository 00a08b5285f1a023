"""`remits demo --tee se`: simulated IBM Z machines (a host key each, its host key document
issued by a simulated IBM Z Host Key Signing Service) whose simulated Ultravisors really open the
attestation request REMITS sends in the challenge and compute the measurement HMAC."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.demo.se_sim import SimulatedHost, SimulatedUltravisor
from shared.kbs.binding import expected_report_data
from shared.platforms.se.abi import BootHdrTags

DEMO_TAGS = BootHdrTags(
    pld=hashlib.sha512(b"remits demo SE image: pages").digest(),
    ald=hashlib.sha512(b"remits demo SE image: addresses").digest(),
    tld=hashlib.sha512(b"remits demo SE image: tweaks").digest(),
    tag=hashlib.sha256(b"remits demo SE image: header tag").digest()[:16],
)
OTHER_TAGS = BootHdrTags(pld=bytes(64), ald=bytes(64), tld=bytes(64), tag=bytes(16))


def write_se_dir(directory: Path, hosts: list[SimulatedHost]) -> Path:
    """The operator's SE directory: host key documents, the signing chain, its CRLs."""
    for sub in ("hkds", "ca", "roots", "crls"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    for index, host in enumerate(hosts):
        (directory / "hkds" / f"hkd-{index}.crt").write_bytes(host.hkd_pem)
    chain = hosts[0].chain()
    for name, blobs in (("ca", chain["intermediates"]), ("roots", chain["roots"]), ("crls", chain["crls"])):
        for index, blob in enumerate(blobs):
            (directory / name / f"{name}-{index}.pem").write_bytes(blob)
    return directory


@dataclass
class SeFleet:
    """Guests on one operator machine. An "unknown device" runs on a machine whose host key is
    not in the request (its Ultravisor cannot open it, so the guest makes up an answer); a
    "wrong measurement" guest booted another image; "tampered" flips a bit of the measurement."""

    host: SimulatedHost
    foreign: SimulatedHost
    tee: str = "se"
    reference_name: str = "image_tags"
    needs_challenge: bool = True

    @classmethod
    def generate(cls) -> SeFleet:
        host = SimulatedHost()
        return cls(host=host, foreign=SimulatedHost())

    def references(self) -> list[tuple[str, str, list[str]]]:
        return [("image_tags", "", [DEMO_TAGS.to_bytes().hex()])]

    def new_guest(self, kind: str) -> SimulatedUltravisor:
        host = self.foreign if kind == "unknown_device" else self.host
        tags = OTHER_TAGS if kind == "wrong_measurement" else DEMO_TAGS
        return SimulatedUltravisor(host, tags, os.urandom(16))

    def evidence(
        self, guest: SimulatedUltravisor, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool,
        challenge: dict[str, Any] | None = None,
    ) -> Any:  # fmt: skip
        params = (challenge or {}).get("extra-params", "")
        request = base64.b64decode(json.loads(params)["request_blob"])
        user_data = expected_report_data(nonce, tee_pubkey, hash_alg="sha512")
        try:
            answer = guest.perform(request, user_data)
            measurement, additional, cuid = answer.measurement, answer.additional_data, answer.cuid
        except Exception:
            measurement, additional, cuid = os.urandom(64), os.urandom(64), guest.cuid
        if tamper:
            measurement = bytes([measurement[0] ^ 0x01]) + measurement[1:]
        b64 = base64.b64encode
        return {
            "measurement": b64(measurement).decode(),
            "additional_data": b64(additional).decode(),
            "user_data": b64(user_data).decode(),
            "cuid": b64(cuid).decode(),
        }
