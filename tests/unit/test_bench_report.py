"""The bench's arithmetic on fixed inputs: percentiles, histograms, CPU per attestation, efficiency."""

from __future__ import annotations

import pytest

from services.bench import crypto_floor, report
from services.bench.run import _split
from shared.metrics import LogHistogram, bucket_of, bucket_value_ms, nearest_rank


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert nearest_rank(values, 50) == 50.0
    assert nearest_rank(values, 99) == 99.0
    assert nearest_rank(values, 100) == 100.0
    assert nearest_rank([7.0], 99) == 7.0
    assert nearest_rank([], 50) == 0.0
    assert nearest_rank([1.0, 2.0, 3.0, 4.0], 25) == 1.0
    assert nearest_rank([1.0, 2.0, 3.0, 4.0], 26) == 2.0


def test_histogram_percentiles_within_one_bucket() -> None:
    values = [float(v) for v in range(1, 1001)]  # 1..1000 ms
    hist = LogHistogram.of(values)
    assert hist.total == 1000 and hist.max_ms == 1000.0
    assert hist.mean_ms == pytest.approx(500.5)
    for q in (50, 95, 99):
        exact = nearest_rank(values, q)
        assert abs(hist.percentile(q) - exact) / exact < 0.02, q
    assert hist.percentile(100) == 1000.0  # never above the largest value seen


def test_histogram_buckets_and_merge() -> None:
    assert bucket_of(0.0) == 0 and bucket_of(0.0005) == 0
    assert bucket_value_ms(bucket_of(10.0)) == pytest.approx(10.0, rel=0.02)
    a, b = LogHistogram.of([1.0, 2.0]), LogHistogram.of([3.0, 400.0])
    a.merge(b)
    assert a.total == 4 and a.sum_ms == 406.0 and a.max_ms == 400.0
    round_trip = LogHistogram.from_wire(a.to_wire())
    assert round_trip == a
    assert LogHistogram().percentile(99) == 0.0 and LogHistogram().mean_ms == 0.0


def test_cpu_per_attestation_by_kind() -> None:
    before = {1: report.CpuSample("gateway", 10.0), 2: report.CpuSample("identity", 5.0), 3: report.CpuSample("identity", 1.0)}
    after = {1: report.CpuSample("gateway", 11.0), 2: report.CpuSample("identity", 5.5), 3: report.CpuSample("identity", 1.5)}
    # 1 s of gateway and 1 s over two identity replicas, for 500 attestations: 2 ms each.
    assert report.cpu_ms_per_attestation(before, after, 500) == {"gateway": 2.0, "identity": 2.0}
    # A process gone by the second sample counts with what it had used.
    assert report.cpu_ms_per_attestation(before, {1: after[1]}, 500) == {"gateway": 2.0, "identity": 0.0}
    assert report.cpu_ms_per_attestation(before, after, 0) == {"gateway": 0.0, "identity": 0.0}
    cpu = {"gateway": 1.0, "identity": 0.5, "nats-server": 0.25, "client": 3.0, "audit": 0.125}
    assert report.total_of(cpu, report.SERVER_KINDS) == 1.75
    assert report.total_of(cpu, report.SERVICE_KINDS) == 1.875


def test_crypto_bound_and_efficiency() -> None:
    assert report.crypto_bound_per_s(2, 1000.0) == 2000.0
    assert report.efficiency(500.0, 2000.0) == 0.25
    assert report.crypto_bound_per_s(2, 0.0) == 0.0 and report.efficiency(10.0, 0.0) == 0.0
    costs = {"ecdsa_p384_verify": 800.0, "ecdsa_p256_sign": 40.0, "ecdsa_p256_verify": 120.0, "ecdh_p256": 130.0,
             "rsa4096_pss_verify": 150.0}
    sample = crypto_floor.operations_for(("sample",), new_chip=False)
    assert crypto_floor.floor_us(costs, sample) == 1090.0
    storm = crypto_floor.operations_for(("snp",), new_chip=True)
    assert crypto_floor.floor_us(costs, storm) == 1240.0
    tdx = crypto_floor.operations_for(("tdx",), new_chip=False)
    assert crypto_floor.floor_us(costs, tdx) == 3 * 120.0 + 40.0 + 130.0
    mix = crypto_floor.operations_for(("sample", "snp", "tdx"), new_chip=False)
    assert crypto_floor.floor_us(costs, mix) == pytest.approx((1090.0 + 1090.0 + 530.0) / 3)


def test_merge_client_results_and_stage_times() -> None:
    one = {"completed": 100, "errors_by_reason": {"attest:401:nonce.expired": 2}, "latency": LogHistogram.of([10.0] * 100).to_wire(),
           "phases": {"auth": LogHistogram.of([1.0]).to_wire()}, "measured_s": 10.0, "secrets_verified": 10, "cpu_s": 0.5}
    two = {**one, "completed": 300, "errors_by_reason": {"attest:401:nonce.expired": 1, "http:ConnectionResetError": 4},
           "latency": LogHistogram.of([30.0] * 300).to_wire(), "measured_s": 10.5, "fleet_exhausted": True}
    totals = report.merge_client_results([one, two])
    assert totals.completed == 400 and totals.errors == 7
    assert list(totals.errors_by_reason) == ["http:ConnectionResetError", "attest:401:nonce.expired"]
    assert totals.measured_s == 10.5 and totals.attestations_per_s == round(400 / 10.5, 1)
    assert totals.latency.percentile(50) == pytest.approx(30.0, rel=0.02)
    assert totals.latency.percentile(25) == pytest.approx(10.0, rel=0.02)
    assert totals.fleet_exhausted and totals.secrets_verified == 20 and totals.cpu_s == 1.0
    snapshot = {"stages": {"identity": {"wait": LogHistogram.of([1.0, 3.0]).to_wire(),
                                        "service": LogHistogram.of([2.0, 2.0]).to_wire(), "processed": 2}}}
    times = report.stage_times([snapshot, snapshot])
    assert times["identity"]["processed"] == 4
    assert times["identity"]["service_p50_ms"] == pytest.approx(2.0, rel=0.02)
    assert times["identity"]["wait_p99_ms"] == pytest.approx(3.0, rel=0.02)
    assert report.counter_total([{"counters": {"redis_round_trips": 5}}, {"counters": {}}], "redis_round_trips") == 5
    assert report.per_attestation(600, 100) == 6.0 and report.per_attestation(1, 0) == 0.0


def test_fleet_split_between_clients() -> None:
    assert _split(10, 3) == [(0, 4), (4, 3), (7, 3)]
    assert _split(2, 2) == [(0, 1), (1, 1)]
    assert sum(count for _, count in _split(1001, 4)) == 1001
