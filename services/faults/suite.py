"""The fault-injection suite behind `remits faults run`.

One run starts embedded NATS and Redis, the sample vendor's key server in this process (so that it
can be made to hang or answer 500, 429 or garbage), and the REMITS components one OS process each
(as `remits bench --layout split` runs them, so that one stage can be SIGKILLed). Then, fault by
fault, a closed-loop load of simulated guests runs the KBS flow over HTTP (auth, attest, and
always a resource fetch, also after a failed attestation, to check that the release stage never
hands out the secret without an affirming token) while the fault is injected and cleared. The
high-availability rows then run the same way on infrastructure of their own, started once for both:
a three-node JetStream cluster (``REMITS_REPLICAS=3``) and Redis behind Sentinel (a primary, two
replicas, three sentinels; ``redis+sentinel://`` URLs).

What counts (one row per fault):

- a flow is one guest session: ``POST /auth``, one ``POST /attest``, ``GET /resource``;
- *submitted*: sessions the gateway accepted into the pipeline, i.e. whose AttestRequest was seen
  on the intake subject (a core-NATS subscription of the suite, as the operator), or whose
  ``/attest`` answer carried a decision (200 with a token, 401 AttestationError), or which have
  a decision on the decision stream. A 503 at ``/auth``, or one at ``/attest`` before the gateway
  published (bus or store unavailable), or a refused connection, is not a submission;
- *decided once* / *lost* / *duplicated*: submitted sessions with exactly one, no, or more than
  one decision on the decision stream once the run has drained;
- *secrets without affirming*: ``GET /resource`` answers 200 for a session with no affirming
  decision on the stream and no affirming token in the guest's hands;
- *time to recover*: from the end of the fault (the moment the suite restarted the process or
  server, sent SIGCONT, or put the vendor or clock right) to the end of the first fully
  successful flow (affirming token, secret released) that began at or after that moment.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import platform
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from services.bench import fleet as simulated_fleet
from services.bench.kbs_http import BadResponse, HttpPool
from services.bench.vendor import FetchStats, SampleKds, install_trust
from services.cli.common import connection_argv, server_environment
from shared import credentials, schemas
from shared.bus import ROUTE_HEADER, ensure_topology, route_header
from shared.config import Settings
from shared.connections import connect_nats, identity_of
from shared.ear import CPU_SUBMOD, K_STATUS, K_VECTOR, submod_status
from shared.embedded import (
    CLUSTER_NAME,
    ManagedServer,
    free_port,
    nats_cluster,
    nats_server,
    redis_server,
    redis_server_binary,
    wait_for_cluster,
)
from shared.trust.operator import operator_trust

RESOURCE = "default/key/demo"
AUTH_PATH = b"/kbs/v0/auth"
ATTEST_PATH = b"/kbs/v0/attest"
RESOURCE_PATH = f"/kbs/v0/resource/{RESOURCE}".encode()
SESSION_COOKIE = "kbs-session-id"
SEED = "remits-faults"
COMPONENTS = ("gateway", "intake", "endorse", "identity", "measure", "decide", "release", "audit")
KILLED = ("intake", "endorse", "identity", "measure", "decide", "release", "audit", "gateway")
# The clock-skew rows run these two in this process with a shifted clock; every other process
# keeps the machine's. intake judges the nonce against the session the gateway opened, decide
# stamps the token's iat/exp that release (unshifted) checks: the boundaries where clocks meet.
SKEWED = ("intake", "decide")
SKEW_S = 30.0
# Settings of every REMITS process in the run: short enough that a killed stage's messages are
# redelivered, and a stuck request answered, within a CI budget.
ACK_WAIT_S = 3.0
REQUEST_TIMEOUT_S = 10.0
PULL_TIMEOUT_S = 5.0
VENDOR_HANG_S = 8.0  # longer than the endorsement fetch timeout (shared/fetch.py: 5 s)
# 503 reasons by which the gateway says the request was not queued (shared by /auth and /attest).
NOT_QUEUED = frozenset({"bus.unavailable", "store.unavailable", "pipeline.unavailable"})
REATTEST_DEVICES = 64
# The high-availability rows run on their own infrastructure: a three-node JetStream cluster
# (every stream, consumer and bucket with three replicas) and Redis behind Sentinel (a primary,
# two replicas, three sentinels with a quorum of two).
NATS_NODES = 3
REDIS_REPLICAS = 2
SENTINELS = 3
SENTINEL_MASTER = "remits"
FRESH_PER_ROW = 1200
VENDOR_FAULTS = ("hang", "500", "429", "garbage")
POISON = b"\x93not msgpack of a stage message"
# Where poison goes, and the sender whose tag each subject's consumer accepts.
POISON_TARGETS = (
    (schemas.stage_subject("intake"), "gateway"),
    (schemas.stage_subject("endorse"), "intake"),
    (schemas.stage_subject("identity"), "endorse"),
    (schemas.stage_subject("measure"), "identity"),
    (schemas.APPRAISAL_SUBJECT, "measure"),
    (schemas.REJECTION_SUBJECT, "intake"),
    (schemas.decision_subject("default", "sample", "affirming"), "decide"),
)


def log(message: str) -> None:
    print(f"[faults] {message}", file=sys.stderr, flush=True)


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """How long each part of a row lasts; ``--long`` scales them up for soaks."""

    lead_s: float = 1.5  # load before the fault
    kill_down_s: float = 1.0  # a SIGKILLed process stays dead this long
    outage_s: float = 3.0  # NATS stopped, Redis killed, vendor misbehaving
    sigstop_s: float = 3.0  # Redis frozen (10 s with --long)
    skew_s: float = 4.0  # how long the shifted clocks run
    tail_s: float = 1.5  # load after the first success following the fault
    max_after_s: float = 25.0  # give up waiting for a recovery after this long
    drain_s: float = 45.0  # how long submitted requests may take to be decided
    concurrency: int = 8
    long: bool = False

    @classmethod
    def default(cls, long: bool = False) -> Timing:
        if not long:
            return cls()
        return cls(
            lead_s=10.0, kill_down_s=5.0, outage_s=15.0, sigstop_s=10.0, skew_s=30.0, tail_s=10.0,
            max_after_s=90.0, drain_s=120.0, concurrency=16, long=True,
        )  # fmt: skip


# -- what one flow did -----------------------------------------------------------------------------


@dataclass
class Flow:
    started: float
    ended: float = 0.0
    session: str = ""
    phase: str = "auth"  # where it stopped
    status: str = ""  # the last answer's status, or "conn" for a transport error
    attest_status: str = ""
    decision_answer: bool = False  # /attest answered 200 or 401 AttestationError
    token_status: str = ""
    resource_status: str = ""
    reason: str = ""  # of the last non-200 answer: its detail up to the first ':'
    ok: bool = False

    @property
    def not_queued(self) -> bool:
        """The gateway answered that it did not put the request on the bus."""
        return self.attest_status == "503" and self.reason in NOT_QUEUED


class _Claims(msgspec.Struct):
    submods: dict[str, dict[str, Any]]


_claims = msgspec.json.Decoder(_Claims)


def answer_reason(body: bytes) -> str:
    try:
        detail = msgspec.json.decode(body).get("detail", "")
    except (msgspec.DecodeError, AttributeError):
        return ""
    return str(detail).split(":", 1)[0].strip()[:40]


def token_status(token: str) -> str:
    payload = token.split(".")[1]
    claims = _claims.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    appraisal = claims.submods.get(CPU_SUBMOD) or {}
    fields = {K_STATUS: appraisal.get(K_STATUS)}
    if appraisal.get(K_VECTOR) is not None:
        fields[K_VECTOR] = appraisal[K_VECTOR]
    return submod_status({"submods": {CPU_SUBMOD: fields}})


class Load:
    """C guests in flight, each flow a new session, until stopped."""

    def __init__(self, pool: HttpPool, guests: Iterator[simulated_fleet.Guest], concurrency: int) -> None:
        self.pool = pool
        self.guests = guests
        self.concurrency = concurrency
        self.flows: list[Flow] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.concurrency)))

    async def _worker(self) -> None:
        while not self.stop.is_set():
            guest = next(self.guests, None)
            if guest is None:
                return
            flow = Flow(time.monotonic())
            self.flows.append(flow)
            await self.flow(guest, flow)
            flow.ended = time.monotonic()
            if not flow.ok:
                await asyncio.sleep(0.05)  # a refused connection must not spin

    async def flow(self, guest: simulated_fleet.Guest, flow: Flow) -> None:
        try:
            async with self.pool.session() as http:
                response = await http.request(b"POST", AUTH_PATH, guest.auth_body)
                flow.status = str(response.status)
                if response.status != 200:
                    flow.reason = answer_reason(response.body)
                    return
                flow.session = http.cookies.get(SESSION_COOKIE, "")
                nonce = response.json()["nonce"]
                flow.phase = "attest"
                response = await http.request(b"POST", ATTEST_PATH, guest.attest_body(nonce))
                flow.status = flow.attest_status = str(response.status)
                if response.status != 200:
                    flow.reason = answer_reason(response.body)
                if response.status == 200:
                    flow.decision_answer = True
                    flow.token_status = token_status(response.json()["token"])
                elif response.status == 401 and b"AttestationError" in response.body:
                    flow.decision_answer = True
                # Always ask: release must refuse whoever holds no affirming token.
                flow.phase = "resource"
                response = await http.request(b"GET", RESOURCE_PATH)
                flow.status = flow.resource_status = str(response.status)
                if response.status != 200 and not flow.reason:
                    flow.reason = answer_reason(response.body)
                flow.ok = flow.token_status == "affirming" and response.status == 200
        except (OSError, TimeoutError, BadResponse):
            flow.status = "conn"
        except (ValueError, KeyError, IndexError, msgspec.DecodeError):
            flow.status = "bad-body"


# -- Redis Sentinel, spoken to directly (RESP over a socket; for readiness checks only) --------------


def _redis_command(port: int, *commands: tuple[str, ...], timeout_s: float = 1.0) -> bytes:
    """The raw answers to ``commands`` (RESP arrays) from 127.0.0.1:port; b"" if it does not answer."""
    payload = b"".join(
        f"*{len(c)}\r\n".encode() + b"".join(f"${len(a.encode())}\r\n{a}\r\n".encode() for a in c)
        for c in commands
    )  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
            conn.sendall(payload + b"*1\r\n$4\r\nPING\r\n")
            answer = b""
            while not answer.endswith(b"+PONG\r\n"):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
            return answer
    except OSError:
        return b""


def _sentinel_master_state(port: int) -> dict[str, str]:
    """SENTINEL MASTER's fields (flat bulk strings, key then value), as text."""
    answer = _redis_command(port, ("SENTINEL", "MASTER", SENTINEL_MASTER))
    items = re.findall(rb"\$\d+\r\n([^\r]*)\r\n", answer)
    return {items[i].decode(): items[i + 1].decode() for i in range(0, len(items) - 1, 2)}


