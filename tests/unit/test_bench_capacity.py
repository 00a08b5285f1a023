"""The capacity model's arithmetic on fixed inputs."""

from __future__ import annotations

import math

from services.bench import capacity


def report(scenario: str, **cpu: float) -> dict:
    return {
        "tee": "snp", "scenario": scenario, "cores": 2, "attestations_per_s": 300.0, "p50_ms": 10.0, "p99_ms": 20.0,
        "redis_roundtrips_per_attestation": 6.0, "redis_commands_per_attestation": 15.0,
        "bus_messages_per_attestation": 6.0, "nats_messages_per_attestation": 32.0,
        "server_cpu_ms_per_attestation": round(sum(cpu.values()), 3), "crypto_floor_us": 1100.0, "efficiency": 0.1,
        "endorsement_fetches": {"requests": 10, "distinct_keys": 10}, "cpu_ms_per_attestation": cpu,
    }


def test_cores_and_replicas() -> None:
    assert capacity.cores(1000, 1.5) == 1.5
    assert capacity.replicas(1000, 1.5) == 3  # 1.5 cores at 70 %: 2.14 -> 3 processes
    assert capacity.replicas(1, 0.001) == 1  # never fewer than one
    assert capacity.ceiling_per_process(0.5) == 2000 and capacity.ceiling_per_process(0) == math.inf


def test_fleet_plans_from_measured_costs() -> None:
    reattest = report("reattest", gateway=1.0, identity=1.4, **{"nats-server": 0.7, "redis-server": 0.1})
    storm = report("boot-storm", gateway=1.0, identity=2.0, **{"nats-server": 0.8, "redis-server": 0.2})
    a, b = capacity.fleet_scenarios(reattest, storm)
    assert round(a.rate_per_s, 1) == 277.8 and round(b.rate_per_s, 1) == 166.7
    rows = {r["kind"]: r for r in capacity.plan(a)}
    assert rows["identity"]["cores"] == round(1_000_000 / 3600 * 1.4 / 1000, 2)
    assert rows["identity"]["replicas"] == 1 and rows["intake"]["cpu_ms"] == 0.0
    storm_rows = {r["kind"]: r for r in capacity.plan(b)}
    assert storm_rows["identity"]["cores"] == round(50_000 / 300 * 2.0 / 1000, 2)
    text = capacity.render(reattest, storm, ("a.json", "b.json"))
    assert "remits capacity a.json b.json --out docs/capacity.md" in text
    assert "**identity** is the most expensive component" in text
    assert "(a) 1,000,000 VMs re-attesting every hour" in text and "277.8 attestations/s" in text
