"""Timing helper shared by the benchmark commands."""

from __future__ import annotations

import time
from collections.abc import Callable


def per_call_us(fn: Callable[[], object], iterations: int, repeats: int = 5) -> float:
    """Best of ``repeats`` runs: the least disturbed measurement of the same work, in µs per call."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter() - started) / iterations)
    return best * 1e6
