"""The simulated hardware vendors of a `remits bench` run, as one process:

    python -m services.bench.vendor --tees sample,snp,tdx --seed S --fleet N --server-data-dir D
                                    [--cache-dir C] [--host 127.0.0.1]

Before serving, it pre-issues (or loads from the cache) the endorsements of devices 0..N-1 of each
TEE -- the real AMD KDS and Intel PCS are other machines, so issuing must not take CPU from the
server during the measurement -- and writes the trust anchors the server must pin into D. Then it
serves, from memory, the sample vendor's key server, AMD KDS and Intel PCS on free ports, counting
every request per (TEE, URL) so a benchmark can prove "one endorsement fetch per chip":
``GET /_bench/stats``, ``POST /_bench/reset`` on the control port.

stdout carries exactly one line, ``{"event": "ready", "stats_url": ..., "env": {...}}`` with the
server's ``REMITS_*`` settings; diagnostics go to stderr. Runs until SIGTERM/SIGINT, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from services.bench import fleet
from services.demo.local_pcs import LocalPcs
from services.demo.serving import serve
from shared.errors import ParseError
from shared.platforms.sample.abi import DEVICE_ID_SIZE
from shared.platforms.sample.kds import CHAIN_PATH, DEVICE_PATH, parse_device_cert_url
from shared.platforms.snp import kds as amd_kds
from shared.platforms.tdx import pcs

_DEVICE = web.RequestKey("bench_device", bool)  # the handler answered for one device


def log(message: str) -> None:
    print(f"[bench vendor] {message}", file=sys.stderr, flush=True)


# -- request accounting ---------------------------------------------------------------------------


@dataclass
class FetchStats:
    """Requests per (TEE, path and query): one key is one document a server could cache."""

    tees: tuple[str, ...] = ()  # always reported, even before their first request
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    devices: Counter[tuple[str, str]] = field(default_factory=Counter)
    not_found: Counter[str] = field(default_factory=Counter)

    def record(self, tee: str, key: str, *, device: bool, status: int) -> None:
        self.counts[(tee, key)] += 1
        if device:
            self.devices[(tee, key)] += 1
        if status >= 400:
            self.not_found[tee] += 1

    def reset(self) -> None:
        self.counts.clear()
        self.devices.clear()
        self.not_found.clear()

    def _tee(self, tee: str) -> dict[str, int]:
        counts = [n for (t, _), n in self.counts.items() if t == tee]
        devices = [n for (t, _), n in self.devices.items() if t == tee]
        return {
            "requests": sum(counts),
            "distinct_keys": len(counts),
            "max_fetches_per_key": max(counts, default=0),
            "device_requests": sum(devices),
            "distinct_devices": len(devices),
            "max_fetches_per_device": max(devices, default=0),
            "errors": self.not_found[tee],
        }

    def snapshot(self) -> dict[str, Any]:
        tees = sorted(set(self.tees) | {tee for tee, _ in self.counts})
        return {
            "requests": sum(self.counts.values()),
            "by_tee": {tee: self._tee(tee) for tee in tees},
            "distinct_keys": len(self.counts),
            "max_fetches_per_key": max(self.counts.values(), default=0),
        }


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def counting(stats: FetchStats, tee: str) -> Any:
    @web.middleware
    async def count(request: web.Request, handler: _Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # unknown paths: counted like any other miss
            stats.record(tee, request.path_qs, device=False, status=exc.status)
            raise
        stats.record(tee, request.path_qs, device=bool(request.get(_DEVICE)), status=response.status)
        return response

    return count


# -- the vendors' endpoints -----------------------------------------------------------------------


def _not_found(text: str) -> web.Response:
    return web.Response(status=404, text=text)


@dataclass
class SampleKds:
    """The sample vendor's key server (shared/platforms/sample/kds.py URLs), for fleet devices only."""

    seed: str
    fleet: int
    certs: dict[int, bytes]
    chain_pem: bytes

    def device_cert(self, device_id: bytes) -> bytes | None:
        index = fleet.index_of("sample", self.seed, device_id, DEVICE_ID_SIZE)
        return self.certs.get(index) if index is not None and index < self.fleet else None

    async def _device(self, request: web.Request) -> web.Response:
        request[_DEVICE] = True
        try:
            device_id = parse_device_cert_url(request.path)
        except ParseError as exc:
            return web.Response(status=400, text=exc.detail)
        der = self.device_cert(device_id)
        if der is None:
            return _not_found("unknown device")
        return web.Response(body=der, content_type="application/pkix-cert")

    async def _chain(self, request: web.Request) -> web.Response:
        return web.Response(body=self.chain_pem, content_type="application/x-pem-file")

    def app(self, stats: FetchStats) -> web.Application:
        app = web.Application(middlewares=[counting(stats, "sample")])
        app.router.add_get(DEVICE_PATH + "{device_hex}", self._device)
        app.router.add_get(CHAIN_PATH, self._chain)
        return app