def _replicas_online(port: int, password: str) -> int:
    answer = _redis_command(port, ("AUTH", "default", password), ("INFO", "replication"))
    return len(re.findall(rb"slave\d+:[^\r]*state=online", answer))


# -- the vendor, with faults -----------------------------------------------------------------------


@dataclass
class FaultyVendor:
    mode: str = ""  # "", or one of VENDOR_FAULTS
    requests: Counter[str] = field(default_factory=Counter)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        mode = self.mode
        self.requests[mode or "normal"] += 1
        if mode == "hang":
            await asyncio.sleep(VENDOR_HANG_S)
        elif mode == "500":
            return web.Response(status=500, text="internal error")
        elif mode == "429":
            return web.Response(status=429, text="slow down", headers={"Retry-After": "1"})
        elif mode == "garbage":
            return web.Response(body=os.urandom(700), content_type="application/pkix-cert")
        response: web.StreamResponse = await handler(request)
        return response


# -- one row ---------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    fault: str  # what exactly was done
    not_run: str = ""
    flows: list[Flow] = field(default_factory=list)
    sessions: set[str] = field(default_factory=set)  # every session the row opened
    fault_end: float = 0.0
    duration_s: float = 0.0
    note: str = ""
    inject_note: str | None = None
    poison_ids: list[str] = field(default_factory=list)
    # Filled in by the final count:
    submitted: int = 0
    decided_once: int = 0
    lost: int = 0
    duplicated: int = 0
    unaffirmed_secrets: int = 0
    recovery_s: float | None = None

    @property
    def passed(self) -> bool:
        return (
            not self.not_run and self.lost == 0 and self.duplicated == 0 and self.unaffirmed_secrets == 0
            and self.recovery_s is not None
        )  # fmt: skip

    def statuses(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {"auth": Counter(), "attest": Counter(), "resource": Counter()}
        for flow in self.flows:
            why = f" {flow.reason}" if flow.reason else ""
            if flow.phase == "auth":
                out["auth"][flow.status + why] += 1
                continue
            attest = flow.attest_status or flow.status
            out["attest"][attest + (why if attest != "200" else "")] += 1
            if flow.resource_status:
                resource = flow.resource_status
                # The attest answer's reason is the story; a resource refusal after it is expected.
                out["resource"][resource + (why if resource != "200" and attest == "200" else "")] += 1
            elif flow.phase == "resource":
                out["resource"][flow.status] += 1
        return out

    def statuses_text(self) -> str:
        parts = []
        for phase, counts in self.statuses().items():
            shown = {k: v for k, v in counts.items() if not (phase == "auth" and k == "200")}
            if shown:
                parts.append(f"{phase} " + " ".join(f"{k}×{v}" for k, v in sorted(shown.items())))
        return "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "fault": self.fault, "not_run": self.not_run, "flows": len(self.flows),
            "submitted": self.submitted, "decided_once": self.decided_once, "lost": self.lost,
            "duplicated": self.duplicated, "secrets_without_affirming": self.unaffirmed_secrets,
            "statuses": {k: dict(v) for k, v in self.statuses().items()},
            "recovery_s": self.recovery_s, "passed": self.passed, "note": self.note,
            "duration_s": round(self.duration_s, 1),
        }  # fmt: skip


