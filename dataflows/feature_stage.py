"""Entity state partitioned across Bytewax workers: fan an event out to its entities' owners, join the slices.

    owner_key    ("key=value", SliceRequest)                  one owner per entity, on any worker
    entities     ("key=value", FeatureSlice)                  read before the event, then fold it in
    event_key    ("<seq>", FeatureSlice)                      the slices of one event meet
    join_slices  ("<seq>", {key: aggregates})                 once all of the event's slices came

Each owner's state is that entity's window state (`features.entity_state`), the same tuple the
single engine keeps in `Engine.entities`. Requests of one entity reach its owner in the order they
were sent, so an entity's events meet its state in stream order (`engine.feature_worker`).
"""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.operators import KeyedStream

from appliance.engine.feature_worker import FeatureSlice, SliceJoin, SliceRequest, answer
from appliance.features.entity_state import KeyLayout


def partitioned_features(requests: Stream[SliceRequest],
                         layouts: dict[str, KeyLayout]) -> KeyedStream[dict[str, dict[str, float]]]:
    """Answer each request at its entity's owner; emit each event's slices (keyed by its seq) once all came."""
    keyed = op.key_on("owner_key", requests, lambda request: request.owner_key)

    def own(state: tuple | None, request: SliceRequest) -> tuple[tuple | None, FeatureSlice]:
        return answer(layouts, state, request)

    slices = op.stateful_map("entities", keyed, own)
    by_event = op.key_on("event_key", op.key_rm("entity_rm", slices), lambda piece: str(piece.seq))

    def join(pending: SliceJoin | None, piece: FeatureSlice) -> tuple[SliceJoin | None, dict | None]:
        pending = pending or SliceJoin()
        done = pending.add(piece)
        return (None, done) if done is not None else (pending, None)

    joined = op.stateful_map("join_slices", by_event, join)
    return op.filter_value("complete", joined, lambda slices: slices is not None)
