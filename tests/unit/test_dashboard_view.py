"""The dashboard's figures, from decisions and stage statistics (pure: no NATS, no browser)."""

from __future__ import annotations

import json

from services.gateway.dashboard import view
from services.gateway.dashboard.feed import sse, token_expiry
from services.gateway.dashboard.view import FleetView, StageView, bounded_claims, tcb_levels
from shared.metrics import LogHistogram

SNP_CLAIMS = {
    "snp.measurement": "ab" * 48,
    "snp.reported_tcb.bootloader": 3,
    "snp.reported_tcb.tee": 0,
    "snp.reported_tcb.snp": 8,
    "snp.reported_tcb.microcode": 115,
    "snp.reported_tcb.fmc": None,
    "snp.current_tcb.snp": 9,  # not the reported TCB: not counted
}
TDX_CLAIMS = {"tdx.tcb_status": "OutOfDate", "tdx.quote.body.tee_tcb_svn": "03000600000000000000000000000000"}


def test_tcb_levels_name_the_snp_components_and_the_tdx_status() -> None:
    assert tcb_levels("snp", SNP_CLAIMS) == [("SNP reported TCB", "bl 3 · tee 0 · snp 8 · ucode 115")]
    assert sorted(tcb_levels("tdx", TDX_CLAIMS)) == [
        ("TDX TCB status", "OutOfDate"),
        ("TDX module TEE_TCB_SVN", "03000600000000000000000000000000"),
    ]
    # A cloud vTPM carries its hardware report's claims under a prefix of its own.
    nested = {f"az.{k}": v for k, v in SNP_CLAIMS.items()}
    assert tcb_levels("az-snp-vtpm", nested) == [("SNP reported TCB", "bl 3 · tee 0 · snp 8 · ucode 115")]
    assert tcb_levels("sample", {"sample.measurement": "00"}) == []


def _add(fleet: FleetView, status: str, reason: str = "", tee: str = "snp", now: float = 1000.5, claims=None):  # type: ignore[no-untyped-def]
    return fleet.add(
        request_id=f"r{fleet.seq}", tee=tee, status=status, reason=reason, detail="", decided_at=now,
        claims=SNP_CLAIMS if claims is None else claims, now=now,
    )  # fmt: skip


def test_fleet_view_counts_statuses_reasons_and_levels() -> None:
    fleet = FleetView(since=990.0)
    for _ in range(3):
        _add(fleet, "affirming")
    _add(fleet, "rejected", "nonce.replayed")
    _add(fleet, "rejected", "nonce.replayed")
    _add(fleet, "rejected", "snp.signature_invalid")
    _add(fleet, "warning", "tdx.tcb_out_of_date", tee="tdx", claims=TDX_CLAIMS)
    _add(fleet, "surprising")  # an unknown status is shown as a rejection, never as trust
    summary = fleet.summary(now=1001.2)
    assert summary["totals"] == {"affirming": 3, "warning": 1, "contraindicated": 0, "rejected": 4}
    assert summary["decided"] == 8
    assert summary["reasons"][:2] == [
        {"reason": "nonce.replayed", "count": 2},
        {"reason": "snp.signature_invalid", "count": 1},
    ]
    # Rejected decisions' claims (if any) are not counted as the fleet's levels.
    assert summary["tcb"]["SNP reported TCB"] == [{"level": "bl 3 · tee 0 · snp 8 · ucode 115", "count": 3}]
    assert summary["tcb"]["TDX TCB status"] == [{"level": "OutOfDate", "count": 1}]
    assert summary["by_tee"] == {"snp": 7, "tdx": 1}
    rates = summary["rates"]
    assert len(rates) == view.RATE_WINDOW_S and rates[-1]["t"] == 1001  # the current second, counting
    assert rates[-2] == {"t": 1000, "affirming": 3, "warning": 1, "contraindicated": 0, "rejected": 4}
    assert summary["per_second"]["affirming"] == 0.6  # 3 in the last five whole seconds


