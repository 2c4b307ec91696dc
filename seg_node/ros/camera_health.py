"""Per-camera counters, latency percentiles and the OK/WARN/ERROR/STALE verdict, without ROS.

The node feeds it events and turns `report()` into a diagnostic_msgs/DiagnosticStatus; the levels are the
DiagnosticStatus constants. Times are in seconds of the node's clock (sim time when replaying a bag).
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from ..core.latency_stats import latency_summary
from ..core.model_files import package_path

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LATENCY_WINDOW = 1000  # frames kept for percentiles between reports
OUTCOMES = ("processed", "dropped", "rejected", "failed")  # every received frame ends in one of these
LOST_HINT = ("DDS loses images over 512 KB sent best effort without a large-image transport: start the camera "
             "driver with FASTDDS_DEFAULT_PROFILES_FILE="
             f"{package_path('config', 'fastdds_large_images.xml')}")


@dataclass(frozen=True)
class HealthThresholds:
    latency_budget_ms: float = 100.0
    error_rate_threshold: float = 0.5
    camera_timeout: float = 3.0
    output_timeout: float = 2.0
    #: frame confidence score (seg_node.core.confidence) under which masks are unreliable; None: not checked
    reliability_threshold: float | None = None
    #: seconds every frame must score under the threshold before the camera's diagnostics WARN
    reliability_hold: float = 2.0


@dataclass
class HealthReport:
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Period:
    """What happened since the last report, taken under the lock; the verdict and the values are made from it."""
    now: float
    counts: Counter
    totals: Counter
    rejected_by_reason: Counter
    latencies: np.ndarray
    queue: np.ndarray
    ages: np.ndarray
    scores: list[float]
    low_since: float | None
    low_mean: float
    elapsed: float
    silent_for: float
    stalled_for: float
    outstanding: int
    last_mask_at: float | None
    last_error: str


def budget_text(ms: float) -> str:
    """A budget as the user set it: 0.1 reads "0.1", 100.0 reads "100" (not rounded to whole ms)."""
    return f"{ms:.10g}"


class CameraHealth:
    """Thread-safe: callbacks count arrivals and drops, the inference worker counts results.

    A frame is outstanding from its arrival until it is processed, dropped, rejected or failed. While frames
    are outstanding, `_waiting_since` is the time of the worker's last progress (or of the arrival that made
    it wait): a hung backend leaves it fixed, which is how the report sees that output has stopped.
    """

    def __init__(self, started_at: float):
        self._lock = threading.Lock()
        self.started_at = started_at
        self.totals = Counter()
        self.rejected_by_reason = Counter()
        self._period = Counter()
        self._latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._queue: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._ages: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._scores: deque[tuple[float, float]] = deque(maxlen=LATENCY_WINDOW)  # (processed at, frame score)
        self._low_since: float | None = None  # first frame of the current run of frames under the threshold
        self._low_total, self._low_count = 0.0, 0  # that run's summed scores and frames, for its mean
        self.last_received_at: float | None = None
        self.last_mask_at: float | None = None
        self._waiting_since: float | None = None
        self.last_error = ""
        self._period_started_at = started_at

    def _count(self, key: str, n: int = 1) -> None:
        self.totals[key] += n
        self._period[key] += n

    def _outstanding(self) -> int:
        return self.totals["received"] - sum(self.totals[key] for key in OUTCOMES)

    def _progressed(self, now: float) -> None:
        """The worker answered a frame: the output clock restarts if others still wait, else stops."""
        self._waiting_since = now if self._outstanding() > 0 else None

    def restart_clock(self, now: float) -> None:
        """The node's clock started or went back (sim time: the first /clock, a replayed bag that loops).

        Silence, rates and ages measured across the jump would be nonsense (a silence of 39 years, a rate
        over a negative span), so the period starts again at `now`; the totals are kept.
        """
        with self._lock:
            self.started_at = self._period_started_at = now
            self.last_received_at = self.last_mask_at = None
            self._progressed(now)
            self._period = Counter()
            self._latencies.clear()
            self._queue.clear()
            self._ages.clear()
            self._scores.clear()
            self._low_since, self._low_total, self._low_count = None, 0.0, 0

    def received(self, now: float) -> None:
        with self._lock:
            if self._outstanding() == 0:
                self._waiting_since = now
            self._count("received")
            self.last_received_at = now

    def dropped(self) -> None:
        """A newer frame replaced one that waited: not progress, the output clock keeps running."""
        with self._lock:
            self._count("dropped")

    def rejected(self, reason: str, now: float, by_worker: bool = True) -> None:
        """A malformed frame, answered by rejection: progress only when the worker rejected it; one refused in
        the subscription callback says nothing about a worker that may be hung behind other frames."""
        with self._lock:
            self._count("rejected")
            self.rejected_by_reason[reason] += 1
            if by_worker:
                self._progressed(now)
            elif self._outstanding() == 0:
                self._waiting_since = None

    def lost(self, count: int) -> None:
        """The transport reported `count` messages that never arrived (DDS sample loss): not received, so not
        outstanding; only counted."""
        with self._lock:
            self._count("lost", count)

    def frames_lost(self) -> int:
        with self._lock:
            return self.totals["lost"]

    def failed(self, error: str, now: float) -> None:
        with self._lock:
            self._count("failed")
            self.last_error = error
            self._progressed(now)

    def processed(self, now: float, queue_ms: float, processing_ms: float, age_ms: float,
                  score: float = float("nan")) -> None:
        """A mask was published; its latency is what the frame saw: waiting in the queue, then processing;
        `score` is the frame's confidence score (NaN: none)."""
        with self._lock:
            self._count("processed")
            self._latencies.append(queue_ms + processing_ms)
            self._queue.append(queue_ms)
            self._ages.append(age_ms)
            if not np.isnan(score):
                self._scores.append((now, score))
            self.last_mask_at = now
            self._progressed(now)

    def _track_low_run(self, threshold: float | None) -> None:
        """Follow the run of consecutive frames scored under `threshold` through this period's frames (the
        caller holds the lock); a frame at or over it, or no threshold, ends the run."""
        for at, score in self._scores:
            if threshold is None or score >= threshold:
                self._low_since, self._low_total, self._low_count = None, 0.0, 0
            else:
                if self._low_since is None:
                    self._low_since = at
                self._low_total += score
                self._low_count += 1
        if threshold is None:
            self._low_since, self._low_total, self._low_count = None, 0.0, 0
        self._scores.clear()

    def _take_period(self, now: float, thresholds: HealthThresholds) -> Period:
        """The period since the last report, and a new one started (the caller must not hold the lock)."""
        with self._lock:
            counts, self._period = self._period, Counter()
            latencies, queue, ages = np.array(self._latencies), np.array(self._queue), np.array(self._ages)
            self._latencies.clear()
            self._queue.clear()
            self._ages.clear()
            scores = [score for _, score in self._scores]
            self._track_low_run(thresholds.reliability_threshold)
            elapsed = max(now - self._period_started_at, 1e-9)
            self._period_started_at = now
            last_received_at = self.last_received_at if self.last_received_at is not None else self.started_at
            return Period(
                now=now, counts=counts, totals=Counter(self.totals),
                rejected_by_reason=Counter(self.rejected_by_reason), latencies=latencies, queue=queue, ages=ages,
                scores=scores, low_since=self._low_since, low_mean=self._low_total / max(self._low_count, 1),
                elapsed=elapsed, silent_for=now - last_received_at,
                stalled_for=now - self._waiting_since if self._waiting_since is not None else 0.0,
                outstanding=self._outstanding(), last_mask_at=self.last_mask_at, last_error=self.last_error)

    def report(self, now: float, thresholds: HealthThresholds, worker_alive: bool = True) -> HealthReport:
        """Summarize the period since the last report and start a new one."""
        period = self._take_period(now, thresholds)
        level, message = verdict(period, thresholds, worker_alive)
        return HealthReport(level, message, report_values(period, thresholds, worker_alive))


