"""One load-generating client process of `remits bench`:

    python -m services.bench.loadgen --url URL --tee sample|snp|tdx|mix --seed S --cache-dir C
        --scenario reattest|boot-storm --first I0 --count N [--concurrency C | --rate R]
        --warmup W --duration D [--verify-every K] [--secret HEX[,HEX...]] [--tenants T1,T2,...]

Guests on devices I0..I0+N-1 of the deterministic fleet (services/bench/fleet.py) attest over real
HTTP: ``POST /kbs/v0/auth``, ``POST /kbs/v0/attest`` with evidence bound to the nonce, ``GET
/kbs/v0/resource/default/key/demo``. With ``--tenants``, guests are dealt round-robin (by device
index) to the named tenants and use that tenant's ``/t/<tenant>/kbs/v0/...`` paths, each checking
the secret of its own tenant (``--secret`` then lists one per tenant, in the same order). ``reattest`` first attests every device once (unmeasured, so
the server holds their endorsements) and then cycles through them; ``boot-storm`` gives every
attestation a device never seen before and stops when the range is used up.

Protocol on stdout, one JSON object per line: ``{"event": "ready"}`` when set up; then it reads one
line ``{"start_at": <unix time>}`` from stdin (``--no-wait``: start at once), runs ``warmup``
seconds unmeasured and ``duration`` seconds measured, printing ``progress`` every 0.5 s and one
``result`` at the end. Closed loop (``--concurrency``) keeps C guests in flight; open loop
(``--rate``) starts guests at Poisson arrivals and measures latency from each arrival's scheduled
time, so a slow server cannot hide its queue by slowing the client down (coordinated omission).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import itertools
import json
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from services.bench import fleet
from services.bench.kbs_http import BadResponse, HttpPool, HttpSession, Response
from shared import tenants
from shared.ear import CPU_SUBMOD, K_STATUS, K_VECTOR, submod_status
from shared.errors import ParseError, VerificationError
from shared.jwe import unwrap_secret
from shared.metrics import LogHistogram

AUTH_PATH = b"/kbs/v0/auth"
ATTEST_PATH = b"/kbs/v0/attest"
RESOURCE_PATH = b"/kbs/v0/resource/default/key/demo"
SESSION_COOKIE = "kbs-session-id"
MAX_IN_FLIGHT = 20000  # open loop: arrivals beyond this are counted as client:overload
PROGRESS_EVERY_S = 0.5
GRACE_S = 10.0  # how long flows started in the window may take to finish after it
PHASES = ("auth", "attest", "resource")


@dataclass(frozen=True, slots=True)
class TenantPaths:
    """Where a guest of one tenant talks to: the unprefixed paths for the default tenant."""

    name: str
    auth: bytes
    attest: bytes
    resource: bytes
    secret: bytes | None

    @classmethod
    def of(cls, name: str, secret: bytes | None) -> TenantPaths:
        prefix = b"" if name == tenants.DEFAULT else f"{tenants.PATH_PREFIX}{name}".encode()
        return cls(name, prefix + AUTH_PATH, prefix + ATTEST_PATH, prefix + RESOURCE_PATH, secret)


def log(message: str) -> None:
    print(f"[bench loadgen] {message}", file=sys.stderr, flush=True)


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


# -- reading the server's answers ------------------------------------------------------------------


class _Challenge(msgspec.Struct):
    nonce: str


class _Attested(msgspec.Struct):
    token: str


class _Appraisal(msgspec.Struct):
    # Raw JSON: the pair is the key of a small memo, since every token of a run carries one of a
    # handful of (status, vector) pairs and judging one takes ~20 µs of Python.
    status: msgspec.Raw = msgspec.field(name=K_STATUS, default=msgspec.Raw(b"null"))
    vector: msgspec.Raw = msgspec.field(name=K_VECTOR, default=msgspec.Raw(b"null"))


class _Claims(msgspec.Struct):
    submods: dict[str, _Appraisal]


class _Jwe(msgspec.Struct, forbid_unknown_fields=True):
    protected: str
    encrypted_key: str
    iv: str
    ciphertext: str
    tag: str


_challenge = msgspec.json.Decoder(_Challenge)
_attested = msgspec.json.Decoder(_Attested)
_claims = msgspec.json.Decoder(_Claims)
_jwe = msgspec.json.Decoder(_Jwe)


def error_reason(phase: str, response: Response) -> str:
    """``attest:401:nonce.expired``: the KBS error's reason is its detail up to the first ':'."""
    try:
        detail = json.loads(response.body).get("detail", "")
    except (ValueError, AttributeError):
        detail = ""
    reason = str(detail).split(":", 1)[0].strip()
    return f"{phase}:{response.status}:{reason}" if reason else f"{phase}:{response.status}"


