"""Admission: what enters the stream and what each label joins, decided from event time and ids alone.

Every decision the engine makes before it reads an entity's state or folds an event into it is
made here: an event too far ahead of the stream and the clock, too late for the watermark, or a
second event with the id of a prediction still waiting is refused; an accepted event moves the
watermark and takes the label that came with it (or one that arrived before it), or waits for one;
a label joins a waiting prediction, comes too late (its prediction expired), or waits for its
event. Predictions past the label horizon expire, early labels past it are dropped.

None of it reads a feature or a model, so a whole batch can be admitted before any of its
features are computed (by entity state elsewhere, `engine.partitions`), and the engine applies the
verdicts in the same order (`core.Engine`): the ids here and the engine's pending predictions
(`label_join.LabelJoin`, which holds what was predicted) move in step.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

from appliance.config.file import EventSchema, LabelPolicy
from appliance.errors import InvalidEvent
from appliance.ingest.events import Event, Label, check_not_ahead
from appliance.timeutil import format_timestamp

DEFAULT_HORIZON = 7 * 86400.0
RECENTLY_EXPIRED = 100_000  # expired ids remembered, so that their labels count as late, not early
MAX_EARLY = 100_000  # early labels held at most (the oldest is dropped past it, counted)
MAX_EARLY_BYTES = 8 << 20  # and at most this many bytes of their event ids


class Refused(NamedTuple):
    """An item that does not enter the stream: which counter it adds to, and the dead letter's reason."""

    counter: str  # one of the engine's COUNTERS: "future_events", "late_events" or "duplicates"
    reason: str


class Expiry(NamedTuple):
    """What the horizon took after an item: predictions that waited too long (in arrival order) and
    how many early labels never met their event."""

    ids: list[str]
    orphans: int


class EventAdmitted(NamedTuple):
    """An event that enters: the watermark after it, the label it is learned from at once (inline,
    or one held for it), whether its prediction waits for a label, and what then expired."""

    watermark: float
    advanced: bool  # it moved the watermark (then idle entities may be swept)
    label: Any  # None: no label yet
    early: bool  # the label arrived before the event
    waits: bool
    expiry: Expiry | None


class LabelAdmitted(NamedTuple):
    """A label that counts: the watermark after it, what it met, and what then expired."""

    watermark: float
    joined: bool  # its prediction was waiting
    late: bool  # its prediction had expired
    dropped: int  # held early: how many of the oldest early labels it pushed out
    expiry: Expiry | None


