"""The bench's arithmetic and its table: pure functions over what the run collected."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.metrics import LogHistogram

# What the issue calls "server": the gateway, the six stages, nats-server and redis-server.
STAGE_KINDS = ("intake", "endorse", "identity", "measure", "decide", "release")
SERVER_KINDS = ("gateway", *STAGE_KINDS, "stack", "nats-server", "redis-server")
SERVICE_KINDS = (*SERVER_KINDS, "audit")


@dataclass(frozen=True)
class CpuSample:
    kind: str
    cpu_s: float


def cpu_ms_per_attestation(
    before: Mapping[int, CpuSample], after: Mapping[int, CpuSample], completed: int
) -> dict[str, float]:
    """CPU each kind of process spent in the window, per completed attestation, in ms. A process
    that ended in the window counts with what it had used by its last sample."""
    spent: dict[str, float] = {}
    for pid, start in before.items():
        end = after.get(pid, start)
        spent[start.kind] = spent.get(start.kind, 0.0) + max(0.0, end.cpu_s - start.cpu_s)
    if completed <= 0:
        return {kind: 0.0 for kind in spent}
    return {kind: round(seconds * 1000.0 / completed, 3) for kind, seconds in spent.items()}


def total_of(per_kind: Mapping[str, float], kinds: Iterable[str]) -> float:
    return round(sum(per_kind.get(kind, 0.0) for kind in kinds), 3)


def per_attestation(count: float, completed: int) -> float:
    return round(count / completed, 2) if completed > 0 else 0.0


def crypto_bound_per_s(cores: int, floor_us: float) -> float:
    """The most attestations/s the machine could do if it did nothing but the unavoidable crypto."""
    return round(cores * 1e6 / floor_us, 1) if floor_us > 0 else 0.0


def efficiency(attestations_per_s: float, bound_per_s: float) -> float:
    return round(attestations_per_s / bound_per_s, 3) if bound_per_s > 0 else 0.0


@dataclass
class ClientTotals:
    completed: int
    errors_by_reason: dict[str, int]
    latency: LogHistogram
    phases: dict[str, LogHistogram]
    measured_s: float
    secrets_verified: int
    fleet_exhausted: bool
    cpu_s: float
    per_tenant: dict[str, int] = field(default_factory=dict)  # completed, by tenant
    per_tenant_errors: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(self.errors_by_reason.values())

    @property
    def attestations_per_s(self) -> float:
        return round(self.completed / self.measured_s, 1) if self.measured_s > 0 else 0.0


def merge_client_results(results: Iterable[Mapping[str, Any]]) -> ClientTotals:
    """Clients run the same window side by side: counts add up, the window is the longest one."""
    totals = ClientTotals(0, {}, LogHistogram(), {}, 0.0, 0, False, 0.0)
    for result in results:
        totals.completed += int(result["completed"])
        for reason, n in result.get("errors_by_reason", {}).items():
            totals.errors_by_reason[reason] = totals.errors_by_reason.get(reason, 0) + int(n)
        totals.latency.merge(LogHistogram.from_wire(result["latency"]))
        for phase, wire in result.get("phases", {}).items():
            totals.phases.setdefault(phase, LogHistogram()).merge(LogHistogram.from_wire(wire))
        totals.measured_s = max(totals.measured_s, float(result.get("measured_s", 0.0)))
        totals.secrets_verified += int(result.get("secrets_verified", 0))
        totals.fleet_exhausted = totals.fleet_exhausted or bool(result.get("fleet_exhausted"))
        totals.cpu_s += float(result.get("cpu_s", 0.0))
        for into, key in ((totals.per_tenant, "per_tenant"), (totals.per_tenant_errors, "per_tenant_errors")):
            for tenant, n in result.get(key, {}).items():
                into[tenant] = into.get(tenant, 0) + int(n)
    totals.errors_by_reason = dict(sorted(totals.errors_by_reason.items(), key=lambda kv: -kv[1]))
    return totals


def stage_times(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage, across every process: queue wait and service time, p50/p99 in ms."""
    waits: dict[str, LogHistogram] = {}
    services: dict[str, LogHistogram] = {}
    processed: dict[str, int] = {}
    for snapshot in snapshots:
        for stage, times in snapshot.get("stages", {}).items():
            waits.setdefault(stage, LogHistogram()).merge(LogHistogram.from_wire(times["wait"]))
            services.setdefault(stage, LogHistogram()).merge(LogHistogram.from_wire(times["service"]))
            processed[stage] = processed.get(stage, 0) + int(times.get("processed", 0))
    order = {stage: i for i, stage in enumerate(STAGE_KINDS)}
    out: dict[str, dict[str, float]] = {}
    for stage in sorted(waits, key=lambda s: order.get(s, len(order))):
        wait, service = waits[stage], services[stage]
        out[stage] = {
            "wait_p50_ms": round(wait.percentile(50), 3),
            "wait_p99_ms": round(wait.percentile(99), 3),
            "service_p50_ms": round(service.percentile(50), 3),
            "service_p99_ms": round(service.percentile(99), 3),
            "processed": processed[stage],
        }
    return out


