"""What the command groups share: settings from flags, embedded infrastructure, server processes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from shared import credentials
from shared.config import Settings
from shared.embedded import ManagedServer, nats_cluster, nats_server, redis_server


def host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host, int(port)


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nats", help="NATS URL (default: start an embedded nats-server)")
    parser.add_argument("--redis", help="Redis URL (default: start an embedded redis-server)")
    parser.add_argument(
        "--data-dir",
        help="keys, sample PKI, audit trail and the embedded NATS's JetStream store with the trust configuration "
        "(default: $REMITS_DATA_DIR or ~/.local/share/remits)",
    )
    add_identity_flags(parser)


def add_identity_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--credentials-dir",
        help="each component's NATS and Redis credentials and message keys (`remits creds` writes them; "
        "default: $REMITS_CREDENTIALS_DIR, or the data directory's for embedded servers)",
    )
    parser.add_argument("--nats-creds", help="this component's NATS credentials (nkey seed or .creds file)")


RUNNING_NATS_FILE = "nats.url"


def add_admin_key_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--admin-key", action="append", default=None, metavar="FILE",
        help="PEM public key whose admin JWTs the admin API accepts (repeatable; also REMITS_ADMIN_KEYS). "
        "Without one the admin API is off",
    )  # fmt: skip
    parser.add_argument(
        "--provisioner-key", action="append", default=None, metavar="FILE",
        help="PEM public key trusted to sign reference-value manifests (repeatable; also REMITS_PROVISIONER_KEYS)",
    )  # fmt: skip


def settings_from_args(args: argparse.Namespace, **extra: object) -> Settings:
    overrides: dict[str, object] = dict(extra)
    if getattr(args, "nats", None):
        overrides["nats_url"] = args.nats
    if getattr(args, "redis", None):
        overrides["redis_url"] = args.redis
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "http", None):
        overrides["http_host"], overrides["http_port"] = args.http
    if getattr(args, "kds", None):
        overrides["sample_kds_url"] = args.kds
    if getattr(args, "reuse_port", False):
        overrides["http_reuse_port"] = True
    if getattr(args, "admin_key", None):
        overrides["admin_keys"] = tuple(args.admin_key)
    if getattr(args, "provisioner_key", None):
        overrides["provisioner_keys"] = tuple(args.provisioner_key)
    if getattr(args, "credentials_dir", None):
        overrides["credentials_dir"] = args.credentials_dir
    if getattr(args, "nats_creds", None):
        overrides["nats_creds"] = args.nats_creds
    return Settings.from_env(**overrides)


def stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


@contextlib.asynccontextmanager
async def embedded_infrastructure(
    args: argparse.Namespace, workdir: Path, credentials_dir: Path
) -> AsyncIterator[dict[str, Any]]:
    """Embedded NATS and/or Redis for whichever URL was not given, accepting only the users in
    ``credentials_dir`` (created there if missing); stopped again on exit. With
    ``args.nats_cluster`` N > 1, NATS is a JetStream cluster of N nodes: every URL is passed on
    (comma-separated) and streams and buckets keep N replicas."""
    settings: dict[str, Any] = {}
    started: list[ManagedServer] = []
    embedded = not getattr(args, "nats", None) or not getattr(args, "redis", None)
    if embedded:
        await asyncio.to_thread(credentials.ensure_credentials, credentials_dir)
        settings["credentials_dir"] = credentials_dir
    try:
        cluster = getattr(args, "nats_cluster", None) or 1
        if not getattr(args, "nats", None) and cluster > 1:
            nodes = await asyncio.to_thread(nats_cluster, workdir / "infra", cluster, credentials_dir)
            started.extend(nodes)
            settings["nats_url"] = ",".join(f"nats://127.0.0.1:{node.port}" for node in nodes)
            settings["replicas"] = cluster
            # Where tools find the running servers that own this data directory's JetStream store.
            (workdir / "infra" / RUNNING_NATS_FILE).write_text(settings["nats_url"] + "\n")
        elif not getattr(args, "nats", None):
            nats = nats_server(workdir / "infra", credentials_dir=credentials_dir)
            await asyncio.to_thread(nats.start)
            started.append(nats)
            settings["nats_url"] = f"nats://127.0.0.1:{nats.port}"
            # Where tools find the running server that owns this data directory's JetStream store.
            (workdir / "infra" / RUNNING_NATS_FILE).write_text(settings["nats_url"] + "\n")
        if not getattr(args, "redis", None):
            redis = redis_server(workdir / "infra", credentials_dir=credentials_dir)
            await asyncio.to_thread(redis.start)
            started.append(redis)
            settings["redis_url"] = f"redis://127.0.0.1:{redis.port}/0"
        yield settings
    finally:
        with contextlib.suppress(OSError):
            (workdir / "infra" / RUNNING_NATS_FILE).unlink()
        for server in started:
            await asyncio.to_thread(server.stop)


async def start_local_kds(settings: Settings, host: str = "127.0.0.1", port: int = 0):  # type: ignore[no-untyped-def]
    """The sample vendor's key server, serving the devices enrolled in the data directory."""
    from services.runtime import init_data_dir
    from shared.platforms.sample.endorsement_server import LocalEndorsementServer
    from shared.platforms.sample.pki import VendorPKI

    init_data_dir(settings)
    pki = VendorPKI.load(settings.sample_pki_dir)
    kds = LocalEndorsementServer({}, pki.chain_pem(), device_dir=settings.data_dir / "sample-kds")
    await kds.start(host, port)
    return pki, kds


