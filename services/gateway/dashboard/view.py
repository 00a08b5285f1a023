"""What the fleet dashboard shows, computed from decisions and stage statistics: pure values.

``FleetView`` folds decisions (as they come off the decision subject) into the figures the page
draws; ``StageView`` turns successive per-process statistics (``shared.stats`` snapshots, asked of
every process) into per-stage rates, latencies and consumer lag over the last interval. Time is
passed in, so that tests decide alike.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.metrics import LogHistogram, bucket_value_ms

STATUSES = ("affirming", "warning", "contraindicated", "rejected")
RATE_WINDOW_S = 60  # seconds of decisions-per-second history the page draws
RECENT = 50  # decisions kept for the table
TOP_REASONS = 10
MAX_CLAIMS_BYTES = 16_384  # a decision's claims as sent to the page (a TDX event log can be long)
_SNP_TCB_PARTS = (("bootloader", "bl"), ("tee", "tee"), ("snp", "snp"), ("microcode", "ucode"), ("fmc", "fmc"))


def tcb_levels(tee: str, claims: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (histogram, level) pairs a decision's claims place the machine in: the SNP reported
    TCB (per component SVN), the TDX/SGX TCB status from Intel's collateral, and the TDX module's
    TEE_TCB_SVN. Cloud vTPM TEEs carry their hardware report's claims under the same names."""
    levels: list[tuple[str, str]] = []
    for key in claims:
        if key.endswith("snp.reported_tcb.snp"):
            prefix = key[: -len(".snp")]
            parts = [
                f"{short} {claims[f'{prefix}.{name}']}"
                for name, short in _SNP_TCB_PARTS
                if claims.get(f"{prefix}.{name}") is not None
            ]
            levels.append(("SNP reported TCB", " · ".join(parts)))
        elif key.endswith("tdx.tcb_status") or key.endswith("sgx.tcb_status"):
            family = "TDX" if key.endswith("tdx.tcb_status") else "SGX"
            levels.append((f"{family} TCB status", str(claims[key])))
        elif key.endswith(".tee_tcb_svn") and "tdx." in key:
            levels.append(("TDX module TEE_TCB_SVN", str(claims[key])))
    return levels


@dataclass(frozen=True)
class DecisionRow:
    """One decision as the page lists it (and shows when clicked)."""

    seq: int
    request_id: str
    tee: str
    status: str
    reason: str
    detail: str
    decided_at: float
    claims_json: str  # bounded: see MAX_CLAIMS_BYTES

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "request_id": self.request_id,
            "tee": self.tee,
            "status": self.status,
            "reason": self.reason,
            "detail": self.detail,
            "decided_at": self.decided_at,
            "claims": json.loads(self.claims_json),
        }


def bounded_claims(claims: Mapping[str, Any]) -> str:
    """The claims as JSON, or, when too large for the page, the claims without their longest
    values (named in ``_truncated``), so a row never carries an unbounded event log."""
    text = json.dumps(claims, default=str, sort_keys=True)
    if len(text) <= MAX_CLAIMS_BYTES:
        return text
    sized = sorted(claims, key=lambda k: len(json.dumps(claims[k], default=str)), reverse=True)
    kept = dict(claims)
    dropped: list[str] = []
    for key in sized:
        del kept[key]
        dropped.append(key)
        text = json.dumps({**kept, "_truncated": dropped}, default=str, sort_keys=True)
        if len(text) <= MAX_CLAIMS_BYTES:
            return text
    return json.dumps({"_truncated": dropped[:50]})


@dataclass
class FleetView:
    """Every decision seen since ``since``: totals, a per-second history by status, the top
    rejection reasons, TCB histograms and the last ``RECENT`` decisions."""

    since: float
    totals: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    tcb: dict[str, Counter[str]] = field(default_factory=dict)
    by_tee: Counter[str] = field(default_factory=Counter)
    recent: deque[DecisionRow] = field(default_factory=lambda: deque(maxlen=RECENT))
    _per_second: dict[int, Counter[str]] = field(default_factory=dict)
    seq: int = 0

    def add(
        self,
        *,
        request_id: str,
        tee: str,
        status: str,
        reason: str,
        detail: str,
        decided_at: float,
        claims: Mapping[str, Any],
        now: float,
    ) -> DecisionRow:
        status = status if status in STATUSES else "rejected"
        self.seq += 1
        self.totals[status] += 1
        self.by_tee[tee] += 1
        if reason and status != "affirming":
            self.reasons[reason] += 1
        if status != "rejected":  # a rejected decision's claims are not the machine's word
            for histogram, level in tcb_levels(tee, claims):
                self.tcb.setdefault(histogram, Counter())[level] += 1
        second = int(now)
        self._per_second.setdefault(second, Counter())[status] += 1
        for old in [s for s in self._per_second if s <= second - RATE_WINDOW_S]:
            del self._per_second[old]
        row = DecisionRow(self.seq, request_id, tee, status, reason, detail, decided_at, bounded_claims(claims))
        self.recent.append(row)
        return row

    def rates(self, now: float) -> list[dict[str, Any]]:
        """Decisions by status in each of the last ``RATE_WINDOW_S`` seconds, the current (still
        counting) second last."""
        end = int(now) + 1
        return [
            {"t": s, **{status: self._per_second.get(s, Counter())[status] for status in STATUSES}}
            for s in range(end - RATE_WINDOW_S, end)
        ]

    def rows_after(self, seq: int) -> list[dict[str, Any]]:
        return [row.to_json() for row in self.recent if row.seq > seq]

    def summary(self, now: float) -> dict[str, Any]:
        rates = self.rates(now)
        last = rates[-6:-1]  # the last five whole seconds
        per_s = {status: round(sum(r[status] for r in last) / len(last), 2) for status in STATUSES}
        return {
            "since": self.since,
            "at": now,
            "totals": {status: self.totals[status] for status in STATUSES},
            "decided": sum(self.totals.values()),
            "by_tee": dict(self.by_tee.most_common()),
            "per_second": per_s,  # mean of the last five whole seconds
            "rates": rates,
            "reasons": [{"reason": r, "count": n} for r, n in self.reasons.most_common(TOP_REASONS)],
            "tcb": {
                name: [{"level": level, "count": n} for level, n in sorted(levels.items())]
                for name, levels in sorted(self.tcb.items())
            },
        }


