"""The learner's metrics kept as counts equal River's own metric objects, bit for bit.

`Evaluation` keeps ROC AUC and accuracy as counts, log loss, MAE and RMSE as bare running means, and
its rolling metrics on one shared window;
before that it held River's `metrics.ROCAUC`, `LogLoss`, `Accuracy` (regression: `MAE`, `RMSE`),
the rolling ones wrapped in `utils.Rolling`. `RiverEvaluation` below is that implementation, kept
here as the reference: every value, every label, must be equal (`==`, not a tolerance), and so must
everything a real engine run decides from them (publications, promotions, rollbacks, drift).
"""

from __future__ import annotations

import math
import pickle
import random
from collections import Counter

import orjson
import pytest
from river import metrics, utils

from appliance.engine.core import Engine
from appliance.learning import candidates, online_model, publication
from appliance.learning import metrics as learning_metrics
from appliance.learning.metrics import Evaluation, predicted_label
from appliance.learning.river_metrics import RocAucCounts
from appliance.storage.snapshot import dump_object, load_object
from tests.conftest import LEARNER, config_with, flip_stream, items

_RIVER = {"classification": {"roc_auc": metrics.ROCAUC, "log_loss": metrics.LogLoss, "accuracy": metrics.Accuracy},
          "regression": {"mae": metrics.MAE, "rmse": metrics.RMSE}}
_PROBA = {"roc_auc": True, "log_loss": True, "accuracy": False}


class RiverEvaluation(Evaluation):
    """The evaluation as it was: River's metric objects, the rolling ones in `utils.Rolling`."""

    def __init__(self, task: str, window: int = 1000, cumulative: bool = True) -> None:
        super().__init__(task, window)  # (cumulative metrics always, as it was)
        self._river()

    def _river(self) -> None:
        table = _RIVER[self.task]
        self._metrics = [(name, cls(), _PROBA.get(name, False)) for name, cls in table.items()]
        self._rolling = [(name, utils.Rolling(cls, window_size=self.window), _PROBA.get(name, False))
                         for name, cls in table.items()]

    def reset_window(self) -> None:
        super().reset_window()
        self._rolling = [(name, utils.Rolling(_RIVER[self.task][name], window_size=self.window), uses)
                         for name, _, uses in self._rolling]

    def update(self, y_true, y_pred) -> None:
        if y_pred is None or (isinstance(y_pred, dict) and not y_pred):
            return
        self.count += 1
        self.window_count += 1
        if self.task == "classification":
            self._track(y_true)
            label = predicted_label(y_pred)
            for _, metric, uses_proba in self._metrics + self._rolling:
                metric.update(y_true, y_pred if uses_proba else label)
        else:
            for _, metric, _ in self._metrics + self._rolling:
                metric.update(y_true, y_pred)

    def to_data(self) -> dict:
        """The checkpoint format before the counts (what `Evaluation.from_data` still reads)."""
        return {"task": self.task, "window": self.window, "count": self.count, "window_count": self.window_count,
                "metrics": dump_object([metric for _, metric, _ in self._metrics]),
                "rolling": dump_object([metric for _, metric, _ in self._rolling]),
                "classes": list(self.classes.items()), "window_labels": list(self.window_labels),
                "window_classes": list(self.window_classes.items())}

    @classmethod
    def from_data(cls, data: dict, cumulative: bool | None = None) -> RiverEvaluation:
        evaluation = cls(data["task"], data["window"])
        evaluation.count, evaluation.window_count = data["count"], data["window_count"]
        for attribute, blob in (("_metrics", data["metrics"]), ("_rolling", data["rolling"])):
            setattr(evaluation, attribute, [(name, metric, uses) for (name, _, uses), metric
                                            in zip(getattr(evaluation, attribute), load_object(blob))])
        evaluation.classes = Counter(dict(data["classes"]))
        evaluation.window_labels.extend(data["window_labels"])
        evaluation.window_classes = Counter(dict(data["window_classes"]))
        return evaluation


def _scores(rng: random.Random, n: int) -> list[tuple[bool, dict]]:
    """Labels and probabilities, with scores on the thresholds, at 0 and 1, and dicts without True."""
    edges = [i / 9 for i in range(10)] + [1e-8, 1 - 1e-8, 0.5]
    out = []
    for _ in range(n):
        y = rng.random() < 0.3
        r = rng.random()
        p = rng.choice(edges) if r < 0.2 else (rng.random() * 0.6 + (0.3 if y else 0.0))
        out.append((y, {False: 1.0} if r > 0.98 else {True: p, False: 1.0 - p}))
    return out


def _every_value(evaluation: Evaluation) -> tuple:
    names = [name for name, _, _ in evaluation._metrics]
    windowed = tuple(evaluation.window_value(name) for name in names)
    return evaluation.values(), evaluation.window_primary(), windowed, evaluation.count, evaluation.window_count


@pytest.mark.parametrize("window", [1, 7, 200])
def test_classification_values_equal_rivers_after_every_label(window):
    mine, river = Evaluation("classification", window), RiverEvaluation("classification", window)
    for i, (y, proba) in enumerate(_scores(random.Random(window), 3000)):
        mine.update(y, proba)
        river.update(y, proba)
        assert _every_value(mine) == _every_value(river), i
        if i == 1700:  # the served model changed: rolling metrics start over
            mine.reset_window()
            river.reset_window()
        if i % 500 == 499:  # a checkpoint and a restore: the new format, and the one before the counts
            mine = Evaluation.from_data(mine.to_data())
            converted = Evaluation.from_data(river.to_data())
            assert _every_value(converted) == _every_value(river)
            for (_, a, _), (_, b, _) in zip(converted._metrics + converted._rolling, mine._metrics + mine._rolling):
                assert type(a) is type(b)
                assert a.to_data() == b.to_data()


