"""Drift detection with River's detectors: concept drift on the served model's error stream, data
drift on the distribution of chosen features.

The error of a classification is its log loss, not |y - p|: with rare positives (fraud), a model
that starts missing them barely moves the mean absolute error but multiplies the mean log loss
(on the bundled sample: 2x vs 7x in the day after the drift). Regression uses |y - y_hat|.

Both run on the engine's thread, in event order, so a replay raises the same alerts at the same
events as a live run. An alert says when (event time), which detector, on what (the served version
or a feature) and the evidence: the detector's estimate of the mean before and after the change,
and how many values it had seen. The same subject does not alert again within `alert_cooldown` of
event time; suppressed alerts are counted. A drop in the served model's error is an improvement,
not concept drift, and is not alerted; nor is a rise of the error estimate by less than
`drift_min_effect` (relative; 0 by default: on River's synthetic streams, real changes raised
ADWIN's estimate by as little as 2 %, no more than false alarms did, docs/lifecycle.md).
A concept alert's evidence carries `since_change`, the detector's estimate of how many labels came
after the change (ADWIN's window after its cut): what a drift challenger is warm-started on.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any

from appliance.config.lifecycle import Lifecycle
from appliance.config.model_spec import parse_model
from appliance.learning.metrics import positive_score
from appliance.storage.snapshot import dump_object, load_object

RECENT = 20
KEPT_ERRORS = 4096  # the served model's newest errors: what a detector's window is rebuilt from after a fall
EPSILON = 1e-6  # probabilities are clipped here: one confident miss weighs at most -log(1e-6) = 13.8


class DriftMonitor:
    """One detector on the served model's errors and one per monitored feature."""

    def __init__(self, lifecycle: Lifecycle, task: str) -> None:
        self.lifecycle = lifecycle
        self.task = task
        self.concept = parse_model(lifecycle.drift_detector)
        self.features = {name: parse_model(lifecycle.drift_detector) for name in lifecycle.drift_features}
        self.seen: dict[str, int] = {}
        self.last_alert: dict[str, float] = {}
        self.alerts = 0
        self.suppressed = 0
        self.recent: deque = deque(maxlen=RECENT)  # the newest alert rows, for stats and the console
        self.errors: deque = deque(maxlen=KEPT_ERRORS)

    def to_data(self) -> dict[str, Any]:
        """The detectors' state as plain data (each River detector pickled on its own)."""
        return {"concept": dump_object(self.concept),
                "features": {name: dump_object(detector) for name, detector in self.features.items()},
                "seen": self.seen, "last_alert": self.last_alert, "alerts": self.alerts,
                "suppressed": self.suppressed, "recent": list(self.recent), "errors": list(self.errors)}

    def load_data(self, data: dict[str, Any]) -> None:
        """Take the state `to_data` described."""
        self.concept = load_object(data["concept"])
        self.features = {name: load_object(blob) for name, blob in data["features"].items()}
        self.seen, self.last_alert = data["seen"], data["last_alert"]
        self.alerts, self.suppressed = data["alerts"], data["suppressed"]
        self.recent = deque(data["recent"], maxlen=RECENT)
        self.errors = deque(data["errors"], maxlen=KEPT_ERRORS)

    def observe_features(self, x: dict, ts: float) -> list[dict[str, Any]]:
        """Feed the monitored features of one scored event; return any alerts."""
        alerts = []
        for name, detector in self.features.items():
            value = x.get(name)
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            alert = self._update(detector, f"feature {name}", "data", float(value), ts)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def observe_error(self, y: Any, y_served: Any, ts: float, version: int) -> dict[str, Any] | None:
        """Feed the served model's error on one label; return an alert when it has risen."""
        if self.task == "classification":
            if not y_served:
                return None  # the served model had nothing to say yet
            p = positive_score(y_served)
            error = -math.log(max(EPSILON, p if y else 1.0 - p))  # log loss: a missed rare positive counts
        else:
            error = abs(float(y) - float(y_served))
        if not math.isfinite(error):
            return None
        self.errors.append(error)
        return self._update(self.concept, f"served model (v{version})", "concept", error, ts, rises_only=True)

    def reset_concept(self) -> None:
        """The served model changed: its errors are a new stream."""
        self.concept = parse_model(self.lifecycle.drift_detector)
        self.seen.pop("concept", None)

    def _update(self, detector: Any, subject: str, kind: str, value: float, ts: float,
                rises_only: bool = False) -> dict[str, Any] | None:
        stream = "concept" if kind == "concept" else subject
        self.seen[stream] = self.seen.get(stream, 0) + 1
        before = _estimate(detector)
        detector.update(value)
        if not detector.drift_detected or self.seen[stream] <= self.lifecycle.drift_warmup:
            return None  # a detector on a new stream (a new model's errors) first learns what is normal
        after = _estimate(detector)
        if rises_only and before is not None and after is not None and \
                after <= before * (1.0 + self.lifecycle.drift_min_effect):
            if kind == "concept":
                self._keep_window(detector)
            return None  # a fall of the error is an improvement; a rise below the minimum effect is noise
        key = stream
        if ts - self.last_alert.get(key, -math.inf) < self.lifecycle.alert_cooldown:
            self.suppressed += 1
            return None
        self.last_alert[key] = ts
        self.alerts += 1
        what = "error" if kind == "concept" else "mean"
        return {"event_ts": ts, "wall_ts": time.time(), "kind": kind, "detector": self.lifecycle.drift_detector,
                "subject": subject,
                "evidence": {f"{what}_before": before, f"{what}_after": after, "value": value,
                             "window": getattr(detector, "width", None), "observations": self.seen[stream],
                             "since_change": _since_change(detector)}}

    def _keep_window(self, detector: Any) -> None:
        """Rebuild the concept detector on the window it kept after a change it will not alert on.

        River resets a detector at the update after any detection. After a fall of the error (a model
        that learned) that would throw away what is normal now, and a rise right after it would then
        go unseen: the new detector would start on the raised errors. The detector is rebuilt on the
        newest errors it kept (its window after the cut), as if it had only dropped the older part.
        """
        width = getattr(detector, "width", None)
        if not isinstance(width, (int, float)) or width <= 0:
            return
        fresh = parse_model(self.lifecycle.drift_detector)
        for error in list(self.errors)[-int(width):]:
            fresh.update(error)
        if not fresh.drift_detected:
            self.concept = fresh

    def summary(self) -> dict[str, Any]:
        per_feature = {name: {"estimate": _estimate(detector), "observations": self.seen.get(f"feature {name}", 0),
                              "last_alert": self.last_alert.get(f"feature {name}")}
                       for name, detector in self.features.items()}
        return {"detector": self.lifecycle.drift_detector, "features": list(self.features),
                "feature_drift": per_feature, "alerts": self.alerts, "suppressed_by_cooldown": self.suppressed,
                "error_estimate": _estimate(self.concept), "recent": list(self.recent)}


def _since_change(detector: Any) -> int | None:
    """The detector's estimate of how many values it has seen since the change, if it has one.

    ADWIN drops the older part of its window when it detects a change: what remains is what it
    believes came after it. Other detectors give no such estimate.
    """
    width = getattr(detector, "width", None)
    return int(width) if type(detector).__name__ == "ADWIN" and isinstance(width, (int, float)) else None


def _estimate(detector: Any) -> float | None:
    value = getattr(detector, "estimation", None)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
