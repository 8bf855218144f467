"""The appliance dataflow: read -> parse -> route -> engine -> store.

    read    (source, offset, payload)                       one partition per input
    parse   EventItem | LabelItem | DeadItem | ControlItem (`appliance.engine.items`)  validate; bad input: a dead letter
    route   ("engine", item)                                 one engine owns features and models
    engine  ("rows", {table: [row]}) | ("checkpoint", fp, payload)
    store   batched, ordered writes to SQLite

The engine is a single keyed state on purpose: events of one entity must meet the entity's state in
arrival order, and an event touches several entities (card, user, device), so sharding entities
across workers would reorder them. Bytewax still parallelises reading and parsing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from appliance.config.file import EventSchema
from appliance.engine.control import from_record
from appliance.engine.core import Engine
from appliance.engine.items import ControlItem, DeadItem, EventItem, Item, ItemRef, LabelItem, Served
from appliance.errors import InvalidEvent
from appliance.ingest.events import Event, decode, parse_event
from appliance.ingest.order_log import OrderLog
from appliance.learning.following import VIEW_EVERY

INBOX = "inbox"


def is_inbox(source: str) -> bool:
    """The primary's inbox ("inbox") or a serving child's ("inbox-<n>", `appliance.serving.child`)."""
    return source == INBOX or (source[:6] == "inbox-" and source[6:].isdigit())


def make_parser(schema: EventSchema, task: str,
                poisoned: Mapping[ItemRef, str] | None = None) -> Callable[[list[tuple]], list[Item]]:
    """Return the batch parser: raw `(source, offset, payload)` items to engine items.

    An item in `poisoned` (one the engine failed on again and again, `appliance.runtime.supervision`)
    becomes a dead letter with the given reason instead of reaching the engine.
    """

    def parse_batch(items: list[tuple]) -> list[Item]:
        out: list[Item] = []
        for source, offset, payload in items:
            try:
                out.append(_parse_one(source, offset, payload, schema, task))
            except InvalidEvent as exc:
                out.append(DeadItem(source, offset, _text(payload), exc.reason))
        return out

    if not poisoned:
        return parse_batch
    poison = dict(poisoned)  # this flow's: the supervisor's grows only between flows

    def parse_batch_sparing(items: list[tuple]) -> list[Item]:
        out: list[Item] = []
        for raw in items:
            reason = poison.get(ItemRef(raw[0], raw[1]))
            if reason is None:
                out.extend(parse_batch([raw]))
            else:
                out.append(DeadItem(raw[0], raw[1], _text(raw[2]), reason))
        return out

    return parse_batch_sparing


def _parse_one(source: str, offset: int, payload: Any, schema: EventSchema, task: str) -> Item:
    served = None
    ingest = True
    if is_inbox(source):
        record = _inbox_record(payload)
        if "control" in record:
            return ControlItem(source, offset, from_record(record))
        payload = record.get("event")
        if payload is None:
            raise InvalidEvent("inbox record has no event")
        served = _served(record.get("served"))
        ingest = bool(record.get("ingest", True))
    parsed = parse_event(payload, schema, task)
    if isinstance(parsed, Event):
        return EventItem(source, offset, parsed, served, ingest)
    return LabelItem(source, offset, parsed)


def _served(served: Any) -> Served | None:
    """What the server logged of an event it scored (written by our own server: malformed is a dead letter)."""
    if served is None:
        return None
    try:
        return Served(served["x"], served["score"], served["version"])
    except (TypeError, KeyError):
        raise InvalidEvent(f"inbox record's served is malformed: {str(served)[:200]}") from None


def _inbox_record(payload: bytes) -> dict:
    """Decode an inbox line; the server writes only whole JSON records, so any other line is the
    fragment of a write cut short (a kill or a full disk), which was never acknowledged."""
    try:
        return decode(payload)
    except InvalidEvent as exc:
        raise InvalidEvent(f"torn write (never acknowledged): {exc.reason}") from None


def _text(payload: Any) -> str:
    if isinstance(payload, dict):
        return orjson.dumps(payload, default=str).decode()
    if isinstance(payload, bytes):
        return payload.decode("utf-8", errors="replace")
    return str(payload)


STATS_DELAY = 0.25  # seconds a throttled stats snapshot may lag the engine


class EngineLogic(StatefulBatchLogic[Item, tuple, None]):
    """Feeds batches to the engine and emits its rows, with a checkpoint every few seconds."""

    def __init__(self, engine: Engine, fingerprint: str, checkpoint_seconds: float,
                 after_batch: Callable[[Engine, bool], bool] | None = None,
                 order_log: OrderLog | None = None,
                 on_failure: Callable[[ItemRef, BaseException], None] | None = None) -> None:
        self.engine = engine
        self.order_log = order_log
        self.on_failure = on_failure
        self.fingerprint = fingerprint
        self.every = checkpoint_seconds
        self.after_batch = after_batch
        self.next_checkpoint = time.monotonic() + checkpoint_seconds
        self.changed = False
        self.stale_stats = False  # a batch whose stats were not published yet (the board throttles)

    def on_batch(self, values: list[Item]) -> tuple[list[tuple], bool]:
        if self.order_log is not None:  # after a restart: the order of the first run, then arrival order
            values = self.order_log.order(values)
        process = self.engine.process
        item = None
        try:
            for item in values:
                process(item)
        except BaseException as exc:  # the flow ends; the supervisor learns which item it failed on
            if self.on_failure is not None and item is not None:
                self.on_failure(ItemRef(item.source, item.offset), exc)
            raise
        self.engine.model.refresh_view()  # what the socket and the serving children score with (`view`)
        self.changed = True
        out: list[tuple] = [("rows", self.engine.take_rows())]
        if time.monotonic() >= self.next_checkpoint:
            out.append(self._checkpoint())
        self._publish(force=False)
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[tuple], bool]:
        self.engine.model.refresh_view(force=True)  # after a burst, the last labels reach the socket too
        if self.stale_stats:
            self._publish(force=True)
        if time.monotonic() < self.next_checkpoint:
            return [], StatefulBatchLogic.RETAIN
        if not self.changed:
            self.next_checkpoint = time.monotonic() + self.every
            return [], StatefulBatchLogic.RETAIN
        return [("rows", self.engine.take_rows()), self._checkpoint()], StatefulBatchLogic.RETAIN

    def _publish(self, force: bool) -> None:
        if self.after_batch is not None:
            published = self.after_batch(self.engine, force)
            self.stale_stats = not published

    def on_eof(self) -> tuple[list[tuple], bool]:
        self.engine.model.refresh_view(force=True)
        out = [("rows", self.engine.take_rows()), self._checkpoint()]
        self._publish(force=True)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        delay = max(0.0, self.next_checkpoint - time.monotonic())
        if self.stale_stats:
            delay = min(delay, STATS_DELAY)
        if self.engine.model.view_stale:
            delay = min(delay, VIEW_EVERY)
        return datetime.now(UTC) + timedelta(seconds=delay)

    def snapshot(self) -> None:
        return None  # the engine checkpoints itself into the store, with the input offsets

    def _checkpoint(self) -> tuple:
        self.next_checkpoint = time.monotonic() + self.every
        self.changed = False
        return ("checkpoint", self.fingerprint, self.engine.checkpoint())


def build_flow(source: Source, sink: Sink, engine: Engine, *, fingerprint: str = "",
               checkpoint_seconds: float = 2.0, after_batch: Callable[[Engine, bool], bool] | None = None,
               order_log: OrderLog | None = None, poisoned: Mapping[ItemRef, str] | None = None,
               on_failure: Callable[[ItemRef, BaseException], None] | None = None) -> Dataflow:
    """Build the appliance dataflow over any source of `(source, offset, payload)` and any sink.

    With an `order_log`, the engine records the order in which it takes items from the inputs and,
    after a restart, processes what the last run did after its checkpoint in that same order.
    `on_failure` hears which item the engine failed on; items in `poisoned` are dead-lettered unread.
    """
    flow = Dataflow("appliance")
    raw = op.input("read", flow, source)
    parsed = op.flat_map_batch("parse", raw, make_parser(engine.config.event, engine.task, poisoned))
    routed = op.key_on("route", parsed, lambda _item: "engine")
    results = op.stateful_batch(
        "engine", routed, lambda _resume: EngineLogic(engine, fingerprint, checkpoint_seconds, after_batch, order_log,
                                    on_failure)
    )
    op.output("store", op.key_rm("unkey", results), sink)
    return flow
