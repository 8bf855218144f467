"""Publishing the engine's serving state to the online store, once per batch.

`OnlinePublisher` turns what a batch changed into one `storage.online_store.Publication`: the entity
states it touched (through `entity_codec`, never the tuple's shape), the ones it evicted, and
whenever they changed the label rates, the attribute tables' versions and the served model. At
start `rebuild` writes everything from the restored engine, so the online store equals the
checkpoint the engine resumed from.
"""

from __future__ import annotations

import math
import time
from typing import Any

from appliance.engine.core import Engine
from appliance.features.entity_codec import encode_state
from appliance.storage.online_store import FORMAT_VERSION, OnlineMeta, OnlineWriter, Publication
from appliance.storage.snapshot import dump_object


def space_record(engine: Engine) -> dict[str, Any]:
    """What `FeatureSpace.compute` reads besides entity states and the config: label rates (learned
    from labels) and which version of each attribute table serves. Custom features keep no state
    (`features.custom`); hashed names and offline model scores follow from the config."""
    rates = engine.space.label_rates
    return {"label_rates": None if rates is None else rates.to_data(),
            "attributes": {name: table.version for name, table in engine.space.attributes.items()}}


class OnlinePublisher:
    """The engine's side of the online store (runs on the flow's thread, after each batch)."""

    def __init__(self, writer: OnlineWriter, engine: Engine) -> None:
        self.writer = writer
        self.engine = engine
        self.seq = 0
        self.space_seq = 0
        self.model_seq = 0
        self._space_mark: tuple | None = None
        self._view: Any = None  # the model view last written (`OnlineModel.view`)

    def rebuild(self) -> None:
        """Write every entity state and the whole space from the (restored) engine, and start tracking."""
        engine = self.engine
        engine.touched = set()
        states = [(key, entity, encode_state(state)) for key, entity, state in engine.space.iter_states(engine.entities)]
        self._write(states, [], force=True)

    def publish(self) -> None:
        """Write what the batches since the last publication changed (nothing if nothing changed).

        A write that fails (a full disk) keeps what it would have written for the next batch's
        publication: replicas read the last committed batch meanwhile, never a half of one.
        """
        engine = self.engine
        touched = engine.touched
        if not touched and self._mark() == self._space_mark and engine.model.view is self._view:
            return
        entities = engine.entities
        states, deleted = [], []
        for key, entity in touched:
            state = entities[key].get(entity)
            if state is None:
                deleted.append((key, entity))
            else:
                states.append((key, entity, encode_state(state)))
        self._write(states, deleted, force=False)
        touched.clear()  # written: only now (a failed write leaves them for the next one)

    def _mark(self) -> tuple:
        """A cheap fingerprint of the space record: labels learned into the rates, attribute versions."""
        rates = self.engine.space.label_rates
        return (None if rates is None else rates.n,
                tuple(table.version for table in self.engine.space.attributes.values()))

    def _write(self, states: list, deleted: list, force: bool) -> None:
        engine = self.engine
        served = engine.model.view  # the served version, or a copy of the learner it follows
        space = model = None
        mark = self._mark()
        space_seq, model_seq = self.space_seq, self.model_seq
        if force or mark != self._space_mark:
            space, space_seq = space_record(engine), space_seq + 1
        if force or served is not self._view:
            model, model_seq = dump_object(served.model), model_seq + 1
        watermark = engine.watermark if math.isfinite(engine.watermark) else None
        meta = OnlineMeta(FORMAT_VERSION, self.seq + 1, watermark, served.version, served.name, space_seq,
                          model_seq, time.time())
        self.writer.write(Publication(meta, states, deleted, space, model))
        self.seq, self.space_seq, self.model_seq = meta.seq, space_seq, model_seq
        self._space_mark, self._view = mark, served
