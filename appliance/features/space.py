"""The one definition of features, used by predict, by learning and by export.

`FeatureSpace` compiles the `[features]` config once. For an event it computes the feature vector
from the entity state as it was *before* the event (an event never sees itself in its own windows),
then folds the event into that state. Both steps are pure functions of (state, event), so serving,
learning, replay and export agree by construction.

How entity state is laid out and updated (bucketed event-time windows, copy-on-write arrays) lives
in `entity_state.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import mmh3

from appliance.config.file import AggregateSpec, Config, EventSchema, FeatureConfig
from appliance.errors import ConfigError
from appliance.features.attributes import AttributeTable
from appliance.features.custom import CustomFeature, config_dir
from appliance.features.entity_state import KeyLayout, aggregates_into, updated
from appliance.features.expressions import compile_expression
from appliance.features.label_means import LabelMeans
from appliance.features.label_means import feature_names as label_mean_names
from appliance.features.label_rates import LabelRates, feature_names

HASH = "murmur3_32"  # the bucket hash; part of the store's fingerprint (runtime.fingerprint)
HASH_CACHE = 65_536  # hashed names remembered per field; past that the field's cache starts over


def bucket_of(value: str, buckets: int) -> int:
    """Return the hash bucket of a categorical value: MurmurHash3 (32-bit, seed 0), as VW and
    scikit-learn's FeatureHasher use; it spreads short codes that `crc32 % 2**k` put in fixed pairs.

    >>> [bucket_of(code, 128) for code in ("EWR", "JFK", "LGA")]
    [40, 104, 67]
    """
    return mmh3.hash(value, 0, False) % buckets


class FeatureSpace:
    """Compiled feature definitions: `compute` a vector, `update` entity state.

    >>> from appliance.config.file import EventSchema, FeatureConfig, AggregateSpec
    >>> schema = EventSchema(keys=("card",), numeric=("amount",))
    >>> fc = FeatureConfig(numeric=("amount",), aggregates=(
    ...     AggregateSpec("card_n_1h", "card", "count", 3600.0),
    ...     AggregateSpec("card_sum_1h", "card", "sum", 3600.0, "amount")))
    >>> space = FeatureSpace(fc, schema)
    >>> store = space.new_store()
    >>> for t, amount in [(0, 10.0), (60, 5.0)]:
    ...     x = space.compute({"card": "c1", "amount": amount}, t, store)
    ...     space.update({"card": "c1", "amount": amount}, t, store)
    >>> x
    {'amount': 5.0, 'card_n_1h': 1.0, 'card_sum_1h': 10.0}
    """

    def __init__(self, config: FeatureConfig, schema: EventSchema, *, search_dir: str | None = None) -> None:
        self.config = config
        self.schema = schema
        self._hashed: dict[str, dict[str, str]] = {}  # field -> value -> hashed name
        # the engine's label rates (`[features] label_rates`), read here; None: not features
        self.label_rates: LabelRates | None = None
        # the engine's label means per entity key (`[features] label_means`), read here; None: not features
        self.label_means: LabelMeans | None = None
        self.attributes = {spec.name: AttributeTable.empty(spec) for spec in config.attributes}
        self.custom = [CustomFeature(spec.name, spec.function, search_dir) for spec in config.custom]
        self._attribute_columns = {spec.name: (spec.feature_names(), [f"{spec.name}_{c}" for c in spec.categorical])
                                   for spec in config.attributes}
        by_key: dict[str, list[AggregateSpec]] = {}
        for agg in config.aggregates:
            by_key.setdefault(agg.key, []).append(agg)
        self.layouts = {key: KeyLayout(key, aggs, config.buckets_per_window, schema.allowed_lateness,
                                        config.ttl.get(key)) for key, aggs in by_key.items()}
        known = set(config.numeric) | {a.name for a in config.aggregates} | {c.name for c in config.custom}
        for spec in config.attributes:
            known.update(spec.feature_names())
        self.expressions = []
        for spec in config.expressions:
            fn, _ = compile_expression(spec.expr, known)
            self.expressions.append((spec.name, fn))
            known.add(spec.name)
        self.model_scores = [(spec.name, _load_model_score(spec, schema)) for spec in config.model_scores]
        self.names = self._names()
        for spec, (_, model) in zip(config.model_scores, self.model_scores):
            from appliance.learning.onnx_model import check_schema

            try:  # an offline model scores the features computed before it (not model scores)
                check_schema(model, self.names[:len(self.names) - len(self.model_scores)])
            except ConfigError as exc:
                raise ConfigError(f'[[features.model]] "{spec.name}" ({spec.path}): {exc}') from None

    @classmethod
    def for_config(cls, config: Config) -> FeatureSpace:
        """The feature space of a whole config; custom feature modules come from its folder."""
        return cls(config.features, config.event, search_dir=config_dir(config.path))

    def set_attributes(self, table: AttributeTable) -> None:
        """Swap in a version of an attribute table (one assignment: readers see old or new)."""
        self.attributes = {**self.attributes, table.spec.name: table}

    def _names(self) -> list[str]:
        names = list(self.config.numeric)
        if self.config.time_of_day:
            names += ["hour_sin", "hour_cos"]
        names += [f"{field}#{b:0{len(str(self.config.hash_buckets - 1))}d}"
                  for field in self.config.categorical for b in range(self.config.hash_buckets)]
        if self.config.label_rates:
            names += feature_names(self.config.categorical)
        if self.config.label_means:
            names += label_mean_names(self.schema.keys)
        names += [a.name for a in self.config.aggregates]
        for spec in self.config.attributes:
            names += spec.feature_names()
            names += [f"{spec.name}_{column}#{b:0{len(str(self.config.hash_buckets - 1))}d}"
                      for column in spec.categorical for b in range(self.config.hash_buckets)]
        names += [custom.name for custom in self.custom]
        names += [name for name, _ in self.expressions]
        names += [spec.name for spec in self.config.model_scores]
        return names

    def new_store(self) -> dict[str, dict[str, tuple]]:
        """Return an empty entity store: key name -> entity value -> state."""
        return {key: {} for key in self.layouts}

    def compute(self, values: dict[str, Any], ts: float, store: dict[str, dict[str, tuple]] | None,
                logged_rates: dict[str, float] | None = None,
                aggregates: list[dict[str, float] | None] | None = None) -> dict[str, float]:
        """Return the feature vector of an event at event time `ts`, from state before the event.

        `logged_rates`: the label rates and means the event was scored with (the export's; they are
        moved by labels, not events), in place of the live ones, so what follows them (model scores) agrees.
        `aggregates`: each entity key's aggregates (in the order of `layouts`; None for a key the
        event has no entity of), read where that key's state lives (`offline.partitions`), in place
        of reading `store`."""
        x: dict[str, float] = {}
        for name in self.config.numeric:
            value = values.get(name)
            if value is not None:
                x[name] = value
        if self.config.time_of_day:
            angle = (ts % 86400.0) / 86400.0 * 2.0 * math.pi
            x["hour_sin"] = math.sin(angle)
            x["hour_cos"] = math.cos(angle)
        rates = self.label_rates
        onehots: dict[str, str] | None = {} if rates is not None else None
        for name in self.config.categorical:
            value = values.get(name)
            if value is not None:
                hashed = self.hashed_name(name, value)
                x[hashed] = 1.0
                if onehots is not None:
                    onehots[name] = hashed
        if logged_rates is not None:
            x.update(logged_rates)
        else:
            if rates is not None:
                rates.rates_into(x, onehots)
            if self.label_means is not None:
                self.label_means.means_into(x, values)
        if aggregates is None:
            for key, layout in self.layouts.items():
                entity = values.get(key)
                state = store[key].get(entity) if entity is not None else None
                aggregates_into(x, layout, state, ts)
        else:
            for part in aggregates:
                if part is not None:
                    x.update(part)
        for table in self.attributes.values():
            self._attributes_into(x, table, values)
        for custom in self.custom:
            value = custom(values, x)
            if value is not None:
                x[custom.name] = value
        for name, fn in self.expressions:
            value = fn(x)
            if value is not None:
                x[name] = value
        for name, model in self.model_scores:
            x[name] = model.score_one(x)
        return _finite(x)

    def _attributes_into(self, x: dict[str, float], table: AttributeTable, values: dict[str, Any]) -> None:
        entity = values.get(table.spec.key)
        row = table.rows.get(entity if isinstance(entity, str) else str(entity)) if entity is not None else None
        if row is None:
            return  # an entity the table does not know: its attributes are missing
        numeric, categorical = self._attribute_columns[table.spec.name]
        for i, name in enumerate(numeric):
            value = row[i]
            if value is not None:
                x[name] = value
        offset = len(numeric)
        for i, name in enumerate(categorical):
            value = row[offset + i]
            if value is not None:
                x[self.hashed_name(name, value)] = 1.0

    def update(self, values: dict[str, Any], ts: float, store: dict[str, dict[str, tuple]]) -> None:
        """Fold an event into the state of each of its entities (copy-on-write)."""
        for key, layout in self.layouts.items():
            entity = values.get(key)
            if entity is None:
                continue
            entities = store[key]
            old = entities.get(entity)
            entities[entity] = updated(layout, old, values, ts)

    def entity_features(self, key: str, entity: str, ts: float, store: dict) -> tuple[dict[str, float], float | None]:
        """Return one entity's aggregates as of event time `ts`, and the event time it last changed.

        An entity idle for longer than its key's TTL has no state: its values are missing.
        """
        layout = self.layouts.get(key)
        if layout is None:
            return {}, None
        state = store[key].get(entity)
        x: dict[str, float] = {}
        aggregates_into(x, layout, state, ts)
        last = None if state is None or math.isnan(state[0][0]) else state[0][0]
        if last is not None and last < ts - layout.ttl:
            last = None
        return x, last

    def sweep(self, store: dict, watermark: float, ticks: dict[str, int]) -> list[tuple[str, str]]:
        """Evict idle entities of each key once per half TTL of event time; return what went.

        An entity idle past TTL + lateness can be seen by no future event. Only event time
        decides, so a replay evicts exactly what a live run evicts, and since an expired state
        already reads as empty, eviction never changes a feature value. `ticks` remembers the
        last sweep of each key (the caller checkpoints it).
        """
        evicted = []
        for key, layout in self.layouts.items():
            tick = math.floor(watermark / layout.sweep_every)
            if tick <= ticks.get(key, -math.inf):
                continue
            ticks[key] = tick
            horizon = watermark - self.schema.allowed_lateness - layout.ttl
            entities = store[key]
            stale = [entity for entity, (arr, _) in entities.items() if arr[0] < horizon]
            for entity in stale:
                del entities[entity]
                evicted.append((key, entity))
        return evicted

    def hashed_name(self, field: str, value: str) -> str:
        """Return the one-hot feature name of a categorical value, by a stable hash (cached)."""
        cache = self._hashed.get(field)
        if cache is None:
            cache = self._hashed[field] = {}
        name = cache.get(value)
        if name is None:
            if len(cache) >= HASH_CACHE:
                cache.clear()
            buckets = self.config.hash_buckets
            name = cache[value] = f"{field}#{bucket_of(value, buckets):0{len(str(buckets - 1))}d}"
        return name

    def entity_count(self, store: dict) -> int:
        """Return how many entities the store holds, over all keys."""
        return sum(len(entities) for entities in store.values())

    def iter_states(self, store: dict) -> Iterator[tuple[str, str, tuple]]:
        for key, entities in store.items():
            for entity, state in entities.items():
                yield key, entity, state


def _load_model_score(spec: Any, schema: EventSchema) -> Any:
    from appliance.learning.onnx_model import load_onnx_file, read_feature_list

    features = read_feature_list(spec.features) if spec.features else None
    try:
        return load_onnx_file(spec.path, features, None)
    except ConfigError as exc:
        raise ConfigError(f'[[features.model]] "{spec.name}": {exc}') from None


def _finite(x: dict[str, float]) -> dict[str, float]:
    """Drop NaN and infinite values (a custom feature's, or a sum that overflowed): missing, not poison.

    A feature vector is logged as JSON, where they have no spelling; dropping them here keeps what
    is served, logged and learned the same vector. One sum finds them; a clean vector costs nothing more.
    """
    try:
        if math.isfinite(sum(x.values())):
            return x
    except TypeError:  # a custom feature that is not a number: not ours to judge
        return x
    return {name: value for name, value in x.items()
            if not isinstance(value, float) or math.isfinite(value)}

