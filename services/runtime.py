"""Assembles the running service: data directory, platforms, stage runners, audit consumer and the
HTTP gateway, in any combination (one process for `remits up`, one stage for `remits worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.audit.worker import run_audit
from services.common import StageContext, stage_runner
from services.decide.worker import make_handler as decide_handler
from services.endorse.worker import make_handler as endorse_handler
from services.gateway.app import Gateway
from services.gateway.waiter import OutcomeWaiter
from services.identity.worker import make_handler as identity_handler
from services.intake.worker import make_handler as intake_handler
from services.measure.worker import make_handler as measure_handler
from services.release.worker import Release, ResourceResponder
from shared import credentials, schemas
from shared.bus import RELEASE_DECISIONS_DURABLE, JetStreamPublisher, StageRunner, ensure_topology
from shared.cache import ConfigWatch, Store
from shared.config import Settings
from shared.connections import MissingCredentials, connect_nats, identity_of, open_store
from shared.ear import load_or_create_signing_key
from shared.fetch import EndorsementFetcher
from shared.platforms.base import Platform
from shared.platforms.sample.pki import VendorPKI
from shared.platforms.sample.platform import SamplePlatform
from shared.platforms.snp.abi import Product
from shared.platforms.snp.certs import AmdRoots, load_roots, pinned_roots
from shared.platforms.snp.platform import SnpPlatform
from shared.platforms.tdx import pinned_root_der
from shared.platforms.tdx.platform import DcapPlatform
from shared.stats import StatsResponder
from shared.telemetry import configure_logging, configure_tracing, get_logger

log = get_logger("remits.runtime")

HANDLERS = {
    "intake": intake_handler,
    "endorse": endorse_handler,
    "identity": identity_handler,
    "measure": measure_handler,
    "decide": decide_handler,
}
COMPONENTS = (*schemas.STAGES, "gateway", "audit")


def init_data_dir(settings: Settings) -> None:
    """Create the service signing key and the sample vendor PKI once; later runs reuse them."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    load_or_create_signing_key(settings.signing_key_path)
    if not (settings.sample_pki_dir / "root.pem").exists():
        VendorPKI.generate(datetime.now(UTC)).save(settings.sample_pki_dir)


def snp_roots(settings: Settings) -> dict[Product, AmdRoots]:
    """The AMD roots shipped with REMITS, or (tests and demos only) a test vendor's roots."""
    if settings.snp_roots_dir is None:
        return pinned_roots()
    return {
        product: load_roots(settings.snp_roots_dir / product.value.lower(), product)
        for product in Product
        if (settings.snp_roots_dir / product.value.lower() / "ark.pem").exists()
    }


def build_platforms(settings: Settings) -> dict[str, Platform]:
    pki = VendorPKI.load(settings.sample_pki_dir)
    intel_root = dcap_root_der(settings)
    dcap = {
        tee: DcapPlatform(tee, intel_root, settings.dcap_pcs_url, require_crls=settings.dcap_require_crls)
        for tee in ("tdx", "sgx")
    }
    return {
        "sample": SamplePlatform(pki.root_cert, settings.sample_kds_url),
        "snp": SnpPlatform(snp_roots(settings), settings.snp_kds_url),
        **dcap,
    }


