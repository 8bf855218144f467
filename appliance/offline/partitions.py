"""Entity state partitioned by key across worker processes, for replays without a learner (the export).

A time-travel export (`offline.export.training_set`) replays the whole event log through the
feature definitions: for every event, each of its entities' aggregates before it (when the event
is exported) and the event folded in (when it was ingested). That per-entity work is most of the
export and needs nothing but the entity's own history, so it spreads over processes: each entity
("key=value") is owned by one worker (`owner`, a CRC-32: the same in every process), which keeps
that entity's state. The main process reads and decodes the log, sends each worker one
`Requests` per batch (columnar: the events that have an entity it owns, in log order), and merges
the replies into each row in the order of the keys, as `FeatureSpace.compute` does, so the rows
are those of the one-process export, value for value and in the same order (tests/offline/test_partitions.py).

While the workers fold a batch, the main process decodes the next one (one batch in flight ahead).
An idle entity is evicted by its worker at the end of a batch on the watermark the main process
sends (eviction changes no value: `FeatureSpace.sweep`). A worker that dies ends the export with
`PartitionFailed`, naming it; the others are stopped. Batches and replies are pickled over
`multiprocessing` pipes: anonymous socket pairs between this process and the children it started,
which no other process can reach (nothing that came over the appliance's sockets is unpickled).
"""

from __future__ import annotations

import math
import os
import pickle
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from appliance.config.file import Config
from appliance.features.entity_state import aggregates_into
from appliance.features.partitions import PartitionFailed, Routed, WorkerPool, owner, read_then_fold, received
from appliance.features.space import FeatureSpace

__all__ = ["LoggedEvent", "PartitionFailed", "Partitions", "Requests", "Routed", "default_workers", "serve"]


class Requests(NamedTuple):
    """One batch's work for one worker, columnar: per event with an entity it owns, in log order."""

    keys: list[tuple[str, ...]]  # the event's keys whose entity this worker owns, in the order of the keys
    values: list[dict[str, Any]]
    ts: list[float]
    read: list[bool]  # the aggregates before the event are wanted (an exported event)
    fold: list[bool]  # the event changes state (it was ingested)
    watermark: float  # the event time after the batch: idle entities are evicted by it


def default_workers() -> int:
    """Entity-state workers of an export: one per core, at most 8; none on one core (they would only wait)."""
    cores = os.cpu_count() or 1
    return 0 if cores == 1 else min(8, cores)


def serve(config: Config, connection: Connection, index: int) -> None:
    """A worker's loop: `Requests` in, for each one the aggregates of its read events out (a list,
    per event: one dict per owned key, or None for an event only folded); ends on None.

    Ctrl-C is ignored (`features.partitions.received`)."""
    space = FeatureSpace.for_config(config)
    layouts = space.layouts
    store = space.new_store()
    ticks: dict[str, int] = {}
    requests: Requests
    for requests in received(connection):
        replies: list[list[dict[str, float]] | None] = []
        for keys, values, ts, read, fold in zip(requests.keys, requests.values, requests.ts, requests.read,
                                               requests.fold):
            replies.append(read_then_fold(layouts, store, keys, values, ts, read=read, fold=fold))
        if requests.watermark > -math.inf:
            space.sweep(store, requests.watermark, ticks)
        connection.send_bytes(pickle.dumps(replies, protocol=pickle.HIGHEST_PROTOCOL))
    connection.close()


class LoggedEvent(NamedTuple):
    """One decoded event of the log, as the export replays it."""

    seq: int
    event_id: str
    ts: float
    values: dict[str, Any]
    export: bool  # its row is wanted (a learned label, in the time range)
    fold: bool  # it was ingested: it changes its entities' state
    label: Any  # the learned label (None when not exported)
    logged_rates: dict[str, float] | None  # the label rates and means it was scored with (exported only)


class Partitions(WorkerPool):
    """`workers` processes, each the owner of its share of the entities of `space`'s keys; a context manager."""

    def __init__(self, config: Config, space: FeatureSpace, workers: int) -> None:
        super().__init__(serve, (config,), workers, "export worker", "nothing was written past the rows before it")
        self.space = space
        self.keys = list(space.layouts)

    def __enter__(self) -> Partitions:
        return self

    def send(self, events: list[LoggedEvent], watermark: float) -> list[list[Routed]]:
        """Send one batch to every worker; return, per worker, where each of its requests came from
        (what `receive` needs to put the replies back)."""
        workers, keys = self.workers, self.keys
        batches = [Requests([], [], [], [], [], watermark) for _ in range(workers)]
        where: list[list[Routed]] = [[] for _ in range(workers)]
        for index, event in enumerate(events):
            if not (event.export or event.fold):
                continue
            owned: dict[int, list[str]] = {}
            for key in keys:
                entity = event.values.get(key)
                if entity is not None:
                    owned.setdefault(owner(key, entity, workers), []).append(key)
            for worker, mine in owned.items():
                batch, owned_keys = batches[worker], tuple(mine)
                batch.keys.append(owned_keys)
                batch.values.append(event.values)
                batch.ts.append(event.ts)
                batch.read.append(event.export)
                batch.fold.append(event.fold)
                where[worker].append(Routed(index, owned_keys))
        for worker, batch in enumerate(batches):
            self.send_to(worker, batch)
        return where

    def receive(self, events: list[LoggedEvent], where: list[list[Routed]]) -> list[list[dict[str, float] | None]]:
        """Each event's aggregates per key, in the order of the keys (what `FeatureSpace.compute`
        takes as `aggregates`), from the workers' replies to the batch `send` returned `where` for."""
        order = {key: i for i, key in enumerate(self.keys)}
        width = len(self.keys)
        out: list[list[dict[str, float] | None]] = [[None] * width for _ in events]
        for worker in range(self.workers):
            replies = self.receive_from(worker)
            for routed, pieces in zip(where[worker], replies):
                if pieces is not None:
                    row = out[routed.index]
                    for key, piece in zip(routed.keys, pieces):
                        row[order[key]] = piece
        for event, row in zip(events, out):  # a key the event has no entity of: a blank state's values
            if event.export:
                for i, layout in enumerate(self.space.layouts.values()):
                    if row[i] is None:
                        blank: dict[str, float] = {}
                        aggregates_into(blank, layout, None, event.ts)
                        row[i] = blank
        return out
