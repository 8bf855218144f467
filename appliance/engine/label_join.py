"""Join delayed labels to the predictions logged when their events were scored.

A prediction waits in `pending` (keyed by event id) with the feature vector it was made on, until
its label arrives or its horizon passes in event time; then the default label is learned or the
prediction is dropped, as the policy says. Which label meets which prediction, which predictions
expire and the labels that arrive before their event are `admission.Admission`'s; memory is
bounded by the event rate times the horizon.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, NamedTuple

from appliance.config.file import LabelPolicy
from appliance.engine.admission import DEFAULT_HORIZON
from appliance.learning.shadow import Shadow
from appliance.storage.rows import decode_vector, json_vector
from appliance.storage.snapshot import pack as pack_data
from appliance.storage.snapshot import unpack as unpack_data


class Scored(NamedTuple):
    """What learning needs of a prediction: its features, every candidate's shadow prediction
    (`Shadow`), the served prediction and version, all as they were at prediction time."""

    event_id: str
    seq: int  # the event's, the key of its rows in the store (its label's too)
    ts: float
    x: dict
    shadow: Shadow
    y_served: Any
    version: int
    keys: tuple | None = None  # the event's entity key values, when label means learn from its label


class Pending:
    """A scored event waiting for its label, packed into one blob: the feature vector as it was
    logged (`appliance.storage.rows`), the event's seq, the shadow predictions, the served prediction
    and version, as the MessagePack list `[features, seq, shadow, y_served, version]` (`snapshot.pack`:
    plain data), and the event's key values last when label means learn from its label
    (`[features] label_means`).

    Packed, a waiting prediction is two small objects instead of a hundred (a dict and its floats),
    and the blob is what the checkpoint writes to the store as it is. `unpack` rebuilds it once,
    when the label arrives.
    """

    __slots__ = ("event_id", "ts", "packed")

    def __init__(self, event_id: str, ts: float, packed: bytes) -> None:
        self.event_id = event_id
        self.ts = ts
        self.packed = packed

    @classmethod
    def pack(cls, scored: Scored, features: bytes | None = None) -> Pending:
        """Pack a prediction; `features` is its vector already encoded (`VectorCodec.encode`), if at hand."""
        features = json_vector(scored.x) if features is None else features
        fields = (features, scored.seq, *scored.shadow.fields(), scored.y_served, scored.version)
        return cls(scored.event_id, scored.ts, pack_data(fields if scored.keys is None else (*fields, scored.keys)))

    def unpack(self) -> Scored:
        features, seq, scores, reference, late, y_served, version, *keys = unpack_data(self.packed)
        return Scored(self.event_id, seq, self.ts, decode_vector(features), Shadow(scores, reference, late), y_served,
                      version, tuple(keys[0]) if keys else None)

    def repack(self, scored: Scored) -> None:
        """Replace the packed fields (a challenger's late shadow prediction was added)."""
        features = unpack_data(self.packed)[0]  # the vector is unchanged
        self.packed = Pending.pack(scored, features).packed


class LabelJoin:
    """Pending predictions, each until its label arrives or its horizon passes.

    Which prediction a label joins and which ones expire is decided first by `admission.Admission`
    (from ids and event times); the engine then takes the prediction from here.

    The pending predictions are checkpointed as changes: `changes` returns what was added (or
    repacked) and what left since the last call, and the store applies them to its table of
    pending rows in the checkpoint's transaction. A checkpoint's cost follows what changed, not
    how many predictions wait (a long label horizon keeps a great many waiting).
    """

    def __init__(self, policy: LabelPolicy) -> None:
        self.horizon = policy.horizon if policy.horizon is not None else DEFAULT_HORIZON
        self.default = policy.default
        # OrderedDict, not dict: popping from the front of a plain dict degrades to O(n) per peek.
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self.delays: list[float] = []  # bounded sample of label delays, for stats
        self.seq = 0  # arrival order of pending predictions, kept by the store's rows
        self._added: dict[str, int] = {}  # since the last checkpoint: event id -> seq
        self._removed: set[str] = set()

    def to_data(self) -> dict[str, Any]:
        """Everything but the pending predictions (the store's rows carry them) as plain data."""
        return {"horizon": self.horizon, "default": self.default, "delays": self.delays, "seq": self.seq}

    def load_data(self, data: dict[str, Any]) -> None:
        """Take the state `to_data` described; `load` then takes the pending predictions."""
        self.horizon, self.default = data["horizon"], data["default"]
        self.delays, self.seq = data["delays"], data["seq"]
        self.pending, self._added, self._removed = OrderedDict(), {}, set()

    def load(self, rows: Iterable[tuple[str, float, bytes]]) -> None:
        """Take back the pending predictions of the store's rows (event id, ts, packed), in seq order."""
        for event_id, ts, packed in rows:
            self.pending[event_id] = Pending(event_id, ts, packed)

    def changes(self) -> tuple[list[tuple[str, int, float, bytes]], list[str]]:
        """Return rows (event id, seq, ts, packed) to write and event ids to delete since the last call."""
        pending = self.pending
        rows = [(event_id, seq, pending[event_id].ts, pending[event_id].packed)
                for event_id, seq in self._added.items()]
        removed = list(self._removed)
        self._added, self._removed = {}, set()
        return rows, removed

    def touch_all(self) -> None:
        """Mark every pending prediction changed (after they were repacked in place)."""
        for event_id in self.pending:
            self.seq += 1
            self._added[event_id] = self.seq

    def add(self, pending: Pending) -> None:
        """Start waiting for the label of a scored event."""
        self.pending[pending.event_id] = pending
        self.seq += 1
        self._added[pending.event_id] = self.seq

    def take(self, event_id: str) -> Pending | None:
        """Return and forget the prediction waiting for this label, if any."""
        pending = self.pending.pop(event_id, None)
        if pending is not None:
            self._forget(event_id)
        return pending

    def _forget(self, event_id: str) -> None:
        # Even one added since the last checkpoint may have a row from an earlier one (touch_all).
        self._added.pop(event_id, None)
        self._removed.add(event_id)

    def record_delay(self, delay: float) -> None:
        """Remember a label delay; keeps the most recent 4,096."""
        self.delays.append(delay)
        if len(self.delays) > 8192:
            del self.delays[:4096]

    def delay_quantiles(self) -> dict[str, float]:
        """Return p50/p90/p99 label delay in seconds over recent labels."""
        if not self.delays:
            return {}
        ordered = sorted(self.delays[-4096:])
        pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
        return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99)}

