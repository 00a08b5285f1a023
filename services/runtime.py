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

from services.audit.chain import AuditSigner
from services.audit.worker import run_audit
from services.common import StageContext, stage_runner
from services.custody import record_signing_key, signing_backend
from services.decide.worker import make_handler as decide_handler
from services.endorse.worker import make_handler as endorse_handler
from services.gateway.app import Gateway
from services.gateway.waiter import OutcomeWaiter
from services.identity.worker import make_handler as identity_handler
from services.intake.worker import make_handler as intake_handler
from services.measure.worker import make_handler as measure_handler
from services.provision.worker import ProvisionService
from services.release.worker import Release, ResourceResponder
from shared import credentials, observability, schemas
from shared.bus import RELEASE_DECISIONS_DURABLE, JetStreamPublisher, StageRunner, ensure_topology
from shared.cache import Store
from shared.config import Settings
from shared.connections import (
    ComponentIdentity,
    MissingCredentials,
    connect_nats,
    identity_of,
    keyring_of,
    keyring_source,
    open_store,
    relay_keys_of,
)
from shared.ear import load_or_create_signing_key
from shared.fetch import EndorsementFetcher
from shared.platforms.azure.platform import AzureVtpmPlatform
from shared.platforms.base import Platform
from shared.platforms.cca.platform import CcaPlatform
from shared.platforms.gcp.platform import GcpVtpmPlatform
from shared.platforms.sample.pki import VendorPKI
from shared.platforms.sample.platform import SamplePlatform
from shared.platforms.se.platform import SePlatform
from shared.platforms.sev.platform import SevPlatform
from shared.platforms.snp.abi import Product
from shared.platforms.snp.certs import AmdRoots, load_roots, pinned_roots
from shared.platforms.snp.platform import SnpPlatform
from shared.platforms.tdx import pinned_root_der
from shared.platforms.tdx.platform import DcapPlatform
from shared.platforms.tpm.platform import TpmPlatform
from shared.policy.engine import PolicyCache
from shared.stats import StatsResponder
from shared.telemetry import configure_logging, configure_tracing, get_logger
from shared.trust import buckets
from shared.trust.admin import TrustAdmin
from shared.trust.mirror import TrustMirror, ensure_buckets

log = get_logger("remits.runtime")

