"""The rows the engine writes to the store, one function per kind (`Engine.take_rows` hands them
over by table), and the served prediction rebuilt from a logged score."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from appliance.learning.metrics import positive_score, predicted_label
from appliance.storage.rows import origin_code, status_code

if TYPE_CHECKING:
    from appliance.ingest.events import Event
    from appliance.learning.online_model import OnlineModel

TABLES = ("feature_names", "payload_shapes", "sources", "events", "predictions", "labels", "late_labels",
          "dead_letters", "models", "metrics", "attribute_switches", "audit", "alerts")


def empty_rows() -> dict[str, list[dict]]:
    return {table: [] for table in TABLES}


def prediction_row(event: Event, seq: int, features: bytes, y_served: Any, y_learner: Any, version: int,
                   origin: str, task: str) -> dict:
    """A prediction as logged, keyed by its event's `seq`: the served score, the champion learner's,
    and the feature vector (packed by `appliance.storage.rows.VectorCodec`). `event_id` is for the
    engine's in-process readers (the drift bench); the store keeps it in the event's row only."""
    if task == "classification":
        score, learner_score = positive_score(y_served), positive_score(y_learner)
        label = predicted_label(y_served)
    else:
        score, learner_score, label = y_served, y_learner, None
    return {"seq": seq, "event_id": event.event_id, "version": version, "score": score, "predicted": label,
            "learner_score": learner_score, "origin": origin_code(origin), "features": features}


def label_row(seq: int, event_id: str, ts: float, y: Any, status: str) -> dict:
    """A label joined to its event's prediction (or defaulted), keyed by the event's `seq`; `event_id`
    as in `prediction_row`. Its delay is not stored: max(0, `ts` - the event's ts), as the engine
    computes it, is the same float in any reader."""
    return {"seq": seq, "event_id": event_id, "ts": ts, "label": _label_value(y), "status": status_code(status)}


def late_label_row(event_id: str, ts: float | None, y: Any) -> dict:
    """A label whose prediction had expired: kept by event id (`late_labels`), never learned."""
    return {"event_id": event_id, "ts": ts, "label": _label_value(y)}


def _label_value(y: Any) -> float | int:
    return float(y) if not isinstance(y, bool) else int(y)


def metric_row(model: OnlineModel, watermark: float) -> tuple[dict, dict]:
    """One point of metric history: the store's row, and the in-memory curve point the console draws."""
    candidates = {name: c.evaluation.window_primary() for name, c in model.candidates.items()}
    point = {"event_ts": watermark, "labels": model.n_learned, "version": model.served.version,
             "champion": model.champion, "served": model.served_eval.window_primary(), "candidates": candidates}
    row = {"labels": model.n_learned, "event_ts": watermark, "version": model.served.version,
           "champion": model.champion, "learner": orjson.dumps(model.learner_eval.values()).decode(),
           "served": orjson.dumps(model.served_eval.values()).decode(),
           "candidates": orjson.dumps(candidates).decode()}
    return row, point


def as_prediction(score: float, task: str) -> Any:
    """The served prediction of a logged score (the positive class's probability, or the value)."""
    return {False: 1.0 - score, True: score} if task == "classification" else score