@dataclass
class Decisions:
    """Every decision read from the decision stream so far, by session and by request."""

    by_session: Counter[str] = field(default_factory=Counter)
    affirmed: set[str] = field(default_factory=set)
    by_request: Counter[str] = field(default_factory=Counter)
    read: int = 0
    undecodable: int = 0


# -- the suite -------------------------------------------------------------------------------------


Step = Callable[["Suite", Row], Awaitable[None]]


@dataclass
class FaultSpec:
    name: str
    fault: str
    inject: Step | None  # injects, holds, clears; sets row.fault_end
    fresh_devices: bool = False  # new chips (an endorsement fetch each)
    not_run: str = ""
    ha: bool = False  # runs on the NATS cluster and Redis Sentinel set, not the single servers


class Suite:
    def __init__(
        self, workdir: Path, timing: Timing, cache_dir: Path, issued: simulated_fleet.Issued, *,
        ha: bool = False,
    ) -> None:  # fmt: skip
        self.workdir = workdir
        self.timing = timing
        self.cache_dir = cache_dir
        self.issued = issued
        self.ha = ha
        self.nats: ManagedServer | None = None
        self.redis: ManagedServer | None = None
        # With ``ha``: the cluster's nodes, the Redis data nodes (the first the initial primary)
        # and the sentinels.
        self.nats_nodes: list[ManagedServer] = []
        self.redis_nodes: list[ManagedServer] = []
        self.sentinels: list[ManagedServer] = []
        self.request_ids: dict[str, str] = {}  # session -> request id, as seen on the intake subject
        self.vendor = FaultyVendor()
        self.settings: Settings | None = None
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._drains: list[asyncio.Task[None]] = []
        self.port = 0
        self.nc: Any = None
        self.js: Any = None
        self.submitted_seen: set[str] = set()
        self.decisions = Decisions()
        self.secret = os.urandom(32)
        self.fresh_next = REATTEST_DEVICES
        self.reattest: list[simulated_fleet.Guest] = []
        self._vendor_runner: web.AppRunner | None = None
        self._next_seq = 1  # the decision stream's next sequence to read

    # -- set-up ------------------------------------------------------------------------------
    async def start(self) -> None:
        creds_dir = self.workdir / "data" / "credentials"
        credentials.ensure_credentials(creds_dir)
        infra = self.workdir / "infra"
        if self.ha:
            self.nats_nodes = await asyncio.to_thread(nats_cluster, infra, NATS_NODES, creds_dir)
            await asyncio.to_thread(self._start_sentinel_set, infra, creds_dir)
            nats_url = ",".join(f"nats://127.0.0.1:{node.port}" for node in self.nats_nodes)
            sentinels = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
            redis_url, replicas = f"redis+sentinel://{sentinels}/{SENTINEL_MASTER}/0", NATS_NODES
        else:
            self.nats = nats_server(infra, credentials_dir=creds_dir)
            self.redis = redis_server(infra, credentials_dir=creds_dir)
            for server in (self.nats, self.redis):
                await asyncio.to_thread(server.start)
            nats_url, redis_url = (
                f"nats://127.0.0.1:{self.nats.port}",
                f"redis://127.0.0.1:{self.redis.port}/0",
            )
            replicas = 1
        data_dir = self.workdir / "data"
        install_trust({"sample": self.issued}, data_dir)
        vendor = self.issued.vendor
        assert isinstance(vendor, simulated_fleet.SampleVendor)
        kds = SampleKds(SEED, len(self.issued.certs), self.issued.certs, vendor.pki.chain_pem())
        app = kds.app(FetchStats(tees=("sample",)))
        app.middlewares.append(self.vendor.middleware)
        from services.demo.serving import serve

        self._vendor_runner, kds_url = await serve(app, "127.0.0.1", 0)
        self.port = free_port()
        self.settings = Settings(
            nats_url=nats_url, redis_url=redis_url, replicas=replicas, data_dir=data_dir, http_port=self.port,
            credentials_dir=creds_dir, sample_kds_url=kds_url,
            ack_wait_s=ACK_WAIT_S, request_timeout_s=REQUEST_TIMEOUT_S, fetch_timeout_s=PULL_TIMEOUT_S,
        )  # fmt: skip
        operator = identity_of(self.settings, credentials.ADMIN)
        self.nc, self.js = await connect_nats(self.settings, operator, "remits-faults")
        await ensure_topology(self.js, self.settings)
        async with operator_trust(self.settings) as admin:
            await admin.put_reference_value(
                "sample", "measurement", [simulated_fleet.MEASUREMENT.hex()], "remits faults"
            )
            await admin.put_resource(
                RESOURCE, self.secret, "remits faults", {"tees": ["sample"], "allow_sample": True}
            )
        await self.nc.subscribe(schemas.stage_subject("intake"), cb=self._on_intake)
        for component in COMPONENTS:
            await self.spawn(component)
        guests = await asyncio.to_thread(
            simulated_fleet.build_guests, "sample", SEED, 0, REATTEST_DEVICES, self.cache_dir
        )
        self.reattest = guests
        # Every known device attests once, so its endorsement is cached before the first fault.
        pool = self.pool()
        load = Load(pool, iter(guests), self.timing.concurrency)
        await load.run()
        await pool.close()
        ok = sum(f.ok for f in load.flows)
        where = "a 3-node NATS cluster and Redis Sentinel" if self.ha else "single NATS and Redis servers"
        log(f"{len(COMPONENTS)} REMITS processes up on {where}; {ok}/{len(guests)} devices primed")

    def _start_sentinel_set(self, infra: Path, creds_dir: Path) -> None:
        """A Redis primary with its replicas and sentinels (each with the ACL users; replicas and
        sentinels authenticate to the data nodes as the operator), replicated and known to every
        sentinel when this returns."""
        password = credentials.load(creds_dir, credentials.ADMIN).redis_password
        for index in range(1 + REDIS_REPLICAS):
            port = free_port()
            data = infra / f"redis-{index}"
            data.mkdir(parents=True, exist_ok=True)
            argv = [
                redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                "--appendonly", "no", "--dir", str(data), "--maxclients", "10000",
                "--aclfile", str(creds_dir / "redis-users.acl"), "--masteruser", "default", "--masterauth", password,
            ]  # fmt: skip
            if index:
                argv += ["--replicaof", "127.0.0.1", str(self.redis_nodes[0].port)]
            node = ManagedServer(f"redis-{index}", argv, port, infra / f"redis-{index}.log")
            node.start()
            self.redis_nodes.append(node)
        primary = self.redis_nodes[0].port
        for index in range(SENTINELS):
            port = free_port()
            conf = infra / f"sentinel-{index}.conf"  # a sentinel rewrites its file: writable
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {infra}\nsentinel resolve-hostnames no\n"
                f"sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary} {SENTINELS // 2 + 1}\n"
                f"sentinel auth-user {SENTINEL_MASTER} default\nsentinel auth-pass {SENTINEL_MASTER} {password}\n"
                f"sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n"
                f"sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
                f"sentinel parallel-syncs {SENTINEL_MASTER} {REDIS_REPLICAS}\n"
            )
            sentinel = ManagedServer(
                f"sentinel-{index}", [redis_server_binary(), str(conf), "--sentinel"], port, infra / f"sentinel-{index}.log"
            )  # fmt: skip
            sentinel.start()
            self.sentinels.append(sentinel)
        # Ready: every sentinel knows the replicas and the other sentinels (else a failover
        # could not be agreed), and the primary has its replicas in sync.
        deadline = time.monotonic() + 30
        while True:
            states = [_sentinel_master_state(s.port) for s in self.sentinels]
            synced = _replicas_online(primary, password)
            if synced >= REDIS_REPLICAS and all(
                st.get("num-slaves") == str(REDIS_REPLICAS)
                and st.get("num-other-sentinels") == str(SENTINELS - 1)
                for st in states
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Sentinel set is not ready: {states}, {synced} replicas in sync")
            time.sleep(0.2)

    def nats_node(self, server_name: str) -> ManagedServer:
        return next(
            n for n in self.nats_nodes if server_name == f"{CLUSTER_NAME}-{n.name.removeprefix('nats-')}"
        )

    async def _on_intake(self, msg: Any) -> None:
        with contextlib.suppress(Exception):
            meta = schemas.decode_stage(msg.data).meta
            self.submitted_seen.add(meta.session_id)
            self.request_ids[meta.session_id] = meta.request_id

    def pool(self) -> HttpPool:
        return HttpPool(
            "127.0.0.1",
            self.port,
            max_connections=self.timing.concurrency * 2,
            timeout=25.0,
            connect_timeout=3.0,
        )

    def env(self) -> dict[str, str]:
        assert self.settings is not None
        return {
            **server_environment(self.settings),
            "REMITS_ACK_WAIT_S": str(ACK_WAIT_S),
            "REMITS_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
            "REMITS_FETCH_TIMEOUT_S": str(PULL_TIMEOUT_S),
            "REMITS_LOG_LEVEL": os.environ.get("REMITS_LOG_LEVEL", "warning"),
        }

    async def spawn(self, component: str, timeout_s: float = 60.0) -> None:
        assert self.settings is not None
        argv = ["worker", component, *connection_argv(self.settings)]
        if component == "gateway":
            argv += ["--http", f"127.0.0.1:{self.port}", "--reuse-port"]
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        with open(logs / f"{component}.log", "ab") as stderr:  # noqa: ASYNC230 - handed to the child
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.cli", *argv,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr, env=self.env(),
            )  # fmt: skip
        assert proc.stdout is not None
        try:
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout_s)
                if not line:
                    raise RuntimeError(f"{component} exited before it was ready; see {logs / component}.log")
                if line.startswith(b"REMITS worker ready"):
                    break
        except BaseException:
            proc.kill()
            raise
        self._drains.append(asyncio.create_task(proc.stdout.read()))  # never let its pipe fill
        self.processes[component] = proc

    async def kill(self, component: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(component)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def stop(self) -> None:
        for component in list(self.processes):
            with contextlib.suppress(Exception):
                await self.kill(component, signal.SIGTERM)
        for task in self._drains:
            task.cancel()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self._vendor_runner is not None:
            await self._vendor_runner.cleanup()
        servers = [self.redis, self.nats, *self.sentinels, *self.redis_nodes, *self.nats_nodes]
        for server in servers:
            if server is not None:
                if server.proc is not None and server.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        server.proc.send_signal(signal.SIGCONT)
                await asyncio.to_thread(server.stop)

    # -- guests ------------------------------------------------------------------------------
    def fresh_guests(self) -> Iterator[simulated_fleet.Guest]:
        first = self.fresh_next
        count = FRESH_PER_ROW * (4 if self.timing.long else 1)
        self.fresh_next += count
        return iter(simulated_fleet.build_guests("sample", SEED, first, count, self.cache_dir))

    # -- decisions ---------------------------------------------------------------------------
    async def read_decisions(self) -> None:
        """Read the decisions added to the stream since the last call."""
        info = await self.js.stream_info(schemas.DECISION_STREAM, subjects_filter="remits.decision.>")
        total = sum((info.state.subjects or {}).values())
        missing = total - self.decisions.read
        if missing <= 0:
            return
        from nats.js.api import ConsumerConfig, DeliverPolicy

        sub = await self.js.subscribe(
            "remits.decision.>", ordered_consumer=True, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            config=ConsumerConfig(opt_start_seq=self._next_seq),
        )  # fmt: skip
        try:
            for _ in range(missing):
                msg = await sub.next_msg(timeout=5)
                self._next_seq = msg.metadata.sequence.stream + 1
                self.decisions.read += 1
                try:
                    decision = schemas.decode_decision(msg.data)
                except Exception:
                    self.decisions.undecodable += 1
                    continue
                meta = decision.meta
                self.decisions.by_request[meta.request_id] += 1
                if meta.session_id:
                    self.decisions.by_session[meta.session_id] += 1
                    if decision.status == "affirming":
                        self.decisions.affirmed.add(meta.session_id)
        finally:
            await sub.unsubscribe()

    def submitted(self, row: Row) -> set[str]:
        by_session = self.decisions.by_session
        answered = {f.session for f in row.flows if f.decision_answer}
        not_queued = {f.session for f in row.flows if f.not_queued}
        return {
            s for s in row.sessions
            if s in by_session or s in answered or (s in self.submitted_seen and s not in not_queued)
        }  # fmt: skip

    def published_not_queued(self, row: Row) -> int:
        """Seen on the intake subject, answered "not queued" by the gateway, never decided: core
        NATS delivered the publish, JetStream did not store it (e.g. while it starts up)."""
        return sum(
            1 for f in row.flows
            if f.not_queued and f.session in self.submitted_seen and f.session not in self.decisions.by_session
        )  # fmt: skip

    async def drain(self, row: Row) -> None:
        """Wait until every submitted session of the row has its decision (or drain_s passed)."""
        deadline = time.monotonic() + self.timing.drain_s
        settle = time.monotonic() + 2 * ACK_WAIT_S + 2
        while True:
            try:
                await self.read_decisions()
            except Exception as exc:  # NATS may be coming back: try again
                log(f"reading decisions: {exc!r}")
            pending = [s for s in self.submitted(row) if s not in self.decisions.by_session]
            # A request the gateway called "not queued" that JetStream stored after all would be
            # decided within moments once the pipeline works: give it that long to show up.
            doubtful = self.published_not_queued(row) and time.monotonic() < settle
            if not (pending or doubtful) or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)

    def score(self, row: Row) -> None:
        submitted = self.submitted(row)
        counts = self.decisions.by_session
        row.submitted = len(submitted)
        row.decided_once = sum(1 for s in submitted if counts[s] == 1)
        row.lost = sum(1 for s in submitted if counts[s] == 0)
        row.duplicated = sum(1 for s in submitted if counts[s] > 1)
        row.duplicated += sum(1 for r in row.poison_ids if self.decisions.by_request[r] > 1)
        row.unaffirmed_secrets = sum(
            1 for f in row.flows
            if f.resource_status == "200" and f.token_status != "affirming"
            and f.session not in self.decisions.affirmed
        )  # fmt: skip
        if row.inject_note is None:  # what the fault itself noted; scoring runs twice
            row.inject_note = row.note
        notes = [row.inject_note] if row.inject_note else []
        lost = sorted(s for s in submitted if counts[s] == 0)
        if lost:
            shown = ", ".join(f"session {s} request {self.request_ids.get(s, '?')}" for s in lost[:5])
            notes.append(f"lost: {shown}" + (f" and {len(lost) - 5} more" if len(lost) > 5 else ""))
        unstored = self.published_not_queued(row)
        if unstored:
            notes.append(
                f"{unstored} /attest answered 503 (not queued) were seen on the intake subject but have "
                f"no decision {2 * ACK_WAIT_S + 2:g} s on and at the end of the run: JetStream did not store "
                "them (core NATS delivered the publish), so they are not counted as submitted"
            )
        row.note = "; ".join(notes)
        after = [f.ended - row.fault_end for f in row.flows if f.ok and f.started >= row.fault_end]
        row.recovery_s = round(min(after), 2) if after else None

    # -- running a row -----------------------------------------------------------------------
    async def run_row(self, spec: FaultSpec) -> Row:
        row = Row(spec.name, spec.fault, not_run=spec.not_run)
        if spec.not_run or spec.inject is None:
            return row
        started = time.monotonic()
        guests = self.fresh_guests() if spec.fresh_devices else itertools.cycle(self.reattest)
        pool = self.pool()
        load = Load(pool, guests, self.timing.concurrency)
        runner = asyncio.create_task(load.run())
        try:
            await asyncio.sleep(self.timing.lead_s)
            await spec.inject(self, row)
            if not row.fault_end:
                row.fault_end = time.monotonic()
            deadline = row.fault_end + self.timing.max_after_s
            while time.monotonic() < deadline and not runner.done():
                if any(f.ok and f.started >= row.fault_end for f in load.flows):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.timing.tail_s)
        finally:
            load.stop.set()
            await asyncio.wait_for(runner, 60)
            await pool.close()
        row.flows = load.flows
        row.sessions = {f.session for f in load.flows if f.session}
        await self.drain(row)
        row.duration_s = time.monotonic() - started
        self.score(row)
        return row


