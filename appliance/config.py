"""The appliance's configuration: `appliance.toml` parsed into frozen dataclasses.

Every section has defaults, so a config only says what differs. `load_config` validates names and
types and raises `ConfigError` naming the exact key on anything wrong.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .lifecycle_config import ChallengerSpec, Lifecycle, parse_challengers, parse_lifecycle
from .rings import check_rings
from .timeutil import parse_duration

AGGREGATE_OPS = ("count", "sum", "mean", "min", "max", "std", "distinct", "last", "since", "rate")
TASKS = ("classification", "regression")
LABEL_BY = ("type", "label_id")  # how a label event is recognised: its type field, or carrying label_id


@dataclass(frozen=True)
class EventSchema:
    """Where an event keeps its id, time, type, label, entity keys and value fields.

    A label event names its prediction's event by `label_id_field` and carries its own time in
    `label_time_field`; both default (empty) to the events' `id_field` and `time_field`. It is
    recognised by `type_field` == `label_type` (`label_by = "type"`), or by carrying
    `label_id_field` at all (`label_by = "label_id"`, for label streams with no type field).
    """

    id_field: str = "event_id"
    time_field: str = "ts"
    type_field: str | None = "type"
    label_type: str = "label"
    label_field: str = "label"
    keys: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    allowed_lateness: float = 300.0
    label_id_field: str = ""
    label_time_field: str = ""
    label_by: str = "type"

    def __post_init__(self) -> None:
        if not self.label_id_field:
            object.__setattr__(self, "label_id_field", self.id_field)
        if not self.label_time_field:
            object.__setattr__(self, "label_time_field", self.time_field)
    # Out of repr, so out of the checkpoint's fingerprint: it changes what is refused, not state.
    max_future_skew: float = field(default=86400.0, repr=False)


@dataclass(frozen=True)
class AggregateSpec:
    """One per-key aggregate over a trailing event-time window, e.g. rides per card over 10m."""

    name: str
    key: str
    op: str
    window: float
    field: str | None = None


@dataclass(frozen=True)
class ExpressionSpec:
    """A feature computed by arithmetic over other features and fields."""

    name: str
    expr: str


@dataclass(frozen=True)
class AttributeSpec:
    """A CSV of static attributes per entity, joined to events by one of their fields."""

    name: str
    key: str
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    key_column: str = ""
    path: str = field(default="", compare=False, repr=False)  # where it is read from is not what it means

    def feature_names(self) -> list[str]:
        return [f"{self.name}_{column}" for column in self.numeric]


@dataclass(frozen=True)
class CustomSpec:
    """A feature computed by a Python function `module:function` of (event, features)."""

    name: str
    function: str


@dataclass(frozen=True)
class ModelScoreSpec:
    """A feature that is an offline (ONNX) model's score over the other features."""

    name: str
    path: str
    features: str | None = None  # a file listing the model's input features [default: its metadata]


@dataclass(frozen=True)
class FeatureConfig:
    """The declared features: passthrough fields, hashed categoricals, aggregates, expressions."""

    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    hash_buckets: int = 128  # up to 13 values per field share a bucket less than 10% of the time
    time_of_day: bool = False
    buckets_per_window: int = 6
    aggregates: tuple[AggregateSpec, ...] = ()
    expressions: tuple[ExpressionSpec, ...] = ()
    ttl: dict[str, float] = field(default_factory=dict)
    attributes: tuple[AttributeSpec, ...] = ()
    custom: tuple[CustomSpec, ...] = ()
    model_scores: tuple[ModelScoreSpec, ...] = ()
    # each categorical's label rate so far, and the recent one, as features. Out of repr, so a store
    # built before the key existed keeps its fingerprint; runtime.fingerprint adds it when it is on.
    label_rates: bool = field(default=False, repr=False)


@dataclass(frozen=True)
class LabelPolicy:
    """How long a prediction waits for its label, and what it learns when none comes."""

    horizon: float | None = None
    default: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    """The online model and when its learner is published to serving."""

    task: str = "classification"
    spec: str | None = None
    publish_every: int = 25  # labels between checks at most (every n/100 while the learner has n labels)
    publish_interval: float | None = None  # event-time seconds between checks, besides every N labels
    publish_margin: float = 0.01  # in the gate metric's units
    first_publish: int = 1  # labels after which the learner replaces the untrained first version, ungated
    gate_metric: str | None = None  # the gate's metric (None: metrics.GATE, log loss or MAE)
    metric_window: int = 1000
    challengers: tuple[ChallengerSpec, ...] = ()


CHAMPION = "main"  # the name of the [model] spec's learner among the candidates

RETAINED_TABLES = ("events", "predictions", "labels", "dead_letters", "metrics")


