"""CameraHealth.report on its own (no ROS): every level, what triggers it, and which level wins when several
apply. Times are seconds of a made-up node clock, so each case states exactly when things happened."""

from __future__ import annotations

import math
import re

import pytest

from seg_node.ros.camera_health import ERROR, OK, STALE, WARN, CameraHealth, HealthThresholds

THRESHOLDS = HealthThresholds(latency_budget_ms=50.0, error_rate_threshold=0.5, camera_timeout=3.0,
                              output_timeout=2.0, reliability_threshold=0.5, reliability_hold=2.0)


def answered(health: CameraHealth, at: float, queue_ms: float = 1.0, processing_ms: float = 10.0,
             score: float = float("nan")) -> None:
    """One frame arrives at `at` and its mask (with confidence `score`) is published at once."""
    health.received(at)
    health.processed(at, queue_ms, processing_ms, age_ms=5.0, score=score)


def running(seconds: int = 5) -> CameraHealth:
    """A camera at 10 Hz, every frame answered, until t = `seconds`."""
    health = CameraHealth(started_at=0.0)
    for tick in range(10 * seconds):
        answered(health, tick / 10)
    health.report(seconds, THRESHOLDS)  # the next report covers only what each test adds
    return health


def test_frames_answered_within_budget_are_ok_with_rates_counts_and_mask_age():
    health = running()
    for tick in range(10):
        answered(health, 5.0 + tick / 10, queue_ms=2.0, processing_ms=8.0)
    report = health.report(6.0, THRESHOLDS)
    assert (report.level, report.message) == (OK, "ok")
    values = report.values
    assert values["latency_p50_ms"] == "10.00" and values["queue_p95_ms"] == "2.00"  # queue + processing
    assert values["input_rate_hz"] == values["output_rate_hz"] == "10.00"
    assert values["frames_received"] == values["frames_processed"] == "60" and values["frames_waiting"] == "0"
    assert values["seconds_since_last_mask"] == "0.10" and values["worker_alive"] == "true"


def test_a_hung_backend_is_error_once_frames_wait_longer_than_the_output_timeout():
    """Frames keep arriving, none is processed: up to 0.1.5 p95 was NaN and the level OK."""
    health = running()
    health.received(5.0)  # the worker takes this one and never returns
    health.received(5.1)  # this one waits for the worker
    for tick in range(2, 20):
        health.received(5.0 + tick / 10)
        health.dropped()  # each newer frame replaces the one waiting
    within = health.report(7.0, THRESHOLDS)
    assert within.level == OK, "exactly the timeout is still within it"
    stalled = health.report(7.5, THRESHOLDS)
    assert stalled.level == ERROR
    assert re.fullmatch(r"no frame processed for 2\.5 s while 2 wait\(s\) \(inference stalled\)", stalled.message)
    assert stalled.values["seconds_since_last_mask"] == "2.60" and stalled.values["output_rate_hz"] == "0.00"
    assert stalled.values["latency_p95_ms"] == "nan"


def test_progress_restarts_the_output_clock_and_an_answer_for_everything_stops_it():
    thresholds = HealthThresholds(camera_timeout=10.0, output_timeout=2.0)
    health = running()
    health.received(5.0)
    health.received(5.1)  # waits behind the first
    health.processed(6.5, 1500.0, 10.0, 1500.0)  # a slow frame: progress, one frame still waits
    assert health.report(8.0, thresholds).level != ERROR, "1.5 s since the last progress"
    assert health.report(8.6, thresholds).level == ERROR, "2.1 s since the last progress"
    health.rejected("data_size", 8.7)  # the one waiting is answered (rejected): nothing waits any more
    report = health.report(9.5, thresholds)
    assert "stalled" not in report.message and report.values["frames_waiting"] == "0", report.message


def test_frames_rejected_on_arrival_do_not_hide_a_hung_worker():
    """Malformed frames refused in the subscription callback answer themselves, not the frame the worker is
    stuck on: the output clock keeps running and the camera goes ERROR."""
    thresholds = HealthThresholds(camera_timeout=10.0, output_timeout=2.0)
    health = running()
    health.received(5.0)  # taken by a worker that never returns
    for tick in range(1, 5):
        health.received(5.0 + tick)
        health.rejected("data_size", 5.0 + tick, by_worker=False)
    report = health.report(9.5, thresholds)
    assert report.level == ERROR and "stalled" in report.message, report.message


