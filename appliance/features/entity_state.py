"""Per-entity window state: how it is laid out, how an event folds in, how aggregates read out.

Windows are hopping buckets in event time: a window W with B buckets has hop h = W / B, and at time
t it covers the buckets floor(t/h) - B + 1 .. floor(t/h), i.e. between (B-1)·h and B·h of history.
Per entity and key the state is one compact `array('d')` (plus one `array('q')` per distinct count),
replaced on every update, never mutated in place: a reader on another thread (the socket server)
always sees a consistent state without a lock. `FeatureSpace` (features.py) is the only caller.

Running totals: a window's aggregates are read without summing its buckets. Each ring also keeps
the id of its newest bucket c and, for k = 0 .. B-2, the totals of buckets c-B+1+k .. c-1 (the
window at c+k without bucket c), folded oldest first exactly as a sum over the buckets would fold
them. A read at bucket c+k folds bucket c onto the k-th of them: the very float operations, in
the very order, of summing the window, so the values are bit for bit those of the sum. When the
newest bucket moves from c to c+d, the k-th totals become the (k+d)-th folded with bucket c (no
subtraction, so no drift); an event landing in an older bucket of the window recomputes them from
the ring; a read behind the newest bucket (a late event) sums the ring as before.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from appliance.config.rings import ring_size
from appliance.features.distinct_pairs import NO_PAIRS, DistinctSlot, add_pair, count_in_window

if TYPE_CHECKING:
    from appliance.config.file import AggregateSpec

NAN = math.nan
DEFAULT_TTL = 86400.0  # an entity key whose aggregates have no window (since, last) forgets after a day
_STAT_OPS = {"count": (), "rate": (), "sum": ("sum",), "mean": ("sum",), "std": ("sum", "sumsq"),
             "min": ("min",), "max": ("max",)}


@dataclass
class _Slot:
    """A ring of buckets for one (field, window) on one key: [bid, count, stats...] per bucket.

    The window spans `buckets` buckets; the ring keeps `ring` >= `buckets` of them, the extra ones
    covering the allowed lateness (`rings.ring_size`), so an out-of-order event still sees its whole window.
    After the ring: the newest bucket's id, then B-1 partial window totals of `width` values each.
    """

    field: str | None
    window: float
    buckets: int
    offset: int
    stats: tuple[str, ...]
    ring: int = 0
    totals: int = 0  # where the newest bucket's id and the B-1 partial window totals start

    def __post_init__(self) -> None:  # read per event and per request: plain attributes, not properties
        self.hop = self.window / self.buckets
        self.stride = 2 + len(self.stats)
        self.width = 1 + len(self.stats)  # a partial total: the count, then each running stat
        self.size = self.ring * self.stride + 1 + (self.buckets - 1) * self.width
        self.zeros = array("d", bytes(8 * (self.buckets - 1) * self.width))  # every partial total empty
        self.additive = "min" not in self.stats and "max" not in self.stats


class _Read(NamedTuple):
    """One aggregate as `aggregates_into` reads it, resolved once per layout."""

    name: str
    op: str
    slot: _Slot | None  # count, rate, sum, mean, std, min, max
    dslot: DistinctSlot | None  # distinct
    number: int  # the slot's position among the key's slots, the distinct slot's, or the `last` value's
    stat: int  # where in the window's totals the op's running stat is (the sum for mean and std)
    square: int  # where the sum of squares is (std)
    window: float


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
        self.distinct: dict[tuple[str, float], DistinctSlot] = {}
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
                self.distinct.setdefault(dkey, DistinctSlot(agg.field, agg.window, buckets, len(self.distinct), ring))
        for slot in self.slots.values():
            slot.offset = size
            slot.totals = size + slot.ring * slot.stride
            size += slot.size
        self.size = size
        self.blank = array("d", [0.0]) * size
        for i in range(1 + len(self.last_fields)):
            self.blank[i] = NAN  # last event time, then the last value of each `last` field
        for slot in self.slots.values():
            for i in range(slot.ring):
                self.blank[slot.offset + i * slot.stride] = -math.inf
            self.blank[slot.totals] = -math.inf  # no newest bucket yet
        self.blank_distinct: tuple = tuple(NO_PAIRS for _ in self.distinct)
        self.reads = [self._read(agg) for agg in aggregates]

    def _read(self, agg: AggregateSpec) -> _Read:
        """How `aggregates_into` reads one aggregate: its slot (or distinct slot) and positions."""
        if agg.op == "since":
            return _Read(agg.name, agg.op, None, None, 0, 0, 0, 0.0)
        if agg.op == "last":
            return _Read(agg.name, agg.op, None, None, self.last_offset[agg.field], 0, 0, 0.0)
        if agg.op == "distinct":
            dslot = self.distinct[(agg.field, agg.window)]
            return _Read(agg.name, agg.op, None, dslot, dslot.index, 0, 0, agg.window)
        slot_key = (agg.field if agg.op not in ("count", "rate") else None, agg.window)
        slot = self.slots[slot_key]
        kinds = slot.stats
        stat = 1 + kinds.index("sum" if agg.op in ("sum", "mean", "std") else agg.op) if kinds else 0
        square = 1 + kinds.index("sumsq") if agg.op == "std" else 0
        return _Read(agg.name, agg.op, slot, None, list(self.slots).index(slot_key), stat, square, agg.window)


def aggregates_into(x: dict[str, float], layout: KeyLayout, state: tuple | None, ts: float) -> None:
    if state is None or state[0][0] < ts - layout.ttl:  # never seen, or idle past its TTL
        state = (layout.blank, layout.blank_distinct)
    arr, distinct = state
    cached: list[tuple | None] = [None] * len(layout.slots)  # a window's totals, shared by its aggregates
    for name, op, slot, dslot, number, stat, square, window in layout.reads:
        if slot is not None:
            totals = cached[number]
            if totals is None:
                totals = cached[number] = _window_totals(arr, slot, ts)
            count = totals[0]
            if op == "count":
                x[name] = count
            elif op == "rate":
                x[name] = count * 3600.0 / window
            elif count == 0:
                if op == "sum":
                    x[name] = 0.0
            elif op == "mean":
                x[name] = totals[stat] / count
            elif op == "std":
                mean = totals[stat] / count
                variance = totals[square] / count - mean * mean
                x[name] = math.sqrt(variance) if variance > 0 else 0.0
            else:  # sum, min, max: the running stat itself
                x[name] = totals[stat]
        elif dslot is not None:
            x[name] = float(count_in_window(distinct[number], dslot, ts))
        elif op == "since":
            last = arr[0]
            if last == last:  # not NaN
                x[name] = max(0.0, ts - last)
        else:  # last
            value = arr[number]
            if value == value:  # NaN until an event carried the field
                x[name] = value


def _window_totals(arr: array, slot: _Slot, ts: float) -> tuple:
    """The window's totals at `ts` from the running totals: the partial total of the window's older
    buckets, with the newest bucket folded on; a read behind the newest bucket sums the ring."""
    current = math.floor(ts / slot.hop)
    newest = arr[slot.totals]
    k = current - newest
    buckets = slot.buckets
    if k >= buckets:  # the newest bucket is out of the window, and every other is older
        return (0.0,) * slot.width
    if k < 0:
        return _summed_totals(arr, slot, current)
    width = slot.width
    if k < buckets - 1:
        at = slot.totals + 1 + int(k) * width
        totals = arr[at:at + width].tolist()
    else:
        totals = [0.0] * width
    base = slot.offset + (int(newest) % slot.ring) * slot.stride
    first = totals[0] == 0.0
    totals[0] += arr[base + 1]
    j = 1
    for kind in slot.stats:
        value = arr[base + 1 + j]
        if kind == "min":
            totals[j] = value if first else min(totals[j], value)
        elif kind == "max":
            totals[j] = value if first else max(totals[j], value)
        else:
            totals[j] += value
        j += 1
    return tuple(totals)


def _summed_totals(arr: array, slot: _Slot, current: int) -> tuple:
    """Sum the window's buckets: B ring positions read directly, however long the ring is."""
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
        distinct = tuple([add_pair(distinct[d.index], d, values.get(d.field), ts)
                          for d in layout.distinct.values()])
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
    totals = slot.totals
    newest = arr[totals]
    if bid > newest:  # before the event lands: the partial totals fold the old newest bucket
        if bid - newest >= slot.buckets:  # the common case, inline: it has left every window
            arr[totals] = bid
            arr[totals + 1:totals + 1 + len(slot.zeros)] = slot.zeros
        else:
            _advance(arr, slot, newest, bid)
    if stored < bid:  # a fresh bucket: 0.0 + 1.0 and each stat's first value, as folding into zeros gives
        arr[base] = bid
        arr[base + 1] = 1.0
        at = base + 2
        for kind in slot.stats:
            arr[at] = value * value if kind == "sumsq" else value
            at += 1
    else:
        arr[base + 1] += 1.0
        at = base + 2
        for kind in slot.stats:
            if kind == "sum":
                arr[at] += value
            elif kind == "sumsq":
                arr[at] += value * value
            elif kind == "min":
                arr[at] = min(arr[at], value)
            else:
                arr[at] = max(arr[at], value)
            at += 1
    if newest - slot.buckets < bid < newest:  # a late event in a bucket some partial total holds
        _recompute_partials(arr, slot, int(newest))