_judged: dict[tuple[bytes, bytes], str] = {}


def ear_status(token: str) -> str:
    """The token's appraisal status as ``submod_status`` judges it, read without verifying the
    signature (the relying party verifies; a guest only needs to know where it stands)."""
    payload = token.split(".")[1]
    claims = _claims.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    appraisal = claims.submods.get(CPU_SUBMOD)
    if appraisal is None:
        raise VerificationError("token.malformed", f"no submod {CPU_SUBMOD!r}")
    key = (bytes(appraisal.status), bytes(appraisal.vector))
    status = _judged.get(key)
    if status is None:
        fields: dict[str, Any] = {K_STATUS: msgspec.json.decode(key[0])}
        vector = msgspec.json.decode(key[1])
        if vector is not None:
            fields[K_VECTOR] = vector
        status = submod_status({"submods": {CPU_SUBMOD: fields}})
        if len(_judged) < 1024:
            _judged[key] = status
    return status


# -- accounting ------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the measured window produced."""

    started: int = 0
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latency: LogHistogram = field(default_factory=LogHistogram)
    phases: dict[str, LogHistogram] = field(default_factory=lambda: {p: LogHistogram() for p in PHASES})
    secrets_verified: int = 0
    per_tenant: Counter[str] = field(default_factory=Counter)  # completed, by tenant
    per_tenant_errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Window:
    """The run's clock, in time.perf_counter() seconds (uvloop's loop.time() only has ms ticks)."""

    start: float
    warmup_end: float
    end: float

    @classmethod
    def at(cls, start_at_unix: float, warmup_s: float, duration_s: float) -> Window:
        start = time.perf_counter() + (start_at_unix - time.time())
        return cls(start, start + warmup_s, start + warmup_s + duration_s)


# -- the guests' flow ------------------------------------------------------------------------------


