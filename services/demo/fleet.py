"""`remits demo`: a simulated fleet attesting concurrently through the HTTP KBS flow."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp

from services.demo.azure_sim import SimulatedAzureCvm, az_snp_vtpm_evidence
from services.demo.client import GuestClient, sample_evidence, snp_evidence
from services.demo.gcp_sim import Instance, SimulatedGceVm, SimulatedGoogleCa, gcp_vtpm_evidence
from services.demo.snp_sim import LocalAmdKds, SimulatedSnpGuest
from services.demo.tdx_sim import SimulatedIntel, SimulatedTdxPlatform
from services.demo.tpm_sim import SimulatedTpm, tpm_evidence
from shared.ear import submod_status
from shared.kbs.binding import expected_report_data
from shared.platforms.sample.endorsement_server import LocalEndorsementServer
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI
from shared.trust.admin import TrustAdmin

DEMO_IMAGE_MEASUREMENT = hashlib.sha384(b"remits demo guest image v1").digest()
DEMO_RESOURCE = "default/key/demo"
BAD_KINDS = ("tampered", "replayed", "unknown_device", "wrong_measurement")


@dataclass
class DeviceRun:
    kind: str
    status: str  # affirming | warning | contraindicated | rejected | error
    reason: str
    secret_released: bool
    latency_ms: float


OTHER_IMAGE_MEASUREMENT = hashlib.sha384(b"some other image").digest()


class FleetTee(Protocol):
    """What the fleet needs from one simulated TEE kind."""

    tee: str
    reference_name: str  # the reference-value set that holds the approved launch measurement

    def new_guest(self, kind: str) -> Any: ...

    def evidence(self, guest: Any, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any: ...


@dataclass
class SampleFleet:
    pki: VendorPKI
    kds: LocalEndorsementServer
    tee: str = "sample"
    reference_name: str = "measurement"

    def new_guest(self, kind: str) -> SimulatedDevice:
        measurement = OTHER_IMAGE_MEASUREMENT if kind == "wrong_measurement" else DEMO_IMAGE_MEASUREMENT
        device = SimulatedDevice.create(measurement)
        if kind != "unknown_device":
            now = datetime.now(UTC)
            self.kds.add_device(device.device_id, self.pki.issue_device_cert(device.device_id, device.public_key, now))
        return device

    def evidence(self, guest: SimulatedDevice, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any:
        return sample_evidence(guest, nonce, tee_pubkey, tamper=tamper)


@dataclass
class SnpFleet:
    kds: LocalAmdKds
    tee: str = "snp"
    reference_name: str = "measurement"

    def new_guest(self, kind: str) -> SimulatedSnpGuest:
        measurement = OTHER_IMAGE_MEASUREMENT if kind == "wrong_measurement" else DEMO_IMAGE_MEASUREMENT
        guest = SimulatedSnpGuest.create(measurement, product=self.kds.vendor.product)
        if kind != "unknown_device":
            self.kds.enroll(guest)
        return guest

    def evidence(self, guest: SimulatedSnpGuest, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any:
        return snp_evidence(guest, nonce, tee_pubkey, tamper=tamper)


UNKNOWN_FMSPC = bytes.fromhex("00000000dead")


@dataclass
class TdxFleet:
    """Simulated TDX machines; an "unknown device" is a platform whose FMSPC the PCS does not know."""

    intel: SimulatedIntel
    tee: str = "tdx"
    reference_name: str = "mr_td"
    _platforms: dict[bool, SimulatedTdxPlatform] | None = None

    def new_guest(self, kind: str) -> tuple[SimulatedTdxPlatform, bytes]:
        if self._platforms is None:
            # One machine per known/unknown FMSPC: a fleet of TDs on a few hosts, as in a cloud.
            self._platforms = {
                True: SimulatedTdxPlatform.create(self.intel),
                False: SimulatedTdxPlatform.create(self.intel, fmspc=UNKNOWN_FMSPC),
            }
        machine = self._platforms[kind != "unknown_device"]
        mr_td = OTHER_IMAGE_MEASUREMENT if kind == "wrong_measurement" else DEMO_IMAGE_MEASUREMENT
        return machine, mr_td

    def evidence(self, guest: tuple[SimulatedTdxPlatform, bytes], nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any:
        machine, mr_td = guest
        quote = bytearray(machine.make_quote(expected_report_data(nonce, tee_pubkey), mr_td=mr_td, rtmrs=[bytes(48)] * 4))
        if tamper:
            quote[48 + 136] ^= 0x01  # one bit of MRTD in the TD report body, after signing
        return {"cc_eventlog": None, "quote": base64.b64encode(bytes(quote)).decode()}


@dataclass
class TpmFleet:
    """Simulated TPM nodes (software AKs signing real TPMS_ATTEST quotes over a measured boot).
    Each node's AK is registered before the run, as an operator enrols machines; an "unknown
    device" is a node nobody registered, a "wrong measurement" one booted another kernel."""

    size: int
    tee: str = "tpm"
    reference_name: str = "pcr4"
    _pool: list[SimulatedTpm] = field(default_factory=list)

    def prepare(self) -> None:
        """Create and boot the registered nodes (ECDSA P-256 AKs: quick to generate)."""
        for _ in range(self.size):
            node = SimulatedTpm.create("ecc")
            node.boot()
            self._pool.append(node)

    def references(self) -> list[tuple[str, str, list[str]]]:
        approved = SimulatedTpm.create("ecc")
        approved.boot()
        nodes = [("ak", f"node-{i}", [node.ak_fingerprint()]) for i, node in enumerate(self._pool)]
        return [*nodes, ("pcr4", "", [approved.pcrs[4].hex()])]

    def new_guest(self, kind: str) -> SimulatedTpm:
        if kind == "unknown_device" or not self._pool:
            node = SimulatedTpm.create("ecc")
            node.boot()
            return node
        node = self._pool.pop()
        if kind == "wrong_measurement":
            node.reboot()
            node.boot(kernel=b"a kernel nobody approved")
        return node

    def evidence(self, guest: SimulatedTpm, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any:
        doc = tpm_evidence(guest, nonce, tee_pubkey)
        if tamper:  # one bit of the quote's signature
            signature = bytearray(base64.b64decode(doc["tpm_quote"]["signature"]))
            signature[-1] ^= 0x01
            doc["tpm_quote"]["signature"] = base64.b64encode(bytes(signature)).decode()
        return doc


DEMO_PCR0 = hashlib.sha256(b"remits demo firmware v1").digest()


@dataclass
class AzureSnpFleet:
    """Simulated Azure SNP CVMs: a paravisor's HCL report (the vTPM's AK in its var data) bound
    into an SNP report of the simulated AMD vendor, and a vTPM quote over the PCRs. An "unknown
    device" is a CVM whose var data the SNP report does not commit to (an AK from anywhere)."""

    kds: LocalAmdKds
    tee: str = "az-snp-vtpm"
    reference_name: str = "measurement"

    def references(self) -> list[tuple[str, str, list[str]]]:
        return [("measurement", "", [DEMO_IMAGE_MEASUREMENT.hex()]), ("pcr0", "", [DEMO_PCR0.hex()])]

    def new_guest(self, kind: str) -> tuple[SimulatedAzureCvm, str]:
        measurement = OTHER_IMAGE_MEASUREMENT if kind == "wrong_measurement" else DEMO_IMAGE_MEASUREMENT
        cvm = SimulatedAzureCvm.create(self.kds.vendor, measurement, pcr0=DEMO_PCR0)
        return cvm, "unbound" if kind == "unknown_device" else ""

    def evidence(self, guest: tuple[SimulatedAzureCvm, str], nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any:
        cvm, how = guest
        return az_snp_vtpm_evidence(cvm, nonce, tee_pubkey, tamper="quote_signature" if tamper else how)


@dataclass
class GcpFleet:
    """Simulated GCE VMs: a software AK with an AK certificate from a simulated Google EK/AK CA
    (instance information included), quotes over three PCR banks and a measured-boot log. An
    "unknown device" holds a certificate from another CA, a "wrong measurement" other firmware."""

    ca: SimulatedGoogleCa
    tee: str = "gcp-vtpm"
    reference_name: str = "pcr0"
    _stranger: SimulatedGoogleCa | None = None

    def references(self) -> list[tuple[str, str, list[str]]]:
        approved = SimulatedGceVm.create(self.ca, Instance(project_id="remits-demo"))
        return [("pcr0", "", [approved.pcr(0).hex()]), ("project_id", "", ["remits-demo"])]

    def new_guest(self, kind: str) -> SimulatedGceVm:
        if kind == "unknown_device":
            self._stranger = self._stranger or SimulatedGoogleCa.generate("Someone else's CA")
            return SimulatedGceVm.create(self._stranger, Instance(project_id="remits-demo"))
        firmware = b"unapproved firmware" if kind == "wrong_measurement" else b"remits demo firmware"
        return SimulatedGceVm.create(self.ca, Instance(project_id="remits-demo"), firmware=firmware)

    def evidence(self, guest: SimulatedGceVm, nonce: str, tee_pubkey: dict[str, str], *, tamper: bool) -> Any:
        attestation = bytearray(gcp_vtpm_evidence(guest, nonce, tee_pubkey))
        if tamper:  # one bit of the AK certificate's signature, at the end of its DER
            cert_end = attestation.find(guest.ak_cert_der) + len(guest.ak_cert_der)
            attestation[cert_end - 1] ^= 0x01
        return base64.b64encode(bytes(attestation)).decode()


async def provision(admin: TrustAdmin, platform: FleetTee, secret: bytes) -> None:
    """The demo image's measurement and the demo secret, bound to the demo's TEE (the sample TEE
    gets resources only because the demo enables it for its own)."""
    actor = "remits demo"
    references = getattr(platform, "references", None)
    provisioned = (
        references()
        if references is not None
        else [(platform.reference_name, "", [DEMO_IMAGE_MEASUREMENT.hex()])]
    )
    for name, record_id, values in provisioned:
        await admin.put_reference_value(platform.tee, name, values, actor, record_id=record_id)
    binding: dict[str, Any] = {"tees": [platform.tee]}
    if platform.tee == "sample":
        binding["allow_sample"] = True
    # A SEV workload's secret is named after the workload (GET /kbs/v0/key/<workload>).
    await admin.put_resource(getattr(platform, "resource_path", DEMO_RESOURCE), secret, actor, binding)


def plan_fleet(fleet: int, bad: int) -> list[str]:
    """Which device is which: the bad ones spread through the fleet, a mix of every bad kind."""
    kinds = ["good"] * fleet
    if bad:
        step = fleet / bad
        for i in range(bad):
            kinds[int(i * step)] = BAD_KINDS[i % len(BAD_KINDS)]
    return kinds


async def run_device(
    kind: str,
    base_url: str,
    connector: aiohttp.BaseConnector,
    platform: FleetTee,
    device: Any,
    secret: bytes,
    captured: asyncio.Queue[dict[str, Any]],
) -> DeviceRun:
    client = GuestClient.new(base_url, connector)
    started = time.perf_counter()
    try:
        if kind == "replayed":
            # An attacker replays evidence captured from a guest that already attested.
            body = await captured.get()
            auth = await client.auth(platform.tee)
            if auth.status != 200:
                return DeviceRun(kind, "error", f"auth {auth.status}", False, _ms(started))
            result = await client.attest(body)
        else:
            auth = await client.auth(platform.tee)
            if auth.status != 200:
                return DeviceRun(kind, "error", f"auth {auth.status}", False, _ms(started))
            nonce = auth.body["nonce"]
            tamper = kind == "tampered"
            if getattr(platform, "needs_challenge", False):  # IBM SE: the request is in the challenge
                evidence = platform.evidence(device, nonce, client.tee_pubkey, tamper=tamper, challenge=auth.body)
            else:
                evidence = platform.evidence(device, nonce, client.tee_pubkey, tamper=tamper)
            body = client.attestation_body(nonce, evidence)
            result = await client.attest(body)
            if kind == "good":
                captured.put_nowait(body)
        if result.status != 200:
            return DeviceRun(kind, "rejected", result.reason, False, _ms(started))
        status = submod_status(unverified_claims(result.body["token"]))
        fetched = await client.resource(DEMO_RESOURCE)
        released = fetched.status == 200 and client.decrypt(fetched.body) == secret
        return DeviceRun(kind, status, "", released, _ms(started))
    except Exception as exc:  # a demo device that crashes is reported, not hidden
        return DeviceRun(kind, "error", repr(exc), False, _ms(started))
    finally:
        await client.close()


def unverified_claims(token: str) -> dict[str, Any]:
    """The guest reads its own token's status; verifying it is the relying party's job."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = math.ceil(q / 100.0 * len(ordered))  # nearest-rank definition
    return ordered[min(len(ordered), max(1, rank)) - 1]


async def run_fleet(
    base_url: str,
    platform: FleetTee,
    secret: bytes,
    fleet: int,
    bad: int,
    concurrency: int = 100,
) -> dict[str, Any]:
    """Run the fleet against a stack already provisioned with ``provision(..., secret)``."""
    if not 0 <= bad <= fleet:
        raise ValueError("--bad must be between 0 and --fleet")
    kinds = plan_fleet(fleet, bad)
    devices = [platform.new_guest(kind) for kind in kinds]
    captured: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    connector = aiohttp.TCPConnector(limit=concurrency)
    gate = asyncio.Semaphore(concurrency)

    async def one(kind: str, device: Any) -> DeviceRun:
        async with gate:
            return await run_device(kind, base_url, connector, platform, device, secret, captured)

    started = time.perf_counter()
    # Replays wait for captured evidence, so the good guests go first in the schedule.
    order = sorted(range(fleet), key=lambda i: kinds[i] == "replayed")
    runs = await asyncio.gather(*(one(kinds[i], devices[i]) for i in order))
    elapsed = time.perf_counter() - started
    await connector.close()
    return summarize(runs, elapsed)


def summarize(runs: list[DeviceRun], elapsed: float) -> dict[str, Any]:
    statuses = Counter(r.status for r in runs)
    latencies = [r.latency_ms for r in runs]
    reasons = Counter(f"{r.kind}:{r.reason}" for r in runs if r.status == "rejected")
    return {
        "submitted": len(runs),
        "affirming": statuses["affirming"],
        "warning": statuses["warning"],
        "contraindicated": statuses["contraindicated"],
        "rejected": statuses["rejected"],
        "errors": statuses["error"],
        "secrets_released": sum(r.secret_released for r in runs),
        "elapsed_s": round(elapsed, 3),
        "attestations_per_s": round(len(runs) / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "mean_ms": round(statistics.fmean(latencies), 1) if latencies else 0.0,
        "rejection_reasons": dict(sorted(reasons.items())),
        "error_details": sorted({r.reason for r in runs if r.status == "error"})[:5],
    }