def test_a_camera_that_stops_while_everything_is_answered_goes_stale_not_error():
    health = running()
    report = health.report(8.5, THRESHOLDS)
    assert report.level == STALE and report.message == "no image for 3.6 s"


def test_a_dead_worker_is_error_whatever_else_is_true():
    health = running()
    report = health.report(5.5, THRESHOLDS, worker_alive=False)
    assert report.level == ERROR and "worker thread has stopped" in report.message
    assert report.values["worker_alive"] == "false"
    silent = running()
    assert silent.report(20.0, THRESHOLDS, worker_alive=False).level == ERROR, "over STALE"


def test_failures_and_rejections_by_rate():
    health = running()
    answered(health, 5.0)
    health.received(5.1)
    health.failed("Fail: bright_image_guard", 5.1)
    failed = health.report(5.5, THRESHOLDS)
    assert failed.level == ERROR and failed.message == "1 frame(s) failed: Fail: bright_image_guard"

    for tick in range(3):
        health.received(5.6 + tick / 10)
        health.rejected("unknown_encoding", 5.6 + tick / 10)
    answered(health, 5.9)
    mostly_bad = health.report(6.0, THRESHOLDS)
    assert mostly_bad.level == ERROR and mostly_bad.message == "75% of frames rejected or failed"
    assert mostly_bad.values["rejected_unknown_encoding"] == "3"

    health.received(6.1)
    health.rejected("data_size", 6.1)
    for tick in range(2, 10):
        answered(health, 6.0 + tick / 10)
    some_bad = health.report(7.0, THRESHOLDS)
    assert some_bad.level == WARN and some_bad.message == "1 malformed frame(s) rejected"


@pytest.mark.parametrize("budget, text", [(0.1, "0.1"), (50.0, "50"), (12.5, "12.5")])
def test_latency_budget_counts_the_queue_and_prints_the_budget_as_set(budget, text):
    health = running()
    for tick in range(10):  # processing alone is within budget; with the wait in the queue it is not
        answered(health, 5.0 + tick / 10, queue_ms=budget, processing_ms=0.75 * budget)
    report = health.report(6.0, HealthThresholds(latency_budget_ms=budget))
    assert report.level == WARN
    assert report.message == f"p95 latency {1.75 * budget:.1f} ms (queue + processing) over the {text} ms budget"


def test_precedence_worst_first():
    """Dead worker > stalled output > STALE > failed > error rate > unreliable > lost > rejected > latency > OK."""
    def health_with(stalled=False, silent=False, failed=False, bad_rate=False, unreliable=False, lost=False,
                    rejected=False, slow=False):
        health = running()
        now = 5.0
        if unreliable:  # 2.5 s under the threshold by the report (frames without a score leave the run alone)
            answered(health, now, score=0.1)
        if failed:
            health.received(now)
            health.failed("boom", now)
        if bad_rate:
            for _ in range(5):
                health.received(now)
                health.rejected("zero_size", now)
            answered(health, now)
        if lost:
            health.lost(3)
        if rejected:
            for tick in range(9):
                answered(health, now + tick / 100)
            health.received(now)
            health.rejected("bad_step", now)
        if slow:
            answered(health, now, queue_ms=100.0, processing_ms=100.0)
        if stalled:
            health.received(now)
        end = now + (10.0 if silent else 2.5)
        if not silent:
            health.received(end)
            health.dropped() if stalled else health.processed(end, 1.0, 1.0, 1.0)
        return health, end

    everything = {"failed": True, "bad_rate": True, "unreliable": True, "lost": True, "rejected": True, "slow": True}
    cases = [
        ({**everything, "stalled": True, "silent": True}, True, ERROR, "worker thread"),
        ({**everything, "stalled": True, "silent": True}, False, ERROR, "inference stalled"),
        ({**everything, "silent": True}, False, STALE, "no image"),
        (everything, False, ERROR, "frame(s) failed"),
        ({"bad_rate": True, "unreliable": True, "lost": True, "slow": True}, False, ERROR, "rejected or failed"),
        ({"unreliable": True, "lost": True, "rejected": True, "slow": True}, False, WARN, "segmentation unreliable"),
        ({"lost": True, "rejected": True, "slow": True}, False, WARN, "lost in transport"),
        ({"rejected": True, "slow": True}, False, WARN, "malformed"),
        ({"slow": True}, False, WARN, "latency"),
        ({}, False, OK, "ok"),
    ]
    for conditions, worker_dead, level, words in cases:
        health, end = health_with(**conditions)
        report = health.report(end, THRESHOLDS, worker_alive=not worker_dead)
        assert (report.level, words in report.message) == (level, True), (conditions, worker_dead, report.message)


