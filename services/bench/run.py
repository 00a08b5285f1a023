"""`remits bench`: the service measured from outside its processes.

One run: embedded NATS and Redis, the simulated vendors in their own process (endorsements issued
ahead, as real vendors have them), the REMITS processes (one per component by default, so CPU can
be told apart per stage; or whole-stack processes as `remits up` runs them), and K load-generator
processes speaking the KBS protocol over HTTP. Every number in the report is taken from outside
the service: CPU from /proc, Redis commands from Redis' own counters, bus messages from the
JetStream streams' sequences; stage timings and Redis round trips are what the processes
themselves counted, collected over NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import msgspec

from services.bench import crypto_floor, report
from services.bench import fleet as simulated_fleet
from services.cli.common import spawn_server, spawn_worker, stop_processes
from shared import credentials, schemas
from shared.bus import ensure_topology
from shared.cache import Store
from shared.config import Settings
from shared.connections import connect_nats, identity_of, open_store
from shared.embedded import ManagedServer, free_port, nats_server, redis_server
from shared.metrics import LogHistogram
from shared.stats import COLLECT_SUBJECT, RESET_SUBJECT
from shared.tenants import DEFAULT as DEFAULT_TENANT
from shared.trust.operator import operator_trust

RESOURCE = "default/key/demo"
REFERENCE_NAME = {"sample": "measurement", "snp": "measurement", "tdx": "mr_td"}
COMPONENTS_SPLIT = ("gateway", *report.STAGE_KINDS, "audit")
READY_TIMEOUT_S = 600.0  # a cold vendor issues thousands of certificates; priming attests a fleet


@dataclass
class BenchConfig:
    tee: str = "sample"
    scenario: str = "reattest"
    concurrency: int = 64
    rate: float | None = None
    duration_s: float = 20.0
    warmup_s: float = 5.0
    clients: int = 1
    fleet: int = 0  # 0: a default for the scenario
    layout: str = "split"
    processes: int = 2  # whole-stack processes (layout "stack")
    replicas: dict[str, int] = field(default_factory=dict)  # extra processes per component (split)
    seed: str = "remits-bench"
    cache_dir: Path = simulated_fleet.DEFAULT_CACHE_DIR
    verify_every: int = 10
    crypto_threads: int | None = None
    tenants: int = 1  # > 1: tenants bench-1..bench-N (the default tenant left out), guests round-robin
    progress: Callable[[str], None] | None = None

    @property
    def tenant_names(self) -> tuple[str, ...]:
        if self.tenants <= 1:
            return (DEFAULT_TENANT,)
        return tuple(f"bench-{index}" for index in range(1, self.tenants + 1))

    @property
    def tees(self) -> tuple[str, ...]:
        return crypto_floor.TEES if self.tee == "mix" else (self.tee,)

    def fleet_size(self) -> int:
        if self.fleet:
            return self.fleet
        # A boot storm spends one new chip per attestation; enough for ~400/s over the whole run.
        return 1000 if self.scenario == "reattest" else int(400 * (self.duration_s + self.warmup_s)) + 1000


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Snapshot:
    at: float
    cpu: dict[int, report.CpuSample]
    redis_commands: int
    stream_seqs: dict[str, int]
    nats_msgs: int


@dataclass
class Run:
    config: BenchConfig
    workdir: Path
    processes: dict[int, str] = field(default_factory=dict)  # pid -> kind
    servers: list[asyncio.subprocess.Process] = field(default_factory=list)
    infra: list[ManagedServer] = field(default_factory=list)
    monitor_port: int = 0
    store: Store | None = None
    nc: Any = None
    js: Any = None

    @property
    def credentials_dir(self) -> Path:
        return self.workdir / "data" / "credentials"

    def track(self, pid: int, kind: str) -> None:
        self.processes[pid] = kind

    async def snapshot(self) -> Snapshot:
        assert self.store is not None
        cpu = {}
        for pid, kind in self.processes.items():
            seconds = _cpu_seconds(pid)
            if seconds is not None:
                cpu[pid] = report.CpuSample(kind, seconds)
        info = (await self.store.client.execute("INFO", "stats")).decode()
        commands = next(int(line.split(":")[1]) for line in info.splitlines() if line.startswith("total_commands_processed:"))
        seqs = {}
        for stream in (schemas.PIPELINE_STREAM, schemas.DECISION_STREAM, schemas.DLQ_STREAM):
            seqs[stream] = (await self.js.stream_info(stream)).state.last_seq
        return Snapshot(time.time(), cpu, commands, seqs, await self._nats_msgs())

    async def _nats_msgs(self) -> int:
        """Every message nats-server received or sent (acks, pull requests, PubAcks included)."""
        try:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{self.monitor_port}/varz") as resp:
                varz = await resp.json()
            return int(varz["in_msgs"]) + int(varz["out_msgs"])
        except Exception:
            return 0

    async def broadcast(self, subject: str, expected: int, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """Ask every REMITS process; gather the answers until all expected ones came."""
        inbox = self.nc.new_inbox()
        answers: list[dict[str, Any]] = []
        done = asyncio.Event()

        async def on_answer(msg: Any) -> None:
            answers.append(msgspec.json.decode(msg.data))
            if len(answers) >= expected:
                done.set()

        sub = await self.nc.subscribe(inbox, cb=on_answer)
        await self.nc.publish(subject, b"", reply=inbox)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout_s)
        await sub.unsubscribe()
        return answers


async def _read_json_line(stream: asyncio.StreamReader, timeout_s: float, what: str) -> dict[str, Any]:
    while True:
        line = await asyncio.wait_for(stream.readline(), timeout_s)
        if not line:
            raise RuntimeError(f"{what} exited before it was ready")
        text = line.strip()
        if text.startswith(b"{"):
            value: dict[str, Any] = json.loads(text)
            return value


async def _spawn_python(module: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    log = open(log_path, "ab")  # noqa: ASYNC230 - handed to the child, closed right after
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, env=env or dict(os.environ),
    )
    log.close()
    return proc


@contextlib.asynccontextmanager
async def _infrastructure(run: Run) -> AsyncIterator[tuple[str, str]]:
    run.monitor_port = free_port()
    credentials.ensure_credentials(run.credentials_dir)
    nats = nats_server(run.workdir / "infra", monitor_port=run.monitor_port, credentials_dir=run.credentials_dir)
    redis = redis_server(run.workdir / "infra", credentials_dir=run.credentials_dir)
    try:
        for server in (nats, redis):
            await asyncio.to_thread(server.start)
            run.infra.append(server)
        assert nats.proc is not None and redis.proc is not None
        run.track(nats.proc.pid, "nats-server")
        run.track(redis.proc.pid, "redis-server")
        yield f"nats://127.0.0.1:{nats.port}", f"redis://127.0.0.1:{redis.port}/0"
    finally:
        for server in reversed(run.infra):
            await asyncio.to_thread(server.stop)


async def _start_vendor(run: Run, settings: Settings) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    cfg = run.config
    argv = [
        "--tees", ",".join(cfg.tees), "--seed", cfg.seed, "--fleet", str(cfg.fleet_size()),
        "--server-data-dir", str(settings.data_dir), "--cache-dir", str(cfg.cache_dir),
    ]
    proc = await _spawn_python("services.bench.vendor", argv, run.workdir / "vendor.log")
    assert proc.stdout is not None
    try:
        ready = await _read_json_line(proc.stdout, READY_TIMEOUT_S, "the vendor process")
    except BaseException:
        proc.kill()
        raise
    run.track(proc.pid, "vendor")
    return proc, ready


def _settings_with_vendor(settings: Settings, env: dict[str, str]) -> Settings:
    paths = {"REMITS_SNP_ROOTS_DIR": "snp_roots_dir", "REMITS_DCAP_ROOT_CA_PATH": "dcap_root_ca_path"}
    urls = {"REMITS_SAMPLE_KDS_URL": "sample_kds_url", "REMITS_SNP_KDS_URL": "snp_kds_url", "REMITS_DCAP_PCS_URL": "dcap_pcs_url"}
    changes: dict[str, Any] = {name: env[key] for key, name in urls.items() if key in env}
    changes.update({name: Path(env[key]) for key, name in paths.items() if key in env})
    return replace(settings, **changes)


async def _provision(settings: Settings, tees: tuple[str, ...], names: tuple[str, ...] = (DEFAULT_TENANT,)) -> list[bytes]:
    """In each tenant (created first unless it is the default one): the fleet's measurement per
    TEE and a bench secret of its own (enabled for the sample TEE too), in the trust buckets before
    any service starts. Returns the secrets, in the order of ``names``."""
    secrets = []
    async with operator_trust(settings) as admin:
        for name in names:
            if name != DEFAULT_TENANT:
                await admin.put_tenant(name, "remits bench")
            view = admin.for_tenant(name)
            secret = os.urandom(32)
            for tee in tees:
                await view.put_reference_value(tee, REFERENCE_NAME[tee], [simulated_fleet.MEASUREMENT.hex()], "remits bench")
            await view.put_resource(RESOURCE, secret, "remits bench", {"tees": list(tees), "allow_sample": True})
            secrets.append(secret)
    return secrets


async def _start_servers(run: Run, settings: Settings, port: int) -> int:
    """The REMITS processes; returns how many there are (each answers the stats requests)."""
    cfg = run.config
    logs = run.workdir / "logs"
    logs.mkdir(exist_ok=True)
    if cfg.layout == "stack":
        for index in range(cfg.processes):
            proc = await spawn_server(settings, port, logs / f"stack-{index}.log", audit=index == 0)
            run.servers.append(proc)
            run.track(proc.pid, "stack")
        return cfg.processes
    for component in COMPONENTS_SPLIT:
        for index in range(1 + cfg.replicas.get(component, 0)):
            proc = await spawn_worker(settings, component, logs / f"{component}-{index}.log", port)
            run.servers.append(proc)
            run.track(proc.pid, component)
    return len(run.servers)


def _client_argv(
    cfg: BenchConfig, url: str, first: int, count: int, secrets: list[bytes], duration_s: float
) -> list[str]:
    argv = [
        "--url", url, "--tee", cfg.tee, "--seed", cfg.seed, "--cache-dir", str(cfg.cache_dir),
        "--scenario", cfg.scenario, "--first", str(first), "--count", str(count),
        "--warmup", str(cfg.warmup_s), "--duration", str(duration_s),
        "--verify-every", str(cfg.verify_every), "--secret", ",".join(secret.hex() for secret in secrets),
    ]  # fmt: skip
    if cfg.tenant_names != (DEFAULT_TENANT,):
        argv += ["--tenants", ",".join(cfg.tenant_names)]
    per_client = max(1, cfg.concurrency // cfg.clients)
    if cfg.rate is not None:
        argv += ["--rate", str(cfg.rate / cfg.clients), "--concurrency", str(per_client)]
    else:
        argv += ["--concurrency", str(per_client)]
    return argv


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` consecutive ranges covering 0..total-1 as evenly as possible: (first, count)."""
    base, extra = divmod(total, parts)
    ranges, first = [], 0
    for index in range(parts):
        count = base + (1 if index < extra else 0)
        ranges.append((first, count))
        first += count
    return ranges


