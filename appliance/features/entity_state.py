"""Per-entity window state: how it is laid out, how an event folds in, how aggregates read out.

Windows are hopping buckets in event time: a window W with B buckets has hop h = W / B, and at time
t it covers the buckets floor(t/h) - B + 1 .. floor(t/h), i.e. between (B-1)·h and B·h of history.
Per entity and key the state is one compact `array('d')` (plus a small tuple for distinct counts),
replaced on every update, never mutated in place: a reader on another thread (the socket server)
always sees a consistent state without a lock. `FeatureSpace` (features.py) is the only caller.
"""

from __future__ import annotations

import math
import zlib
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.config.rings import ring_size

if TYPE_CHECKING:
    from appliance.config.file import AggregateSpec

NAN = math.nan
DEFAULT_TTL = 86400.0  # an entity key whose aggregates have no window (since, last) forgets after a day
DISTINCT_CAP = 128  # (value, bucket) pairs kept per distinct count; beyond, the oldest go (a lower bound)
_STAT_OPS = {"count": (), "rate": (), "sum": ("sum",), "mean": ("sum",), "std": ("sum", "sumsq"),
             "min": ("min",), "max": ("max",)}


@dataclass
class _Slot:
    """A ring of buckets for one (field, window) on one key: [bid, count, stats...] per bucket.

    The window spans `buckets` buckets; the ring keeps `ring` >= `buckets` of them, the extra ones
    covering the allowed lateness (`rings.ring_size`), so an out-of-order event still sees its whole window.
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


class KeyLayout:
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
                ring = ring_size(agg.window, buckets, lateness)
                self.slots[slot_key] = _Slot(slot_key[0], agg.window, buckets, 0, tuple(sorted(stats)), ring)
            elif agg.op == "distinct":
                dkey = (agg.field, agg.window)
                ring = ring_size(agg.window, buckets, lateness)
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


def aggregates_into(x: dict[str, float], layout: KeyLayout, state: tuple | None, ts: float) -> None:
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
    """Sum the window's buckets: B ring positions read directly, however long the ring is."""
    current = math.floor(ts / slot.hop)
    stride = slot.stride
    ring = slot.ring
    offset = slot.offset
    n_stats = len(slot.stats)
    totals = [0.0] * (1 + n_stats)
    kinds = slot.stats
    for bid in range(current - slot.buckets + 1, current + 1):
        base = offset + (bid % ring) * stride
        if arr[base] != bid:
            continue  # empty, or the position holds another bucket
        first = totals[0] == 0.0
        totals[0] += arr[base + 1]
        for j in range(n_stats):
            value = arr[base + 2 + j]
            kind = kinds[j]
            if kind == "min":
                totals[1 + j] = value if first else min(totals[1 + j], value)
            elif kind == "max":
                totals[1 + j] = value if first else max(totals[1 + j], value)
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


def _distinct_count(entries: tuple, slot: _DistinctSlot, ts: float) -> int:
    current = math.floor(ts / slot.hop)
    low = current - slot.buckets
    return len({h for h, bid in entries if low < bid <= current})


def updated(layout: KeyLayout, old: tuple | None, values: dict[str, Any], ts: float) -> tuple:
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