class LoadGen:
    def __init__(
        self,
        pool: HttpPool,
        guests: list[fleet.Guest],
        *,
        cycle: bool,
        secret: bytes | None,
        verify_every: int,
        tenant_paths: list[TenantPaths] | None = None,
        first: int = 0,
    ) -> None:
        self.pool = pool
        self.guests = guests
        self._next: Iterator[fleet.Guest] = itertools.cycle(guests) if cycle else iter(guests)
        # Round-robin by device position: guest k of this client belongs to tenant (first + k) % N.
        spread = tenant_paths or [TenantPaths.of(tenants.DEFAULT, secret)]
        self.tenant_of: dict[int, TenantPaths] = {
            id(guest): spread[(first + k) % len(spread)] for k, guest in enumerate(guests)
        }
        self.verify_every = max(1, verify_every)
        self.tally = Tally()
        self.exhausted = False
        # Progress: every flow finished, and the latencies of successes since the last line.
        self.finished = 0
        self.failed = 0
        self.interval = LogHistogram()
        self.in_flight = 0
        self.last_finish = 0.0
        self._released = 0

    def next_guest(self) -> fleet.Guest | None:
        guest = next(self._next, None)
        if guest is None:
            self.exhausted = True
        return guest

    async def flow(self, guest: fleet.Guest, started: float, measured: bool) -> str | None:
        """One attestation; ``started`` is its (scheduled) start. Returns the error reason or None."""
        self.in_flight += 1
        tally = self.tally
        where = self.tenant_of[id(guest)]
        if measured:
            tally.started += 1
        try:
            reason = await self._attest(guest, where, measured)
        except asyncio.CancelledError:
            if measured:
                tally.errors["timeout:unfinished"] += 1
                tally.per_tenant_errors[where.name] += 1
            raise
        except (OSError, TimeoutError, BadResponse) as exc:
            reason = f"http:{type(exc).__name__}"
        except Exception as exc:  # a client bug must show up in the result, not kill the run
            reason = f"client:{type(exc).__name__}"
        finally:
            self.in_flight -= 1
        now = time.perf_counter()
        self.last_finish = now
        self.finished += 1
        if reason is None:
            latency_ms = (now - started) * 1000.0
            self.interval.record(latency_ms)
            if measured:
                tally.completed += 1
                tally.per_tenant[where.name] += 1
                tally.latency.record(latency_ms)
        else:
            self.failed += 1
            if measured:
                tally.errors[reason] += 1
                tally.per_tenant_errors[where.name] += 1
        return reason

    async def _attest(self, guest: fleet.Guest, where: TenantPaths, measured: bool) -> str | None:
        phases = self.tally.phases
        http: HttpSession
        async with self.pool.session() as http:
            t0 = time.perf_counter()
            response = await http.request(b"POST", where.auth, guest.auth_body)
            t1 = time.perf_counter()
            if measured:
                phases["auth"].record((t1 - t0) * 1000.0)
            if response.status != 200:
                return error_reason("auth", response)
            if SESSION_COOKIE not in http.cookies:
                return "auth:200:no_session_cookie"
            try:
                nonce = _challenge.decode(response.body).nonce
            except msgspec.DecodeError:
                return "auth:200:bad_body"
            body = guest.attest_body(nonce)
            t2 = time.perf_counter()
            response = await http.request(b"POST", where.attest, body)
            t3 = time.perf_counter()
            if measured:
                phases["attest"].record((t3 - t2) * 1000.0)
            if response.status != 200:
                return error_reason("attest", response)
            try:
                status = ear_status(_attested.decode(response.body).token)
            except (msgspec.DecodeError, ValueError, IndexError, VerificationError):
                return "attest:200:token.malformed"
            if status != "affirming":
                return f"ear:{status}"
            t4 = time.perf_counter()
            response = await http.request(b"GET", where.resource)
            if measured:
                phases["resource"].record((time.perf_counter() - t4) * 1000.0)
        if response.status != 200:
            return error_reason("resource", response)
        return self._check_secret(guest, where.secret, response.body, measured)

    def _check_secret(
        self, guest: fleet.Guest, secret: bytes | None, body: bytes, measured: bool
    ) -> str | None:
        try:
            jwe = _jwe.decode(body)
        except msgspec.DecodeError:
            return "resource:200:not_jwe"
        self._released += 1
        if secret is None or self._released % self.verify_every:
            return None
        members = {name: getattr(jwe, name) for name in _Jwe.__struct_fields__}
        try:
            plain = unwrap_secret(members, guest.tee_key)
        except (ParseError, VerificationError):
            return "secret:undecryptable"
        if plain != secret:
            return "secret:mismatch"
        if measured:
            self.tally.secrets_verified += 1
        return None

    # -- schedules --------------------------------------------------------------------------
    async def prime(self, concurrency: int) -> Counter[str]:
        """Every guest attests once, unmeasured; failures get one more try. Returns what failed."""
        failures, retry = await self._prime_pass(self.guests, concurrency)
        if retry:
            failures, _ = await self._prime_pass(retry, concurrency)
        return failures

    async def _prime_pass(
        self, guests: list[fleet.Guest], concurrency: int
    ) -> tuple[Counter[str], list[fleet.Guest]]:
        failures: Counter[str] = Counter()
        failed: list[fleet.Guest] = []
        queue = iter(guests)  # shared by the workers: each guest is taken once

        async def worker() -> None:
            for guest in queue:
                reason = await self.flow(guest, time.perf_counter(), measured=False)
                if reason is not None:
                    failures[reason] += 1
                    failed.append(guest)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return failures, failed

    async def closed_loop(self, window: Window, concurrency: int) -> None:
        async def worker() -> None:
            while True:
                now = time.perf_counter()
                if now >= window.end:
                    return
                guest = self.next_guest()
                if guest is None:
                    return
                await self.flow(guest, now, measured=now >= window.warmup_end)

        await _sleep_until(window.start)
        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        await _drain(workers, window.end + GRACE_S)

    async def open_loop(self, window: Window, rate: float, rng: random.Random) -> None:
        flows: set[asyncio.Future[str | None]] = set()
        scheduled = window.start
        while True:
            scheduled += rng.expovariate(rate)
            if scheduled >= window.end:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            measured = scheduled >= window.warmup_end
            if len(flows) >= MAX_IN_FLIGHT:
                if measured:
                    self.tally.started += 1
                    self.tally.errors["client:overload"] += 1
                continue
            guest = self.next_guest()
            if guest is None:
                break
            task = asyncio.ensure_future(self.flow(guest, scheduled, measured))
            flows.add(task)
            task.add_done_callback(flows.discard)
        await _drain(list(flows), window.end + GRACE_S)