# -- the faults ------------------------------------------------------------------------------------


def kill_component(component: str) -> Step:
    async def inject(suite: Suite, row: Row) -> None:
        await suite.kill(component, signal.SIGKILL)
        await asyncio.sleep(suite.timing.kill_down_s)
        row.fault_end = time.monotonic()
        await suite.spawn(component)

    return inject


async def nats_restart(suite: Suite, row: Row) -> None:
    assert suite.nats is not None
    await asyncio.to_thread(suite.nats.stop)
    await asyncio.sleep(suite.timing.outage_s)
    row.fault_end = time.monotonic()
    await asyncio.to_thread(suite.nats.start)


async def redis_kill(suite: Suite, row: Row) -> None:
    assert suite.redis is not None
    await asyncio.to_thread(suite.redis.kill)
    await asyncio.sleep(suite.timing.outage_s)
    row.fault_end = time.monotonic()
    await asyncio.to_thread(suite.redis.start)


async def redis_sigstop(suite: Suite, row: Row) -> None:
    assert suite.redis is not None and suite.redis.proc is not None
    suite.redis.proc.send_signal(signal.SIGSTOP)
    try:
        await asyncio.sleep(suite.timing.sigstop_s)
    finally:
        row.fault_end = time.monotonic()
        suite.redis.proc.send_signal(signal.SIGCONT)