def test_regression_values_equal_rivers_after_every_label():
    rng = random.Random(3)
    mine, river = Evaluation("regression", 50), RiverEvaluation("regression", 50)
    for i in range(2000):
        y, pred = rng.gauss(10, 3), rng.gauss(10, 4)
        mine.update(y, pred)
        river.update(y, pred)
        assert _every_value(mine) == _every_value(river), i
        if i == 999:
            mine = Evaluation.from_data(mine.to_data())
            converted = Evaluation.from_data(river.to_data())
            assert _every_value(converted) == _every_value(river)


def test_roc_auc_counts_equal_river_on_odd_scores():
    """NaN scores, scores outside [0, 1], integer labels: River's comparisons, exactly."""
    mine, river = RocAucCounts(), metrics.ROCAUC()
    for y, p in [(1, math.nan), (0, -0.5), (1, 1.5), (True, 0.0), (0, 1.0), (1, 1 / 9), (0, 8 / 9), (2, 0.7)]:
        mine.update(y, p)
        river.update(y, p)
        assert float(mine.get()) == float(river.get())
        assert RocAucCounts.from_river(river).to_data() == mine.to_data()


def _replay(monkeypatch, evaluation_class) -> tuple[list, list, dict]:
    """A real engine over a seeded stream whose concept flips: challengers, drift, promotions, probation."""
    for module in (candidates, online_model, publication, learning_metrics):
        monkeypatch.setattr(module, "Evaluation", evaluation_class)
    config = config_with({"spec": LEARNER, "challenger": [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"},
                                                          {"name": "fast", "spec": LEARNER.replace("0.05", "0.3")}]},
                         {"on_concept_drift": "challenger", "warm_start": 300, "warm_start_from": "change",
                          "alert_cooldown": "1h", "promote_after": 200, "promote_margin": 0.01,
                          "promote_confirm": 0})
    stream = items(config, flip_stream(4000, change=1500))
    engine = Engine(config)
    history, rows = [], {}
    for index, item in enumerate(stream):
        engine.process(item)
        if index == 2500:  # a checkpoint and a restore in the middle of the run
            blob = engine.checkpoint()
            engine = Engine(config)
            engine.restore(blob["engine"], list(blob["entities"]), [(r[0], r[2], r[3]) for r in blob["pending"][0]])
        model = engine.model
        history.append((model.served.version, model.champion, model.served_eval.values(),
                        {name: (c.evaluation.values(), c.duel.window_primary(), c.duel_champion.window_primary())
                         for name, c in model.candidates.items()}))
        for table, new in engine.take_rows().items():
            rows.setdefault(table, []).extend({k: v for k, v in row.items() if "wall" not in k}
                                              if isinstance(row, dict) else row for row in new)
    probes = [orjson.loads(x) for x, _ in list(engine.model.examples)[-20:]]
    return history, rows, engine.stats()["model"], probes


def _without_model(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "model"}


def test_an_engine_run_decides_exactly_as_with_rivers_metric_objects(monkeypatch):
    reference = _replay(monkeypatch, RiverEvaluation)
    assert reference[1]["audit"] and any(row["action"] == "promote" for row in reference[1]["audit"])
    counts = _replay(monkeypatch, Evaluation)
    assert counts[0] == reference[0]  # every metric value of every candidate after every item
    assert counts[1]["audit"] == reference[1]["audit"]
    assert counts[2] == reference[2]
    # every version registered, with its metrics; the models themselves by what they predict (a
    # Hoeffding tree's pickle differs from run to run of the same code, its predictions do not)
    assert [_without_model(r) for r in counts[1]["models"]] == [_without_model(r) for r in reference[1]["models"]]
    for mine, theirs in zip(counts[1]["models"], reference[1]["models"]):
        mine, theirs = pickle.loads(mine["model"]), pickle.loads(theirs["model"])
        assert [mine.predict_proba_one(x) for x in reference[3]] == [theirs.predict_proba_one(x) for x in reference[3]]


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_an_evaluation_without_cumulative_metrics_has_the_same_recent_figures(task):
    """A duel or the learner-vs-frozen pair keeps only rolling metrics: every recent figure equals a
    full evaluation's, through a window reset and a checkpoint (also one written with cumulative
    metrics, which are then left out)."""
    rng = random.Random(11)
    full, recent = Evaluation(task, 50), Evaluation(task, 50, cumulative=False)
    pairs = _scores(rng, 1500) if task == "classification" else [(rng.gauss(5, 2), rng.gauss(5, 3)) for _ in range(1500)]
    names = [name for name, _, _ in full._metrics]
    for i, (y, pred) in enumerate(pairs):
        full.update(y, pred)
        recent.update(y, pred)
        window_values = {k: v for k, v in full.values().items() if k.endswith("_window")}
        assert recent.values() == window_values, i
        assert [recent.window_value(n) for n in names] == [full.window_value(n) for n in names], i
        assert (recent.window_primary(), recent.count, recent.window_count) == (
            full.window_primary(), full.count, full.window_count)
        if i == 600:
            full.reset_window()
            recent.reset_window()
        if i == 900:
            recent = Evaluation.from_data(recent.to_data())
            assert not recent.cumulative
        if i == 1200:
            recent = Evaluation.from_data(full.to_data(), cumulative=False)
            assert recent.values() == window_values and not recent._metrics