@dataclass(frozen=True)
class Retention:
    """How much event time of history each table keeps (None: forever). Models are always kept."""

    events: float | None = 90 * 86400.0
    predictions: float | None = 90 * 86400.0
    labels: float | None = 90 * 86400.0
    dead_letters: float | None = 90 * 86400.0
    metrics: float | None = None

    def as_dict(self) -> dict[str, float]:
        """Return {table: seconds kept} for the tables that are pruned."""
        return {name: getattr(self, name) for name in RETAINED_TABLES if getattr(self, name) is not None}


@dataclass(frozen=True)
class Config:
    """Everything `appliance up` and `appliance replay` need."""

    source: str = "sample"
    speed: float = 0.0
    event: EventSchema = EventSchema()
    features: FeatureConfig = FeatureConfig()
    labels: LabelPolicy = LabelPolicy()
    model: ModelConfig = ModelConfig()
    socket: str = "appliance.sock"
    db: str = "appliance.db"
    checkpoint_seconds: float = 5.0
    retention: Retention = Retention()
    lifecycle: Lifecycle = Lifecycle()
    path: str | None = None

    def with_overrides(self, **changes: Any) -> Config:
        """Return a copy with the non-None keyword arguments applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def load_config(path: str | Path) -> Config:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f'config file "{path}" not found; create one with "appliance init"') from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f'config file "{path}" is not valid TOML: {exc}') from None
    return config_from_dict(data, base_dir=path.parent, path=str(path))


def config_from_dict(data: dict[str, Any], *, base_dir: Path | None = None, path: str | None = None) -> Config:
    """Build a `Config` from parsed TOML; relative source paths resolve against `base_dir`."""
    _only(data, "", {"source", "event", "features", "labels", "model", "serve", "checkpoint",
                    "retention", "lifecycle"})
    source_table = _table(data, "source")
    serve = _table(data, "serve")
    _only(source_table, "source", {"spec", "speed"})
    _only(serve, "serve", {"socket", "db"})
    source = str(source_table.get("spec", "sample"))
    if base_dir is not None and _is_relative_file(source):
        source = str((base_dir / source).resolve()) if (base_dir / source).exists() else source
    event = _event_schema(_table(data, "event"))
    features = _feature_config(_table(data, "features"), event, base_dir)
    config = Config(
        source=source,
        speed=_number(source_table, "source.speed", 0.0),
        event=event,
        features=features,
        labels=_label_policy(_table(data, "labels")),
        model=_model_config(_table(data, "model")),
        socket=str(serve.get("socket", "appliance.sock")),
        db=str(serve.get("db", "appliance.db")),
        checkpoint_seconds=parse_duration(_table(data, "checkpoint").get("every", 5.0)),
        retention=_retention(_table(data, "retention")),
        lifecycle=parse_lifecycle(_table(data, "lifecycle")),
        path=path,
    )
    validate_config(config)
    return config


def validate_config(config: Config) -> None:
    """Check cross-references: aggregates name declared keys, features have unique names."""
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
    if config.model.task not in TASKS:
        raise ConfigError(f'[model] task "{config.model.task}" must be one of {", ".join(TASKS)}')
    check_rings(config.features.aggregates, config.features.buckets_per_window, config.event.allowed_lateness)
    _check_lifecycle(config)


def _check_lifecycle(config: Config) -> None:
    """Build each challenger's spec and the drift detector once, so a typo fails at start."""
    from .model_spec import build_model, parse_model

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


def _event_schema(table: dict[str, Any]) -> EventSchema:
    allowed = {"id", "time", "type", "label_type", "label", "keys", "numeric", "categorical",
               "optional", "bounds", "allowed_lateness", "label_id", "label_time", "label_by",
               "max_future_skew"}
    _only(table, "event", allowed)
    bounds: dict[str, tuple[float | None, float | None]] = {}
    for name, pair in _table(table, "bounds").items():
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f'[event.bounds] "{name}" must be [min, max]; use "inf" for no limit')
        bounds[name] = (_bound(pair[0]), _bound(pair[1]))
    type_field = table.get("type", "type")
    schema = EventSchema(
        id_field=_field_name(table, "id", "event_id"),
        time_field=_field_name(table, "time", "ts"),
        type_field=str(type_field) if type_field else None,
        label_type=str(table.get("label_type", "label")),
        label_field=_field_name(table, "label", "label"),
        keys=_names(table, "event.keys"),
        numeric=_names(table, "event.numeric"),
        categorical=_names(table, "event.categorical"),
        optional=_names(table, "event.optional"),
        bounds=bounds,
        allowed_lateness=parse_duration(table.get("allowed_lateness", "5m")),
        label_id_field=_field_name(table, "label_id", "") if "label_id" in table else "",
        label_time_field=_field_name(table, "label_time", "") if "label_time" in table else "",
        label_by=str(table.get("label_by", "type")),
        max_future_skew=parse_duration(table.get("max_future_skew", "1d")),
    )
    _check_label_mapping(schema, explicit_type="label_by" in table)
    return schema