def test_rates_forget_seconds_outside_the_window_and_rows_are_bounded() -> None:
    fleet = FleetView(since=0.0)
    _add(fleet, "affirming", now=100.0)
    for i in range(view.RECENT + 5):
        _add(fleet, "rejected", "nonce.expired", now=100.0 + view.RATE_WINDOW_S + i * 0.01)
    rates = fleet.rates(now=100.0 + view.RATE_WINDOW_S + 1)
    assert all(r["affirming"] == 0 for r in rates)
    assert len(fleet.recent) == view.RECENT
    rows = fleet.rows_after(fleet.seq - 2)
    assert [r["seq"] for r in rows] == [fleet.seq - 1, fleet.seq]
    assert rows[-1]["claims"]["snp.reported_tcb.snp"] == 8


def test_bounded_claims_drop_the_longest_values_first() -> None:
    claims = {"tdx.uefi_event_logs": ["x" * 100] * 400, "tdx.tcb_status": "UpToDate"}
    text = bounded_claims(claims)
    assert len(text) <= view.MAX_CLAIMS_BYTES
    assert json.loads(text) == {"tdx.tcb_status": "UpToDate", "_truncated": ["tdx.uefi_event_logs"]}
    assert json.loads(bounded_claims(SNP_CLAIMS)) == SNP_CLAIMS


def _snapshot(pid: int, at: float, since: float, processed: int, values_ms: list[float], pending: int = 0) -> dict:  # type: ignore[type-arg]
    return {
        "pid": pid, "at": at, "since": since,
        "stages": {"identity": {"processed": processed, "service": LogHistogram.of(values_ms).to_wire(),
                                "lag": {"pending": pending, "ack_pending": 2}}},
    }  # fmt: skip


def test_stage_view_rates_latency_and_lag_over_the_interval() -> None:
    stages = StageView()
    first = stages.update([_snapshot(1, 100.0, 50.0, 10, [1.0] * 10, pending=7)])
    assert first == [{"stage": "identity", "done": 0, "per_s": 0.0, "p50_ms": 0.0, "p99_ms": 0.0, "pending": 7, "ack_pending": 2}]
    # Two processes run the stage; 20 more messages in 2 s, the new ones slower.
    second = stages.update(
        [_snapshot(1, 102.0, 50.0, 20, [1.0] * 10 + [10.0] * 10, pending=7), _snapshot(2, 102.0, 60.0, 5, [3.0] * 5)]
    )
    row = second[0]
    assert row["per_s"] == 5.0 and row["done"] == 10  # the new process counts from its next collection
    assert 9.5 < row["p50_ms"] < 10.5 and 9.5 < row["p99_ms"] < 10.5
    assert row["pending"] == 7 and row["ack_pending"] == 2  # one consumer seen by both: not doubled
    # Process 1's statistics were reset (bench): its counts start again, never negative.
    third = stages.update(
        [_snapshot(1, 104.0, 103.0, 4, [2.0] * 4), _snapshot(2, 104.0, 60.0, 9, [3.0] * 9)]
    )
    # Over the window (both intervals): 10 messages at 10 ms, then 8 at 2 or 3 ms, in 4 s.
    assert third[0]["per_s"] == 4.5 and third[0]["done"] == 18
    assert 9.5 < third[0]["p50_ms"] < 10.5
    assert 1.9 < stages._window[-1].latency["identity"].percentile(50) < 3.1


def test_sse_frames_and_token_expiry() -> None:
    assert sse("summary", {"a": 1}) == b'event: summary\ndata: {"a":1}\n\n'
    payload = "eyJleHAiOjE3MDAwMDAwMDAsInN1YiI6ImFsaWNlIn0"  # {"exp":1700000000,"sub":"alice"}
    assert token_expiry(f"Bearer h.{payload}.s") == 1700000000.0
    assert token_expiry("Bearer not-a-jwt") is None
    assert token_expiry("Bearer a.!!!.c") is None
