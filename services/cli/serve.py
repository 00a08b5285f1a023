"""`remits up`, `remits worker`, `remits setup`, `remits kds`: running the service."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

from services.cli.common import (
    add_admin_key_flags,
    add_connection_flags,
    add_identity_flags,
    embedded_infrastructure,
    host_port,
    settings_from_args,
    spawn_server,
    spawn_worker,
    start_local_kds,
    stop_on_signals,
    stop_processes,
)
from services.runtime import COMPONENTS, Stack
from shared import credentials, schemas
from shared.config import Settings
from shared.connections import MissingCredentials, connect_nats, identity_of
from shared.embedded import free_port
from shared.observability import MetricsServer


def replica_spec(value: str) -> tuple[str, int]:
    """``STAGE=N`` for `remits up --replicas`."""
    stage, _, count = value.partition("=")
    if stage not in schemas.STAGES or not count.isdigit() or int(count) < 1:
        raise argparse.ArgumentTypeError(
            f"expected STAGE=N with STAGE one of {', '.join(schemas.STAGES)} and N >= 1"
        )
    return stage, int(count)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    up = sub.add_parser("up", help="run the whole stack (embedded NATS and Redis unless URLs are given)")
    add_connection_flags(up)
    add_admin_key_flags(up)
    up.add_argument(
        "--without-audit", action="store_true", help=argparse.SUPPRESS
    )  # further processes of one `up`
    up.add_argument("--http", type=host_port, default=None, help="gateway HOST:PORT (default 127.0.0.1:8080)")
    up.add_argument("--kds", help="sample vendor endorsement server URL (default: start a local one)")
    up.add_argument(
        "--reuse-port", action="store_true", help="let several `remits up` share the gateway port"
    )
    up.add_argument(
        "--processes",
        type=int,
        default=None,
        help="run the whole stack in N processes sharing the gateway port (default: one per core)",
    )
    up.add_argument(
        "--replicas",
        type=replica_spec,
        action="append",
        default=[],
        metavar="STAGE=N",
        help="N extra processes for one stage (repeatable), e.g. --replicas identity=2",
    )
    up.add_argument(
        "--nats-cluster",
        type=int,
        default=None,
        metavar="N",
        help="without --nats: run the embedded NATS as a JetStream cluster of N nodes, with N replicas "
        "of every stream and trust bucket (e.g. 3; default: one server)",
    )
    up.set_defaults(run=lambda args: asyncio.run(cmd_up(args)))

    worker = sub.add_parser("worker", help="run one component; several replicas may run at once")
    worker.add_argument("stage", choices=(*COMPONENTS, "join"))
    add_connection_flags(worker)
    add_admin_key_flags(worker)
    worker.add_argument("--http", type=host_port, default=None, help="gateway HOST:PORT")
    worker.add_argument("--kds", help="sample vendor endorsement server URL")
    worker.add_argument("--reuse-port", action="store_true", help="let several gateways share the port")
    worker.add_argument(
        "--metrics-port", type=int, default=None,
        help="serve /metrics, /healthz and /readyz on this port (REMITS_METRICS_PORT; 0: off) "
        "at REMITS_METRICS_HOST (default 127.0.0.1)",
    )  # fmt: skip
    worker.set_defaults(run=lambda args: asyncio.run(cmd_worker(args)))

    setup = sub.add_parser("setup", help="create or update the JetStream streams and consumers")
    setup.add_argument("--nats", help="NATS URL")
    setup.add_argument(
        "--tenant-audit", action="append", default=[], metavar="TENANT",
        help="also create TENANT's audit feed (its history, for the reader `remits creds --tenant-audit` made); "
        "readers found in the credentials directory get theirs anyway; repeatable",
    )  # fmt: skip
    setup.add_argument(
        "--drop-tenant-audit", action="append", default=[], metavar="TENANT",
        help="delete TENANT's audit feed (after its reader was removed); repeatable",
    )  # fmt: skip
    add_identity_flags(setup)
    setup.set_defaults(run=lambda args: asyncio.run(cmd_setup(args)))

    kds = sub.add_parser("kds", help="run the sample vendor's endorsement (key) server")
    kds.add_argument("--data-dir", help="holds sample-pki/ and enrolled device certificates in sample-kds/")
    kds.add_argument(
        "--http", type=host_port, default=("127.0.0.1", 8099), help="HOST:PORT (default 127.0.0.1:8099)"
    )
    kds.set_defaults(run=lambda args: asyncio.run(cmd_kds(args)))


def settle_heap() -> None:
    """What exists once a service process has started (modules, keys, platforms) lives as long as
    the process: keep it out of every garbage collection, so collections walk only what requests
    create."""
    gc.collect()
    gc.freeze()


def default_processes() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


async def cmd_up(args: argparse.Namespace) -> int:
    processes = default_processes() if args.processes is None else args.processes
    if processes < 1:
        print("remits up: --processes must be at least 1", file=sys.stderr)
        return 2
    if args.nats_cluster is not None and (args.nats_cluster < 1 or args.nats):
        print("remits up: --nats-cluster takes N >= 1 and no --nats", file=sys.stderr)
        return 2
    env_settings = Settings.from_env()
    data_dir = Path(args.data_dir) if args.data_dir else env_settings.data_dir
    creds = Path(args.credentials_dir) if args.credentials_dir else env_settings.credentials_dir
    async with embedded_infrastructure(args, data_dir, creds or data_dir / "credentials") as urls:
        extra: dict[str, object] = dict(urls)
        if processes > 1 or args.replicas:
            # Every process serves the same gateway port (SO_REUSEPORT); the kernel spreads
            # connections, and JetStream spreads stage work over the shared durable consumers.
            port = Settings.from_env().http_port if not args.http else args.http[1]
            extra.update(http_reuse_port=True, http_port=port or free_port())
        settings = settings_from_args(args, **extra)
        kds = None
        if not args.kds:
            _, kds = await start_local_kds(settings)
            settings = settings_from_args(args, **extra, sample_kds_url=kds.base_url)
        components = tuple(c for c in COMPONENTS if not (args.without_audit and c == "audit"))
        if settings.join_clusters_path is not None:
            components = (*components, "join")  # clusters configured: run their join service too
        stack = Stack(settings, components=components)
        try:
            await stack.start()
        except (MissingCredentials, PermissionError) as exc:
            print(f"remits up: {exc}", file=sys.stderr)
            return 2
        settle_heap()
        stop_on_signals(stack.stop_event)
        children = [
            await spawn_server(settings, settings.http_port, settings.data_dir / f"up-{index}.log")
            for index in range(1, processes)
        ]
        for stage, count in args.replicas:
            for index in range(count):
                log_path = settings.data_dir / f"replica-{stage}-{index}.log"
                children.append(await spawn_worker(settings, stage, log_path))
        print(f"REMITS gateway ready at {stack.gateway_url}", flush=True)
        replicas = " ".join(f"{stage}+{count}" for stage, count in args.replicas)
        print(
            f"  nats={settings.nats_url} redis={settings.redis_url} sample-kds={settings.sample_kds_url}"
            f" credentials={settings.credentials_dir} processes={processes}"
            + (f" replicas={replicas}" if replicas else ""),
            flush=True,
        )
        await stack.stop_event.wait()
        await stop_processes(children)
        await stack.stop()
        if kds is not None:
            await kds.stop()
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, metrics_port=args.metrics_port)
    stack = Stack(settings, components=(args.stage,), setup_topology=False)
    try:
        await stack.start()
    except (MissingCredentials, PermissionError) as exc:
        print(f"remits worker: {exc}", file=sys.stderr)
        return 2
    metrics = None
    if settings.metrics_port:
        metrics = MetricsServer(stack.not_ready)
        try:
            await metrics.start(settings.metrics_host, settings.metrics_port)
        except OSError as exc:
            print(f"remits worker: metrics port: {exc}", file=sys.stderr)
            await stack.stop()
            return 2
        print(f"REMITS metrics at http://{settings.metrics_host}:{metrics.port}/metrics", flush=True)
    settle_heap()
    stop_on_signals(stack.stop_event)
    if stack.gateway_url:
        print(f"REMITS gateway ready at {stack.gateway_url}", flush=True)
    print(f"REMITS worker ready: {args.stage} pid={os.getpid()}", flush=True)
    await stack.stop_event.wait()
    await stack.stop()  # drains: stops pulling, finishes, publishes and acks what it holds
    if metrics is not None:  # probes answer (not ready: "stopping") until the drain is over
        await metrics.stop()
    return 0


async def cmd_setup(args: argparse.Namespace) -> int:
    from shared import tenant_feeds, tenants
    from shared.bus import ensure_topology
    from shared.trust.mirror import ensure_buckets

    try:  # every name checked before anything is created
        # ...and those of REMITS_TENANT_AUDIT_FEEDS (comma-separated; the Kubernetes setup Job's).
        listed = [t.strip() for t in os.environ.get("REMITS_TENANT_AUDIT_FEEDS", "").split(",") if t.strip()]
        feeds = [tenants.check_name(t, "--tenant-audit") for t in args.tenant_audit]
        feeds += [tenants.check_name(t, "REMITS_TENANT_AUDIT_FEEDS") for t in listed]
        dropped = [tenants.check_name(t, "--drop-tenant-audit") for t in args.drop_tenant_audit]
    except tenants.BadTenant as error:
        print(f"remits setup: {error}", file=sys.stderr)
        return 2
    settings = settings_from_args(args)
    # Creating streams and consumers is the operator's right alone.
    nc, js = await connect_nats(settings, identity_of(settings, credentials.ADMIN), "remits-setup")
    try:
        await ensure_topology(js, settings)
        await ensure_buckets(js, settings.replicas)
        for name in await tenant_feeds.ensure(js, feeds):
            print(f"audit feed {name} ready")
        for tenant in dropped:
            gone = await tenant_feeds.drop(js, tenant)
            print(f"audit feed {tenant_feeds.durable(tenant)} {'deleted' if gone else 'did not exist'}")
    finally:
        await nc.drain()
    print("streams, consumers and trust buckets ready")
    return 0


async def cmd_kds(args: argparse.Namespace) -> int:
    settings = settings_from_args(argparse.Namespace(data_dir=args.data_dir))
    host, port = args.http
    _, kds = await start_local_kds(settings, host, port)
    print(f"sample KDS ready at {kds.base_url}", flush=True)
    stop = asyncio.Event()
    stop_on_signals(stop)
    await stop.wait()
    await kds.stop()
    return 0
