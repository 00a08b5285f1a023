"""Connecting one component to NATS and Redis as itself: its own credentials, its own inbox space,
TLS where configured, and the key it authenticates its messages with."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared import credentials
from shared.busauth import BusAuth
from shared.cache import Store
from shared.config import Settings
from shared.resp import RedisEndpoint, RespClient


class MissingCredentials(RuntimeError):
    """A component would run on an open bus; it refuses unless that was asked for explicitly."""


@dataclass(frozen=True)
class ComponentIdentity:
    component: str
    nats_creds: Path | None
    inbox_prefix: str | None
    redis_url: str
    auth: BusAuth | None

    @property
    def open_bus(self) -> bool:
        return self.auth is None


def identity_of(settings: Settings, component: str) -> ComponentIdentity:
    """Who ``component`` is, from ``settings.credentials_dir`` (and ``nats_creds`` / a Redis URL
    that already names a user, which take precedence). Without credentials it refuses, unless
    ``insecure_open_bus`` is set."""
    if settings.credentials_dir is None:
        if not settings.insecure_open_bus:
            raise MissingCredentials(
                f"{component}: no credentials (REMITS_CREDENTIALS_DIR / --credentials-dir; `remits creds` writes "
                "them). Refusing to run on an open bus; REMITS_INSECURE_OPEN_BUS=true overrides, for development only."
            )
        return ComponentIdentity(component, settings.nats_creds, None, settings.redis_url, None)
    creds = credentials.load(settings.credentials_dir, component)
    named = RedisEndpoint.from_url(settings.redis_url).password is not None
    return ComponentIdentity(
        component=component,
        nats_creds=settings.nats_creds or creds.nats_seed_path,
        inbox_prefix=credentials.inbox_prefix(component),
        redis_url=settings.redis_url if named else creds.redis_url(settings.redis_url),
        auth=BusAuth(component, creds.bus_key, creds.peer_bus_keys),
    )


def _tls(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if ca is None and cert is None:
        return None
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


def nats_tls(settings: Settings) -> ssl.SSLContext | None:
    return _tls(settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key)


def redis_tls(settings: Settings) -> ssl.SSLContext | None:
    return _tls(settings.redis_tls_ca, settings.redis_tls_cert, settings.redis_tls_key)


async def connect_nats(settings: Settings, identity: ComponentIdentity, name: str) -> tuple[NATS, JetStreamContext]:
    from shared.bus import connect

    return await connect(
        settings.nats_url, name, creds=identity.nats_creds, inbox_prefix=identity.inbox_prefix, tls=nats_tls(settings)
    )


def open_store(settings: Settings, identity: ComponentIdentity) -> Store:
    return Store(RespClient.from_url(identity.redis_url, ssl_context=redis_tls(settings)))
