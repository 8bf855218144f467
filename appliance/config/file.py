"""The appliance's configuration: `appliance.toml` parsed into frozen dataclasses.

Every section has defaults, so a config only says what differs. The dataclasses are the schema: each
field's default, type (`config.fields`) and key in the file are written once; `load_config` validates a
file against them with pydantic (`config.schema`), checks cross-references (`config.checks`) and
raises `ConfigError` naming the exact key on anything wrong.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

from appliance.config.checks import LABEL_BY, TASKS, validate_config  # noqa: F401 (LABEL_BY, TASKS: public names)
from appliance.config.fields import (
    AtLeastOne,
    Bounds,
    ByteSize,
    CacheSize,
    Duration,
    FieldName,
    FilePath,
    Flag,
    Identifier,
    Kept,
    LabelDefault,
    Names,
    NoneAsEmpty,
    NonNegative,
    Number,
    OptionalDuration,
    OptionalFilePath,
    OptionalText,
    PositiveDuration,
    PositiveWhole,
    RequiredPath,
    ReserveSize,
    Tables,
    Text,
    Whole,
    between,
    choice,
    file_key,
    table,
)
from appliance.config.lifecycle import ChallengerSpec, Lifecycle
from appliance.config.schema import dump_document, parse_document
from appliance.errors import ConfigError

AGGREGATE_OPS = ("count", "sum", "mean", "min", "max", "std", "distinct", "last", "since", "rate")


@table
@dataclass(frozen=True)
class EventSchema:
    """Where an event keeps its id, time, type, label, entity keys and value fields.

    A label event names its prediction's event by `label_id_field` and carries its own time in
    `label_time_field`; both default (empty) to the events' `id_field` and `time_field`. It is
    recognised by `type_field` == `label_type` (`label_by = "type"`), or by carrying
    `label_id_field` at all (`label_by = "label_id"`, for label streams with no type field).
    """

    id_field: Annotated[FieldName, file_key("id")] = "event_id"
    time_field: Annotated[FieldName, file_key("time")] = "ts"
    type_field: Annotated[OptionalText, file_key("type"), NoneAsEmpty] = "type"  # "" in the file: no type field
    label_type: Text = "label"
    label_field: Annotated[FieldName, file_key("label")] = "label"
    keys: Names = ()
    numeric: Names = ()
    categorical: Names = ()
    optional: Names = ()
    bounds: Bounds = field(default_factory=dict)
    allowed_lateness: Duration = 300.0
    label_id_field: Annotated[FieldName, file_key("label_id")] = ""
    label_time_field: Annotated[FieldName, file_key("label_time")] = ""
    label_by: Text = "type"

    def __post_init__(self) -> None:
        if not self.label_id_field:
            object.__setattr__(self, "label_id_field", self.id_field)
        if not self.label_time_field:
            object.__setattr__(self, "label_time_field", self.time_field)
    # Out of repr, so out of the checkpoint's fingerprint: it changes what is refused, not state.
    max_future_skew: Duration = field(default=86400.0, repr=False)


@table
@dataclass(frozen=True)
class AggregateSpec:
    """One per-key aggregate over a trailing event-time window, e.g. rides per card over 10m."""

    name: Text
    key: Text
    op: Annotated[Text, choice(AGGREGATE_OPS)]
    window: Duration = 0.0  # none for "last" and "since"
    field: Text | None = None


@table
@dataclass(frozen=True)
class ExpressionSpec:
    """A feature computed by arithmetic over other features and fields."""

    name: Text
    expr: Text


@table
@dataclass(frozen=True)
class AttributeSpec:
    """A CSV of static attributes per entity, joined to events by one of their fields."""

    name: Identifier
    key: Text
    numeric: Names = ()
    categorical: Names = ()
    key_column: Annotated[Text, file_key("column")] = ""  # "" in a config: the same name as `key`
    path: RequiredPath = field(default="", compare=False, repr=False)  # where it is read from is not what it means

    def feature_names(self) -> list[str]:
        return [f"{self.name}_{column}" for column in self.numeric]


@table
@dataclass(frozen=True)
class CustomSpec:
    """A feature computed by a Python function `module:function` of (event, features)."""

    name: Text
    function: Text


@table
@dataclass(frozen=True)
class ModelScoreSpec:
    """A feature that is an offline (ONNX) model's score over the other features."""

    name: Text
    path: FilePath
    features: OptionalFilePath = None  # a file listing the model's input features [default: its metadata]