@dataclass
class Progress:
    """The live line: clients report cumulative counts; the rate counts from the measured window."""

    latest: dict[int, tuple[int, int]] = field(default_factory=dict)  # client -> (completed, errors)
    baseline: dict[int, tuple[int, int]] = field(default_factory=dict)  # at the window's start
    latency: LogHistogram = field(default_factory=LogHistogram)
    started_measure: float = 0.0

    def update(self, client: int, event: dict[str, Any]) -> None:
        counts = (int(event.get("completed", 0)), int(event.get("errors", 0)))
        if event.get("phase") == "measure":
            if client not in self.baseline:
                self.baseline[client] = self.latest.get(client, (0, 0))
                self.started_measure = self.started_measure or time.time()
            self.latency.merge(LogHistogram.from_wire(event["hist"]))
        self.latest[client] = counts

    def line(self) -> str:
        done = sum(c for c, _ in self.latest.values())
        errors = sum(e for _, e in self.latest.values())
        if not self.started_measure:
            return f"[warm-up] {done} attestations, {errors} errors"
        measured = done - sum(c for c, _ in self.baseline.values())
        failed = errors - sum(e for _, e in self.baseline.values())
        elapsed = max(1e-6, time.time() - self.started_measure)
        return (
            f"[{elapsed:5.1f} s] {measured / elapsed:8.1f} att/s  p50 {self.latency.percentile(50):7.1f} ms  "
            f"p99 {self.latency.percentile(99):7.1f} ms  errors {failed}"
        )


