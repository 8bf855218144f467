"""How well hashing serves each categorical field, and how often each event field is missing, reported in stats."""

from __future__ import annotations

from typing import Any

from appliance.features.space import FeatureSpace, bucket_of


def buckets_for(distinct: int, share: float = 0.10) -> int:
    """Return the smallest power of two of buckets at which a value shares its bucket with another
    one less often than `share`, for `distinct` values and a uniform hash: 1 - (1 - 1/b)**(d - 1).

    >>> buckets_for(3), buckets_for(16), buckets_for(105)
    (32, 256, 1024)
    """
    buckets = 1
    while distinct > 1 and 1.0 - (1.0 - 1.0 / buckets) ** (distinct - 1) >= share:
        buckets *= 2
    return buckets


class CategoryStats:
    """How well hashing serves each categorical field: distinct values seen, the share of them that
    share a bucket with another value (collisions) and the buckets that would bring it under 10%,
    and the share of events whose value was new.

    Tracks up to `cap` distinct values per field; past that, new values still count as unseen.
    Also counts, for every key, numeric and categorical field of the event schema, the ingested events that lacked it.
    """

    def __init__(self, space: FeatureSpace, cap: int = 100_000) -> None:
        self.hash_buckets = space.config.hash_buckets
        self.cap = cap
        self.seen: dict[str, dict[str, int]] = {f: {} for f in space.config.categorical}
        self.occupancy: dict[str, dict[int, int]] = {f: {} for f in space.config.categorical}
        self.events = dict.fromkeys(space.config.categorical, 0)
        self.unseen = dict.fromkeys(space.config.categorical, 0)
        self.recent: dict[str, list[int]] = {f: [0, 0] for f in space.config.categorical}  # [events, unseen]
        schema = space.schema
        self.fields = tuple(dict.fromkeys(schema.keys + schema.numeric + schema.categorical))
        self.missing = dict.fromkeys(self.fields, 0)
        self.observed = 0

    _FIELDS = ("hash_buckets", "cap", "seen", "occupancy", "events", "unseen", "recent", "missing", "observed")

    def to_data(self) -> dict[str, Any]:
        """The counts as plain data."""
        return {name: getattr(self, name) for name in self._FIELDS}

    def load_data(self, data: dict[str, Any]) -> None:
        """Take the counts `to_data` described; the fields counted for missing values are the schema's."""
        for name in self._FIELDS:
            setattr(self, name, data[name])

    def observe(self, values: dict[str, Any]) -> None:
        self.observed += 1
        missing = self.missing
        for field in self.fields:
            if values.get(field) is None:
                missing[field] += 1
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
                bucket = bucket_of(value, self.hash_buckets)
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
                          "buckets_for_10pct": buckets_for(distinct),
                          "unseen_rate": round(self.unseen[field] / events, 4) if events else 0.0,
                          "unseen_rate_recent": round(recent[1] / recent[0], 4) if recent[0] else 0.0}
        return out

    def missing_summary(self) -> dict[str, dict[str, float]]:
        """Per field: ingested events without a value, as a count and a share."""
        observed = self.observed
        return {field: {"missing": n, "missing_rate": round(n / observed, 4) if observed else 0.0}
                for field, n in self.missing.items()}
