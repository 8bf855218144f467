"""Bytewax sources over the appliance's readers: event-time pacing, stop, and the inbox tail.

The appliance does its own checkpointing (offsets are recorded with engine state in the store),
so these sources resume from offsets they are given and snapshot nothing for Bytewax.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from appliance.ingest.inbox import InboxTail

Item = tuple[str, int, Any]  # (source name, offset, payload)
IDLE_POLL = timedelta(milliseconds=5)


@dataclass
class ReplayInput:
    """A finite reader replayed as fast as possible (speed 0) or at `speed` x event time."""

    name: str
    open_reader: Callable[[], Iterator[tuple[int, Any]]]
    speed: float = 0.0
    event_time: Callable[[Any], float | None] | None = None
    on_end: Callable[[], None] | None = None  # called once the reader is exhausted (not on a stop)


@dataclass
class InboxInput:
    """The socket inbox, tailed until the appliance stops."""

    name: str
    path: str
    start: int = 0


class FlowAborted(Exception):
    """The runtime ended the flow on purpose (its store writer is gone); it restarts it from its checkpoint."""


class Abort:
    """Set by the runtime to end the flow at once: every input raises `FlowAborted` with the reason."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


class ApplianceSource(FixedPartitionedSource[Item, None]):
    """One partition per input; all inputs end when `stop` is set (the inbox drained first), and fail
    at once when `abort` is."""

    def __init__(self, inputs: list[ReplayInput | InboxInput], stop: threading.Event, abort: Abort | None = None,
                 batch_size: int = 512) -> None:
        self.inputs = {i.name: i for i in inputs}
        self.stop = stop
        self.abort = abort or Abort()
        self.batch_size = batch_size

    def list_parts(self) -> list[str]:
        return list(self.inputs)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> StatefulSourcePartition:
        spec = self.inputs[for_part]
        if isinstance(spec, InboxInput):
            return _InboxPartition(spec, self.stop, self.abort, self.batch_size)
        return _ReplayPartition(spec, self.stop, self.abort, self.batch_size)


class _ReplayPartition(StatefulSourcePartition[Item, None]):
    def __init__(self, spec: ReplayInput, stop: threading.Event, abort: Abort, batch_size: int) -> None:
        self.spec = spec
        self.stop = stop
        self.abort = abort
        self.batch_size = batch_size
        self.reader = spec.open_reader()
        self.lookahead: tuple[int, Any] | None = None
        self.origin: tuple[float, float] | None = None  # (first event time, wall time at start)
        self.awake: datetime | None = None

    def next_batch(self) -> list[Item]:
        if self.abort.is_set():
            raise FlowAborted(self.abort.reason)
        if self.stop.is_set():
            raise StopIteration
        if self.spec.speed <= 0:
            return [(self.spec.name, offset, payload) for offset, payload in _take(self.reader, self.batch_size)] or self._end()
        return self._paced_batch()

    def _end(self) -> list[Item]:
        if self.spec.on_end is not None:
            self.spec.on_end()
        raise StopIteration

    def _paced_batch(self) -> list[Item]:
        batch: list[Item] = []
        now = time.time()
        while len(batch) < self.batch_size:
            if self.lookahead is None:
                self.lookahead = next(self.reader, None)
                if self.lookahead is None:
                    if batch:
                        return batch
                    self._end()
            due = self._due(self.lookahead[1])
            if due > now:
                self.awake = datetime.fromtimestamp(due, tz=UTC)
                return batch
            offset, payload = self.lookahead
            self.lookahead = None
            batch.append((self.spec.name, offset, payload))
        self.awake = None
        return batch

    def _due(self, payload: Any) -> float:
        ts = self.spec.event_time(payload) if self.spec.event_time else None
        if ts is None:
            return 0.0  # unparseable events are not paced; the parse step dead-letters them
        if self.origin is None:
            self.origin = (ts, time.time())
        first_ts, start = self.origin
        return start + max(0.0, ts - first_ts) / self.spec.speed

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> None:
        return None


class _InboxPartition(StatefulSourcePartition[Item, None]):
    def __init__(self, spec: InboxInput, stop: threading.Event, abort: Abort, batch_size: int) -> None:
        self.spec = spec
        self.stop = stop
        self.abort = abort
        self.batch_size = batch_size
        self.tail = InboxTail(spec.path, spec.start)
        self.idle = False

    def next_batch(self) -> list[Item]:
        if self.abort.is_set():
            raise FlowAborted(self.abort.reason)
        items = self.tail.read(self.batch_size)
        if not items and self.stop.is_set():
            raise StopIteration  # drained: everything acknowledged before the stop is processed
        self.idle = not items
        return [(self.spec.name, offset, line) for offset, line in items]

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + IDLE_POLL if self.idle else None

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self.tail.close()


def _take(reader: Iterator[tuple[int, Any]], n: int) -> list[tuple[int, Any]]:
    batch = []
    for item in reader:
        batch.append(item)
        if len(batch) >= n:
            break
    return batch