def dcap_root_der(settings: Settings) -> bytes:
    """The pinned Intel SGX Root CA, or (tests and demos only) a test vendor's root."""
    if settings.dcap_root_ca_path is None:
        return pinned_root_der()
    cert = x509.load_pem_x509_certificate(settings.dcap_root_ca_path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Stack:
    """Some or all REMITS components running in this process, each connected as itself: its own
    NATS user and Redis user, its own inbox space and message key (shared.connections)."""

    settings: Settings
    components: tuple[str, ...] = COMPONENTS
    setup_topology: bool = True
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    gateway_url: str = ""
    runners: dict[str, StageRunner] = field(default_factory=dict)
    contexts: dict[str, StageContext] = field(default_factory=dict)
    resource_responder: ResourceResponder | None = None
    # The operator's connections, only where this process sets up the topology (`remits up`,
    # tests): a worker never holds the admin identity.
    nc: Any = None
    js: Any = None
    store: Store | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _site_runner: web.AppRunner | None = None
    _stats: StatsResponder | None = None
    _admin_store: Store | None = None

    async def start(self) -> None:
        configure_logging()
        configure_tracing(self.settings.service_name)
        init_data_dir(self.settings)
        self.platforms = build_platforms(self.settings)
        self.signing_key = load_or_create_signing_key(self.settings.signing_key_path)
        self.fetcher = EndorsementFetcher()
        if self.setup_topology:
            admin = identity_of(self.settings, credentials.ADMIN)
            self.nc, self.js = await connect_nats(self.settings, admin, "remits-admin")
            await ensure_topology(self.js, self.settings)
            self.store = open_store(self.settings, admin)
        for component in self.components:
            ctx = await self.attach(component)
            if component in schemas.STAGES:
                await self._start_stage(component, ctx)
            elif component == "audit":
                audit = run_audit(ctx.nc, self.settings.audit_log_path, self.stop_event, auth=ctx.auth)
                self._tasks.append(asyncio.create_task(audit, name="audit"))
            elif component == "gateway":
                await self._start_gateway(ctx)
        first = next(iter(self.contexts.values()), None)
        if first is not None:
            self._stats = StatsResponder(first.nc, self.components, self._counters)
            await self._stats.start()
        log.info("stack.ready", components=list(self.components), gateway=self.gateway_url)

    async def attach(self, component: str) -> StageContext:
        """Connect ``component`` as itself (without starting its work: tests run their own)."""
        identity = identity_of(self.settings, component)
        nc, js = await connect_nats(self.settings, identity, f"remits-{component}")
        store = open_store(self.settings, identity)
        publisher = JetStreamPublisher(nc, auth=identity.auth)
        await publisher.start()
        ctx = StageContext(
            component=component,
            settings=self.settings,
            nc=nc,
            js=js,
            store=store,
            platforms=self.platforms,
            signing_key=self.signing_key,
            fetcher=self.fetcher,
            publisher=publisher,
            config_watch=ConfigWatch(store.client),
            auth=identity.auth,
        )
        self.contexts[component] = ctx
        return ctx

    def set_clock(self, clock: Callable[[], float]) -> None:
        """What every component takes as the time (tests replaying evidence at its own time)."""
        for ctx in self.contexts.values():
            ctx.clock = clock

    async def _start_stage(self, stage: str, ctx: StageContext) -> None:
        if stage == "release":
            # Decisions come from the decision stream; resource fetches are requests answered
            # directly by the same Release object.
            release = Release(ctx)
            runner = stage_runner(stage, ctx, release.handle, stream=schemas.DECISION_STREAM, durable=RELEASE_DECISIONS_DURABLE)
            self.resource_responder = ResourceResponder(release, limit=self.settings.stage_concurrency * 8)
            await self.resource_responder.start()
        else:
            if stage == "measure":
                ctx.config_watch.start()
            runner = stage_runner(stage, ctx, HANDLERS[stage](ctx), slow=(stage == "endorse"))
        self.runners[stage] = runner
        self._tasks.append(asyncio.create_task(runner.run(self.stop_event), name=f"stage-{stage}"))

    def _counters(self) -> dict[str, int]:
        clients = [ctx.store.client for ctx in self.contexts.values()]
        return {
            "redis_round_trips": sum(c.round_trips for c in clients),
            "redis_commands": sum(c.commands for c in clients),
            "jetstream_publishes": sum(ctx.publisher.published for ctx in self.contexts.values()),
        }

    async def _start_gateway(self, ctx: StageContext) -> None:
        self.waiter = OutcomeWaiter(ctx.nc, ctx.store, uuid.uuid4().hex[:12], auth=ctx.auth)
        await self.waiter.start()
        if self.settings.admin_token:
            # The admin endpoint writes resources as the operator; without a token it is off and
            # this process holds no operator identity.
            try:
                self._admin_store = open_store(self.settings, identity_of(self.settings, credentials.ADMIN))
            except (OSError, MissingCredentials) as exc:
                log.warning("gateway.admin_endpoint_off", reason=f"no operator credentials here: {exc!r}")
        gateway = Gateway(
            self.settings, ctx.nc, ctx.publisher, ctx.store, self.waiter, auth=ctx.auth, admin_store=self._admin_store
        )
        self._site_runner = web.AppRunner(gateway.app(), access_log=None)
        await self._site_runner.setup()
        site = web.TCPSite(
            self._site_runner,
            self.settings.http_host,
            self.settings.http_port,
            reuse_port=self.settings.http_reuse_port or None,
        )
        await site.start()
        sockets = site._server.sockets if site._server else []  # type: ignore[union-attr]
        port = sockets[0].getsockname()[1] if sockets else self.settings.http_port
        self.gateway_url = f"http://{self.settings.http_host}:{port}"

    async def stop(self) -> None:
        self.stop_event.set()
        if self.resource_responder is not None:
            await self.resource_responder.stop()
        if self._site_runner is not None:
            await self._site_runner.cleanup()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if "gateway" in self.contexts:
            await self.waiter.stop()
        if self._stats is not None:
            await self._stats.stop()
        for ctx in self.contexts.values():
            await ctx.config_watch.stop()
            await ctx.publisher.stop()
            with contextlib.suppress(Exception):
                await ctx.nc.close()
            await ctx.store.close()
            if ctx.crypto_pool is not None:
                ctx.crypto_pool.shutdown(wait=False)
        await self.fetcher.close()
        for store in (self.store, self._admin_store):
            if store is not None:
                await store.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