@table
@dataclass(frozen=True)
class FeatureConfig:
    """The declared features: passthrough fields, hashed categoricals, aggregates, expressions."""

    numeric: Names = ()  # absent from a config: the [event] numeric fields
    categorical: Names = ()  # absent from a config: the [event] categorical fields
    hash_buckets: Annotated[Whole, between(1, 4096)] = 128  # up to 13 values per field share a bucket <10% of the time
    time_of_day: Flag = False
    buckets_per_window: Annotated[Whole, between(1, 64)] = 6
    aggregates: Annotated[Tables[AggregateSpec], file_key("aggregate")] = ()
    expressions: Annotated[Tables[ExpressionSpec], file_key("expression")] = ()
    ttl: dict[str, PositiveDuration] = field(default_factory=dict)
    attributes: Tables[AttributeSpec] = ()
    custom: Tables[CustomSpec] = ()
    model_scores: Annotated[Tables[ModelScoreSpec], file_key("model")] = ()
    # each categorical's label rate so far, and the recent one, as features. Out of repr, so a store
    # built before the key existed keeps its fingerprint; runtime.fingerprint adds it when it is on.
    label_rates: Flag = field(default=False, repr=False)
    # each entity key's smoothed label mean so far (features/label_means.py); out of repr as label_rates
    label_means: Flag = field(default=False, repr=False)


@table
@dataclass(frozen=True)
class LabelPolicy:
    """How long a prediction waits for its label, and what it learns when none comes."""

    horizon: OptionalDuration = None  # none: label_join's DEFAULT_HORIZON
    default: LabelDefault = None  # "drop" in the file


@table
@dataclass(frozen=True)
class ModelConfig:
    """The online model and when its learner is published to serving."""

    task: Text = "classification"
    spec: OptionalText = None
    publish_every: AtLeastOne = 25  # labels between checks at most (every n/100 while the learner has n labels)
    publish_interval: OptionalDuration = None  # event-time seconds between checks, besides every N labels
    publish_margin: Number = 0.01  # in the gate metric's units
    first_publish: AtLeastOne = 1  # labels after which the learner replaces the untrained first version, ungated
    gate_metric: OptionalText = None  # the gate's metric (None: metrics.GATE, log loss or MAE)
    follow: Flag = True  # between checks, the published version's lineage serves as it learns (learning.online_model)
    metric_window: Whole = 1000
    challengers: Annotated[Tables[ChallengerSpec], file_key("challenger")] = ()


CHAMPION = "main"  # the name of the [model] spec's learner among the candidates

STORE_CACHE = 256 << 20  # [serve] store_cache: see docs/config.md and docs/benchmarks.md

RETAINED_TABLES = ("events", "predictions", "labels", "dead_letters", "metrics")


@table
@dataclass(frozen=True)
class Retention:
    """How much event time of history each table keeps (None: "forever"). Models are always kept.

    In the file, `keep` sets every table but metrics at once; a table's own key wins over it.
    """

    events: Kept = 90 * 86400.0
    predictions: Kept = 90 * 86400.0
    labels: Kept = 90 * 86400.0
    dead_letters: Kept = 90 * 86400.0
    metrics: Kept = None
    # The store's size bound in bytes (None: "auto", derived from the disk's free space at start by
    # appliance.storage.disk.default_max_bytes); past it the oldest rows go first.
    max_bytes: ByteSize = None
    # Free bytes on the store's disk under which writes are refused with `disk_low` (twice that:
    # health degraded). None: "auto", 5 % of the disk, at most 1 GiB; 0: never refuse (the last line
    # is then the store writer's retries on a full disk).
    disk_reserve: ReserveSize = None
    # The newest published model versions whose model bytes the registry keeps (older versions keep
    # their row and metrics; what can still serve is always kept: storage.registry.thin_models).
    keep_models: PositiveWhole = 20

    def as_dict(self) -> dict[str, float]:
        """Return {table: seconds kept} for the tables that are pruned."""
        return {name: getattr(self, name) for name in RETAINED_TABLES if getattr(self, name) is not None}


