"""Wall-clock timing shared by the CPU bench scripts (bench/*_cpu.py)."""

from __future__ import annotations

import statistics
import time


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best, median) seconds over ``repeats`` calls of fn() after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts), statistics.median(ts)
