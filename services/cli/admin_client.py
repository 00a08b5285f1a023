"""How the operator's commands reach the trust configuration: over HTTP through the admin API
(signing a short-lived admin JWT with the operator's key), or with `--local` straight to NATS
as the operator (the admin identity of the credentials directory), running the same request
handling in-process. Both answer (HTTP status, JSON document)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from services.cli.common import RUNNING_NATS_FILE, settings_from_args
from shared.config import Settings

DEFAULT_URL = "http://127.0.0.1:8080"


def add_admin_client_flags(parser: argparse.ArgumentParser, *, tenant_flag: bool = True) -> None:
    parser.add_argument("--url", default=None, help=f"REMITS gateway (default: $REMITS_URL or {DEFAULT_URL})")
    parser.add_argument(
        "--key", default=None, help="admin private key (PEM) signing the request (default: $REMITS_ADMIN_KEY)"
    )
    parser.add_argument(
        "--subject", default=None, help="who you are, recorded in the audit trail (default: $USER)"
    )
    parser.add_argument(
        "--local", action="store_true", help="change the store directly as the operator, not over HTTP"
    )
    if tenant_flag:
        _add_tenant_flag(parser)
    add_local_flags(parser)


def _add_tenant_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tenant",
        default=None,
        help="the tenant whose policies, reference values, resources, revocations and keys to act on "
        "(default: $REMITS_TENANT or 'default'); over HTTP the request goes to /t/<tenant>/admin/v1/...",
    )


def tenant_of(args: argparse.Namespace) -> str:
    from shared import tenants

    name = getattr(args, "tenant", None) or os.environ.get("REMITS_TENANT") or tenants.DEFAULT
    try:
        return tenants.check_name(name, "--tenant")
    except tenants.BadTenant as exc:
        raise SystemExit(f"remits: {exc}") from None


def add_local_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nats",
        help="NATS URL (with --local; default: the running `remits up` of --data-dir, or start one on it)",
    )
    parser.add_argument(
        "--data-dir", help="the data directory of an embedded `remits up` (default: $REMITS_DATA_DIR)"
    )
    parser.add_argument(
        "--credentials-dir", help="credentials (default: $REMITS_CREDENTIALS_DIR or DATA_DIR/credentials)"
    )
    parser.add_argument("--nats-creds", help="the operator's NATS credentials")


class AdminCall(Protocol):
    async def __call__(
        self, method: str, path: str, body: bytes = b"", query: dict[str, str] | None = None
    ) -> tuple[int, Any]: ...


@dataclass
class _Http:
    url: str
    key_pem: bytes
    subject: str
    session: Any
    tenant: str = "default"

    async def __call__(
        self, method: str, path: str, body: bytes = b"", query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        from shared.adminauth import sign_admin_token

        token = sign_admin_token(self.key_pem, self.subject, now=time.time(), lifetime_s=120)
        from shared import tenants

        scope = "" if self.tenant == tenants.DEFAULT else f"/t/{self.tenant}"
        target = f"{self.url.rstrip('/')}{scope}/admin/v1/{path.lstrip('/')}"
        async with self.session.request(
            method, target, data=body, params=query or {}, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            raw = await response.read()
        return response.status, _decode(raw)


def _decode(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw) if raw else None
    except msgspec.DecodeError:
        return {"error": "admin.bad_answer", "detail": raw[:200].decode("utf-8", "replace")}


def operator_name(args: argparse.Namespace) -> str:
    return str(getattr(args, "subject", None) or os.environ.get("USER") or getpass.getuser() or "operator")


@contextlib.asynccontextmanager
async def admin_session(args: argparse.Namespace) -> AsyncIterator[AdminCall]:
    """An AdminCall for ``args``: HTTP unless --local."""
    if getattr(args, "local", False):
        async with local_admin(args) as call:
            yield call
        return
    import aiohttp

    key_path = args.key or os.environ.get("REMITS_ADMIN_KEY", "")
    if not key_path:
        raise SystemExit(
            "remits: an admin private key is needed (--key FILE or REMITS_ADMIN_KEY), or use --local"
        )
    url = args.url or os.environ.get("REMITS_URL", DEFAULT_URL)
    key_pem = await asyncio.to_thread(Path(key_path).read_bytes)
    async with aiohttp.ClientSession() as session:
        yield _Http(url, key_pem, operator_name(args), session, tenant_of(args))


def local_settings(args: argparse.Namespace) -> Settings:
    settings = settings_from_args(args)
    if settings.credentials_dir is None and (settings.data_dir / "credentials").exists():
        settings = settings_from_args(args, credentials_dir=settings.data_dir / "credentials")
    return settings


@contextlib.asynccontextmanager
async def operator_nats(args: argparse.Namespace) -> AsyncIterator[tuple[Settings, Any, Any]]:
    """(settings, nc, js) as the operator: the NATS given, else the one a running `remits up` of
    the data directory started, else an embedded one started here on the data directory's
    JetStream store (a stopped stack's data stays readable; a cluster's, as a cluster again)."""
    from shared import credentials
    from shared.connections import connect_nats, identity_of
    from shared.embedded import nats_cluster, nats_server

    settings = local_settings(args)
    servers: list[Any] = []
    # --nats, or REMITS_NATS_URL (compose, an operator's shell), names the server to use.
    if not getattr(args, "nats", None) and "REMITS_NATS_URL" not in os.environ:
        running = settings.data_dir / "infra" / RUNNING_NATS_FILE
        url = running.read_text().strip() if running.exists() else ""
        if url and await _answers(url):
            settings = settings_from_args(args, nats_url=url, credentials_dir=settings.credentials_dir)
        else:
            if settings.credentials_dir is None:
                raise SystemExit(
                    f"remits: no credentials in {settings.data_dir}/credentials (is this a REMITS data directory?)"
                )
            infra = settings.data_dir / "infra"
            # `remits up --nats-cluster N` left one store (and config) per node.
            size = len(list((infra / "nats-cluster").glob("n*.conf")))
            if size > 1:
                servers = await asyncio.to_thread(nats_cluster, infra, size, settings.credentials_dir)
            else:
                servers = [nats_server(infra, credentials_dir=settings.credentials_dir)]
                servers[0].start()
            settings = settings_from_args(
                args,
                nats_url=",".join(f"nats://127.0.0.1:{server.port}" for server in servers),
                credentials_dir=settings.credentials_dir,
            )
    try:
        nc, js = await connect_nats(settings, identity_of(settings, credentials.ADMIN), "remits-operator")
        try:
            yield settings, nc, js
        finally:
            with contextlib.suppress(Exception):
                await nc.drain()
    finally:
        for server in servers:
            server.stop()


async def _answers(url: str) -> bool:
    """Whether a server of ``url`` (one URL, or a cluster's comma-separated) accepts connections."""
    from urllib.parse import urlparse

    from shared.config import nats_urls

    for each in nats_urls(url):
        parsed = urlparse(each)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parsed.hostname, parsed.port or 4222), 1.0
            )
        except (OSError, TimeoutError):
            continue
        writer.close()
        return True
    return False