def _advance(arr: array, slot: _Slot, newest: float, bid: int) -> None:
    """Move the partial totals from newest bucket `newest` to the newer `bid`: the k-th becomes
    the (k+d)-th folded with bucket `newest`, the B-1-d-th that bucket alone, the rest empty."""
    at = slot.totals
    arr[at] = bid
    last = slot.buckets - 1
    shift = bid - newest
    if shift > last:  # bucket `newest` has left every window from `bid` on
        if last:
            arr[at + 1:at + 1 + len(slot.zeros)] = slot.zeros
        return
    d = int(shift)
    old = slot.offset + (int(newest) % slot.ring) * slot.stride
    width = slot.width
    start = at + 1
    if width == 1:  # a count alone: the k-th total is the (k+d)-th plus the bucket's count
        count = arr[old + 1]
        for k in range(last - d):
            arr[start + k] = arr[start + k + d] + count
        arr[start + last - d] = 0.0 + count
        if d > 1:
            arr[start + last - d + 1:start + last] = slot.zeros[:d - 1]
        return
    kept = (last - d) * width  # the partial totals that move down by d; the rest start empty
    arr[start:start + kept] = arr[start + d * width:start + last * width]
    arr[start + kept:start + last * width] = slot.zeros[:d * width]
    if width == 3 and slot.additive:  # sum and sum of squares (mean, std): folding is adding
        count, first, second = arr[old + 1], arr[old + 2], arr[old + 3]
        for to in range(start, start + kept + 3, 3):
            arr[to] += count
            arr[to + 1] += first
            arr[to + 2] += second
    elif slot.additive:
        bucket = arr[old + 1:old + 1 + width]
        for to in range(start, start + kept + width, width):
            for j in range(width):
                arr[to + j] += bucket[j]
    else:
        for to in range(start, start + kept + width, width):
            _fold(arr, to, old, slot.stats)


def _recompute_partials(arr: array, slot: _Slot, newest: int) -> None:
    """Fold each partial total again from the ring, oldest bucket first (after a late event)."""
    start, width, stride, ring, offset = slot.totals + 1, slot.width, slot.stride, slot.ring, slot.offset
    for k in range(slot.buckets - 1):
        at = start + k * width
        arr[at:at + width] = slot.zeros[:width]
        for bid in range(newest - slot.buckets + 1 + k, newest):
            base = offset + (bid % ring) * stride
            if arr[base] == bid:
                _fold(arr, at, base, slot.stats)


def _fold(arr: array, at: int, base: int, kinds: tuple[str, ...]) -> None:
    """Fold the bucket at `base` onto the partial total at `at`, as `_summed_totals` folds it."""
    first = arr[at] == 0.0
    arr[at] += arr[base + 1]
    for j, kind in enumerate(kinds, 1):
        value = arr[base + 1 + j]
        if kind == "min":
            arr[at + j] = value if first else min(arr[at + j], value)
        elif kind == "max":
            arr[at + j] = value if first else max(arr[at + j], value)
        else:
            arr[at + j] += value