def verdict(period: Period, thresholds: HealthThresholds, worker_alive: bool) -> tuple[int, str]:
    """The level and message, worst first: the worker is gone, output stalled while frames wait (both ERROR: the
    node itself is broken), no image (STALE), frames failed or too many bad (ERROR), every frame scored under the
    reliability threshold for the hold time (WARN: the masks come, but cannot be trusted), frames lost in
    transport (WARN), some malformed (WARN), latency over budget (WARN), OK."""
    counts = period.counts
    bad = counts["rejected"] + counts["failed"]
    error_rate = bad / counts["received"] if counts["received"] else (1.0 if bad else 0.0)
    p95, budget = latency_summary(period.latencies)["p95"], thresholds.latency_budget_ms
    low_for = period.now - period.low_since if period.low_since is not None else 0.0
    lost = f"{counts['lost']} frame(s) lost in transport ({LOST_HINT})"
    if not worker_alive:
        return ERROR, "the inference worker thread has stopped: no frame will be processed"
    if period.stalled_for > thresholds.output_timeout:
        return ERROR, (f"no frame processed for {period.stalled_for:.1f} s while {period.outstanding} wait(s) "
                       "(inference stalled)")
    if period.silent_for > thresholds.camera_timeout:
        return STALE, f"no image for {period.silent_for:.1f} s" + (f"; {lost}" if counts["lost"] else "")
    if counts["failed"]:
        return ERROR, f"{counts['failed']} frame(s) failed: {period.last_error}"
    if error_rate > thresholds.error_rate_threshold:
        return ERROR, f"{100 * error_rate:.0f}% of frames rejected or failed"
    if period.low_since is not None and low_for >= thresholds.reliability_hold:
        return WARN, (f"segmentation unreliable: confidence {period.low_mean:.2f} under "
                      f"{thresholds.reliability_threshold:.2f} for {low_for:.1f} s")
    if counts["lost"]:
        return WARN, lost
    if counts["rejected"]:
        return WARN, f"{counts['rejected']} malformed frame(s) rejected"
    if p95 > budget:
        return WARN, f"p95 latency {p95:.1f} ms (queue + processing) over the {budget_text(budget)} ms budget"
    return OK, "ok"