@dataclass
class AmdKds:
    """AMD KDS for one product (VCEK, cert_chain and CRL paths of shared/platforms/snp/kds.py)."""

    seed: str
    fleet: int
    certs: dict[int, bytes]
    chain_pem: bytes
    crl_der: bytes

    def vcek(self, path_qs: str) -> bytes | None:
        """The VCEK at a KDS VCEK URL, if it names a fleet chip at the fleet's TCB."""
        wanted = amd_kds.parse_vcek_url(path_qs)
        if wanted.product.value != fleet.SNP_PRODUCT:
            return None
        components = dict(wanted.spls)
        tcb = fleet.SNP_TCB
        if (components["bootloader"], components["tee"], components["snp"], components["microcode"]) != (
            tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode,
        ):  # fmt: skip
            return None
        index = fleet.index_of("snp", self.seed, wanted.hw_id, fleet.SNP_CHIP_ID_SIZE)
        return self.certs.get(index) if index is not None and index < self.fleet else None

    async def _vcek(self, request: web.Request) -> web.Response:
        request[_DEVICE] = True
        try:
            der = self.vcek(request.path_qs)
        except ParseError as exc:
            return web.Response(status=400, text=exc.detail)
        if der is None:
            return _not_found("unknown chip or TCB")
        return web.Response(body=der, content_type="application/pkix-cert")

    async def _chain(self, request: web.Request) -> web.Response:
        if request.match_info["product"] != fleet.SNP_PRODUCT:
            return _not_found("unknown product")
        return web.Response(body=self.chain_pem, content_type="application/x-pem-file")

    async def _crl(self, request: web.Request) -> web.Response:
        if request.match_info["product"] != fleet.SNP_PRODUCT:
            return _not_found("unknown product")
        return web.Response(body=self.crl_der, content_type="application/pkix-crl")

    def app(self, stats: FetchStats) -> web.Application:
        app = web.Application(middlewares=[counting(stats, "snp")])
        app.router.add_get("/vcek/v1/{product}/cert_chain", self._chain)
        app.router.add_get("/vcek/v1/{product}/crl", self._crl)
        app.router.add_get("/vcek/v1/{product}/{hwid}", self._vcek)
        return app


def intel_pcs(vendor: fleet.TdxVendor) -> LocalPcs:
    """The simulated Intel's PCS for the fleet's FMSPC, every document rendered once, now."""
    server = LocalPcs.from_simulated(vendor.intel, fleet.TDX_FMSPC, tees=(pcs.Tee.TDX,))

    def frozen(source: Callable[[], Any]) -> Callable[[], Any]:
        document = source()
        return lambda: document

    server.tcb_infos = {key: frozen(source) for key, source in server.tcb_infos.items()}
    server.qe_identities = {key: frozen(source) for key, source in server.qe_identities.items()}
    server.pck_crls = {key: frozen(source) for key, source in server.pck_crls.items()}
    if server.root_ca_crl is not None:
        server.root_ca_crl = frozen(server.root_ca_crl)
    return server


def pcs_app(vendor: fleet.TdxVendor, stats: FetchStats) -> web.Application:
    app = intel_pcs(vendor).app()
    app.middlewares.append(counting(stats, "tdx"))
    return app


# -- trust anchors in the server's data directory --------------------------------------------------


