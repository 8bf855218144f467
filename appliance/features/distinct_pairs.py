"""Distinct counts of a key's state: the (value hash, bucket) pairs of one field over one window.

Each distinct count keeps one pair per value and bucket, in bucket order, as one flat
`array('q')`: hash, bucket, hash, bucket, ... (16 bytes a pair). Pairs older than the ring
(`config.rings.ring_size`: the window plus the allowed lateness) are dropped, and past
`DISTINCT_CAP` the oldest go, so a count is exact up to that many pairs and a lower bound beyond.
Like the rest of an entity's state (`features.entity_state`), an array is replaced, never changed.
"""

from __future__ import annotations

import math
import zlib
from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any

DISTINCT_CAP = 128  # (value, bucket) pairs kept per distinct count; beyond, the oldest go (a lower bound)
NO_PAIRS = array("q")  # a distinct count's pairs before any: shared, never changed (states are replaced)


@dataclass
class DistinctSlot:
    """One (field, window) distinct count of a key: its buckets, its ring, its place in the state."""

    field: str
    window: float
    buckets: int
    index: int
    ring: int = 0

    def __post_init__(self) -> None:
        self.hop = self.window / self.buckets


def count_in_window(pairs: array, slot: DistinctSlot, ts: float) -> int:
    """Distinct hashes among the window's (hash, bucket) pairs: the pairs are in bucket order, so
    the window is a slice of the bucket ids found by bisection, and a set of that slice's hashes
    counts them (in C)."""
    if not pairs:
        return 0
    current = math.floor(ts / slot.hop)
    buckets = pairs[1::2]
    start = bisect_right(buckets, current - slot.buckets)
    end = len(buckets) if buckets[-1] <= current else bisect_right(buckets, current)
    return len(set(pairs[2 * start:2 * end:2])) if start < end else 0


def add_pair(pairs: array, slot: DistinctSlot, value: Any, ts: float) -> array:
    """Record that `value` was seen in the bucket of `ts`: one (hash, bucket) pair per value and
    bucket, kept in bucket order so the oldest are dropped from the front.

    `pairs` is flat, `array('q', [hash, bucket, hash, bucket, ...])`: 16 bytes a pair, where a tuple
    of two ints took ~120. A new array is returned; the old one is never changed (readers hold it).
    """
    if value is None:
        return pairs
    digest = zlib.crc32(str(value).encode("utf-8"))
    bid = math.floor(ts / slot.hop)
    if not pairs:
        return array("q", (digest, bid))
    n = len(pairs)
    if pairs[n - 1] <= bid:  # the common case: the newest bucket, or a newer one
        if pairs[n - 1] == bid:
            buckets = pairs[1::2]
            same = bisect_left(buckets, bid)
            if digest in pairs[2 * same::2]:
                return pairs
        kept = pairs + array("q", (digest, bid))
    else:  # out of order: after every pair of this bucket or an older one
        buckets = pairs[1::2]
        at = bisect_right(buckets, bid)
        same = bisect_left(buckets, bid, 0, at)
        if same < at and digest in pairs[2 * same:2 * at:2]:
            return pairs
        kept = pairs[:2 * at] + array("q", (digest, bid)) + pairs[2 * at:]
    oldest = kept[-1] - slot.ring
    drop = bisect_right(kept[1::2], oldest) if kept[1] <= oldest else 0
    if len(kept) // 2 - drop > DISTINCT_CAP:
        drop = len(kept) // 2 - DISTINCT_CAP
    return kept[2 * drop:] if drop else kept
