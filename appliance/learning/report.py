"""What the online model reports in `stats`: its figures, its probation, and the leaderboard of
every candidate (read on the dataflow thread when the stats snapshot is refreshed)."""

from __future__ import annotations

from typing import Any

from appliance.learning.online_model import OnlineModel


def model_summary(model: OnlineModel) -> dict[str, Any]:
    """Return the model's figures for `stats`."""
    out = {
        "spec": model.spec,
        "task": model.task,
        "champion": model.champion,
        "served_version": model.served.name,
        "publishing": "paused" if model.paused else "automatic",
        "following": model.following,  # the served version follows its learner (`[model] follow`)
        "versions": len(model.catalog),
        "examples_learned": model.n_learned,
        "publications": model.publications,
        "publications_refused": model.refusals,
        "promotions": model.promotions,
        "rollbacks": model.rollbacks,
        "learner": model.learner_eval.values() if model.learner_eval.count else {},
        "served": model.served_eval.values() if model.served_eval.count else {},
        "labels_scored": model.learner_eval.count,
        "leaderboard": leaderboard(model),
    }
    if model.probation is not None:
        out["probation"] = {"version": model.served.version, "against": model.probation.predecessor.version,
                            "labels": model.probation.current.window_count,
                            "needed": model.lifecycle.rollback_after}
    return out


def leaderboard(model: OnlineModel) -> list[dict[str, Any]]:
    """Every candidate, champion first, then by recent primary metric (best first)."""
    rows = [c.summary(model.champion) for c in model.candidates.values()]
    primary = model.learner_eval.primary
    sign = -1 if model.learner_eval.bigger_is_better else 1

    def order(row: dict) -> tuple:
        value = row["metrics"].get(f"{primary}_window")
        return (row["role"] != "champion", value is None, sign * (value or 0.0))

    return sorted(rows, key=order)
