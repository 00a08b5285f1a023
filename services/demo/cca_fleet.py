"""`remits demo --tee cca`: simulated Arm CCA realms on simulated platforms, each platform's CPAK
served by a local trust-anchor service the endorse stage fetches from (as it would from a
vendor's endorsement service), every token built and signed with real P-384 keys."""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from services.demo.cca_sim import SimulatedCcaPlatform, SimulatedRealm
from services.demo.serving import serve
from shared.kbs.binding import expected_report_data

DEMO_RIM = hashlib.sha256(b"remits demo realm image v1").digest()
OTHER_RIM = hashlib.sha256(b"some other realm image").digest()
DEMO_REMS = tuple(bytes(32) for _ in range(4))
DEMO_RPV = bytes(64)


@dataclass
class LocalCcaTaServer:
    """A trust-anchor service: ``GET /<implementation id hex>/<instance id hex>`` answers the
    platform's entry (JSON with the CPAK as a JWK); unknown platforms get 404."""

    entries: dict[tuple[str, str], bytes] = field(default_factory=dict)
    request_count: Counter[str] = field(default_factory=Counter)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    def enroll(self, platform: SimulatedCcaPlatform) -> None:
        entry = platform.ta_entry()
        key = (str(entry["implementation-id"]).lower(), str(entry["instance-id"]).lower())
        self.entries[key] = json.dumps(entry).encode()

    async def _entry(self, request: web.Request) -> web.Response:
        self.request_count[request.path] += 1
        key = (request.match_info["impl"].lower(), request.match_info["inst"].lower())
        body = self.entries.get(key)
        if body is None:
            return web.Response(status=404, text="unknown platform")
        return web.Response(body=body, content_type="application/json")

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_get("/{impl}/{inst}", self._entry)
        self._runner, self.base_url = await serve(app, host, port)
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@dataclass
class CcaFleet:
    """Realms on a few simulated platforms, as in a cloud. An "unknown device" is a realm on a
    platform whose CPAK nobody endorsed; a "wrong measurement" realm has another RIM; a "tampered"
    token has its realm token re-bound to another RAK (the platform token no longer vouches for it)."""

    ta: LocalCcaTaServer
    tee: str = "cca"
    reference_name: str = "rim"
    _platforms: dict[bool, SimulatedCcaPlatform] | None = None

    def references(self) -> list[tuple[str, str, list[str]]]:
        return [
            ("rim", "", [DEMO_RIM.hex()]),
            *((f"rem{i}", "", [rem.hex()]) for i, rem in enumerate(DEMO_REMS)),
            ("rpv", "", [DEMO_RPV.hex()]),
        ]

    def new_guest(self, kind: str) -> SimulatedRealm:
        if self._platforms is None:
            known = SimulatedCcaPlatform()
            self.ta.enroll(known)
            self._platforms = {True: known, False: SimulatedCcaPlatform()}
        platform = self._platforms[kind != "unknown_device"]
        rim = OTHER_RIM if kind == "wrong_measurement" else DEMO_RIM
        return platform.realm(rim, DEMO_REMS, DEMO_RPV)

    def evidence(self, guest: SimulatedRealm, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any:
        token = guest.token(expected_report_data(nonce, tee_pubkey), break_binding=tamper)
        return {"token": base64.b64encode(token).decode()}