async def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _drain(tasks: list[asyncio.Future[Any]], deadline: float) -> None:
    """Wait for ``tasks`` until ``deadline``; cancel the rest (their flows count as unfinished)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)


# -- the process -----------------------------------------------------------------------------------


async def report_progress(gen: LoadGen, window: Window, done: asyncio.Event) -> None:
    """Every 0.5 s, and once more when the warmup ends, so that no line mixes the two phases;
    a line's phase is that of the interval it reports."""
    await _sleep_until(window.start)
    tick = window.start
    while not done.is_set():
        began = tick
        tick += PROGRESS_EVERY_S
        if began < window.warmup_end < tick:
            tick = window.warmup_end
        try:
            await asyncio.wait_for(done.wait(), max(0.0, tick - time.perf_counter()))
        except TimeoutError:
            pass
        interval, gen.interval = gen.interval, LogHistogram()
        emit(
            {
                "event": "progress",
                "t": time.time(),
                "phase": "warmup" if began < window.warmup_end else "measure",
                "completed": gen.finished - gen.failed,
                "errors": gen.failed,
                "in_flight": gen.in_flight,
                "hist": interval.to_wire(),
            }
        )


async def measure_cpu(window: Window, done: asyncio.Event) -> float:
    """This process's CPU seconds from the window's start to its end (or to the end of work)."""
    await _sleep_until(window.warmup_end)
    if done.is_set():
        return 0.0
    cpu = time.process_time()
    try:
        await asyncio.wait_for(done.wait(), max(0.0, window.end - time.perf_counter()))
    except TimeoutError:
        pass
    return time.process_time() - cpu


def build_guests(args: argparse.Namespace) -> list[fleet.Guest]:
    tees = list(fleet.TEES) if args.tee == "mix" else [args.tee]
    groups = [fleet.build_guests(tee, args.seed, args.first, args.count, args.cache_dir) for tee in tees]
    return groups[0] if len(groups) == 1 else fleet.interleave(groups)


async def read_start(no_wait: bool) -> float:
    if no_wait:
        return time.time()
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line.strip():
        raise SystemExit("loadgen: stdin closed before the start line")
    return float(json.loads(line)["start_at"])


def raise_fd_limit() -> None:
    # An open loop against a slow server holds one socket per flow in flight.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    setup_started = time.monotonic()
    guests = build_guests(args)
    # The guests live for the whole run: keep the collector from re-scanning them.
    gc.collect()
    gc.freeze()
    open_loop = args.rate is not None
    connections = args.connections or (1024 if open_loop else args.concurrency)
    pool = HttpPool.from_url(args.url, max_connections=connections, timeout=args.request_timeout)
    secrets = [bytes.fromhex(part) for part in args.secret.split(",")] if args.secret else []
    secret = secrets[0] if secrets else None
    reattest = args.scenario == "reattest"
    names = args.tenants.split(",") if args.tenants else [tenants.DEFAULT]
    spread = [
        TenantPaths.of(name, secrets[i] if len(secrets) > 1 else secret) for i, name in enumerate(names)
    ]
    gen = LoadGen(
        pool, guests, cycle=reattest, secret=secret, verify_every=args.verify_every, tenant_paths=spread,
        first=args.first,
    )  # fmt: skip
    ready: dict[str, Any] = {"event": "ready", "devices": len(guests), "setup_s": 0.0}
    if reattest:
        primed_at = time.monotonic()
        failures = await gen.prime(args.concurrency)
        ready.update(primed=len(guests) - sum(failures.values()), prime_errors=dict(failures))
        ready["prime_s"] = round(time.monotonic() - primed_at, 3)
        gen.finished = gen.failed = 0
        gen.interval = LogHistogram()
    ready["setup_s"] = round(time.monotonic() - setup_started, 3)
    emit(ready)

    window = Window.at(await read_start(args.no_wait), args.warmup, args.duration)
    done = asyncio.Event()
    progress = asyncio.ensure_future(report_progress(gen, window, done))
    cpu = asyncio.ensure_future(measure_cpu(window, done))
    if open_loop:
        rng = random.Random(f"{args.seed}|{args.tee}|{args.first}|arrivals")
        await gen.open_loop(window, args.rate, rng)
    else:
        await gen.closed_loop(window, args.concurrency)
    done.set()
    cpu_s = await cpu
    await progress
    await pool.close()
    return result(gen, window, cpu_s)