async def nats_node_kill(suite: Suite, row: Row) -> None:
    """SIGKILL of the cluster node that leads the pipeline stream (the worst one to lose: every
    stage publishes there), restarted on its ports and store after the outage."""
    leader = (await suite.js.stream_info(schemas.PIPELINE_STREAM)).cluster.leader
    node = suite.nats_node(leader)
    await asyncio.to_thread(node.kill)
    row.fault_end = time.monotonic()  # recovery needs no restart: counted from the kill
    row.note = f"killed {leader}, the leader of the {schemas.PIPELINE_STREAM} stream"
    await asyncio.sleep(suite.timing.outage_s)
    await asyncio.to_thread(node.start)
    started = time.monotonic()
    await asyncio.to_thread(wait_for_cluster, suite.nats_nodes, 60.0)
    row.note += f"; restarted after {suite.timing.outage_s:g} s, every group led again {time.monotonic() - started:.1f} s later"


async def redis_failover(suite: Suite, row: Row) -> None:
    """SIGKILL of the Redis primary; the sentinels promote a replica and the clients follow.
    The old primary is started again (empty) after the outage and rejoins as a replica."""
    primary = suite.redis_nodes[0]
    await asyncio.to_thread(primary.kill)
    row.fault_end = time.monotonic()  # recovery needs no restart: counted from the kill
    promoted = ""
    deadline = time.monotonic() + suite.timing.max_after_s
    while time.monotonic() < deadline:
        state = await asyncio.to_thread(_sentinel_master_state, suite.sentinels[0].port)
        if state.get("port") and state["port"] != str(primary.port):
            promoted = f"127.0.0.1:{state['port']}"
            break
        await asyncio.sleep(0.1)
    row.note = (
        f"the first sentinel named {promoted} the primary {time.monotonic() - row.fault_end:.1f} s after the kill"
        if promoted else "no promotion seen"
    )  # fmt: skip
    await asyncio.sleep(max(0.0, row.fault_end + suite.timing.outage_s - time.monotonic()))
    await asyncio.to_thread(primary.start)
    row.note += f"; the old primary restarted after {suite.timing.outage_s:g} s"


