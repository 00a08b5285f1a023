"""Assembles the running service: data directory, platforms, stage runners, audit consumer and the
HTTP gateway, in any combination (one process for `remits up`, one stage for `remits worker`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from services.audit.worker import run_audit
from services.common import StageContext, make_dead_letter_handler
from services.decide.worker import make_handler as decide_handler
from services.endorse.worker import make_handler as endorse_handler
from services.gateway.app import Gateway
from services.gateway.waiter import OutcomeWaiter
from services.identity.worker import make_handler as identity_handler
from services.intake.worker import make_handler as intake_handler
from services.measure.worker import make_handler as measure_handler
from services.release.worker import Release, ResourceResponder
from shared import schemas
from shared.bus import RELEASE_DECISIONS_DURABLE, JetStreamPublisher, StageRunner, connect, ensure_topology
from shared.cache import ConfigWatch, Store
from shared.config import Settings
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
    """Some or all REMITS components running in this process."""

    settings: Settings
    components: tuple[str, ...] = COMPONENTS
    setup_topology: bool = True
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    gateway_url: str = ""
    runners: dict[str, StageRunner] = field(default_factory=dict)
    resource_responder: ResourceResponder | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _site_runner: web.AppRunner | None = None

    async def start(self) -> None:
        configure_logging()
        configure_tracing(self.settings.service_name)
        init_data_dir(self.settings)
        self.nc, self.js = await connect(self.settings.nats_url, f"remits-{'-'.join(self.components)}")
        if self.setup_topology:
            await ensure_topology(self.js, self.settings)
        self.store = Store.from_url(self.settings.redis_url)
        self.fetcher = EndorsementFetcher()
        self.publisher = JetStreamPublisher(self.nc)
        await self.publisher.start()
        self.config_watch = ConfigWatch(self.store.client)
        if "measure" in self.components:
            self.config_watch.start()
        self.ctx = StageContext(
            settings=self.settings,
            nc=self.nc,
            js=self.js,
            store=self.store,
            platforms=build_platforms(self.settings),
            signing_key=load_or_create_signing_key(self.settings.signing_key_path),
            fetcher=self.fetcher,
            publisher=self.publisher,
            config_watch=self.config_watch,
        )
        self.stats = StatsResponder(self.nc, self.components, self._counters)
        await self.stats.start()
        dead_letter = make_dead_letter_handler(self.ctx)
        for stage in self.components:
            if stage not in schemas.STAGES:
                continue
            if stage == "release":
                # Decisions come from the decision stream; resource fetches are requests answered
                # directly by the same Release object.
                release = Release(self.ctx)
                runner = StageRunner(
                    stage, self.nc, self.js, release.handle, dead_letter, self.settings, publisher=self.publisher,
                    stream=schemas.DECISION_STREAM, durable=RELEASE_DECISIONS_DURABLE,
                )
                self.resource_responder = ResourceResponder(release, limit=self.settings.stage_concurrency * 8)
                await self.resource_responder.start()
            else:
                runner = StageRunner(
                    stage, self.nc, self.js, HANDLERS[stage](self.ctx), dead_letter, self.settings,
                    slow=(stage == "endorse"), publisher=self.publisher,
                )
            self.runners[stage] = runner
            self._tasks.append(asyncio.create_task(runner.run(self.stop_event), name=f"stage-{stage}"))
        if "audit" in self.components:
            self._tasks.append(
                asyncio.create_task(run_audit(self.nc, self.settings.audit_log_path, self.stop_event), name="audit")
            )
        if "gateway" in self.components:
            await self._start_gateway()
        log.info("stack.ready", components=list(self.components), gateway=self.gateway_url)

    def _counters(self) -> dict[str, int]:
        return {
            "redis_round_trips": self.store.client.round_trips,
            "redis_commands": self.store.client.commands,
            "jetstream_publishes": self.publisher.published,
        }

    async def _start_gateway(self) -> None:
        self.waiter = OutcomeWaiter(self.nc, self.store, uuid.uuid4().hex[:12])
        await self.waiter.start()
        gateway = Gateway(self.settings, self.nc, self.publisher, self.store, self.waiter)
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
        if "gateway" in self.components:
            await self.waiter.stop()
        await self.stats.stop()
        await self.config_watch.stop()
        await self.publisher.stop()
        await self.fetcher.close()
        with contextlib.suppress(Exception):
            await self.nc.close()
        await self.store.close()
        if self.ctx.crypto_pool is not None:
            self.ctx.crypto_pool.shutdown(wait=False)