HANDLERS = {
    "intake": intake_handler,
    "endorse": endorse_handler,
    "identity": identity_handler,
    "measure": measure_handler,
    "decide": decide_handler,
}
COMPONENTS = (*schemas.STAGES, "gateway", "audit", credentials.PROVISION)


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
    snp = SnpPlatform(snp_roots(settings), settings.snp_kds_url)
    return {
        "sample": SamplePlatform(pki.root_cert, settings.sample_kds_url),
        "snp": snp,
        **dcap,
        "tpm": TpmPlatform("tpm"),
        # Azure's paravisor vTPMs: the hardware layer is verified by the SNP and DCAP platforms.
        **{tee: AzureVtpmPlatform(tee, snp, dcap["tdx"]) for tee in ("az-snp-vtpm", "az-tdx-vtpm")},
        "gcp-vtpm": GcpVtpmPlatform("gcp-vtpm", settings.gcp_ak_roots_path),
        "sev": SevPlatform(),
        "cca": CcaPlatform(settings.cca_ta_url),
        "se": SePlatform(),
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
    provision: ProvisionService | None = None
    trust_admin: TrustAdmin | None = None
    _admin_publisher: JetStreamPublisher | None = None
    audit_bound: asyncio.Event = field(default_factory=asyncio.Event)
    join: Any = None  # the node-join service, when "join" is among the components

    async def start(self) -> None:
        configure_logging()
        configure_tracing(self.settings.service_name)
        init_data_dir(self.settings)
        self.platforms = build_platforms(self.settings)
        self.signing_key = signing_backend(self.settings)
        # The public half into the durable key set: a rotated key stays published with overlap.
        record_signing_key(self.settings, self.signing_key.public_key())
        self.fetcher = EndorsementFetcher()
        if self.setup_topology:
            admin = identity_of(self.settings, credentials.ADMIN)
            self.nc, self.js = await connect_nats(self.settings, admin, "remits-admin")
            await ensure_topology(self.js, self.settings)
            await ensure_buckets(self.js, self.settings.replicas)
            self.store = open_store(self.settings, admin)
            self._admin_publisher = JetStreamPublisher(self.nc, auth=admin.auth)
            await self._admin_publisher.start()
            try:
                ring = keyring_source(self.settings, admin)
            except MissingCredentials:
                ring = None
            # The operator's own writes (tests, the demo, the bench): the same path as `--local`.
            self.trust_admin = TrustAdmin(self.js, self._admin_publisher, keyring=ring)
        for component in self.components:
            ctx = await self.attach(component)
            if component in schemas.STAGES:
                await self._start_stage(component, ctx)
            elif component == "audit":
                await self._start_audit(ctx)
            elif component == credentials.PROVISION:
                await self._start_provision(ctx, identity_of(self.settings, component))
            elif component == "gateway":
                await self._start_gateway(ctx)
            elif component == credentials.JOIN:
                await self._start_join(ctx)
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
            auth=identity.auth,
            sev_key=identity.sev_key,
            se_key=identity.se_key,
        )
        readable = buckets.READERS.get(component, ())
        if readable:
            ctx.trust = TrustMirror(js, readable)
            await ctx.trust.start()
            ctx.policies = PolicyCache(max_entries=self.settings.policy_cache_entries)
        self.contexts[component] = ctx
        return ctx

    async def trust_synced(self) -> None:
        """Every component here holds every trust change stored so far."""
        for ctx in self.contexts.values():
            if ctx.trust is not None:
                await ctx.trust.caught_up()

    def set_clock(self, clock: Callable[[], float]) -> None:
        """What every component takes as the time (tests replaying evidence at its own time)."""
        for ctx in self.contexts.values():
            ctx.clock = clock

    async def _start_stage(self, stage: str, ctx: StageContext) -> None:
        if stage == "release":
            # Decisions come from the decision stream; resource fetches are requests answered
            # directly by the same Release object.
            identity = identity_of(self.settings, stage)
            release = Release(
                ctx, keyring_of(self.settings, identity), self.settings.kek_file or identity.kek_path
            )
            runner = stage_runner(
                stage, ctx, release.handle, stream=schemas.DECISION_STREAM, durable=RELEASE_DECISIONS_DURABLE
            )
            self.resource_responder = ResourceResponder(release, limit=self.settings.stage_concurrency * 8)
            await self.resource_responder.start()
        else:
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

    async def _start_audit(self, ctx: StageContext) -> None:
        signer = AuditSigner.load_or_create(self.settings.audit_key_path)
        audit = run_audit(
            ctx.nc,
            self.settings.audit_log_path,
            self.stop_event,
            auth=ctx.auth,
            signer=signer,
            publisher=ctx.publisher,
            bound=self.audit_bound,
        )
        self._tasks.append(asyncio.create_task(audit, name="audit"))

    async def _start_provision(self, ctx: StageContext, identity: ComponentIdentity) -> None:
        """The admin API's back end: the only writer of the trust buckets."""
        assert ctx.trust is not None
        self.provision = ProvisionService(
            ctx,
            keyring=keyring_source(self.settings, identity),
            relay_private_pem=relay_keys_of(self.settings, identity)[0],
        )
        await self.provision.start()

    async def _start_gateway(self, ctx: StageContext) -> None:
        self.waiter = OutcomeWaiter(ctx.nc, ctx.store, uuid.uuid4().hex[:12], auth=ctx.auth)
        await self.waiter.start()
        relay_public = relay_keys_of(self.settings, identity_of(self.settings, "gateway"))[1]
        gateway = Gateway(
            self.settings,
            ctx.nc,
            ctx.publisher,
            ctx.store,
            self.waiter,
            auth=ctx.auth,
            relay_public_pem=relay_public,
            trust=ctx.trust,
        )
        app = gateway.app()
        # /metrics (every component of this process: one registry) and /readyz on the gateway's port.
        app.add_routes(observability.routes(self.not_ready, healthz=False))
        self._site_runner = web.AppRunner(app, access_log=None)
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

    async def _start_join(self, ctx: StageContext) -> None:
        from services.join.service import JoinService

        self.join = JoinService(ctx)
        await self.join.start()

    async def not_ready(self) -> list[str]:
        """What keeps this process from taking work: [] when ready, else e.g. ["redis"]."""
        failing: list[str] = []
        if self.stop_event.is_set():
            failing.append("stopping")
        contexts = list(self.contexts.values())
        if not contexts or not all(ctx.nc.is_connected for ctx in contexts):
            failing.append("nats")
        pings = await asyncio.gather(
            *(observability.answers_within(lambda c=ctx: c.store.client.execute("PING"), 1.0) for ctx in contexts)
        )
        if not all(pings):
            failing.append("redis")
        bound = [runner.bound for runner in self.runners.values()]
        if "audit" in self.components:
            bound.append(self.audit_bound.is_set())
        if not all(bound):
            failing.append("consumers")
        return failing

    async def stop(self) -> None:
        self.stop_event.set()
        if self.resource_responder is not None:
            await self.resource_responder.stop()
        if self.provision is not None:
            await self.provision.stop()
        if self._site_runner is not None:
            await self._site_runner.cleanup()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        if "gateway" in self.contexts:
            await self.waiter.stop()
        if self.join is not None:
            await self.join.stop()
        if self._stats is not None:
            await self._stats.stop()
        for ctx in self.contexts.values():
            if ctx.trust is not None:
                await ctx.trust.stop()
            await ctx.publisher.stop()
            with contextlib.suppress(Exception):
                await ctx.nc.close()
            await ctx.store.close()
            if ctx.crypto_pool is not None:
                ctx.crypto_pool.shutdown(wait=False)
        await self.fetcher.close()
        if self.store is not None:
            await self.store.close()
        if self._admin_publisher is not None:
            await self._admin_publisher.stop()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
