"""The one definition of features, used by predict, by learning and by export.

`FeatureSpace` compiles the `[features]` config once. For an event it computes the feature vector
from the entity state as it was *before* the event (an event never sees itself in its own windows),
then folds the event into that state. Both steps are pure functions of (state, event), so serving,
learning, replay and export agree by construction.

Windows are hopping buckets in event time: a window W with B buckets has hop h = W / B, and at time
t it covers the buckets floor(t/h) - B + 1 .. floor(t/h), i.e. between (B-1)·h and B·h of history.
Per entity and key the state is one compact `array('d')` (plus a small tuple for distinct counts),
replaced on every update, never mutated in place: a reader on another thread (the socket server)
always sees a consistent state without a lock.
"""

from __future__ import annotations

import math
import zlib
from array import array
from dataclasses import dataclass
from typing import Any, Iterator

from .attributes import AttributeTable
from .config import AggregateSpec, Config, EventSchema, FeatureConfig
from .custom_features import CustomFeature, config_dir
from .expressions import compile_expression

NAN = math.nan
DEFAULT_TTL = 86400.0  # an entity key whose aggregates have no window (since, last) forgets after a day
DISTINCT_CAP = 128  # (value, bucket) pairs kept per distinct count; beyond, the oldest go (a lower bound)
_STAT_OPS = {"count": (), "rate": (), "sum": ("sum",), "mean": ("sum",), "std": ("sum", "sumsq"),
             "min": ("min",), "max": ("max",)}


@dataclass
class _Slot:
    """A ring of buckets for one (field, window) on one key: [bid, count, stats...] per bucket.

    The window spans `buckets` buckets; the ring keeps `ring` >= `buckets` of them, the extra ones
    covering the allowed lateness, so an out-of-order event still sees its whole window.
    """

    field: str | None
    window: float
    buckets: int
    offset: int
    stats: tuple[str, ...]
    ring: int = 0

    @property
    def hop(self) -> float:
        return self.window / self.buckets

    @property
    def stride(self) -> int:
        return 2 + len(self.stats)


@dataclass
class _DistinctSlot:
    field: str
    window: float
    buckets: int
    index: int
    ring: int = 0

    @property
    def hop(self) -> float:
        return self.window / self.buckets


class _KeyLayout:
    """Where each aggregate of one entity key lives in that key's state array."""

    def __init__(self, key: str, aggregates: list[AggregateSpec], buckets: int, lateness: float,
                 ttl: float | None) -> None:
        self.key = key
        self.aggregates = aggregates
        longest = max((a.window for a in aggregates), default=0.0)
        self.ttl = ttl if ttl is not None else (longest if longest > 0 else DEFAULT_TTL)
        self.sweep_every = max(300.0, self.ttl / 2)
        self.last_fields = sorted({a.field for a in aggregates if a.op == "last" and a.field})
        self.last_offset = {name: 1 + i for i, name in enumerate(self.last_fields)}
        size = 1 + len(self.last_fields)
        self.slots: dict[tuple[str | None, float], _Slot] = {}
        self.distinct: dict[tuple[str, float], _DistinctSlot] = {}
        for agg in aggregates:
            if agg.op in _STAT_OPS:
                slot_key = (agg.field if agg.op not in ("count", "rate") else None, agg.window)
                slot = self.slots.get(slot_key)
                stats = set(_STAT_OPS[agg.op]) | (set(slot.stats) if slot else set())
                ring = _ring_size(agg.window, buckets, lateness)
                self.slots[slot_key] = _Slot(slot_key[0], agg.window, buckets, 0, tuple(sorted(stats)), ring)
            elif agg.op == "distinct":
                dkey = (agg.field, agg.window)
                ring = _ring_size(agg.window, buckets, lateness)
                self.distinct.setdefault(dkey, _DistinctSlot(agg.field, agg.window, buckets, len(self.distinct), ring))
        for slot in self.slots.values():
            slot.offset = size
            size += slot.ring * slot.stride
        self.size = size
        self.blank = array("d", [0.0]) * size
        for i in range(1 + len(self.last_fields)):
            self.blank[i] = NAN  # last event time, then the last value of each `last` field
        for slot in self.slots.values():
            for i in range(slot.ring):
                self.blank[slot.offset + i * slot.stride] = -math.inf
        self.blank_distinct: tuple = tuple(() for _ in self.distinct)