def vendor_fault(mode: str) -> Step:
    async def inject(suite: Suite, row: Row) -> None:
        suite.vendor.mode = mode
        try:
            await asyncio.sleep(suite.timing.outage_s)
        finally:
            suite.vendor.mode = ""
            row.fault_end = time.monotonic()

    return inject


async def poison(suite: Suite, row: Row) -> None:
    """Undecodable messages on every stage subject: once tagged by the sender that subject's
    consumer accepts, once with no tag at all (published as the operator)."""
    from shared.bus import JetStreamPublisher, connect
    from shared.busauth import BusAuth

    assert suite.settings is not None
    published = refused = 0
    dlq_before = (await suite.js.stream_info(schemas.DLQ_STREAM)).state.messages
    for index, (subject, sender) in enumerate(POISON_TARGETS):
        creds = credentials.load(suite.settings.credentials_dir, sender)  # type: ignore[arg-type]
        nc, _ = await connect(
            suite.settings.nats_url, f"poison-{sender}", creds=creds.nats_seed_path,
            inbox_prefix=credentials.inbox_prefix(sender),
        )  # fmt: skip
        publisher = JetStreamPublisher(nc, auth=BusAuth(sender, creds.bus_key, creds.peer_bus_keys))
        await publisher.start()
        try:
            for tagged in (True, False):
                rid = f"poison-{'tagged' if tagged else 'untagged'}-{index}-{os.urandom(4).hex()}"
                headers = {"Nats-Msg-Id": f"{rid}:{sender}", ROUTE_HEADER: route_header(rid, "sample", "")}
                try:
                    if tagged:
                        await publisher.publish(subject, POISON, headers)
                    else:
                        await suite.js.publish(subject, POISON, headers=headers, timeout=3)
                    published += 1
                    row.poison_ids.append(rid)
                except Exception:
                    refused += 1
        finally:
            with contextlib.suppress(Exception):
                await publisher.stop()
            await nc.close()
    row.fault_end = time.monotonic()
    await asyncio.sleep(ACK_WAIT_S + 1)
    dlq_after = (await suite.js.stream_info(schemas.DLQ_STREAM)).state.messages
    row.note = (
        f"{published} poison messages stored ({refused} refused by NATS permissions); "
        f"{dlq_after - dlq_before} dead letters during the row"
    )


