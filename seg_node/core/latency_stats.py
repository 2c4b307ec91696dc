"""The one summary of latencies that /diagnostics, the benchmarks, the live evaluation and the stress test give."""

from __future__ import annotations

import numpy as np


def latency_summary(values_ms) -> dict[str, float]:
    """Median, p95, p99 and max in ms; NaN for each when there are none."""
    values = np.asarray(values_ms, np.float64)
    if not values.size:
        return dict.fromkeys(("median", "p95", "p99", "max"), float("nan"))
    median, p95, p99 = np.percentile(values, (50, 95, 99))
    return {"median": float(median), "p95": float(p95), "p99": float(p99), "max": float(values.max())}