def server_environment(settings: Settings) -> dict[str, str]:
    """The settings a child server process cannot take as flags (test vendors' roots, vendor URLs)."""
    env = dict(
        os.environ,
        REMITS_SNP_KDS_URL=settings.snp_kds_url,
        REMITS_DCAP_PCS_URL=settings.dcap_pcs_url,
        REMITS_CRYPTO_THREADS=str(settings.crypto_threads),
        # A child `remits up` sets up the topology too: with the same replica count.
        REMITS_REPLICAS=str(settings.replicas),
    )
    # One metrics port per machine address: children of one `remits up` would all bind it.
    env.pop("REMITS_METRICS_PORT", None)
    if settings.credentials_dir is not None:
        env["REMITS_CREDENTIALS_DIR"] = str(settings.credentials_dir)
    if settings.admin_keys:
        env["REMITS_ADMIN_KEYS"] = ",".join(str(p) for p in settings.admin_keys)
    if settings.provisioner_keys:
        env["REMITS_PROVISIONER_KEYS"] = ",".join(str(p) for p in settings.provisioner_keys)
    if settings.snp_roots_dir is not None:
        env["REMITS_SNP_ROOTS_DIR"] = str(settings.snp_roots_dir)
    if settings.sev_roots_dir is not None:
        env["REMITS_SEV_ROOTS_DIR"] = str(settings.sev_roots_dir)
    if settings.dcap_root_ca_path is not None:
        env["REMITS_DCAP_ROOT_CA_PATH"] = str(settings.dcap_root_ca_path)
    if settings.cca_ta_url:
        env["REMITS_CCA_TA_URL"] = settings.cca_ta_url
    if settings.se_dir is not None:
        env["REMITS_SE_DIR"] = str(settings.se_dir)
    if settings.gcp_ak_roots_path is not None:
        env["REMITS_GCP_AK_ROOTS_PATH"] = str(settings.gcp_ak_roots_path)
    return env


def connection_argv(settings: Settings) -> list[str]:
    return [
        "--nats",
        settings.nats_url,
        "--redis",
        settings.redis_url,
        "--kds",
        settings.sample_kds_url,
        "--data-dir",
        str(settings.data_dir),
    ]


async def spawn_remits(
    argv: Sequence[str], settings: Settings, log_path: Path, ready_prefix: bytes, timeout_s: float = 30.0
) -> asyncio.subprocess.Process:
    """Start ``remits ARGV`` as a child process and wait until it prints its ready line."""
    log = open(log_path, "ab")  # noqa: ASYNC230 - handed to the child, closed right after
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=log,
        env=server_environment(settings),
    )
    log.close()
    assert proc.stdout is not None
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
            if not line:
                raise RuntimeError(f"`remits {' '.join(argv[:2])}` exited early; see {log_path}")
            if line.startswith(ready_prefix):
                return proc
    except BaseException:
        proc.kill()
        raise


async def spawn_server(
    settings: Settings, port: int, log_path: Path, *, audit: bool = False
) -> asyncio.subprocess.Process:
    """One more whole-stack process serving the same gateway port (SO_REUSEPORT). Only one
    process of a deployment writes the audit trail (``audit``): one chain, one writer."""
    argv = [
        "up", *connection_argv(settings), "--http", f"{settings.http_host}:{port}", "--reuse-port",
        "--processes", "1", *([] if audit else ["--without-audit"]),
    ]  # fmt: skip
    return await spawn_remits(argv, settings, log_path, b"REMITS gateway ready")


async def spawn_worker(
    settings: Settings, component: str, log_path: Path, port: int = 0
) -> asyncio.subprocess.Process:
    """One component (`remits worker COMPONENT`) in its own process."""
    argv = ["worker", component, *connection_argv(settings)]
    if component == "gateway":
        argv += ["--http", f"{settings.http_host}:{port}", "--reuse-port"]
    return await spawn_remits(argv, settings, log_path, b"REMITS worker ready")


async def stop_processes(processes: Sequence[asyncio.subprocess.Process], timeout_s: float = 15.0) -> None:
    for proc in processes:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
