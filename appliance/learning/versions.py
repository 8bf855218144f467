"""A model version, the book of versions, and a serving decision: what the online model hands the
engine to log, audit and publish (`learning.OnlineModel` makes them)."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from typing import Any

from appliance.config.file import CHAMPION
from appliance.storage.snapshot import dump_object, load_object


@dataclass(frozen=True)
class Published:
    """An immutable served model version."""

    version: int
    model: Any
    spec: str
    parent: int | None
    n_learned: int
    event_ts: float | None
    wall_ts: float
    metrics: dict
    candidate: str = CHAMPION  # the lineage: which candidate's learner this is a copy of

    @property
    def name(self) -> str:
        return f"v{self.version}"

    def describe(self) -> dict[str, Any]:
        """Metadata without the model: what `models` lists."""
        return {"version": self.version, "spec": self.spec, "parent": self.parent, "n_learned": self.n_learned,
                "event_ts": self.event_ts, "wall_ts": self.wall_ts, "metrics": self.metrics,
                "candidate": self.candidate}

    def to_data(self) -> dict[str, Any]:
        """The version as plain data: its metadata and its model pickled on its own."""
        return {**self.describe(), "model": dump_object(self.model)}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Published:
        """The version `to_data` described."""
        return cls(**{**data, "model": load_object(data["model"])})


@dataclass(frozen=True)
class Decision:
    """A change to serving or to the candidates, for the engine to log, audit and publish."""

    action: str  # publish | refuse | freeze | promote | rollback | keep | challenger | retire
    version: int | None
    reason: str
    new_version: Published | None = None  # a version to write to the registry
    switched: bool = False  # whether the served version changed
    candidate: str | None = None  # the challenger a "challenger" decision started or put up


HISTORY = 1000  # served versions remembered for rollback
RECENT = 8  # published versions kept in memory, so a promote never waits for the store's commit


def copy_model(model: Any) -> Any:
    """An independent copy of a model: a pickle round trip, the form the registry stores it in, at
    about half the cost of `copy.deepcopy` (a trained `ScaleNumeric | LogisticRegression`: 58 against
    103 us). A version is frozen at publication and the followed learner is copied after batches, so
    this runs on the engine's thread. Only our own objects: nothing here came over a socket."""
    return pickle.loads(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass
class Versions:
    """Every version's number (never reused) and metadata, the versions that served in order, and
    the newest ones with their models (the rest live in the store's registry)."""

    last: int = 0
    catalog: dict[int, dict[str, Any]] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)
    recent: dict[int, Published] = field(default_factory=dict)

    def freeze(self, model: Any, spec: str, n_learned: int, metrics: dict, *, parent: int | None,
               event_ts: float | None, candidate: str) -> Published:
        """A new version of a copy of `model` (a learner keeps learning; its version does not)."""
        return self.add(copy_model(model), spec, n_learned, metrics, parent=parent, event_ts=event_ts,
                        candidate=candidate)

    def add(self, model: Any, spec: str, n_learned: int, metrics: dict, *, parent: int | None,
            event_ts: float | None, candidate: str) -> Published:
        """A new version of `model` itself, numbered, catalogued and kept among the recent ones."""
        self.last += 1
        published = Published(version=self.last, model=model, spec=spec, parent=parent, n_learned=n_learned,
                              event_ts=event_ts, wall_ts=time.time(), metrics=metrics, candidate=candidate)
        self.catalog[published.version] = published.describe()
        self.recent[published.version] = published
        while len(self.recent) > RECENT:
            del self.recent[next(iter(self.recent))]
        return published

    def served(self, version: int) -> None:
        """Record that `version` serves now."""
        self.history.append(version)
        del self.history[:-HISTORY]

    def previous(self, current: int) -> int | None:
        """The version that served before `current` (what a rollback returns to)."""
        for version in reversed(self.history):
            if version != current:
                return version
        return None