def clock_skew(offset_s: float) -> Step:
    async def inject(suite: Suite, row: Row) -> None:
        from services.runtime import Stack

        assert suite.settings is not None
        for component in SKEWED:
            await suite.kill(component, signal.SIGTERM)
        settings = replace(suite.settings, http_port=0)
        stack = Stack(settings, components=SKEWED, setup_topology=False)
        await stack.start()
        stack.set_clock(lambda: time.time() + offset_s)
        try:
            await asyncio.sleep(suite.timing.skew_s)
        finally:
            await stack.stop()
            row.fault_end = time.monotonic()
            for component in SKEWED:
                await suite.spawn(component)

    return inject


def fault_specs(timing: Timing) -> list[FaultSpec]:
    specs = [
        FaultSpec(
            f"SIGKILL {c}",
            f"SIGKILL of the {c} process, {timing.kill_down_s:g} s down, started again",
            kill_component(c),
        )
        for c in KILLED
    ]
    specs += [
        FaultSpec("NATS stop/restart", f"SIGTERM of the single nats-server, {timing.outage_s:g} s down, "
                  "restarted on the same port and store", nats_restart),
        FaultSpec("Redis SIGKILL/restart", f"SIGKILL of redis-server, {timing.outage_s:g} s down, restarted "
                  "(empty: sessions, nonces and caches lost)", redis_kill),
        FaultSpec(f"Redis SIGSTOP {timing.sigstop_s:g} s", f"redis-server frozen (SIGSTOP) for {timing.sigstop_s:g} s, "
                  "then SIGCONT" + ("" if timing.long else " (10 s with --long)"), redis_sigstop),
    ]  # fmt: skip
    described = {
        "hang": f"hangs {VENDOR_HANG_S:g} s (fetch timeout 5 s)",
        "500": "answers 500",
        "429": "answers 429 (Retry-After: 1)",
        "garbage": "answers 200 with random bytes",
    }
    specs += [
        FaultSpec(f"vendor {mode}", f"the sample key server {described[mode]} for {timing.outage_s:g} s; "
                  "every guest a new chip", vendor_fault(mode), fresh_devices=True)
        for mode in VENDOR_FAULTS
    ]  # fmt: skip
    specs.append(FaultSpec("poison messages", "undecodable messages on every stage subject and the "
                           "decision subject, tagged by the right sender and untagged", poison))  # fmt: skip
    for sign, offset in (("+", SKEW_S), ("−", -SKEW_S)):
        specs.append(
            FaultSpec(f"clock {sign}{SKEW_S:g} s", f"intake and decide on a clock {sign}{SKEW_S:g} s off for "
                      f"{timing.skew_s:g} s (gateway, endorse, identity, measure, release on the machine's)",
                      clock_skew(offset))
        )  # fmt: skip
    specs += [
        FaultSpec("NATS cluster node SIGKILL", f"SIGKILL of one node of a {NATS_NODES}-node JetStream cluster "
                  f"(the pipeline stream's leader; streams, consumers and buckets with {NATS_NODES} replicas), "
                  f"restarted on the same ports and store after {timing.outage_s:g} s; time to recover counted "
                  "from the kill", nats_node_kill, ha=True),
        FaultSpec("Redis Sentinel failover", f"SIGKILL of the Redis primary ({REDIS_REPLICAS} replicas, "
                  f"{SENTINELS} sentinels, quorum {SENTINELS // 2 + 1}, down after 1 s); the sentinels promote "
                  "a replica and the clients (redis+sentinel:// URLs) follow; the old primary is restarted "
                  f"after {timing.outage_s:g} s and rejoins as a replica; time to recover counted from the kill",
                  redis_failover, ha=True),
    ]  # fmt: skip
    return specs


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Result:
    rows: list[Row]
    started_at: datetime
    seconds: float
    long: bool
    machine: str
    command: str

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows if not row.not_run)