def _field_name(table: dict[str, Any], key: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f'[event] {key} must be a field name (a non-empty string), got {value!r}')
    return value


def _check_label_mapping(schema: EventSchema, explicit_type: bool) -> None:
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


def _feature_config(table: dict[str, Any], event: EventSchema, base_dir: Path | None) -> FeatureConfig:
    _only(table, "features", {"numeric", "categorical", "hash_buckets", "time_of_day",
                              "buckets_per_window", "aggregate", "expression", "ttl", "attributes", "custom",
                          "model", "label_rates"})
    ttl = {str(key): parse_duration(value) for key, value in _table(table, "ttl").items()}
    for key, value in ttl.items():
        if key not in event.keys:
            raise ConfigError(f'[features.ttl] "{key}" is not in [event] keys')
        if value <= 0:
            raise ConfigError(f'[features.ttl] "{key}" must be a positive duration such as "7d"')
    aggregates = tuple(_aggregate(item, i) for i, item in enumerate(table.get("aggregate", [])))
    expressions = tuple(
        ExpressionSpec(name=str(_require(item, f"features.expression[{i}]", "name")),
                       expr=str(_require(item, f"features.expression[{i}]", "expr")))
        for i, item in enumerate(table.get("expression", []))
    )
    buckets = int(table.get("buckets_per_window", 6))
    hash_buckets = int(table.get("hash_buckets", FeatureConfig.hash_buckets))
    if not 1 <= buckets <= 64:
        raise ConfigError("[features] buckets_per_window must be between 1 and 64")
    if not 1 <= hash_buckets <= 4096:
        raise ConfigError("[features] hash_buckets must be between 1 and 4096")
    if not isinstance(table.get("label_rates", False), bool):
        raise ConfigError("[features] label_rates must be true or false")
    return FeatureConfig(
        numeric=_names(table, "features.numeric") if "numeric" in table else event.numeric,
        categorical=_names(table, "features.categorical") if "categorical" in table else event.categorical,
        hash_buckets=hash_buckets,
        time_of_day=bool(table.get("time_of_day", False)),
        label_rates=bool(table.get("label_rates", False)),
        buckets_per_window=buckets,
        aggregates=aggregates,
        expressions=expressions,
        ttl=ttl,
        attributes=tuple(_attributes(item, i, base_dir) for i, item in enumerate(table.get("attributes", []))),
        custom=tuple(_custom(item, i) for i, item in enumerate(table.get("custom", []))),
        model_scores=tuple(_model_score(item, i, base_dir) for i, item in enumerate(table.get("model", []))),
    )


def _model_score(item: dict[str, Any], index: int, base_dir: Path | None) -> ModelScoreSpec:
    where = f"features.model[{index}]"
    _only(item, where, {"name", "path", "features"})

    def located(value: Any) -> str:
        path = Path(str(value))
        return str((base_dir / path).resolve()) if base_dir is not None and not path.is_absolute() else str(path)

    return ModelScoreSpec(name=str(_require(item, where, "name")), path=located(_require(item, where, "path")),
                          features=located(item["features"]) if item.get("features") else None)


def _attributes(item: dict[str, Any], index: int, base_dir: Path | None) -> AttributeSpec:
    where = f"features.attributes[{index}]"
    _only(item, where, {"name", "key", "path", "column", "numeric", "categorical"})
    name = str(_require(item, where, "name"))
    if not name.isidentifier():
        raise ConfigError(f'[{where}] name "{name}" must be a plain identifier such as "driver"')
    path = str(_require(item, where, "path"))
    if base_dir is not None and not Path(path).is_absolute():
        path = str((base_dir / path).resolve())
    key = str(_require(item, where, "key"))
    numeric, categorical = _names(item, f"{where}.numeric"), _names(item, f"{where}.categorical")
    if not numeric and not categorical:
        raise ConfigError(f"[{where}] declares no columns: list some under numeric or categorical")
    return AttributeSpec(name=name, key=key, numeric=numeric, categorical=categorical,
                         key_column=str(item.get("column", key)), path=path)


def _custom(item: dict[str, Any], index: int) -> CustomSpec:
    where = f"features.custom[{index}]"
    _only(item, where, {"name", "function"})
    return CustomSpec(name=str(_require(item, where, "name")), function=str(_require(item, where, "function")))


