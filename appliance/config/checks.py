"""Checks across a config's keys, after each key's own type and range are validated (`config.schema`).

Aggregates name declared keys and fields, features have unique names, the label mapping cannot read
events as labels, windows fit their rings, and every River spec builds, so a typo fails at start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.config.rings import check_rings
from appliance.errors import ConfigError

# The metrics `Evaluation` keeps per task (River's, in appliance.learning.metrics; a test checks they agree)
METRIC_NAMES = {"classification": ("roc_auc", "log_loss", "accuracy"), "regression": ("mae", "rmse")}

if TYPE_CHECKING:
    from appliance.config.file import Config, EventSchema, FeatureConfig
    from appliance.config.lifecycle import ChallengerSpec

TASKS = ("classification", "regression")
LABEL_BY = ("type", "label_id")  # how a label event is recognised: its type field, or carrying label_id


def validate_config(config: Config, *, champion: str, label_by_given: bool = True) -> None:
    """Check cross-references: aggregates name declared keys, features have unique names, specs build."""
    check_label_mapping(config.event, explicit_type=label_by_given)
    _check_feature_tables(config.features, config.event)
    _check_feature_names(config)
    if config.model.task not in TASKS:
        raise ConfigError(f'[model] task "{config.model.task}" must be one of {", ".join(TASKS)}')
    _check_metric(config.model.task, config.model.gate_metric, "[model] gate_metric")
    _check_metric(config.model.task, config.lifecycle.promote_metric, "[lifecycle] promote_metric")
    check_challengers(config.model.challengers, champion)
    check_rings(config.features.aggregates, config.features.buckets_per_window, config.event.allowed_lateness)
    _check_specs(config)


def _check_feature_tables(features: FeatureConfig, event: EventSchema) -> None:
    for key in features.ttl:
        if key not in event.keys:
            raise ConfigError(f'[features.ttl] "{key}" is not in [event] keys')
    for index, agg in enumerate(features.aggregates):
        where = f"features.aggregate[{index}]"
        if agg.op not in ("count", "since", "rate") and agg.field is None:
            raise ConfigError(f'[{where}] op "{agg.op}" needs a "field"')
        if not agg.window and agg.op not in ("last", "since"):
            raise ConfigError(f'[{where}] op "{agg.op}" needs a "window" such as "1h"')
    for index, spec in enumerate(features.attributes):
        if not spec.numeric and not spec.categorical:
            raise ConfigError(f"[features.attributes[{index}]] declares no columns: list some under numeric "
                              "or categorical")


def _check_feature_names(config: Config) -> None:
    names: set[str] = set()
    event_fields = set(config.event.numeric) | set(config.event.categorical) | set(config.event.keys)
    for agg in config.features.aggregates:
        if agg.name in names:
            raise ConfigError(f'feature "{agg.name}" is declared twice')
        names.add(agg.name)
        if agg.key not in config.event.keys:
            raise ConfigError(f'feature "{agg.name}": key "{agg.key}" is not in [event] keys')
        if agg.field is not None and agg.field not in event_fields:
            raise ConfigError(f'feature "{agg.name}": field "{agg.field}" is not an [event] field')
    event_fields |= set(config.event.optional)
    for spec in config.features.attributes:
        if spec.key not in event_fields:
            raise ConfigError(f'attributes "{spec.name}": key "{spec.key}" is not an [event] field')
        for feature in spec.feature_names() + [f"{spec.name}_{c}" for c in spec.categorical]:
            if feature in names:
                raise ConfigError(f'feature "{feature}" is declared twice')
            names.add(feature)
    if len({spec.name for spec in config.features.attributes}) != len(config.features.attributes):
        raise ConfigError("two [[features.attributes]] tables have the same name")
    for custom in config.features.custom + config.features.model_scores:
        if custom.name in names:
            raise ConfigError(f'feature "{custom.name}" is declared twice')
        names.add(custom.name)
    for name in config.features.numeric:
        if name not in config.event.numeric:
            raise ConfigError(f'[features] numeric "{name}" is not in [event] numeric')
    for name in config.features.categorical:
        if name not in config.event.categorical and name not in config.event.keys:
            raise ConfigError(f'[features] categorical "{name}" is not an [event] field')


def check_label_mapping(schema: EventSchema, explicit_type: bool) -> None:
    """Refuse a label mapping that would read events as labels, labels as events, or a label as a feature."""
    if schema.label_by not in LABEL_BY:
        raise ConfigError(f'[event] label_by "{schema.label_by}" must be "type" (the type field marks label '
                          'events) or "label_id" (an event carrying the label_id field is a label)')
    if schema.label_by == "type" and explicit_type and schema.type_field is None:
        raise ConfigError('[event] label_by = "type" needs a type field; set [event] type, or '
                          'label_by = "label_id" with a label_id field that events do not have')
    values = {*schema.keys, *schema.numeric, *schema.categorical}
    if schema.label_by == "label_id":
        if schema.label_id_field == schema.id_field:
            raise ConfigError(f'[event] label_by = "label_id" needs a label_id field other than the id field '
                              f'"{schema.id_field}" (every event carries that one, so every event would be a label)')
        if schema.label_id_field in values or schema.label_id_field == schema.time_field:
            raise ConfigError(f'[event] label_id "{schema.label_id_field}" is also an event field; with '
                              'label_by = "label_id" every event carrying it would be read as a label')
    if schema.label_field in values or schema.label_field in (schema.id_field, schema.time_field):
        raise ConfigError(f'[event] label "{schema.label_field}" is also an id, time, key or value field; '
                          'the label must be a field of its own (a label used as a feature leaks the answer)')


def _check_metric(task: str, metric: str | None, setting: str) -> None:
    names = METRIC_NAMES.get(task, ())
    if metric is not None and metric not in names:
        raise ConfigError(f'{setting} "{metric}" is not a {task} metric; use one of {", ".join(names)}')


def check_challengers(challengers: tuple[ChallengerSpec, ...], champion: str) -> None:
    """Refuse a `[[model.challenger]]` name the champion, another challenger or drift challengers hold."""
    seen: set[str] = set()
    for index, challenger in enumerate(challengers):
        name = challenger.name
        if name == champion or name in seen or name.startswith("retrain-"):
            raise ConfigError(f'[model.challenger[{index}]] name "{name}" is taken (the champion is "{champion}"; '
                              '"retrain-N" names are for drift challengers)')
        seen.add(name)


def _check_specs(config: Config) -> None:
    """Build each challenger's spec and the drift detector once, so a typo fails at start."""
    from appliance.config.model_spec import build_model, parse_model  # River: loaded only when a config is

    for challenger in config.model.challengers:
        try:
            build_model(challenger.spec, config.model.task)
        except ConfigError as exc:
            raise ConfigError(f'[[model.challenger]] "{challenger.name}": {exc}') from None
    if config.lifecycle.challenger_spec:
        try:
            build_model(config.lifecycle.challenger_spec, config.model.task)
        except ConfigError as exc:
            raise ConfigError(f"[lifecycle] challenger_spec: {exc}") from None
    detector = parse_model(config.lifecycle.drift_detector)
    if not hasattr(detector, "update") or not hasattr(detector, "drift_detected"):
        raise ConfigError(f"[lifecycle] drift_detector {config.lifecycle.drift_detector!r} is not a drift detector")