def machine() -> str:
    from services.bench.run import cpu_model

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}, {cores} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def preissue(long: bool, cache_dir: Path) -> simulated_fleet.Issued:
    """The sample vendor and its certificates for every device the run may use. Call it before any
    event loop or thread exists: issuing forks worker processes."""
    devices = REATTEST_DEVICES + len(VENDOR_FAULTS) * FRESH_PER_ROW * (4 if long else 1)
    return simulated_fleet.preissue("sample", SEED, devices, cache_dir, log=log)


async def run_suite(
    *, long: bool = False, only: str | None = None, cache_dir: Path | None = None,
    issued: simulated_fleet.Issued | None = None, command: str = "remits faults run",
    keep_logs: Path | None = None,
) -> Result:  # fmt: skip
    cache_dir = cache_dir or simulated_fleet.DEFAULT_CACHE_DIR
    if issued is None:
        issued = await asyncio.to_thread(preissue, long, cache_dir)
    timing = Timing.default(long)
    specs = fault_specs(timing)
    if only:
        specs = [s for s in specs if only.lower() in s.name.lower()]
        if not specs:
            raise SystemExit(f"no fault matches {only!r}")
    started_at = datetime.now(UTC)
    began = time.monotonic()
    rows: list[Row] = []
    single = [s for s in specs if not s.ha]
    ha = [s for s in specs if s.ha]
    for group, on_ha in ((single, False), (ha, True)):
        if not group:
            continue
        with tempfile.TemporaryDirectory(prefix="remits-faults-") as tmp:
            suite = Suite(Path(tmp), timing, cache_dir, issued, ha=on_ha)
            try:
                rows += await run_rows(suite, group)
            finally:
                if keep_logs is not None:
                    _keep_logs(Path(tmp), keep_logs / ("ha" if on_ha else "single"))
    return Result(rows, started_at, time.monotonic() - began, long, machine(), command)


async def run_rows(suite: Suite, specs: list[FaultSpec]) -> list[Row]:
    rows: list[Row] = []
    try:
        started = time.monotonic()
        await suite.start()
        log(f"set up in {time.monotonic() - started:.1f} s")
        for spec in specs:
            log(f"{spec.name}: {spec.fault}")
            try:
                row = await suite.run_row(spec)
            except Exception as exc:  # one broken row must not hide the others
                row = Row(spec.name, spec.fault, not_run=f"the suite failed: {exc!r}"[:200])
            rows.append(row)
            log(
                f"{row.name}: submitted {row.submitted}, once {row.decided_once}, lost {row.lost}, "
                f"dup {row.duplicated}, unaffirmed secrets {row.unaffirmed_secrets}, "
                f"recovered in {row.recovery_s} s ({row.duration_s:.1f} s); {row.statuses_text()} {row.note}"
            )
        # Late redeliveries would show up as duplicates: read the stream once more at the end.
        await asyncio.sleep(ACK_WAIT_S + 1)
        await suite.read_decisions()
        for row in rows:
            if not row.not_run:
                suite.score(row)
    finally:
        await suite.stop()
    return rows


def _keep_logs(workdir: Path, target: Path) -> None:
    """The processes' and servers' logs of one suite, for a post-mortem."""
    target.mkdir(parents=True, exist_ok=True)
    for path in [
        *workdir.glob("logs/*.log"),
        *workdir.glob("infra/*.log"),
        *workdir.glob("infra/nats-cluster/*.log"),
    ]:
        with contextlib.suppress(OSError):
            shutil.copy(path, target / path.name)
