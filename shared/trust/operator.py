"""The operator's own handle on the trust configuration (the demo, the bench and tools that
provision before any service runs): the admin identity, the streams and buckets set up."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from shared import credentials
from shared.bus import JetStreamPublisher, ensure_topology
from shared.config import Settings
from shared.connections import MissingCredentials, connect_nats, identity_of, keyring_of
from shared.trust.admin import TrustAdmin
from shared.trust.mirror import ensure_buckets


@contextlib.asynccontextmanager
async def operator_trust(settings: Settings) -> AsyncIterator[TrustAdmin]:
    identity = identity_of(settings, credentials.ADMIN)
    nc, js = await connect_nats(settings, identity, "remits-operator")
    publisher = JetStreamPublisher(nc, auth=identity.auth)
    await publisher.start()
    try:
        await ensure_topology(js, settings)
        await ensure_buckets(js)
        try:
            ring = keyring_of(settings, identity)
        except MissingCredentials:
            ring = None
        yield TrustAdmin(js, publisher, keyring=(lambda: ring) if ring is not None else None)
    finally:
        await publisher.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