def milliseconds(value: float) -> str:
    return "nan" if np.isnan(value) else f"{value:.2f}"


def report_values(period: Period, thresholds: HealthThresholds, worker_alive: bool) -> dict[str, str]:
    """The status's key/values: latency percentiles, rates, counts by outcome, ages, confidence."""
    counts, totals = period.counts, period.totals
    latency = latency_summary(period.latencies)
    low_for = period.now - period.low_since if period.low_since is not None else 0.0
    values = {
        "latency_p50_ms": milliseconds(latency["median"]), "latency_p95_ms": milliseconds(latency["p95"]),
        "latency_p99_ms": milliseconds(latency["p99"]), "latency_max_ms": milliseconds(latency["max"]),
        "queue_p95_ms": milliseconds(latency_summary(period.queue)["p95"]),
        "age_p50_ms": milliseconds(latency_summary(period.ages)["median"]),
        "input_rate_hz": f"{counts['received'] / period.elapsed:.2f}",
        "output_rate_hz": f"{counts['processed'] / period.elapsed:.2f}",
        "drop_rate": f"{counts['dropped'] / counts['received']:.3f}" if counts["received"] else "0.000",
        "frames_received": str(totals["received"]), "frames_processed": str(totals["processed"]),
        "frames_dropped": str(totals["dropped"]), "frames_rejected": str(totals["rejected"]),
        "frames_failed": str(totals["failed"]), "frames_waiting": str(period.outstanding),
        "frames_lost": str(totals["lost"]), "frames_lost_in_period": str(counts["lost"]),
        "seconds_since_last_image": f"{period.silent_for:.2f}",
        "seconds_since_last_mask": (f"{period.now - period.last_mask_at:.2f}" if period.last_mask_at is not None
                                    else "nan"),
        "worker_alive": str(worker_alive).lower(),
        "confidence_score": f"{np.mean(period.scores):.3f}" if period.scores else "nan",
        "confidence_threshold": ("none" if thresholds.reliability_threshold is None
                                 else f"{thresholds.reliability_threshold:.3f}"),
        "seconds_under_confidence_threshold": f"{low_for:.2f}",
    }
    values.update({f"rejected_{reason}": str(count) for reason, count in sorted(period.rejected_by_reason.items())})
    return values
