"""A serving replica: scores a request from the online store, as the engine's process would.

A replica runs in any process. Per request it opens one LMDB read transaction
(`storage.online_store.OnlineView`: one committed batch, whole), reads the meta record, and if the
published space or served version changed since its last request reloads them: label rates from
the `space` record, attribute tables from the SQLite store by the versions `space` names (read-only
connection), the served model from the `model` record. Features come from the same
`FeatureSpace.compute` over entity states decoded with `entity_codec` as the request asks for them,
and the score from the same `predict_with`; so a replica's (x, score) for a request equals the
engine's on the same state, bit for bit (tests/serving/test_replica.py).

Decoding an entity's bytes was a third of a request's time in a serving child (three to four
decodes, ~6 us each, on the sample). A replica keeps the states it decoded (`DecodedStates`, at most
`STATE_CACHE` of them) with the bytes they came from, and reuses one only when the store hands it
the same bytes again: an entity whose state changed is decoded afresh, so what a request sees is
still exactly the batch its transaction reads.

A publication or a rollback reaches a replica with the first request after the batch that applied
it commits: the replica checks the meta record on every request (one LMDB get), and loads the model
once per version change.

A serving child reads everything of one request in one transaction (`request`): the checks before
the score (the watermark) and the score see the same batch, and the request opens one transaction,
not two.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.config.file import Config
from appliance.features import attributes
from appliance.features.entity_codec import decode_state
from appliance.features.label_rates import LabelRates
from appliance.features.space import FeatureSpace
from appliance.learning.online_model import predict_with
from appliance.storage.online_store import OnlineMeta, OnlineReader, OnlineView
from appliance.storage.snapshot import load_object

if TYPE_CHECKING:
    import sqlite_utils


@dataclass(frozen=True)
class ReplicaScore:
    """One scored request: the features, the served version's prediction, and the batch it saw."""

    x: dict[str, float]
    y: Any  # probability dict (classification) or number (regression), as `predict_with` returns
    version: int
    version_name: str
    meta: OnlineMeta


STATE_CACHE = 8192  # decoded entity states a replica keeps (about 2 KB each on the sample: ~16 MB)


class DecodedStates:
    """Entity states decoded from the store's bytes, kept by (key, entity) with those bytes.

    A state is reused only when the store returns bytes equal to those it was decoded from. Past
    `capacity` entries the one stored longest ago is dropped. `hits` and `decoded` count the two paths.
    """

    __slots__ = ("capacity", "entries", "hits", "decoded")

    def __init__(self, capacity: int = STATE_CACHE) -> None:
        self.capacity = capacity
        self.entries: dict[tuple[str, str], tuple[bytes, tuple]] = {}  # (key, entity) -> (bytes, state)
        self.hits = 0
        self.decoded = 0

    def state(self, key: str, entity: str, blob: bytes) -> tuple:
        """The state `blob` encodes (`entity_codec.decode_state`), decoded at most once while unchanged."""
        name = (key, entity)
        entries = self.entries
        entry = entries.get(name)
        if entry is not None and entry[0] == blob:
            self.hits += 1
            return entry[1]
        state = decode_state(blob)
        self.decoded += 1
        if entry is not None:
            del entries[name]  # re-inserted below: the newest again
        elif len(entries) >= self.capacity:
            if not self.capacity:
                return state
            del entries[next(iter(entries))]  # the one stored longest ago
        entries[name] = (blob, state)
        return state


class _KeyStates:
    """One key's entity states as `FeatureSpace.compute` asks for them (`.get(entity)`), decoded lazily."""

    __slots__ = ("view", "key", "decoded")

    def __init__(self, view: OnlineView, key: str, decoded: DecodedStates) -> None:
        self.view, self.key, self.decoded = view, key, decoded

    def get(self, entity: str, default: Any = None) -> Any:
        blob = self.view.state(self.key, entity)
        return default if blob is None else self.decoded.state(self.key, entity, blob)


class Replica:
    """Scores requests from the online store; reloads the space and the model when they change."""

    def __init__(self, config: Config, reader: OnlineReader, *, state_cache: int = STATE_CACHE) -> None:
        self.config = config
        self.task = config.model.task
        self.reader = reader
        self.space = FeatureSpace.for_config(config)
        self._space_seq = -1
        self._model_seq = -1
        self.model: Any = None
        self._db: sqlite_utils.Database | None = None
        self.states = DecodedStates(state_cache)
        self._view: OnlineView | None = None  # the open request's transaction (`request`)
        self._meta: OnlineMeta | None = None  # its meta record, once read

    def request(self) -> _Request:
        """`with replica.request():` every read until the block ends (`meta`, `score`) is of one
        transaction, one committed batch."""
        return _Request(self)

    def score(self, values: dict[str, Any], ts: float) -> ReplicaScore:
        """Features at event time `ts` from the entities' published states, and the served score."""
        if self._view is not None:
            return self._score(self._view, self.meta(), values, ts)
        with self.reader.view() as view:
            return self._score(view, view.meta(), values, ts)

    def _score(self, view: OnlineView, meta: OnlineMeta, values: dict[str, Any], ts: float) -> ReplicaScore:
        self._refresh(view, meta)
        states = self.states
        store = {key: _KeyStates(view, key, states) for key in self.space.layouts}
        x = self.space.compute(values, ts, store)  # type: ignore[arg-type]
        y = predict_with(self.task, self.model, x)
        return ReplicaScore(x, y, meta.version, meta.version_name, meta)

    def meta(self) -> OnlineMeta:
        """The meta record: of the open request's transaction (read once per request), else of a new one."""
        if self._view is None:
            with self.reader.view() as view:
                return view.meta()
        if self._meta is None:
            self._meta = self._view.meta()
        return self._meta

    def _refresh(self, view: OnlineView, meta: OnlineMeta) -> None:
        if meta.space_seq != self._space_seq:
            self._load_space(view.space())
            self._space_seq = meta.space_seq
        if meta.model_seq != self._model_seq:
            blob = view.model()
            if blob is None:
                raise RuntimeError("the online store names a served version but holds no model")
            self.model = load_object(blob)
            self._model_seq = meta.model_seq

    def _load_space(self, space: dict) -> None:
        rates = space.get("label_rates")
        self.space.label_rates = None if rates is None else LabelRates.from_data(rates)
        for spec in self.config.features.attributes:
            version = space.get("attributes", {}).get(spec.name, 0)
            current = self.space.attributes.get(spec.name)
            if current is not None and current.version == version:
                continue
            table = attributes.AttributeTable.empty(spec) if not version else attributes.read_version(
                self._store(), spec, version)
            self.space.set_attributes(table)

    def _store(self) -> sqlite_utils.Database:
        if self._db is None:  # imported here: a child with no attribute table never needs it (~0.3 s)
            import sqlite_utils

            self._db = sqlite_utils.Database(sqlite3.connect(f"file:{self.config.db}?mode=ro", uri=True))
        return self._db

    def _end_request(self) -> None:
        view, self._view, self._meta = self._view, None, None
        if view is not None:
            view.close()

    def close(self) -> None:
        self._end_request()
        if self._db is not None:
            self._db.conn.close()
        self.reader.close()


class _Request:
    """One request's read transaction on a replica (`Replica.request`)."""

    __slots__ = ("replica",)

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def __enter__(self) -> None:
        self.replica._view = self.replica.reader.view()

    def __exit__(self, *exc: object) -> None:
        self.replica._end_request()