@contextlib.asynccontextmanager
async def local_admin(args: argparse.Namespace) -> AsyncIterator[AdminCall]:
    from services.provision.routes import AdminApi
    from shared import credentials
    from shared.bus import JetStreamPublisher
    from shared.connections import MissingCredentials, identity_of, keyring_of
    from shared.trust import buckets
    from shared.trust.admin import TrustAdmin
    from shared.trust.mirror import TrustMirror, ensure_buckets

    async with operator_nats(args) as (settings, nc, js):
        identity = identity_of(settings, credentials.ADMIN)
        publisher = JetStreamPublisher(nc, auth=identity.auth)
        await publisher.start()
        # Only creates missing buckets: resizing them is `remits setup`'s job.
        await ensure_buckets(js, settings.replicas, resize=False)
        mirror = TrustMirror(js, buckets.ALL, check_every_s=0)
        await mirror.start()
        try:
            keyring = keyring_of(settings, identity)
        except MissingCredentials:
            keyring = None
        admin = TrustAdmin(js, publisher, keyring=(lambda: keyring) if keyring else None)
        api = AdminApi(admin, mirror.snapshot, [], [*_provisioner_keys(settings)], clock=time.time)
        actor = f"{operator_name(args)} (local)"
        tenant = tenant_of(args)

        async def call(
            method: str, path: str, body: bytes = b"", query: dict[str, str] | None = None
        ) -> tuple[int, Any]:
            reply = await api.handle_as(actor, method, path, body, query or {}, tenant=tenant)
            return reply.status, reply.body

        try:
            yield call
        finally:
            await mirror.stop()
            await publisher.stop()


def _provisioner_keys(settings: Settings) -> list[Any]:
    from shared.adminauth import load_admin_keys

    return load_admin_keys(list(settings.provisioner_keys))


def print_reply(status: int, doc: Any) -> int:
    """The answer as JSON on stdout (errors on stderr); exit 0 for 2xx, else 1."""
    import json
    import sys

    text = json.dumps(doc, indent=2, sort_keys=True)
    if 200 <= status < 300:
        print(text)
        return 0
    print(f"remits: HTTP {status}: {text}", file=sys.stderr)
    return 1
