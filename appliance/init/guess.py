"""What `appliance init` made of a stream: each field's role, each key's windows, and why.

The guesses (`starter.guess_config`) fill a `Guess`; `starter_toml.render_toml` writes it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.init.profile import StreamProfile

MIN_BUCKETS = 16


@dataclass
class Role:
    """What init made of one field, and why."""

    name: str
    roles: list[str]
    why: str
    optional: bool = False


@dataclass
class Windows:
    """One key's window lengths (seconds, shortest first, 1 to 3 of them) and why."""

    scales: tuple[float, ...]
    why: str

    @property
    def shortest(self) -> float:
        return self.scales[0]

    @property
    def longest(self) -> float:
        return self.scales[-1]


@dataclass
class Guess:
    """The starter config's content, each choice beside its reason."""

    profile: StreamProfile
    fields: list[Role] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)  # [event] categorical
    one_hot: list[str] = field(default_factory=list)  # [features] categorical: categoricals and small keys
    optional: list[str] = field(default_factory=list)
    windows: dict[str, Windows] = field(default_factory=dict)
    buckets: tuple[int, str] = (MIN_BUCKETS, "")
    collisions: dict[str, float] = field(default_factory=dict)  # one-hot field -> expected share in a shared bucket
    label_rates: tuple[bool, str] = (False, "")
    lateness: tuple[float, str] = (300.0, "")
    labels: dict[str, Any] = field(default_factory=dict)
    amount: tuple[str | None, str] = (None, "")

    def warnings(self) -> list[str]:
        """What will go wrong if the file is replayed as it is."""
        found = list(self.profile.layout.notes)
        if self.lateness[1].startswith("SORT"):
            found.append("the file is not in time order; sort it by time, or many events will be dead letters")
        if self.labels.get("why", "").startswith(("LABEL NOT BINARY", "no label field")):
            found.append(self.labels["why"])
        return found
