"""What the dataflow hands the engine: one small named type per kind of item, in arrival order.

Every item carries the input it came from (`source`) and its offset there (None for an item that
is not read from an input, such as a bench's own command); `Engine.process` applies them:

    EventItem    an event to score and, unless scored only (`ingest` false), to fold into the stream
    LabelItem    a label that arrives on its own, for the prediction logged with its event
    DeadItem     input that did not parse: stored as a dead letter with the reason
    ControlItem  an operator's command from the inbox (`commands.Command`), applied between two events
"""

from __future__ import annotations

from typing import NamedTuple

from appliance.engine.control import Command
from appliance.ingest.events import Event, Label


class ItemRef(NamedTuple):
    """Where an item came from: its input and its offset there (what the order log and dead letters name)."""

    source: str
    offset: int | None


class Served(NamedTuple):
    """An event scored over the socket before it reached the stream: what was served then."""

    x: dict  # the feature vector, as computed when it was scored
    score: float  # the served score (the positive class's probability, or the regression value)
    version: int  # the version that served it


class EventItem(NamedTuple):
    source: str
    offset: int | None
    event: Event
    served: Served | None = None  # scored over the socket already: log this, do not score again
    ingest: bool = True  # False: scored only, never part of the stream


class LabelItem(NamedTuple):
    source: str
    offset: int | None
    label: Label


class DeadItem(NamedTuple):
    source: str
    offset: int | None
    payload: str  # the input as text
    reason: str


class ControlItem(NamedTuple):
    source: str
    offset: int | None
    command: Command


Item = EventItem | LabelItem | DeadItem | ControlItem
