"""The model lifecycle's settings: challengers beside the champion, drift detection, policy actions.

    [[model.challenger]]                 # learns in shadow beside the champion; only the champion answers
    name = "tree"
    spec = "tree.HoeffdingAdaptiveTreeClassifier(seed=1)"

    [lifecycle]
    auto_promote = true                  # a challenger that beats the champion...
    promote_margin = 0.02                # ...by this much of the primary metric...
    promote_after = 1000                 # ...over at least this many labels scored by both, serves
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
from typing import Any

from .errors import ConfigError
from .timeutil import parse_duration

DRIFT_ACTIONS = ("alert", "challenger")
WARM_STARTS = ("change", "last")


@dataclass(frozen=True)
class ChallengerSpec:
    """A River model from the config that learns in shadow beside the champion."""

    name: str
    spec: str


@dataclass(frozen=True)
class Lifecycle:
    """Champion/challenger promotion, drift detection and the automatic actions taken on it."""

    auto_promote: bool = True
    promote_margin: float = 0.02
    promote_after: int = 1000
    drift_detector: str = "drift.ADWIN()"
    drift_features: tuple[str, ...] = ()
    on_concept_drift: str = "alert"
    on_data_drift: str = "alert"
    warm_start: int = 2000
    warm_start_from: str = "last"  # "last": all kept examples; "change": only those since the estimated change
    auto_rollback: bool = True
    rollback_after: int = 1000
    rollback_margin: float = 0.01
    max_challengers: int = 4
    alert_cooldown: float = 86400.0
    drift_warmup: int = 1000
    drift_min_effect: float = 0.0  # a concept alert needs the error estimate to rise by this much (relative)
    challenger_spec: str | None = None  # the spec of drift challengers [default: the champion's]


def parse_challengers(items: Any, champion_name: str) -> tuple[ChallengerSpec, ...]:
    """Read `[[model.challenger]]` tables."""
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ConfigError("[[model.challenger]] must be an array of tables")
    out = []
    for index, item in enumerate(items):
        where = f"model.challenger #{index + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"[{where}] must be a table")
        unknown = set(item) - {"name", "spec"}
        if unknown:
            raise ConfigError(f'unknown key "{sorted(unknown)[0]}" in [{where}]; known keys: name, spec')
        if not item.get("name") or not item.get("spec"):
            raise ConfigError(f'[{where}] needs "name" and "spec"')
        name = str(item["name"])
        if name == champion_name or any(c.name == name for c in out) or name.startswith("retrain-"):
            raise ConfigError(f'[{where}] name "{name}" is taken (the champion is "{champion_name}"; '
                              '"retrain-N" names are for drift challengers)')
        out.append(ChallengerSpec(name=name, spec=str(item["spec"])))
    return tuple(out)


def parse_lifecycle(table: dict[str, Any]) -> Lifecycle:
    """Read `[lifecycle]`, checking types and ranges."""
    known = set(Lifecycle.__dataclass_fields__)
    for key in table:
        if key not in known:
            raise ConfigError(f'unknown key "{key}" in [lifecycle]; known keys: {", ".join(sorted(known))}')
    default = Lifecycle()
    values: dict[str, Any] = {}
    for key in ("auto_promote", "auto_rollback"):
        value = table.get(key, getattr(default, key))
        if not isinstance(value, bool):
            raise ConfigError(f"[lifecycle] {key} must be true or false")
        values[key] = value
    for key in ("promote_after", "warm_start", "rollback_after", "max_challengers", "drift_warmup"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key in ("warm_start", "drift_warmup") else 1):
            raise ConfigError(f"[lifecycle] {key} must be a positive whole number")
        values[key] = value
    for key in ("promote_margin", "rollback_margin", "drift_min_effect"):
        value = table.get(key, getattr(default, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"[lifecycle] {key} must be a number >= 0")
        values[key] = float(value)
    for key in ("on_concept_drift", "on_data_drift"):
        value = table.get(key, getattr(default, key))
        if value not in DRIFT_ACTIONS:
            raise ConfigError(f'[lifecycle] {key} must be one of {", ".join(DRIFT_ACTIONS)}, not {value!r}')
        values[key] = value
    warm_from = table.get("warm_start_from", default.warm_start_from)
    if warm_from not in WARM_STARTS:
        raise ConfigError(f'[lifecycle] warm_start_from must be one of {", ".join(WARM_STARTS)}, not {warm_from!r}')
    values["warm_start_from"] = warm_from
    features = table.get("drift_features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ConfigError("[lifecycle] drift_features must be a list of feature names")
    values["drift_features"] = tuple(features)
    detector = table.get("drift_detector", default.drift_detector)
    if not isinstance(detector, str) or not detector.strip().startswith("drift."):
        raise ConfigError('[lifecycle] drift_detector must be a River drift detector, e.g. "drift.ADWIN()"')
    values["drift_detector"] = detector
    values["alert_cooldown"] = parse_duration(table.get("alert_cooldown", default.alert_cooldown))
    spec = table.get("challenger_spec")
    if spec is not None and (not isinstance(spec, str) or not spec.strip()):
        raise ConfigError("[lifecycle] challenger_spec must be a River model spec")
    values["challenger_spec"] = spec
    return Lifecycle(**values)