class FeatureSpace:
    """Compiled feature definitions: `compute` a vector, `update` entity state.

    >>> from appliance.config import EventSchema, FeatureConfig, AggregateSpec
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
        self.attributes = {spec.name: AttributeTable.empty(spec) for spec in config.attributes}
        self.custom = [CustomFeature(spec.name, spec.function, search_dir) for spec in config.custom]
        self._attribute_columns = {spec.name: (spec.feature_names(), [f"{spec.name}_{c}" for c in spec.categorical])
                                   for spec in config.attributes}
        by_key: dict[str, list[AggregateSpec]] = {}
        for agg in config.aggregates:
            by_key.setdefault(agg.key, []).append(agg)
        self.layouts = {key: _KeyLayout(key, aggs, config.buckets_per_window, schema.allowed_lateness,
                                        config.ttl.get(key)) for key, aggs in by_key.items()}
        known = set(config.numeric) | {a.name for a in config.aggregates} | {c.name for c in config.custom}
        for spec in config.attributes:
            known.update(spec.feature_names())
        self.expressions = []
        for spec in config.expressions:
            fn, _ = compile_expression(spec.expr, known)
            self.expressions.append((spec.name, fn))
            known.add(spec.name)
        self.names = self._names()

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
        names += [a.name for a in self.config.aggregates]
        for spec in self.config.attributes:
            names += spec.feature_names()
            names += [f"{spec.name}_{column}#{b:0{len(str(self.config.hash_buckets - 1))}d}"
                      for column in spec.categorical for b in range(self.config.hash_buckets)]
        names += [custom.name for custom in self.custom]
        names += [name for name, _ in self.expressions]
        return names

    def new_store(self) -> dict[str, dict[str, tuple]]:
        """Return an empty entity store: key name -> entity value -> state."""
        return {key: {} for key in self.layouts}

    def compute(self, values: dict[str, Any], ts: float, store: dict[str, dict[str, tuple]]) -> dict[str, float]:
        """Return the feature vector of an event at event time `ts`, from state before the event."""
        x: dict[str, float] = {}
        for name in self.config.numeric:
            value = values.get(name)
            if value is not None:
                x[name] = value
        if self.config.time_of_day:
            angle = (ts % 86400.0) / 86400.0 * 2.0 * math.pi
            x["hour_sin"] = math.sin(angle)
            x["hour_cos"] = math.cos(angle)
        for name in self.config.categorical:
            value = values.get(name)
            if value is not None:
                x[self.hashed_name(name, value)] = 1.0
        for key, layout in self.layouts.items():
            entity = values.get(key)
            state = store[key].get(entity) if entity is not None else None
            _aggregates_into(x, layout, state, ts)
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
        return x

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
            entities[entity] = _updated(layout, old, values, ts)

    def entity_features(self, key: str, entity: str, ts: float, store: dict) -> tuple[dict[str, float], float | None]:
        """Return one entity's aggregates as of event time `ts`, and the event time it last changed.

        An entity idle for longer than its key's TTL has no state: its values are missing.
        """
        layout = self.layouts.get(key)
        if layout is None:
            return {}, None
        state = store[key].get(entity)
        x: dict[str, float] = {}
        _aggregates_into(x, layout, state, ts)
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
        """Return the one-hot feature name of a categorical value, by a stable hash."""
        bucket = zlib.crc32(value.encode("utf-8")) % self.config.hash_buckets
        return f"{field}#{bucket:0{len(str(self.config.hash_buckets - 1))}d}"

    def entity_count(self, store: dict) -> int:
        """Return how many entities the store holds, over all keys."""
        return sum(len(entities) for entities in store.values())

    def iter_states(self, store: dict) -> Iterator[tuple[str, str, tuple]]:
        for key, entities in store.items():
            for entity, state in entities.items():
                yield key, entity, state


def _aggregates_into(x: dict[str, float], layout: _KeyLayout, state: tuple | None, ts: float) -> None:
    if state is None or state[0][0] < ts - layout.ttl:  # never seen, or idle past its TTL
        state = (layout.blank, layout.blank_distinct)
    arr, distinct = state
    cache: dict[tuple, tuple] = {}
    for agg in layout.aggregates:
        op = agg.op
        if op == "since":
            last = arr[0]
            if last == last:  # not NaN
                x[agg.name] = max(0.0, ts - last)
            continue
        if op == "last":
            value = arr[layout.last_offset[agg.field]]
            if value == value:  # NaN until an event carried the field
                x[agg.name] = value
            continue
        if op == "distinct":
            dslot = layout.distinct[(agg.field, agg.window)]
            x[agg.name] = float(_distinct_count(distinct[dslot.index], dslot, ts))
            continue
        slot = layout.slots[(agg.field if op not in ("count", "rate") else None, agg.window)]
        totals = cache.get((slot.field, slot.window))
        if totals is None:
            totals = cache[(slot.field, slot.window)] = _window_totals(arr, slot, ts)
        value = _finish(op, totals, slot.stats, agg.window)
        if value is not None:
            x[agg.name] = value


def _window_totals(arr: array, slot: _Slot, ts: float) -> tuple:
    current = math.floor(ts / slot.hop)
    low = current - slot.buckets
    stride = slot.stride
    n_stats = len(slot.stats)
    totals = [0.0] * (1 + n_stats)
    kinds = slot.stats
    for i in range(slot.ring):
        base = slot.offset + i * stride
        bid = arr[base]
        if low < bid <= current:
            totals[0] += arr[base + 1]
            for j in range(n_stats):
                value = arr[base + 2 + j]
                kind = kinds[j]
                if kind == "min":
                    totals[1 + j] = value if totals[0] == arr[base + 1] else min(totals[1 + j], value)
                elif kind == "max":
                    totals[1 + j] = value if totals[0] == arr[base + 1] else max(totals[1 + j], value)
                else:
                    totals[1 + j] += value
    return tuple(totals)


def _finish(op: str, totals: tuple, kinds: tuple[str, ...], window: float) -> float | None:
    count = totals[0]
    if op == "count":
        return count
    if op == "rate":
        return count * 3600.0 / window
    if count == 0:
        return 0.0 if op == "sum" else None
    if op == "sum":
        return totals[1 + kinds.index("sum")]
    mean = totals[1 + kinds.index("sum")] / count if "sum" in kinds else 0.0
    if op == "mean":
        return mean
    if op == "std":
        variance = totals[1 + kinds.index("sumsq")] / count - mean * mean
        return math.sqrt(variance) if variance > 0 else 0.0
    return totals[1 + kinds.index(op)]


def _ring_size(window: float, buckets: int, lateness: float) -> int:
    """Buckets a ring keeps: the window's, plus enough for events up to `lateness` out of order.

    An accepted event is at most `lateness` older than the newest event, so its window starts at
    most ceil(lateness / hop) + 1 buckets before the newest window starts. Capped at one extra
    window: with a lateness longer than the window, a very late event may miss its oldest buckets.
    """
    hop = window / buckets
    extra = math.ceil(lateness / hop) + 1 if hop > 0 else 0
    return buckets + min(extra, buckets)


def _distinct_count(entries: tuple, slot: _DistinctSlot, ts: float) -> int:
    current = math.floor(ts / slot.hop)
    low = current - slot.buckets
    return len({h for h, bid in entries if low < bid <= current})


def _updated(layout: _KeyLayout, old: tuple | None, values: dict[str, Any], ts: float) -> tuple:
    if old is None or old[0][0] < ts - layout.ttl:  # new, or idle past its TTL: start afresh
        old = (layout.blank, layout.blank_distinct)
    arr, distinct = old
    arr = arr[:]  # copy-on-write: readers of the old state never see a half-applied update
    last = arr[0]
    if last != last or ts >= last:
        arr[0] = ts
        for name, offset in layout.last_offset.items():
            value = values.get(name)
            if isinstance(value, float):
                arr[offset] = value
    for slot in layout.slots.values():
        _add_to_slot(arr, slot, values, ts)
    if layout.distinct:
        distinct = tuple(_add_distinct(distinct[d.index], d, values.get(d.field), ts)
                         for d in layout.distinct.values())
    return arr, distinct


def _add_to_slot(arr: array, slot: _Slot, values: dict[str, Any], ts: float) -> None:
    if slot.field is not None:
        value = values.get(slot.field)
        if not isinstance(value, float):
            return
    else:
        value = 0.0
    bid = math.floor(ts / slot.hop)
    base = slot.offset + (bid % slot.ring) * slot.stride
    stored = arr[base]
    if stored > bid:
        return  # this ring position already holds a newer bucket; the event is outside its window
    fresh = stored < bid
    if fresh:
        arr[base] = bid
        arr[base + 1] = 0.0
    arr[base + 1] += 1.0
    for j, kind in enumerate(slot.stats):
        at = base + 2 + j
        if kind == "sum":
            arr[at] = value if fresh else arr[at] + value
        elif kind == "sumsq":
            arr[at] = value * value if fresh else arr[at] + value * value
        elif kind == "min":
            arr[at] = value if fresh else min(arr[at], value)
        else:
            arr[at] = value if fresh else max(arr[at], value)


def _add_distinct(entries: tuple, slot: _DistinctSlot, value: Any, ts: float) -> tuple:
    """Record that `value` was seen in the bucket of `ts`: one (hash, bucket) entry per pair,
    kept in bucket order so the oldest are dropped from the front."""
    if value is None:
        return entries
    digest = zlib.crc32(str(value).encode("utf-8"))
    bid = math.floor(ts / slot.hop)
    entry = (digest, bid)
    if entry in entries:
        return entries
    if not entries or entries[-1][1] <= bid:
        kept = entries + (entry,)
    else:  # out of order: insert in bucket order
        at = len(entries)
        while at > 0 and entries[at - 1][1] > bid:
            at -= 1
        kept = entries[:at] + (entry,) + entries[at:]
    oldest = kept[-1][1] - slot.ring
    drop = 0
    while kept[drop][1] <= oldest:
        drop += 1
    if len(kept) - drop > DISTINCT_CAP:
        drop = len(kept) - DISTINCT_CAP
    return kept[drop:] if drop else kept
