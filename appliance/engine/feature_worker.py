"""Per-entity feature state partitioned by key: what one owner of an entity does with an event.

With entity state spread over Bytewax workers, an event's aggregates come from each of its keys'
owners. `requests_for` turns an event into one `SliceRequest` per entity it names (routed by its
`owner_key`, "key=value"); the owner reads that entity's aggregates as of the event's time from the
state *before* the event, then folds the event in (`answer`): exactly what `FeatureSpace.compute`
and `FeatureSpace.update` do for that key in the single engine, so an event never sees itself.
`SliceJoin` gathers the slices of one event (keyed by its sequence number) until all have come;
`merged` puts them back in the feature space's key order, the order `compute` produces them in.

Whether an event is read (scored here, not over the socket) and folded (part of the stream: not
late, not scored only) is decided before the fan-out, by the one step that owns the watermark, so
every worker agrees.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from appliance.features.entity_state import KeyLayout, aggregates_into, updated


class SliceRequest(NamedTuple):
    """One entity's part of an event, sent to the entity's owner."""

    seq: int  # the event's position in the stream (what the slices are joined on)
    key: str  # the entity key ("card_id")
    entity: str  # its value in the event
    ts: float  # the event time
    values: dict[str, Any]  # the event's fields (what a fold reads)
    read: bool  # read the aggregates before the event (False: scored over the socket already)
    fold: bool  # fold the event into the state after the read (False: late, duplicate, scored only)
    parts: int  # how many slices the event has in all

    @property
    def owner_key(self) -> str:
        """The Bytewax key of the entity's owner: one state per (key, value)."""
        return f"{self.key}={self.entity}"


class FeatureSlice(NamedTuple):
    """One entity's aggregates for one event, as of the event's time, before it."""

    seq: int
    key: str
    aggregates: dict[str, float]  # empty when the request was not read
    parts: int


def requests_for(seq: int, values: dict[str, Any], ts: float, layouts: dict[str, KeyLayout],
                 read: bool, fold: bool) -> list[SliceRequest]:
    """Return one request per entity key the event names (none: the event has no entity)."""
    keys = [key for key in layouts if values.get(key) is not None]
    return [SliceRequest(seq, key, str(values[key]), ts, values, read, fold, len(keys)) for key in keys]


def answer(layouts: dict[str, KeyLayout], state: tuple | None,
           request: SliceRequest) -> tuple[tuple | None, FeatureSlice]:
    """Read the entity's aggregates before the event, then fold it in; return the new state and the slice."""
    layout = layouts[request.key]
    aggregates: dict[str, float] = {}
    if request.read:
        aggregates_into(aggregates, layout, state, request.ts)
    if request.fold:
        state = updated(layout, state, request.values, request.ts)
    return state, FeatureSlice(request.seq, request.key, aggregates, request.parts)


class SliceJoin:
    """The slices of one event, until all `parts` have come."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[str, float]] = {}

    def add(self, piece: FeatureSlice) -> dict[str, dict[str, float]] | None:
        """Add a slice; return every slice of the event (key -> aggregates) once all have come."""
        self.slices[piece.key] = piece.aggregates
        return self.slices if len(self.slices) >= piece.parts else None


def merged(layouts: dict[str, KeyLayout], slices: dict[str, dict[str, float]], ts: float) -> dict[str, float]:
    """The event's aggregates in the space's key order, as `compute` lays them out; a key the event
    does not name reads as a never-seen entity (its counts 0), as it does in `compute`."""
    x: dict[str, float] = {}
    for key, layout in layouts.items():
        part = slices.get(key)
        if part is None:
            aggregates_into(x, layout, None, ts)
        else:
            x.update(part)
    return x
