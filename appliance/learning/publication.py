"""When the champion's learner is published, and whether it may be: the schedule and the gate.

The learner replaces the untrained first version once it has `first_publish` labels. After that
it is checked every n/YOUNG labels while it has n (it changes most early), at most every
`publish_every` labels (or, with `publish_interval`, once that much event time has passed), and
published when its recent `gate_metric` (log loss or MAE by default), scored on the same labels as
the served version's, is not worse than the served version's by more than `publish_margin`.
`learning.OnlineModel` applies both.
"""

from __future__ import annotations

from appliance.config.file import ModelConfig
from appliance.learning.metrics import GATE, Evaluation, bigger_is_better, not_worse

YOUNG = 100  # while the learner has n labels, checks come every n/YOUNG labels


def labels_between_checks(config: ModelConfig, n_learned: int) -> int:
    """n/YOUNG while the learner has n labels, at least `first_publish`, at most `publish_every`."""
    return max(config.first_publish, min(config.publish_every, n_learned // YOUNG))


def gate_metric(config: ModelConfig) -> str:
    return config.gate_metric or GATE[config.task]


def gate(config: ModelConfig, learner: Evaluation, served: Evaluation, n_learned: int) -> tuple[bool, str]:
    """Whether the learner may replace the served version (both scored on the same recent labels;
    the served figure over whichever versions served them), and the figures that say why."""
    metric = gate_metric(config)
    mine, theirs = learner.window_value(metric), served.window_value(metric)
    ok = not_worse(mine, theirs, config.publish_margin, bigger_is_better(config.task, metric))
    return ok, (f"recent {metric}: learner {_fmt(mine)} vs served {_fmt(theirs)} "
                f"(margin {config.publish_margin}) after {n_learned} labels")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
