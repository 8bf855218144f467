"""Join delayed labels to the predictions logged when their events were scored.

A prediction waits in `pending` (keyed by event id) with the feature vector it was made on, until
its label arrives or its horizon passes in event time; then the default label is learned or the
prediction is dropped, as the policy says. A label that arrives before its event waits in `early`.
Both maps are bounded by the horizon, so memory is bounded by the event rate times the horizon.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator

from .config import LabelPolicy

DEFAULT_HORIZON = 7 * 86400.0


class Pending:
    """A scored event waiting for its label: its features, the served prediction, and every
    candidate's shadow prediction (by candidate name), all as they were at prediction time."""

    __slots__ = ("event_id", "ts", "x", "shadow", "y_served", "version")

    def __init__(self, event_id: str, ts: float, x: dict, shadow: Any, y_served: Any, version: int) -> None:
        self.event_id = event_id
        self.ts = ts
        self.x = x
        self.shadow = shadow
        self.y_served = y_served
        self.version = version

    def __setstate__(self, state: Any) -> None:
        slots = state[1] if isinstance(state, tuple) else state
        for name, value in slots.items():  # an earlier release called the shadow prediction y_learner
            setattr(self, "shadow" if name == "y_learner" else name, value)


class LabelJoin:
    """Pending predictions and early labels, expired by event time."""

    def __init__(self, policy: LabelPolicy) -> None:
        self.horizon = policy.horizon if policy.horizon is not None else DEFAULT_HORIZON
        self.default = policy.default
        # OrderedDict, not dict: popping from the front of a plain dict degrades to O(n) per peek.
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.next_early_sweep = -float("inf")
        self.early: dict[str, tuple[float, Any]] = {}
        self.delays: list[float] = []  # bounded sample of label delays, for stats

    def add(self, pending: Pending) -> None:
        """Start waiting for the label of a scored event."""
        self.pending[pending.event_id] = pending

    def take(self, event_id: str) -> Pending | None:
        """Return and forget the prediction waiting for this label, if any."""
        return self.pending.pop(event_id, None)

    def hold_early(self, event_id: str, seen_at: float, value: Any) -> None:
        """Keep a label whose event has not arrived yet."""
        self.early[event_id] = (seen_at, value)

    def pop_early(self, event_id: str) -> Any | None:
        """Return the label held for an event that has just arrived, if any."""
        held = self.early.pop(event_id, None)
        return None if held is None else held[1]

    def record_delay(self, delay: float) -> None:
        """Remember a label delay; keeps the most recent 4,096."""
        self.delays.append(delay)
        if len(self.delays) > 8192:
            del self.delays[:4096]

    def expire(self, watermark: float) -> tuple[list[Pending], int]:
        """Remove predictions and early labels older than the horizon at `watermark`.

        Returns the expired predictions (in arrival order) and how many early labels were dropped.
        """
        limit = watermark - self.horizon
        expired = list(_take_while_old(self.pending, limit))
        orphans = 0
        if self.early and watermark >= self.next_early_sweep:
            self.next_early_sweep = watermark + self.horizon / 64
            old = [key for key, (seen_at, _) in self.early.items() if seen_at < limit]
            for key in old:
                del self.early[key]
            orphans = len(old)
        return expired, orphans

    def delay_quantiles(self) -> dict[str, float]:
        """Return p50/p90/p99 label delay in seconds over recent labels."""
        if not self.delays:
            return {}
        ordered = sorted(self.delays[-4096:])
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}


def _take_while_old(pending: OrderedDict[str, Pending], limit: float) -> Iterator[Pending]:
    # Pending keeps arrival order, which is event-time order up to the allowed lateness.
    while pending:
        event_id = next(iter(pending))
        item = pending[event_id]
        if item.ts >= limit:
            return
        pending.popitem(last=False)
        yield item
