"""A model version and a serving decision: what the online model hands the engine to log, audit
and publish (`learning.OnlineModel` makes them)."""

from __future__ import annotations

from dataclasses import dataclass
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