def install_trust(issued: dict[str, fleet.Issued], data_dir: Path) -> dict[str, str]:
    """Write what the server must trust into its data directory; return the env entries naming it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    for tee, result in issued.items():
        vendor = result.vendor
        if isinstance(vendor, fleet.SampleVendor):
            vendor.pki.save(data_dir / "sample-pki")  # where the server's VendorPKI.load looks
        elif isinstance(vendor, fleet.SnpVendor):
            roots = data_dir / "snp-test-roots"
            product = roots / fleet.SNP_PRODUCT.lower()
            product.mkdir(parents=True, exist_ok=True)
            files = vendor.files()
            (product / "ark.pem").write_bytes(files["ark.pem"])
            (product / "ask.pem").write_bytes(files["ask.pem"])
            (product / "asvk.pem").write_bytes(files["ask.pem"])  # no VLEKs: any valid ASVK will do
            env["REMITS_SNP_ROOTS_DIR"] = str(roots)
        elif isinstance(vendor, fleet.TdxVendor):
            root = data_dir / "tdx-test-root.pem"
            root.write_bytes(vendor.intel.root_pem)
            env["REMITS_DCAP_ROOT_CA_PATH"] = str(root)
        else:  # pragma: no cover - preissue only makes the three above
            raise TypeError(f"unknown vendor for {tee}")
    return env


# -- the process ----------------------------------------------------------------------------------


def build_apps(
    issued: dict[str, fleet.Issued], seed: str, fleet_size: int, stats: FetchStats
) -> dict[str, web.Application]:
    apps: dict[str, web.Application] = {}
    for tee, result in issued.items():
        vendor = result.vendor
        if isinstance(vendor, fleet.SampleVendor):
            apps[tee] = SampleKds(seed, fleet_size, result.certs, vendor.pki.chain_pem()).app(stats)
        elif isinstance(vendor, fleet.SnpVendor):
            amd = vendor.amd
            kds = AmdKds(
                seed, fleet_size, result.certs, amd.cert_chain_pem(), amd.crl_der(now=datetime.now(UTC))
            )
            apps[tee] = kds.app(stats)
        elif isinstance(vendor, fleet.TdxVendor):
            apps[tee] = pcs_app(vendor, stats)
    return apps


def control_app(stats: FetchStats) -> web.Application:
    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats.snapshot())

    async def reset(request: web.Request) -> web.Response:
        stats.reset()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_get("/_bench/stats", get_stats)
    app.router.add_post("/_bench/reset", reset)
    return app


_ENV_URL = {"sample": "REMITS_SAMPLE_KDS_URL", "snp": "REMITS_SNP_KDS_URL", "tdx": "REMITS_DCAP_PCS_URL"}


async def run(args: argparse.Namespace, issued: dict[str, fleet.Issued], env: dict[str, str]) -> None:
    stats = FetchStats(tees=tuple(issued))
    runners: list[web.AppRunner] = []
    try:
        for tee, app in build_apps(issued, args.seed, args.fleet, stats).items():
            runner, url = await serve(app, args.host, 0)
            runners.append(runner)
            env[_ENV_URL[tee]] = url
        runner, control_url = await serve(control_app(stats), args.host, 0)
        runners.append(runner)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        ready = {
            "event": "ready",
            "stats_url": f"{control_url}/_bench/stats",
            "reset_url": f"{control_url}/_bench/reset",
            "env": env,
            "fleet": args.fleet,
            "preissue": {
                tee: {"seconds": round(r.seconds, 3), "issued": r.issued, "cached": len(r.certs) - r.issued}
                for tee, r in issued.items()
            },
        }
        print(json.dumps(ready), flush=True)
        await stop.wait()
        log("stopping")
    finally:
        for runner in runners:
            await runner.cleanup()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.bench.vendor", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--tees", default="sample,snp,tdx", help="comma-separated: sample, snp, tdx")
    parser.add_argument("--seed", required=True)
    parser.add_argument("--fleet", type=int, required=True, help="devices 0..N-1 of each TEE")
    parser.add_argument("--server-data-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=fleet.DEFAULT_CACHE_DIR)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--workers", type=int, default=0, help="issuing processes (0: one per core)")
    args = parser.parse_args(argv)
    args.tees = [t for t in args.tees.split(",") if t]
    unknown = sorted(set(args.tees) - set(fleet.TEES))
    if unknown or not args.tees:
        parser.error(f"--tees takes sample, snp, tdx (got {unknown or 'nothing'})")
    if args.fleet < 1:
        parser.error("--fleet must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    # Issued before any event loop or thread exists, so the issuing pool can fork.
    issued = {
        tee: fleet.preissue(tee, args.seed, args.fleet, args.cache_dir, workers=args.workers or None, log=log)
        for tee in args.tees
    }
    data_dir = args.server_data_dir.resolve()
    env = install_trust(issued, data_dir)
    log(f"{args.fleet} devices of {', '.join(args.tees)} ready in {time.monotonic() - started:.1f} s")
    from services.cli import install_fast_loop

    install_fast_loop()
    asyncio.run(run(args, issued, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
