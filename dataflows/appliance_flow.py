"""The appliance dataflow: read -> parse -> route -> engine -> store.

    read    (source, offset, payload)                       one partition per input
    parse   EventItem | LabelItem | DeadItem | ControlItem (`appliance.engine.items`)  validate; bad input: a dead letter
    route   ("engine", item)                                 one engine owns the learner
    engine  ("rows", {table: [row]}) | ("checkpoint", fp, payload)
    store   batched, ordered writes to SQLite

The engine is one keyed state on purpose: the learner (label join, learning, metrics, the gate,
candidates, drift) must see every item in arrival order. Entity state need not: with entity workers
(`engine.partitions`, `appliance up --workers N`), `EngineLogic` admits a batch, hands its entity
reads and folds to N processes, and settles the batch before while they work (`_pipelined`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from appliance.config.file import EventSchema
from appliance.engine.control import from_record
from appliance.engine.core import Engine, Verdict
from appliance.engine.items import ControlItem, DeadItem, EventItem, Item, ItemRef, LabelItem, Served
from appliance.engine.partitions import Dispatched, EntityPartitions
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
IN_FLIGHT_DELAY = 0.01  # seconds a batch with the entity workers waits for the next before it is settled


class InFlight(NamedTuple):
    """A batch admitted and dispatched to the entity workers, to be settled with their replies."""

    items: list[Item]
    verdicts: list[Verdict]
    dispatched: Dispatched


class EngineLogic(StatefulBatchLogic[Item, tuple, None]):
    """Feeds batches to the engine and emits its rows, with a checkpoint every few seconds."""

    def __init__(self, engine: Engine, fingerprint: str, checkpoint_seconds: float,
                 after_batch: Callable[[Engine, bool], bool] | None = None,
                 order_log: OrderLog | None = None,
                 on_failure: Callable[[ItemRef, BaseException], None] | None = None,
                 partitions: EntityPartitions | None = None) -> None:
        self.engine = engine
        self.partitions = partitions
        self.in_flight: InFlight | None = None  # a batch admitted and with the entity workers, not settled
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
        if self.partitions is not None:
            return self._pipelined(values), StatefulBatchLogic.RETAIN
        process = self.engine.process
        item = None
        try:
            for item in values:
                process(item)
        except BaseException as exc:  # the flow ends; the supervisor learns which item it failed on
            if self.on_failure is not None and item is not None:
                self.on_failure(ItemRef(item.source, item.offset), exc)
            raise
        return self._after_settling(), StatefulBatchLogic.RETAIN

    def _after_settling(self, may_checkpoint: bool = True) -> list[tuple]:
        self.engine.model.refresh_view()  # what the socket and the serving children score with (`view`)
        self.changed = True
        out: list[tuple] = [("rows", self.engine.take_rows())]
        if may_checkpoint and time.monotonic() >= self.next_checkpoint:
            out.append(self._checkpoint())
        self._publish(force=False)
        return out

    # -- with entity workers: admit and dispatch a batch, settle the one before while they work --
    def _pipelined(self, values: list[Item]) -> list[tuple]:
        """Admit the batch and hand it to the entity workers, then settle the batch before it while
        they read and fold this one. A checkpoint is taken with nothing in flight (admission and the
        entity states then stand where the settled items left them), so when one is due the batch
        before is settled first."""
        out: list[tuple] = []
        if time.monotonic() >= self.next_checkpoint:
            out += self._settle_in_flight(may_checkpoint=True)
            if self.changed and time.monotonic() >= self.next_checkpoint:
                out.append(self._checkpoint())
        admitted = self._admit(values)
        out += self._settle_in_flight(may_checkpoint=False)  # the one before, while the workers take this one
        self.in_flight = admitted
        return out

    def _admit(self, values: list[Item]) -> InFlight:
        verdicts = [self.engine.admit(item) for item in values]
        return InFlight(values, verdicts, self.partitions.dispatch(values, verdicts))

    def _settle_in_flight(self, may_checkpoint: bool) -> list[tuple]:
        batch, self.in_flight = self.in_flight, None
        if batch is None:
            return []
        engine = self.engine
        aggregates, changes = self.partitions.collect(batch.dispatched)
        engine.take_entity_changes(changes.states, changes.evicted)
        settle = engine.settle
        item = None
        try:
            for item, verdict, pieces in zip(batch.items, batch.verdicts, aggregates):
                settle(item, verdict, pieces)
        except BaseException as exc:
            if self.on_failure is not None and item is not None:
                self.on_failure(ItemRef(item.source, item.offset), exc)
            raise
        return self._after_settling(may_checkpoint)

    def on_notify(self) -> tuple[list[tuple], bool]:
        # with entity workers, a batch that nothing came after is settled now
        out = self._settle_in_flight(may_checkpoint=True) if self.in_flight is not None else []
        self.engine.model.refresh_view(force=True)  # after a burst, the last labels reach the socket too
        if self.stale_stats:
            self._publish(force=True)
        if time.monotonic() < self.next_checkpoint:
            return out, StatefulBatchLogic.RETAIN
        if not self.changed:
            self.next_checkpoint = time.monotonic() + self.every
            return out, StatefulBatchLogic.RETAIN
        return [*out, ("rows", self.engine.take_rows()), self._checkpoint()], StatefulBatchLogic.RETAIN

    def _publish(self, force: bool) -> None:
        if self.after_batch is not None:
            published = self.after_batch(self.engine, force)
            self.stale_stats = not published

    def on_eof(self) -> tuple[list[tuple], bool]:
        out = self._settle_in_flight(may_checkpoint=False) if self.partitions is not None else []
        self.engine.model.refresh_view(force=True)
        out += [("rows", self.engine.take_rows()), self._checkpoint()]
        self._publish(force=True)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.in_flight is not None:
            return datetime.now(UTC) + timedelta(seconds=IN_FLIGHT_DELAY)
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
               on_failure: Callable[[ItemRef, BaseException], None] | None = None,
               partitions: EntityPartitions | None = None) -> Dataflow:
    """Build the appliance dataflow over any source of `(source, offset, payload)` and any sink.

    With an `order_log`, the engine records the order in which it takes items from the inputs and,
    after a restart, processes what the last run did after its checkpoint in that same order.
    `on_failure` hears which item the engine failed on; items in `poisoned` are dead-lettered unread.
    With `partitions` (started and loaded from the engine), entity state is read and folded by
    worker processes while the engine settles the batch before (`engine.partitions`).
    """
    flow = Dataflow("appliance")
    raw = op.input("read", flow, source)
    parsed = op.flat_map_batch("parse", raw, make_parser(engine.config.event, engine.task, poisoned))
    routed = op.key_on("route", parsed, lambda _item: "engine")
    results = op.stateful_batch(
        "engine", routed, lambda _resume: EngineLogic(engine, fingerprint, checkpoint_seconds, after_batch, order_log,
                                    on_failure, partitions)
    )
    op.output("store", op.key_rm("unkey", results), sink)
    return flow
