"""The model lifecycle's settings: challengers beside the champion, drift detection, policy actions.

    [[model.challenger]]                 # learns in shadow beside the champion; only the champion answers
    name = "tree"
    spec = "tree.HoeffdingAdaptiveTreeClassifier(seed=1)"

    [lifecycle]
    auto_promote = true                  # a challenger that beats the champion...
    promote_margin = 0.02                # ...by this much of the primary metric...
    promote_after = 1000                 # ...over at least this many labels scored by both...
    promote_confirm = 500                # ...and at every check over the last this many of them, serves
    promote_metric = "log_loss"          # the duel's and probation's metric [default: the gate's: log loss or MAE]
    drift_detector = "drift.ADWIN()"     # River detector on the champion's error stream
    drift_features = ["amount"]          # and on the distribution of these features
    on_concept_drift = "challenger"      # "alert" or "challenger": a fresh challenger...
    on_data_drift = "alert"
    warm_start = 2000                    # ...warm-started on the labelled examples (of the last 2000)...
    warm_start_from = "last"             # ...all of them ("change": only those after the detector's estimate of the change)
    challenger_spec = "..."              # ...of this River model [default: the champion's spec]
    auto_rollback = true                 # roll back a policy promotion that does worse...
    rollback_after = 1000                # ...than the version it replaced, over this many labels,
    rollback_margin = 0.01               # ...by more than this
    max_challengers = 4
    alert_cooldown = "1d"                # event time before the same detector alerts again
    drift_warmup = 1000                  # values a detector sees (after a start or a switch) before it may alert
    drift_min_effect = 0.0               # a concept alert needs the error estimate to rise by this much (0.1: 10 %)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator

from appliance.config.fields import (
    CountFromZero,
    Duration,
    Flag,
    Names,
    NonEmptyText,
    NonNegative,
    OptionalText,
    PositiveWhole,
    Text,
    choice,
    table,
)

DRIFT_ACTIONS = ("alert", "challenger")
WARM_STARTS = ("change", "last")


def _detector(value: str) -> str:
    if not value.strip().startswith("drift."):
        raise ValueError('must be a River drift detector, e.g. "drift.ADWIN()"')
    return value


@table
@dataclass(frozen=True)
class ChallengerSpec:
    """A River model from the config that learns in shadow beside the champion."""

    name: NonEmptyText
    spec: NonEmptyText


@table
@dataclass(frozen=True)
class Lifecycle:
    """Champion/challenger promotion, drift detection and the automatic actions taken on it."""

    auto_promote: Flag = True
    promote_margin: NonNegative = 0.02
    promote_after: PositiveWhole = 1000
    promote_confirm: CountFromZero = 500  # ...and ahead by the margin at every check for this many of them
    promote_metric: OptionalText = None  # the duel's and probation's metric (None: the gate's, metrics.GATE)
    drift_detector: Annotated[Text, AfterValidator(_detector)] = "drift.ADWIN()"
    drift_features: Names = ()
    on_concept_drift: Annotated[Text, choice(DRIFT_ACTIONS)] = "alert"
    on_data_drift: Annotated[Text, choice(DRIFT_ACTIONS)] = "alert"
    warm_start: CountFromZero = 2000
    # "last": all kept examples; "change": only those since the estimated change
    warm_start_from: Annotated[Text, choice(WARM_STARTS)] = "last"
    auto_rollback: Flag = True
    rollback_after: PositiveWhole = 1000
    rollback_margin: NonNegative = 0.01
    max_challengers: PositiveWhole = 4
    alert_cooldown: Duration = 86400.0
    drift_warmup: CountFromZero = 1000
    drift_min_effect: NonNegative = 0.0  # a concept alert needs the error estimate to rise by this much (relative)
    challenger_spec: OptionalText = None  # the spec of drift challengers [default: the champion's]
