"""How well hashing serves each categorical field, reported in stats."""

from __future__ import annotations

import zlib
from typing import Any

from .features import FeatureSpace


class CategoryStats:
    """How well hashing serves each categorical field: distinct values seen, the share of them that
    share a bucket with another value (collisions), and the share of events whose value was new.

    Tracks up to `cap` distinct values per field; past that, new values still count as unseen.
    """

    def __init__(self, space: FeatureSpace, cap: int = 100_000) -> None:
        self.hash_buckets = space.config.hash_buckets
        self.cap = cap
        self.seen: dict[str, dict[str, int]] = {f: {} for f in space.config.categorical}
        self.occupancy: dict[str, dict[int, int]] = {f: {} for f in space.config.categorical}
        self.events = dict.fromkeys(space.config.categorical, 0)
        self.unseen = dict.fromkeys(space.config.categorical, 0)
        self.recent: dict[str, list[int]] = {f: [0, 0] for f in space.config.categorical}  # [events, unseen]

    def observe(self, values: dict[str, Any]) -> None:
        for field, seen in self.seen.items():
            value = values.get(field)
            if value is None:
                continue
            self.events[field] += 1
            recent = self.recent[field]
            if recent[0] >= 10_000:
                recent[0] = recent[1] = 0
            recent[0] += 1
            if value in seen:
                continue
            self.unseen[field] += 1
            recent[1] += 1
            if len(seen) < self.cap:
                bucket = zlib.crc32(value.encode("utf-8")) % self.hash_buckets
                seen[value] = bucket
                occupancy = self.occupancy[field]
                occupancy[bucket] = occupancy.get(bucket, 0) + 1

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for field, seen in self.seen.items():
            distinct = len(seen)
            colliding = sum(n for n in self.occupancy[field].values() if n > 1)
            events = self.events[field]
            recent = self.recent[field]
            out[field] = {"distinct": distinct, "buckets": self.hash_buckets,
                          "collision_rate": round(colliding / distinct, 4) if distinct else 0.0,
                          "unseen_rate": round(self.unseen[field] / events, 4) if events else 0.0,
                          "unseen_rate_recent": round(recent[1] / recent[0], 4) if recent[0] else 0.0}
        return out