def test_frames_lost_in_transport_warn_in_their_period_with_the_count_and_the_profile_hint():
    health = running()
    health.lost(37)
    for tick in range(3):
        answered(health, 5.0 + tick / 10)
    lossy = health.report(6.0, THRESHOLDS)
    assert lossy.level == WARN
    assert lossy.message.startswith("37 frame(s) lost in transport (DDS loses images over 512 KB sent best effort")
    assert lossy.message.endswith("config/fastdds_large_images.xml)")
    assert lossy.values["frames_lost"] == lossy.values["frames_lost_in_period"] == "37"
    assert lossy.values["frames_received"] == "53", "lost frames were never received"
    assert lossy.values["frames_waiting"] == "0", "nor do they wait for the worker"
    health.lost(2)
    health.lost(1)
    assert health.frames_lost() == 40
    for tick in range(10):
        answered(health, 6.0 + tick / 10)
    assert health.report(7.0, THRESHOLDS).message.startswith("3 frame(s) lost")
    answered(health, 7.5)
    clean = health.report(8.0, THRESHOLDS)
    assert (clean.level, clean.message) == (OK, "ok"), "a period without loss is OK again"
    assert (clean.values["frames_lost"], clean.values["frames_lost_in_period"]) == ("40", "0")


def test_a_camera_whose_every_frame_is_lost_is_stale_and_says_why():
    health = running()
    health.lost(40)
    report = health.report(9.0, THRESHOLDS)
    assert report.level == STALE
    assert report.message.startswith("no image for 4.1 s; 40 frame(s) lost in transport (DDS loses images over")


def test_a_clock_that_jumps_back_restarts_the_output_clock():
    health = running()
    health.received(5.0)
    health.restart_clock(1.0)  # a replayed bag looped
    report = health.report(2.5, THRESHOLDS)
    assert report.level == OK and report.values["seconds_since_last_mask"] == "nan"
    assert health.report(3.5, THRESHOLDS).level == ERROR
    assert not math.isnan(float(report.values["seconds_since_last_image"]))


def scored(health: CameraHealth, start: float, stop: float, score: float) -> None:
    """Frames at 10 Hz from `start` up to (not including) `stop`, each with confidence `score`."""
    for tick in range(round(10 * (stop - start))):
        answered(health, start + tick / 10, score=score)


def test_scores_under_the_threshold_warn_only_after_the_hold_time_and_recover_with_a_good_frame():
    health = running()
    scored(health, 5.0, 6.0, 0.2)
    within = health.report(6.0, THRESHOLDS)
    assert within.level == OK and within.values["confidence_score"] == "0.200", "1.0 s under: within the hold"
    assert within.values["seconds_under_confidence_threshold"] == "1.00"
    scored(health, 6.0, 7.5, 0.3)
    warned = health.report(7.5, THRESHOLDS)
    assert warned.level == WARN
    assert warned.message == "segmentation unreliable: confidence 0.26 under 0.50 for 2.5 s"  # (10 x .2 + 15 x .3) / 25
    assert warned.values["confidence_threshold"] == "0.500" and warned.values["confidence_score"] == "0.300"
    answered(health, 7.6, score=0.9)
    recovered = health.report(8.0, THRESHOLDS)
    assert (recovered.level, recovered.message) == (OK, "ok")
    assert recovered.values["seconds_under_confidence_threshold"] == "0.00"


def test_one_frame_at_the_threshold_restarts_the_hold_and_no_threshold_never_warns():
    health = running()
    scored(health, 5.0, 6.0, 0.2)
    answered(health, 6.0, score=0.5)  # at the threshold: reliable
    scored(health, 6.1, 7.5, 0.2)
    report = health.report(7.5, THRESHOLDS)
    assert report.level == OK and report.values["seconds_under_confidence_threshold"] == "1.40"
    unchecked = HealthThresholds(latency_budget_ms=50.0, reliability_threshold=None)
    silent_monitor = running()
    scored(silent_monitor, 5.0, 9.0, 0.0)
    report = silent_monitor.report(9.0, unchecked)
    assert report.level == OK and report.values["confidence_threshold"] == "none"
    assert health.report(7.6, unchecked).values["seconds_under_confidence_threshold"] == "0.00", "the run ends"
