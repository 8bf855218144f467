"""How many buckets a window's ring keeps per entity, and the refusal of a lateness that needs too many.

Read by `entity_state` (the ring layout) and by `config` (refused at load), so it imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

from appliance.errors import ConfigError

MAX_RING = 1024  # buckets per (key, field, window) ring; a longer one is refused at load (check_rings)
RINGED_OPS = frozenset({"count", "rate", "sum", "mean", "std", "min", "max", "distinct"})  # not last/since


class Windowed(Protocol):
    """What the check reads of an aggregate (`config.AggregateSpec`)."""

    name: str
    key: str
    op: str
    window: float


def ring_size(window: float, buckets: int, lateness: float) -> int:
    """Buckets a ring keeps: the window's, plus enough for events up to `lateness` out of order.

    An accepted event is at most `lateness` older than the newest event, so its bucket is at most
    ceil(lateness / hop) before the newest bucket, and its window reaches B - 1 buckets further
    back: B + ceil(lateness / hop) buckets, plus one spare. With that many positions a bucket an
    accepted event needs is never overwritten by a newer one, whatever the lateness.

    >>> ring_size(600.0, 6, 300.0)
    10
    """
    hop = window / buckets
    extra = math.ceil(lateness / hop) + 1 if hop > 0 else 0
    return buckets + extra


def check_rings(aggregates: Iterable[Windowed], buckets: int, lateness: float) -> None:
    """Refuse a lateness so long against a window's hop that its ring would exceed MAX_RING buckets
    per entity (memory per entity grows with it); names the aggregates and what would fit."""
    sizes = [(agg, ring_size(agg.window, buckets, lateness)) for agg in aggregates if agg.op in RINGED_OPS]
    too_long = [(agg, size) for agg, size in sizes if size > MAX_RING]
    if too_long:
        names = ", ".join(f'"{agg.name}" (key "{agg.key}", window {agg.window:g}s: {size} buckets)'
                          for agg, size in too_long)
        raise ConfigError(
            f"[event] allowed_lateness {lateness:g}s is too long for {names}: a window keeps "
            f"buckets_per_window + ceil(allowed_lateness / hop) + 1 buckets per entity, at most {MAX_RING}; "
            "shorten allowed_lateness, lengthen the window or lower [features] buckets_per_window")
