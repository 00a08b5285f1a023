"""Connecting one component to NATS and Redis as itself: its own credentials, its own inbox space,
TLS where configured, and the key it authenticates its messages with."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from shared import credentials
from shared.busauth import BusAuth
from shared.cache import Store
from shared.config import Settings
from shared.resp import RedisEndpoint, RespClient
from shared.telemetry import get_logger

log = get_logger("remits.connections")


class MissingCredentials(RuntimeError):
    """A component would run on an open bus; it refuses unless that was asked for explicitly."""


@dataclass(frozen=True)
class ComponentIdentity:
    component: str
    nats_creds: Path | None
    inbox_prefix: str | None
    redis_url: str
    auth: BusAuth | None
    relay_private_pem: str = ""
    relay_public_pem: str = ""
    kek_path: Path | None = None
    sev_key: bytes = b""  # seals SEV launch sessions (identity, measure, release); b"": SEV is off
    se_key: bytes = b""  # derives and seals SE attestation requests (identity); b"": SE is off

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
        relay_private_pem=creds.relay_private_pem,
        relay_public_pem=creds.relay_public_pem,
        kek_path=creds.kek_path,
        sev_key=bytes.fromhex(creds.sev_key_path.read_text().strip()) if creds.sev_key_path else b"",
        se_key=bytes.fromhex(creds.se_key_path.read_text().strip()) if creds.se_key_path else b"",
    )


def keyring_of(settings: Settings, identity: ComponentIdentity):  # type: ignore[no-untyped-def]
    """The key-encryption keys of secrets at rest (``_file_keyring``), with the HSM-held KEK as
    the current one when REMITS_PKCS11_KEK names it: then no KEK that seals new secrets is ever
    outside the HSM, and older records open with the file keys until they are rewrapped."""
    return with_custody(settings, _file_keyring(settings, identity))


# HSM-held KEKs opened by this process, by where they live: a key ring read again (after `remits
# kek rotate`) takes the open one rather than a new session and login each time.
_hsm_keks: dict[tuple[str, str, int | None, str], Any] = {}


def with_custody(settings: Settings, ring):  # type: ignore[no-untyped-def]
    """``ring`` with the HSM-held KEK as its current key, when one is configured."""
    if settings.pkcs11_module and settings.pkcs11_kek:
        from services.custody import hsm_kek

        where = (settings.pkcs11_module, settings.pkcs11_token, settings.pkcs11_slot, settings.pkcs11_kek)
        kek = _hsm_keks.get(where)
        if kek is None:
            kek = _hsm_keks[where] = hsm_kek(settings)
        return ring.with_custody(kek)
    return ring


def _file_keyring(settings: Settings, identity: ComponentIdentity):  # type: ignore[no-untyped-def]
    """A value from configuration (REMITS_KEK), a key file (REMITS_KEK_FILE), the one in the
    component's credentials, or, on an open development bus only, one created in the data directory."""
    from shared.sealing import KeyRing

    if settings.kek:
        return KeyRing.from_env_value(settings.kek)
    if settings.kek_file is not None:
        return KeyRing.load_or_create(settings.kek_file)
    if identity.kek_path is not None:
        return KeyRing.load_or_create(identity.kek_path)
    if identity.open_bus:
        return KeyRing.load_or_create(settings.data_dir / "kek.json")
    raise MissingCredentials(
        f"{identity.component}: no key-encryption key (kek.json in its credentials, or REMITS_KEK)"
    )


def kek_file_of(settings: Settings, identity: ComponentIdentity) -> Path | None:
    """The key file keyring_of reads, if the KEK comes from a file (rotation rewrites it)."""
    if settings.kek:
        return None
    if settings.kek_file is not None:
        return settings.kek_file
    if identity.kek_path is not None:
        return Path(identity.kek_path)
    return settings.data_dir / "kek.json" if identity.open_bus else None


def keyring_source(settings: Settings, identity: ComponentIdentity):  # type: ignore[no-untyped-def]
    """A callable giving the current key ring, read again whenever its file changes: after
    `remits kek rotate`, new secrets are sealed under the new KEK without a restart."""
    ring = keyring_of(settings, identity)
    path = kek_file_of(settings, identity)
    if path is None:
        return lambda: ring
    from shared.sealing import KeyRing, SealingError

    state = {"ring": ring, "stamp": file_stamp(path)}

    def current():  # type: ignore[no-untyped-def]
        stamp = file_stamp(path)
        if stamp != state["stamp"]:
            try:
                state["ring"] = with_custody(settings, KeyRing.load(path))
                state["stamp"] = stamp
            except (SealingError, OSError) as exc:
                log.warning("kek.reload_failed", file=str(path), error=str(exc))
        return state["ring"]

    return current


def file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def relay_keys_of(settings: Settings, identity: ComponentIdentity) -> tuple[str, str]:
    """(private, public) PEM of provision's relay key as far as this component holds them."""
    if identity.relay_private_pem or identity.relay_public_pem:
        return identity.relay_private_pem, identity.relay_public_pem
    if identity.open_bus:  # development: one key in the data directory serves both ends
        from shared.credentials import _new_relay_key, _relay_public

        path = settings.data_dir / "relay-key.pem"
        if not path.exists():
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(_new_relay_key())
        private = path.read_text()
        return private, _relay_public(private)
    return "", ""


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


async def connect_nats(
    settings: Settings, identity: ComponentIdentity, name: str
) -> tuple[NATS, JetStreamContext]:
    from shared.bus import connect

    return await connect(
        settings.nats_url,
        name,
        creds=identity.nats_creds,
        inbox_prefix=identity.inbox_prefix,
        tls=nats_tls(settings),
    )


def open_store(settings: Settings, identity: ComponentIdentity) -> Store:
    # A dependency that does not answer within the bound is unavailable (the connection is
    # dropped and the next command reconnects): callers turn that into a retry, not a hang.
    timeout = settings.dependency_timeout_s
    return Store(
        RespClient.from_url(
            identity.redis_url,
            ssl_context=redis_tls(settings),
            connect_timeout_s=timeout,
            command_timeout_s=timeout,
        )
    )