async def _follow_client(
    client: int, proc: asyncio.subprocess.Process, progress: Progress, results: list[dict[str, Any]]
) -> None:
    assert proc.stdout is not None
    while True:
        line = await proc.stdout.readline()
        if not line:
            return
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "progress":
            progress.update(client, event)
        elif event.get("event") == "result":
            results.append(event)


async def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    say = cfg.progress or (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="remits-bench-") as tmp:
        run = Run(cfg, Path(tmp))
        async with _infrastructure(run) as (nats_url, redis_url):
            port = free_port()
            settings = Settings(
                nats_url=nats_url, redis_url=redis_url, data_dir=run.workdir / "data", http_port=port,
                credentials_dir=run.credentials_dir,
            )  # fmt: skip
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            vendor, vendor_ready = await _start_vendor(run, settings)
            clients: list[asyncio.subprocess.Process] = []
            try:
                settings = _settings_with_vendor(settings, vendor_ready["env"])
                operator = identity_of(settings, credentials.ADMIN)  # the bench sets up and observes
                run.nc, run.js = await connect_nats(settings, operator, "remits-bench")
                await ensure_topology(run.js, settings)
                run.store = open_store(settings, operator)
                secrets = await _provision(settings, cfg.tees, cfg.tenant_names)
                if cfg.crypto_threads is not None:
                    settings = replace(settings, crypto_threads=cfg.crypto_threads)
                n_servers = await _start_servers(run, settings, port)
                say(f"{n_servers} REMITS processes ({cfg.layout}); starting {cfg.clients} client(s)")
                url = f"http://127.0.0.1:{port}"
                for index, (first, count) in enumerate(_split(cfg.fleet_size(), cfg.clients)):
                    argv = _client_argv(cfg, url, first, count, secrets, cfg.duration_s)
                    proc = await _spawn_python("services.bench.loadgen", argv, run.workdir / f"client-{index}.log")
                    clients.append(proc)
                    run.track(proc.pid, "client")
                readies = [
                    await _read_json_line(proc.stdout, READY_TIMEOUT_S, "a client")  # type: ignore[arg-type]
                    for proc in clients
                ]
                say(f"clients ready ({sum(r.get('devices', 0) for r in readies)} devices); measuring")
                await _reset_vendor_stats(vendor_ready)
                start_at = time.time() + 1.0
                for proc in clients:
                    assert proc.stdin is not None
                    proc.stdin.write(json.dumps({"start_at": start_at}).encode() + b"\n")
                    await proc.stdin.drain()
                progress = Progress()
                results: list[dict[str, Any]] = []
                followers = [asyncio.create_task(_follow_client(i, proc, progress, results)) for i, proc in enumerate(clients)]
                printer = asyncio.create_task(_print_progress(progress, cfg.progress))
                await _sleep_until(start_at + cfg.warmup_s)
                before = await run.snapshot()
                await run.broadcast(RESET_SUBJECT, n_servers)
                await _sleep_until(start_at + cfg.warmup_s + cfg.duration_s)
                after = await run.snapshot()
                stats = await run.broadcast(COLLECT_SUBJECT, n_servers)
                vendor_stats = await _vendor_stats(vendor_ready)
                await asyncio.wait_for(asyncio.gather(*followers), 120)
                printer.cancel()
                for proc in clients:
                    await proc.wait()
            finally:
                await stop_processes(clients, timeout_s=5)
                await stop_processes(run.servers)
                await stop_processes([vendor], timeout_s=5)
                if run.nc is not None:
                    await run.nc.close()
                if run.store is not None:
                    await run.store.close()
        # On the same machine, once everything else has stopped, so nothing competes with it.
        say("measuring the crypto floor")
        floor = await asyncio.to_thread(crypto_floor.measure, cfg.tees, cfg.scenario == "boot-storm")
        return build_report(cfg, cores, before, after, stats, results, vendor_stats, floor, n_servers)