def counter_total(snapshots: Iterable[Mapping[str, Any]], name: str) -> int:
    return sum(int(s.get("counters", {}).get(name, 0)) for s in snapshots)


def format_table(report: Mapping[str, Any]) -> str:
    """The human summary of one run."""
    load = (
        f"open loop {report['rate']:g}/s" if report.get("rate") else f"closed loop, {report['concurrency']} in flight"
    )
    lines = [
        f"REMITS bench: tee={report['tee']} scenario={report['scenario']} {load}, "
        f"{report['clients']} client process(es), layout={report['layout']}, {report['cores']} cores",
        f"  measured {report['measured_s']:.1f} s after {report['warmup_s']:g} s warm-up: "
        f"{report['completed']} attestations, {report['errors']} errors",
        *(
            [f"  {report['tenants']} tenants, completed: " + ", ".join(f"{t} {n}" for t, n in report["per_tenant"].items())]
            if report.get("tenants", 1) > 1
            else []
        ),
        "",
        f"  {'attestations/s':<34}{report['attestations_per_s']:>10}",
        f"  {'latency p50 / p95 / p99 (ms)':<34}{report['p50_ms']:>10} / {report['p95_ms']} / {report['p99_ms']}",
        f"  {'server CPU per attestation (ms)':<34}{report['server_cpu_ms_per_attestation']:>10}",
        f"  {'Redis round trips / commands':<34}{report['redis_roundtrips_per_attestation']:>10} / "
        f"{report['redis_commands_per_attestation']}",
        f"  {'bus messages (JetStream) per att.':<34}{report['bus_messages_per_attestation']:>10}",
        f"  {'crypto floor (us) / bound (att/s)':<34}{report['crypto_floor_us']:>10} / {report['crypto_bound_per_s']}",
        f"  {'efficiency (rate / crypto bound)':<34}{report['efficiency']:>10}",
        "",
        "  CPU ms per attestation by process kind:",
    ]
    for kind, ms in sorted(report["cpu_ms_per_attestation"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {kind:<16}{ms:>8.3f}")
    if report.get("per_stage"):
        lines += ["", f"  {'stage':<12}{'wait p50':>10}{'wait p99':>10}{'work p50':>10}{'work p99':>10}  (ms)"]
        for stage, t in report["per_stage"].items():
            lines.append(
                f"  {stage:<12}{t['wait_p50_ms']:>10.2f}{t['wait_p99_ms']:>10.2f}"
                f"{t['service_p50_ms']:>10.2f}{t['service_p99_ms']:>10.2f}"
            )
    fetches = report.get("endorsement_fetches")
    if fetches:
        lines += [
            "",
            f"  endorsement fetches: {fetches.get('requests', 0)} for {fetches.get('distinct_keys', 0)} documents "
            f"(at most {fetches.get('max_fetches_per_key', 0)} per document)",
        ]
    if report["errors_by_reason"]:
        lines += ["", "  errors:"] + [f"    {n:>6}  {reason}" for reason, n in report["errors_by_reason"].items()]
    return "\n".join(lines)