def _aggregate(item: dict[str, Any], index: int) -> AggregateSpec:
    where = f"features.aggregate[{index}]"
    _only(item, where, {"name", "key", "op", "window", "field"})
    op = str(_require(item, where, "op"))
    if op not in AGGREGATE_OPS:
        raise ConfigError(f'[{where}] op "{op}" must be one of {", ".join(AGGREGATE_OPS)}')
    needs_field = op not in ("count", "since", "rate")
    field_name = item.get("field")
    if needs_field and field_name is None:
        raise ConfigError(f'[{where}] op "{op}" needs a "field"')
    window = item.get("window")
    if window is None and op not in ("last", "since"):
        raise ConfigError(f'[{where}] op "{op}" needs a "window" such as "1h"')
    return AggregateSpec(
        name=str(_require(item, where, "name")),
        key=str(_require(item, where, "key")),
        op=op,
        window=parse_duration(window) if window is not None else 0.0,
        field=str(field_name) if field_name is not None else None,
    )


def _label_policy(table: dict[str, Any]) -> LabelPolicy:
    _only(table, "labels", {"horizon", "default"})
    horizon = table.get("horizon")
    default = table.get("default", "drop")
    if default != "drop" and not isinstance(default, (int, float)):
        raise ConfigError('[labels] default must be a number or "drop"')
    return LabelPolicy(
        horizon=parse_duration(horizon) if horizon is not None else None,
        default=None if default == "drop" else float(default),
    )


def _retention(table: dict[str, Any]) -> Retention:
    _only(table, "retention", {"keep", *RETAINED_TABLES})
    default = Retention()

    def keep(name: str, fallback: float | None) -> float | None:
        value = table.get(name, table.get("keep", None) if name != "metrics" else None)
        if value is None:
            return fallback
        if value == "forever":
            return None
        seconds = parse_duration(value)
        if seconds <= 0:
            raise ConfigError(f'[retention] {name} must be a positive duration such as "30d", or "forever"')
        return seconds

    return Retention(**{name: keep(name, getattr(default, name)) for name in RETAINED_TABLES})


def _model_config(table: dict[str, Any]) -> ModelConfig:
    _only(table, "model", {"task", "spec", "publish_every", "publish_interval", "publish_margin", "metric_window",
                           "first_publish", "gate_metric", "challenger"})
    from .metrics import metric_names  # River's metrics: loaded only when a config is

    default = ModelConfig()
    task = str(table.get("task", default.task))
    gate_metric = str(table["gate_metric"]) if table.get("gate_metric") else None
    if gate_metric is not None and task in TASKS and gate_metric not in metric_names(task):
        raise ConfigError(f'[model] gate_metric "{gate_metric}" is not a {task} metric; '
                          f'use one of {", ".join(metric_names(task))}')
    publish_every, first_publish = (int(table.get(key, getattr(default, key))) for key in ("publish_every",
                                                                                            "first_publish"))
    if publish_every < 1 or first_publish < 1:
        raise ConfigError("[model] publish_every and first_publish must be at least 1")
    return ModelConfig(
        task=task,
        spec=str(table["spec"]) if table.get("spec") else None,
        publish_every=publish_every,
        publish_interval=parse_duration(table["publish_interval"]) if table.get("publish_interval") else None,
        publish_margin=float(table.get("publish_margin", default.publish_margin)),
        metric_window=int(table.get("metric_window", default.metric_window)),
        first_publish=first_publish,
        gate_metric=gate_metric,
        challengers=parse_challengers(table.get("challenger"), CHAMPION),
    )


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f'"{name}" must be a table ([{name}])')
    return value


def _only(table: dict[str, Any], where: str, allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise ConfigError(f'unknown key "{key}" in [{where or "top level"}]; known keys: {known}')


def _require(table: dict[str, Any], where: str, key: str) -> Any:
    if key not in table:
        raise ConfigError(f'[{where}] needs "{key}"')
    return table[key]


def _names(table: dict[str, Any], where: str) -> tuple[str, ...]:
    value = table.get(where.rsplit(".", 1)[-1], [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[{where.rsplit('.', 1)[0]}] {where.rsplit('.', 1)[-1]} must be a list of names")
    return tuple(value)


def _number(table: dict[str, Any], where: str, default: float) -> float:
    key = where.rsplit(".", 1)[-1]
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"[{where.rsplit('.', 1)[0]}] {key} must be a non-negative number")
    return float(value)


def _bound(value: Any) -> float | None:
    if value in ("inf", "-inf", None):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"bound {value!r} must be a number or \"inf\"")
    return float(value)


def _is_relative_file(source: str) -> bool:
    return source not in ("-", "sample") and ":" not in source and not Path(source).is_absolute()
