"""What the console last heard from the appliance: the polled replies and the rates' recent history.

The console's poll writes here; each view reads the part it shows (`tui.views`). A reply of any
shape may sit here: the views' painting (`tui.panels`) copes with it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from . import panels

HISTORY_SECONDS = 300  # the sparklines cover the last five minutes


@dataclass
class History:
    """The overview's sparkline series, one value per successful poll."""

    events_rate: deque[float]
    predictions_rate: deque[float]
    labels_rate: deque[float]
    p99: deque[float]

    @classmethod
    def for_rate(cls, rate: float) -> History:
        size = max(10, round(HISTORY_SECONDS * rate))
        return cls(deque(maxlen=size), deque(maxlen=size), deque(maxlen=size), deque(maxlen=size))

    def add(self, stats: dict[str, Any]) -> None:
        rates = panels.as_dict(stats.get("rates"))
        self.events_rate.append(panels.number(rates.get("events_per_second")))
        self.predictions_rate.append(panels.number(rates.get("predictions_per_second")))
        self.labels_rate.append(panels.number(rates.get("learns_per_second")))
        self.p99.append(panels.number(panels.as_dict(stats.get("predict_latency")).get("p99_us")))


@dataclass
class Snapshot:
    """The latest replies: stats and models at every poll, the rest while their view shows."""

    history: History
    stats: dict[str, Any] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    alerts: list[Any] = field(default_factory=list)
    audit: list[Any] = field(default_factory=list)
    curve: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    entity: dict[str, Any] = field(default_factory=dict)