def result(gen: LoadGen, window: Window, cpu_s: float) -> dict[str, Any]:
    tally = gen.tally
    # A boot storm that ran out of devices measured until its last flow ended, not the window.
    last = min(window.end, gen.last_finish) if gen.exhausted else window.end
    return {
        "event": "result",
        "completed": tally.completed,
        "started": tally.started,
        "errors_by_reason": dict(sorted(tally.errors.items())),
        "latency": tally.latency.to_wire(),
        "phases": {name: hist.to_wire() for name, hist in tally.phases.items()},
        "measured_s": round(max(0.0, last - window.warmup_end), 6),
        "fleet_exhausted": gen.exhausted,
        "secrets_verified": tally.secrets_verified,
        "cpu_s": round(cpu_s, 6),
        "connections_opened": gen.pool.opened,
        "per_tenant": dict(sorted(tally.per_tenant.items())),
        "per_tenant_errors": dict(sorted(tally.per_tenant_errors.items())),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.loadgen", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--url", required=True, help="the REMITS gateway, http://host:port")
    parser.add_argument("--tee", required=True, choices=[*fleet.TEES, "mix"])
    parser.add_argument("--seed", required=True)
    parser.add_argument("--cache-dir", type=Path, default=fleet.DEFAULT_CACHE_DIR)
    parser.add_argument("--scenario", default="reattest", choices=["reattest", "boot-storm"])
    parser.add_argument("--first", type=int, default=0, help="first device index of this client")
    parser.add_argument("--count", type=int, required=True, help="devices of this client (per TEE)")
    parser.add_argument("--rate", type=float, help="open loop: Poisson arrivals per second")
    parser.add_argument(
        "--concurrency",
        type=int,
        help="closed loop: guests in flight (default 32); also the priming concurrency",
    )
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--verify-every", type=int, default=10, help="decrypt every K-th released secret")
    parser.add_argument(
        "--secret",
        default="",
        help="hex of the resource's expected plaintext (with --tenants: one per tenant, by commas)",
    )
    parser.add_argument(
        "--tenants",
        default="",
        help="tenants to spread the guests over round-robin, by commas (default: the default tenant)",
    )
    parser.add_argument(
        "--connections", type=int, default=0, help="max connections (default: concurrency; open loop 1024)"
    )
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument(
        "--no-wait", action="store_true", help="start at once instead of reading start_at from stdin"
    )
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = 64 if args.rate is not None else 32
    if args.count < 1 or args.first < 0 or args.concurrency < 1 or args.duration < 0 or args.warmup < 0:
        parser.error("need --count >= 1, --first >= 0, --concurrency >= 1 and non-negative times")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    names = args.tenants.split(",") if args.tenants else []
    if not all(tenants.is_name(name) for name in names) or len(set(names)) != len(names):
        parser.error("--tenants: distinct tenant names, by commas")
    n_secrets = len(args.secret.split(",")) if args.secret else 0
    if n_secrets > 1 and n_secrets != len(names):
        parser.error("--secret: one per tenant when several are given")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from services.cli import install_fast_loop

    install_fast_loop()
    raise_fd_limit()
    try:
        emit(asyncio.run(run(args)))
    except LookupError as exc:  # e.g. TDX devices the vendor has not issued PCKs for
        log(str(exc))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