async def _sleep_until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


async def _print_progress(progress: Progress, out: Callable[[str], None] | None) -> None:
    if out is None:
        return
    while True:
        await asyncio.sleep(1.0)
        out(progress.line())


async def _reset_vendor_stats(ready: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as http, http.post(ready["reset_url"]) as resp:
        resp.raise_for_status()


async def _vendor_stats(ready: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(ready["stats_url"]) as resp:
        value: dict[str, Any] = await resp.json()
        return value


def build_report(
    cfg: BenchConfig,
    cores: int,
    before: Snapshot,
    after: Snapshot,
    stats: list[dict[str, Any]],
    results: list[dict[str, Any]],
    vendor_stats: dict[str, Any],
    floor: crypto_floor.CryptoFloor,
    n_servers: int,
) -> dict[str, Any]:
    totals = report.merge_client_results(results)
    completed = totals.completed
    per_tenant = {name: totals.per_tenant.get(name, 0) for name in cfg.tenant_names}
    per_tenant_errors = {name: totals.per_tenant_errors.get(name, 0) for name in cfg.tenant_names}
    cpu = report.cpu_ms_per_attestation(before.cpu, after.cpu, completed)
    bus = {stream: after.stream_seqs[stream] - before.stream_seqs[stream] for stream in before.stream_seqs}
    bound = report.crypto_bound_per_s(cores, floor.us)
    rate = totals.attestations_per_s
    kinds: dict[str, int] = {}
    for kind in (s.kind for s in before.cpu.values()):
        kinds[kind] = kinds.get(kind, 0) + 1
    return {
        "tee": cfg.tee,
        "scenario": cfg.scenario,
        "mode": "open" if cfg.rate is not None else "closed",
        "concurrency": cfg.concurrency,
        "rate": cfg.rate,
        "clients": cfg.clients,
        "layout": cfg.layout,
        "processes": kinds,
        "stats_answers": f"{len(stats)}/{n_servers}",
        "cores": cores,
        "cpu_model": cpu_model(),
        "warmup_s": cfg.warmup_s,
        "duration_s": cfg.duration_s,
        "measured_s": round(totals.measured_s, 3),
        "completed": completed,
        "attestations_per_s": rate,
        "p50_ms": round(totals.latency.percentile(50), 2),
        "p95_ms": round(totals.latency.percentile(95), 2),
        "p99_ms": round(totals.latency.percentile(99), 2),
        "mean_ms": round(totals.latency.mean_ms, 2),
        "max_ms": round(totals.latency.max_ms, 2),
        "phases_ms": {
            name: {"p50_ms": round(h.percentile(50), 2), "p99_ms": round(h.percentile(99), 2)}
            for name, h in totals.phases.items()
        },
        "errors": totals.errors,
        "errors_by_reason": totals.errors_by_reason,
        "secrets_verified": totals.secrets_verified,
        "fleet_exhausted": totals.fleet_exhausted,
        "per_stage": report.stage_times(stats),
        "cpu_ms_per_attestation": cpu,
        "server_cpu_ms_per_attestation": report.total_of(cpu, report.SERVER_KINDS),
        "service_cpu_ms_per_attestation": report.total_of(cpu, report.SERVICE_KINDS),
        "redis_roundtrips_per_attestation": report.per_attestation(report.counter_total(stats, "redis_round_trips"), completed),
        "redis_commands_per_attestation": report.per_attestation(after.redis_commands - before.redis_commands - 1, completed),
        "bus_messages_per_attestation": report.per_attestation(sum(bus.values()), completed),
        "bus_messages_by_stream": bus,
        "nats_messages_per_attestation": report.per_attestation(after.nats_msgs - before.nats_msgs, completed),
        "endorsement_fetches": vendor_stats,
        "crypto_floor_us": floor.us,
        "crypto_floor_ops": {"us_each": floor.operations_us, "per_attestation": floor.per_attestation},
        "crypto_bound_per_s": bound,
        "efficiency": report.efficiency(rate, bound),
        "tenants": len(cfg.tenant_names),
        "per_tenant": per_tenant,
        "per_tenant_errors": per_tenant_errors,
    }
