"""Latency histograms and counters cheap enough for every message on the hot path.

A ``LogHistogram`` keeps counts in logarithmic buckets (about 2 % wide, from 1 µs to ~18 hours),
so recording is one ``log`` and one dict increment, histograms from many processes merge by
adding counts, and a percentile is exact to within one bucket. Values are in milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Bucket i holds values in [BASE**i, BASE**(i+1)) microseconds; bucket 0 also holds anything below 1 µs.
BASE = 1.02
_LOG_BASE = math.log(BASE)


def bucket_of(value_ms: float) -> int:
    us = value_ms * 1000.0
    if us <= 1.0:
        return 0
    return int(math.log(us) / _LOG_BASE)


def bucket_value_ms(bucket: int) -> float:
    """The representative value of a bucket: its geometric middle, in milliseconds."""
    return BASE ** (bucket + 0.5) / 1000.0


def nearest_rank(sorted_values: list[float], q: float) -> float:
    """The q-th percentile (0 < q <= 100) by the nearest-rank definition; 0.0 for no values."""
    if not sorted_values:
        return 0.0
    rank = math.ceil(q / 100.0 * len(sorted_values))
    return sorted_values[min(len(sorted_values), max(1, rank)) - 1]


@dataclass
class LogHistogram:
    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    sum_ms: float = 0.0
    max_ms: float = 0.0

    def record(self, value_ms: float) -> None:
        b = bucket_of(value_ms)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.total += 1
        self.sum_ms += value_ms
        if value_ms > self.max_ms:
            self.max_ms = value_ms

    def merge(self, other: LogHistogram) -> None:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.total += other.total
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile, as the middle of the bucket holding that rank (never above max)."""
        if self.total == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.total))
        if rank >= self.total:
            return self.max_ms  # the largest value is known exactly
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(bucket_value_ms(b), self.max_ms)
        return self.max_ms

    @property
    def mean_ms(self) -> float:
        return self.sum_ms / self.total if self.total else 0.0

    def summary(self, qs: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
        out = {f"p{q:g}_ms": round(self.percentile(q), 3) for q in qs}
        out["mean_ms"] = round(self.mean_ms, 3)
        out["max_ms"] = round(self.max_ms, 3)
        out["count"] = self.total
        return out

    # -- transport (JSON-safe: keys are strings) -------------------------------------------
    def to_wire(self) -> dict[str, object]:
        return {"c": {str(b): n for b, n in self.counts.items()}, "n": self.total, "s": self.sum_ms, "m": self.max_ms}

    @classmethod
    def from_wire(cls, data: Mapping[str, object]) -> LogHistogram:
        counts_raw = data.get("c", {})
        assert isinstance(counts_raw, Mapping)
        counts = {int(b): int(n) for b, n in counts_raw.items()}
        return cls(counts, int(data.get("n", 0)), float(data.get("s", 0.0)), float(data.get("m", 0.0)))  # type: ignore[arg-type]

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> LogHistogram:
        hist = cls()
        for value in values_ms:
            hist.record(value)
        return hist
