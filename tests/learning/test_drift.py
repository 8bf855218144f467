"""drift.DriftMonitor through its public methods, with River's ADWIN: concept alerts on the served
model's error, data alerts on a feature's mean, warm-up, cooldown, and improvements not alerted."""

from __future__ import annotations

import math
import random

from appliance.config.lifecycle import Lifecycle
from appliance.learning.drift import DriftMonitor


def served(p_right: float, y: bool) -> dict:
    """A served prediction that gives the true class probability `p_right`."""
    p = p_right if y else 1.0 - p_right
    return {True: p, False: 1.0 - p}


def feed_errors(monitor: DriftMonitor, n: int, p_right: float, start: int, seed: int) -> list[dict]:
    rng, alerts = random.Random(seed), []
    for i in range(start, start + n):
        y = rng.random() < 0.5
        alert = monitor.observe_error(y, served(p_right + rng.uniform(-0.05, 0.05), y), float(i), version=3)
        if alert is not None:
            alerts.append(alert)
    return alerts


def test_a_rise_of_the_served_models_log_loss_raises_one_concept_alert_with_its_evidence():
    monitor = DriftMonitor(Lifecycle(drift_warmup=200, alert_cooldown=10_000.0), "classification")
    assert feed_errors(monitor, 2000, 0.9, start=0, seed=1) == []  # a steady error stream: no alert
    alerts = feed_errors(monitor, 1000, 0.4, start=2000, seed=2)
    assert len(alerts) == 1 and monitor.alerts == 1
    alert = alerts[0]
    assert alert["kind"] == "concept" and alert["subject"] == "served model (v3)" and alert["detector"] == "drift.ADWIN()"
    assert 2000 <= alert["event_ts"] < 3000
    evidence = alert["evidence"]
    assert evidence["error_after"] > evidence["error_before"]
    # ADWIN's estimate of the labels since the change: the part of its window it kept after the cut
    assert isinstance(evidence["since_change"], int) and 0 < evidence["since_change"] < evidence["observations"] / 4
    assert monitor.summary()["alerts"] == 1


def test_the_cooldown_suppresses_a_second_alert_on_the_same_subject_and_counts_it():
    monitor = DriftMonitor(Lifecycle(drift_warmup=200, alert_cooldown=1e9), "classification")
    feed_errors(monitor, 1500, 0.95, start=0, seed=1)
    first = feed_errors(monitor, 1500, 0.6, start=1500, seed=2)
    again = feed_errors(monitor, 1500, 0.2, start=3000, seed=3)
    assert len(first) == 1 and again == []
    assert monitor.suppressed >= 1 and monitor.summary()["suppressed_by_cooldown"] == monitor.suppressed


def test_a_fall_of_the_error_is_an_improvement_not_an_alert():
    monitor = DriftMonitor(Lifecycle(drift_warmup=200, alert_cooldown=0.0), "classification")
    feed_errors(monitor, 1500, 0.55, start=0, seed=1)
    assert feed_errors(monitor, 1500, 0.95, start=1500, seed=2) == []
    assert monitor.alerts == 0 and monitor.suppressed == 0


def test_no_alert_during_the_warmup_of_a_new_error_stream():
    lifecycle = Lifecycle(drift_warmup=5000, alert_cooldown=0.0)
    monitor = DriftMonitor(lifecycle, "classification")
    feed_errors(monitor, 1500, 0.95, start=0, seed=1)
    assert feed_errors(monitor, 1500, 0.3, start=1500, seed=2) == []  # 3,000 labels < the warm-up
    monitor.reset_concept()  # a new served model: its errors are a new stream, warmed up again
    assert "concept" not in monitor.seen


def test_a_shift_of_a_monitored_features_mean_raises_a_data_alert_and_bad_values_are_skipped():
    monitor = DriftMonitor(Lifecycle(drift_features=("amount",), drift_warmup=100, alert_cooldown=1e9),
                           "classification")
    rng, alerts = random.Random(4), []
    for i in range(3000):
        amount = rng.gauss(50.0, 5.0) + (40.0 if i >= 1500 else 0.0)
        alerts += monitor.observe_features({"amount": amount, "city#lisbon": 1.0}, float(i))
    for bad in (math.nan, math.inf, True, "12", None):
        assert monitor.observe_features({"amount": bad}, 4000.0) == []
    assert [a["kind"] for a in alerts] == ["data"] and alerts[0]["subject"] == "feature amount"
    assert alerts[0]["event_ts"] >= 1500 and alerts[0]["evidence"]["mean_after"] > alerts[0]["evidence"]["mean_before"]
    summary = monitor.summary()["feature_drift"]["amount"]
    assert summary["observations"] == 3000 and summary["last_alert"] == alerts[0]["event_ts"]


def test_regression_errors_are_absolute_and_an_empty_prediction_is_skipped():
    monitor = DriftMonitor(Lifecycle(drift_warmup=100, alert_cooldown=0.0), "regression")
    rng = random.Random(5)
    alerts = [monitor.observe_error(10.0, 10.0 + rng.gauss(0, 1) + (8.0 if i >= 1000 else 0.0), float(i), 1)
              for i in range(2000)]
    assert [a["kind"] for a in alerts if a] == ["concept"]
    classification = DriftMonitor(Lifecycle(), "classification")
    assert classification.observe_error(True, {}, 0.0, 1) is None and len(classification.errors) == 0