@table
@dataclass(frozen=True)
class SourceTable:
    """`[source]`: where events come from and how fast they are replayed."""

    spec: Text = "sample"  # a file (relative to the config file), "-" for stdin, river:NAME or "sample"
    speed: NonNegative = 0.0


@table
@dataclass(frozen=True)
class ServeTable:
    """`[serve]`: the socket and the store."""

    socket: Text = "appliance.sock"
    db: Text = "appliance.db"
    # The store writer's page cache (SQLite's cache_size): an upper bound, allocated as pages are read.
    store_cache: CacheSize = STORE_CACHE


@table
@dataclass(frozen=True)
class CheckpointTable:
    """`[checkpoint]`: how often the engine's state is saved."""

    every: Duration = 5.0


@table
@dataclass(frozen=True)
class ConfigFile:
    """`appliance.toml` as written: one field per table. `Config` is what the rest of the code reads."""

    source: SourceTable = SourceTable()
    event: EventSchema = EventSchema()
    features: FeatureConfig = FeatureConfig()
    labels: LabelPolicy = LabelPolicy()
    model: ModelConfig = ModelConfig()
    serve: ServeTable = ServeTable()
    checkpoint: CheckpointTable = CheckpointTable()
    retention: Retention = Retention()
    lifecycle: Lifecycle = Lifecycle()  # noqa: RUF009 (frozen: one shared default is safe)


FILE_ONLY_KEYS = {"retention": ("keep",)}  # read before validation: keys no dataclass field holds


@dataclass(frozen=True)
class Config:
    """Everything `appliance up` and `appliance replay` need."""

    source: str = SourceTable.spec
    speed: float = SourceTable.speed
    event: EventSchema = EventSchema()
    features: FeatureConfig = FeatureConfig()
    labels: LabelPolicy = LabelPolicy()
    model: ModelConfig = ModelConfig()
    socket: str = ServeTable.socket
    db: str = ServeTable.db
    store_cache: int = ServeTable.store_cache
    checkpoint_seconds: float = CheckpointTable.every
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
    """Build a `Config` from parsed TOML; relative paths resolve against `base_dir`."""
    data = _spread_keep(data)
    document = parse_document(ConfigFile, data, context={"base_dir": base_dir}, extra_keys=FILE_ONLY_KEYS)
    source = document.source.spec
    if base_dir is not None and _is_relative_file(source):
        source = str((base_dir / source).resolve()) if (base_dir / source).exists() else source
    features, event = document.features, document.event
    given = data.get("features", {})
    features = replace(features, numeric=features.numeric if "numeric" in given else event.numeric,
                       categorical=features.categorical if "categorical" in given else event.categorical,
                       attributes=tuple(replace(spec, key_column=spec.key_column or spec.key)
                                        for spec in features.attributes))
    config = Config(
        source=source,
        speed=document.source.speed,
        event=event,
        features=features,
        labels=document.labels,
        model=document.model,
        socket=document.serve.socket,
        db=document.serve.db,
        store_cache=document.serve.store_cache,
        checkpoint_seconds=document.checkpoint.every,
        retention=document.retention,
        lifecycle=document.lifecycle,
        path=path,
    )
    validate_config(config, champion=CHAMPION, label_by_given="label_by" in data.get("event", {}))
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Return `config` as the tables of a file that loads back to an equal `Config`.

    Paths come out as resolved and durations in seconds; `config_from_dict` reads them as they are.
    """
    document = ConfigFile(
        source=SourceTable(spec=config.source, speed=config.speed),
        event=config.event,
        features=config.features,
        labels=config.labels,
        model=config.model,
        serve=ServeTable(socket=config.socket, db=config.db),
        checkpoint=CheckpointTable(every=config.checkpoint_seconds),
        retention=config.retention,
        lifecycle=config.lifecycle,
    )
    return dump_document(ConfigFile, document)


def _spread_keep(data: dict[str, Any]) -> dict[str, Any]:
    """Return `data` with `[retention] keep` written out for each table it covers (not metrics)."""
    retention = data.get("retention")
    if not isinstance(retention, dict) or "keep" not in retention:
        return data
    table = {name: retention["keep"] for name in RETAINED_TABLES if name != "metrics"}
    table.update((name, value) for name, value in retention.items() if name != "keep")
    return {**data, "retention": table}


def _is_relative_file(source: str) -> bool:
    return source not in ("-", "sample") and ":" not in source and not Path(source).is_absolute()