@dataclass
class _ProcessSample:
    at: float
    since: float
    stages: dict[str, tuple[int, LogHistogram]]


@dataclass
class _Interval:
    processed: Counter[str]
    latency: dict[str, LogHistogram]
    seconds: dict[str, float]


STAGE_WINDOW = 5  # collections the per-stage rate and latency are taken over (10 s at 2 s apart)


@dataclass
class StageView:
    """Per-stage throughput and latency over the last ``STAGE_WINDOW`` collections, messages
    done since watching began, and consumer lag, from successive per-process statistics. A
    process that restarted or had its statistics reset (``since`` moved, or its counts went
    down) counts from zero rather than going negative."""

    _last: dict[int, _ProcessSample] = field(default_factory=dict)
    _window: deque[_Interval] = field(default_factory=lambda: deque(maxlen=STAGE_WINDOW))
    done: Counter[str] = field(default_factory=Counter)
    latest: list[dict[str, Any]] = field(default_factory=list)

    def update(self, snapshots: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        step = _Interval(Counter(), {}, {})
        pending: Counter[str] = Counter()
        ack_pending: Counter[str] = Counter()
        seen: dict[int, _ProcessSample] = {}
        for snap in snapshots:
            pid, at, since = int(snap.get("pid", 0)), float(snap.get("at", 0.0)), float(snap.get("since", 0.0))
            stages: dict[str, tuple[int, LogHistogram]] = {}
            for name, wire in (snap.get("stages") or {}).items():
                stages[name] = (int(wire.get("processed", 0)), LogHistogram.from_wire(wire.get("service", {})))
                lag = wire.get("lag") or {}
                # Replicas of a stage share one durable consumer: each reports the same backlog.
                pending[name] = max(pending[name], int(lag.get("pending", 0)))
                ack_pending[name] = max(ack_pending[name], int(lag.get("ack_pending", 0)))
            previous = self._last.get(pid)
            for name, (count, service) in stages.items():
                step.latency.setdefault(name, LogHistogram())
                if previous is None:  # first sight of this process: no interval yet
                    continue
                before = previous.stages.get(name) if previous.since == since else None
                if before is not None and before[0] <= count:
                    delta_n, delta_h, span = count - before[0], _difference(service, before[1]), at - previous.at
                else:  # reset since the last collection: all it counted is this interval's
                    delta_n, delta_h, span = count, service, at - max(since, previous.at)
                step.processed[name] += delta_n
                step.latency[name].merge(delta_h)
                if span > 0:
                    step.seconds[name] = max(step.seconds.get(name, 0.0), span)
            seen[pid] = _ProcessSample(at, since, stages)
        self._last = seen
        self._window.append(step)
        self.done.update(step.processed)
        for name in pending:
            step.latency.setdefault(name, LogHistogram())
        window_n: Counter[str] = Counter()
        window_s: Counter[str] = Counter()
        window_h: dict[str, LogHistogram] = {}
        for interval in self._window:
            window_n.update(interval.processed)
            for name, secs in interval.seconds.items():
                window_s[name] += secs
            for name, hist in interval.latency.items():
                window_h.setdefault(name, LogHistogram()).merge(hist)
        names = [s for s in _STAGE_ORDER if s in window_h] + sorted(set(window_h) - set(_STAGE_ORDER))
        self.latest = [
            {
                "stage": name,
                "done": self.done[name],
                "per_s": round(window_n[name] / window_s[name], 2) if window_s[name] else 0.0,
                "p50_ms": round(window_h[name].percentile(50), 2),
                "p99_ms": round(window_h[name].percentile(99), 2),
                "pending": pending[name],
                "ack_pending": ack_pending[name],
            }
            for name in names
        ]
        return self.latest


_STAGE_ORDER = ("intake", "endorse", "identity", "measure", "decide", "release", "audit")


def _difference(now: LogHistogram, before: LogHistogram) -> LogHistogram:
    counts = {b: n - before.counts.get(b, 0) for b, n in now.counts.items()}
    counts = {b: n for b, n in counts.items() if n > 0}
    # The interval's maximum is not known from two cumulative histograms: its top bucket stands in.
    top = max(counts) if counts else 0
    return LogHistogram(counts, sum(counts.values()), now.sum_ms - before.sum_ms, bucket_value_ms(top) if counts else 0.0)