class Admission:
    """The watermark, the ids waiting for a label (with their event times), early labels and
    recently expired ids; `event` and `label` return a verdict and move them."""

    def __init__(self, schema: EventSchema, policy: LabelPolicy) -> None:
        self.lateness = schema.allowed_lateness
        self.skew = schema.max_future_skew
        self.horizon = policy.horizon if policy.horizon is not None else DEFAULT_HORIZON
        self.watermark = -math.inf
        # OrderedDict, not dict: popping from the front of a plain dict degrades to O(n) per peek.
        self.waiting: OrderedDict[str, float] = OrderedDict()  # event id -> event time, in arrival order
        self.early: OrderedDict[str, tuple[float, Any]] = OrderedDict()  # in arrival order
        self.early_bytes = 0  # length of the held event ids
        self.next_early_sweep = -math.inf
        self.recently_expired: OrderedDict[str, None] = OrderedDict()

    # -- verdicts ------------------------------------------------------------------------------
    def event(self, event: Event, served: bool, ingest: bool) -> EventAdmitted | Refused:
        """Admit an event; `served`: scored over the socket already (its features were computed then).

        A scored-only event (`ingest` false) never moves event time and never waits for a label; once
        served, it is logged however far event time has moved on since.
        """
        ts, watermark = event.ts, self.watermark
        if ts > watermark + self.skew:
            refused = self._ahead(ts)
            if refused is not None:
                return refused
        if (ingest or not served) and ts < watermark - self.lateness:
            reason = (f"late: {watermark - ts:.0f}s behind the watermark {format_timestamp(watermark)} "
                      f"(allowed {self.lateness:.0f}s)")
            return Refused("late_events", reason)
        event_id = event.event_id
        if event_id in self.waiting:
            return Refused("duplicates", f'duplicate event id "{event_id}"')
        advanced = ingest and ts > watermark
        if advanced:
            self.watermark = ts
        label, early, waits = event.label, False, False
        if ingest:
            if label is None:
                label = self._pop_early(event_id)
                early = label is not None
            if label is None:
                self.waiting[event_id] = ts
                waits = True
        return EventAdmitted(self.watermark, advanced, label, early, waits, self._expire())

    def label(self, label: Label) -> LabelAdmitted | Refused:
        """Admit a label that arrives on its own."""
        if label.ts is not None and label.ts > self.watermark + self.skew:
            refused = self._ahead(label.ts)
            if refused is not None:
                return refused
        if label.ts is not None and label.ts > self.watermark:
            self.watermark = label.ts
        event_id = label.event_id
        joined = self.waiting.pop(event_id, None) is not None
        late = not joined and event_id in self.recently_expired
        dropped = 0 if joined or late else self._hold_early(event_id, self.watermark, label.value)
        return LabelAdmitted(self.watermark, joined, late, dropped, self._expire())

    def _ahead(self, ts: float) -> Refused | None:
        """Refuse an event time too far ahead of the stream and of the clock (rare: off the hot path)."""
        try:
            check_not_ahead(ts, self.watermark, time.time(), self.skew)
        except InvalidEvent as exc:
            return Refused("future_events", f"future: {exc.reason}")
        return None

    # -- early labels --------------------------------------------------------------------------
    def _hold_early(self, event_id: str, seen_at: float, value: Any) -> int:
        """Keep a label whose event has not arrived yet; return how many of the oldest were dropped.

        Labels for ids that never come (a typo, another system's ids, a hostile client) would grow
        memory until the horizon expires them: past `MAX_EARLY` labels or `MAX_EARLY_BYTES` of ids
        the oldest go first (the least likely to meet their event; a label cannot be refused at the
        socket, which cannot know whether its event is on the way).

        >>> from appliance.config.file import EventSchema, LabelPolicy
        >>> admission = Admission(EventSchema(), LabelPolicy())
        >>> sum(admission._hold_early(f"e{i}", 0.0, True) for i in range(MAX_EARLY + 2)), next(iter(admission.early))
        (2, 'e2')
        """
        early = self.early
        self._pop_early(event_id)  # a second label for the same id replaces the first, at the back
        early[event_id] = (seen_at, value)
        self.early_bytes += len(event_id)
        dropped = 0
        while len(early) > MAX_EARLY or self.early_bytes > MAX_EARLY_BYTES:
            oldest, _ = early.popitem(last=False)
            self.early_bytes -= len(oldest)
            dropped += 1
        return dropped

    def _pop_early(self, event_id: str) -> Any | None:
        held = self.early.pop(event_id, None)
        if held is None:
            return None
        self.early_bytes -= len(event_id)
        return held[1]

    # -- the horizon ---------------------------------------------------------------------------
    def _expire(self) -> Expiry | None:
        """Expire what the horizon passed at the watermark (checked cheaply first: usually nothing)."""
        watermark, waiting = self.watermark, self.waiting
        if waiting:
            if waiting[next(iter(waiting))] >= watermark - self.horizon and watermark < self.next_early_sweep:
                return None
        elif not self.early or watermark < self.next_early_sweep:
            return None
        limit = watermark - self.horizon
        expired = []
        while waiting:  # arrival order is event-time order up to the allowed lateness
            event_id = next(iter(waiting))
            if waiting[event_id] >= limit:
                break
            waiting.popitem(last=False)
            expired.append(event_id)
            self._remember_expired(event_id)
        orphans = 0
        if self.early and watermark >= self.next_early_sweep:
            self.next_early_sweep = watermark + self.horizon / 64
            old = [key for key, (seen_at, _) in self.early.items() if seen_at < limit]
            for key in old:
                del self.early[key]
                self.early_bytes -= len(key)
            orphans = len(old)
        if not expired and not orphans:
            return None
        return Expiry(expired, orphans)

    def _remember_expired(self, event_id: str) -> None:
        self.recently_expired[event_id] = None
        if len(self.recently_expired) > RECENTLY_EXPIRED:
            self.recently_expired.popitem(last=False)

    # -- checkpoints ---------------------------------------------------------------------------
    def to_data(self) -> dict[str, Any]:
        """Everything but the waiting ids (the store's pending rows carry them) as plain data."""
        return {"horizon": self.horizon, "next_early_sweep": self.next_early_sweep,
                "early": [[event_id, seen_at, value] for event_id, (seen_at, value) in self.early.items()],
                "watermark": self.watermark, "recently_expired": list(self.recently_expired)}

    def load_data(self, data: dict[str, Any], waiting: Iterable[tuple[str, float]]) -> None:
        """Take the state `to_data` described and the waiting ids (event id, ts) in arrival order."""
        self.horizon, self.next_early_sweep = data["horizon"], data["next_early_sweep"]
        self.early = OrderedDict((event_id, (seen_at, value)) for event_id, seen_at, value in data["early"])
        self.early_bytes = sum(map(len, self.early))
        self.watermark = data["watermark"]
        self.recently_expired = OrderedDict.fromkeys(data["recently_expired"])
        self.waiting = OrderedDict(waiting)
