"""The engine's entity state partitioned by key across worker processes (`appliance up --workers N`).

Per-entity work (read an entity's aggregates before an event, fold the event in) needs nothing
but that entity's history, so it runs in N worker processes, each the owner of its share of the
entities (`features.partitions.owner`) and keeper of their state. The learner stays in the
engine, serial. A batch goes through three steps:

1. The engine admits every item of the batch (`Engine.admit`: from event time and ids alone).
2. `dispatch` sends each worker one `EntityRequests` (columnar: the admitted events that have an
   entity it owns, with whether each is read and whether it is folded, and where the watermark
   crosses an eviction tick); the workers read then fold in the batch's order.
3. `collect` takes each worker's `EntityReplies`: each event's aggregates per key, put back in the
   order of the keys (what `FeatureSpace.compute` takes as `aggregates`), and the state of every
   entity the batch changed (`entity_codec` bytes, once per entity per batch) or evicted. The
   engine keeps those states (`Engine.take_entity_changes`), so its checkpoint, the online store,
   the socket's `features` op and its in-process predictions read them as before; then it settles
   the batch (`Engine.settle`).

An idle entity is evicted by its worker at the same watermark at which the one-process engine
would evict it (the ticks of `FeatureSpace.sweep`, computed here from the admitted watermarks),
so both keep the same entities. A worker that dies raises `PartitionFailed` in the flow, which
fails and restarts from its checkpoint with new workers loaded from it. Messages are pickled over
`multiprocessing` pipes to this process's own children (`features.partitions.WorkerPool`).
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from appliance.config.file import Config
from appliance.engine.admission import EventAdmitted
from appliance.engine.items import EventItem, Item
from appliance.features.entity_codec import decode_state, encode_state
from appliance.features.entity_state import aggregates_into
from appliance.features.partitions import Routed, WorkerPool, owner, read_then_fold, received
from appliance.features.space import FeatureSpace
from appliance.processes import die_with_parent


class EntityLoad(NamedTuple):
    """A worker's share of the entity states a (restored) engine holds, and the eviction ticks."""

    states: list[tuple[str, str, bytes]]
    ticks: dict[str, int]


class EntityRequests(NamedTuple):
    """One batch's work for one worker, columnar: per admitted event with an entity it owns, in order."""

    positions: list[int]  # the event's index in the batch
    keys: list[tuple[str, ...]]  # the event's keys whose entity this worker owns, in the order of the keys
    values: list[dict[str, Any]]
    ts: list[float]
    read: list[bool]  # its aggregates before it are wanted (not scored over the socket already)
    fold: list[bool]  # it changes state (not scored only)
    sweeps: list[tuple[int, float]]  # (index in the batch, watermark): evict idle entities after that item


class EntityReplies(NamedTuple):
    """A worker's answer to one `EntityRequests`."""

    aggregates: list[list[dict[str, float]] | None]  # per request: one dict per owned key; None: folded only
    states: list[tuple[str, str, bytes]]  # every entity the batch changed, as it is after the batch
    evicted: list[tuple[str, str]]  # entities the batch evicted (and did not bring back)


def serve(config: Config, parent_pid: int, connection: Connection, index: int) -> None:
    """A worker's loop: an `EntityLoad`, then `EntityRequests` in and `EntityReplies` out; ends on None
    (or when the appliance is gone: it dies with its parent, even one killed with SIGKILL).

    Ctrl-C is ignored (`features.partitions.received`)."""
    die_with_parent(parent_pid)
    space = FeatureSpace.for_config(config)
    layouts = space.layouts
    store = space.new_store()
    ticks: dict[str, int] = {}
    for message in received(connection):
        if isinstance(message, EntityLoad):  # the whole share: whatever was kept before goes
            store = space.new_store()
            for key, entity, blob in message.states:
                store[key][entity] = decode_state(blob)
            ticks = dict(message.ticks)
            continue
        changed: set[tuple[str, str]] = set()
        evicted: list[tuple[str, str]] = []
        aggregates: list[list[dict[str, float]] | None] = []
        sweeps = message.sweeps
        next_sweep = 0
        for position, keys, values, ts, read, fold in zip(message.positions, message.keys, message.values,
                                                          message.ts, message.read, message.fold):
            while next_sweep < len(sweeps) and sweeps[next_sweep][0] < position:
                _sweep(space, store, sweeps[next_sweep][1], ticks, changed, evicted)
                next_sweep += 1
            aggregates.append(read_then_fold(layouts, store, keys, values, ts, read=read, fold=fold))
            if fold:
                changed.update((key, values[key]) for key in keys)
        for _, watermark in sweeps[next_sweep:]:
            _sweep(space, store, watermark, ticks, changed, evicted)
        states = [(key, entity, encode_state(store[key][entity])) for key, entity in changed]
        reply = EntityReplies(aggregates, states, evicted)
        connection.send_bytes(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    connection.close()


def _sweep(space: FeatureSpace, store: dict, watermark: float, ticks: dict[str, int],
           changed: set[tuple[str, str]], evicted: list[tuple[str, str]]) -> None:
    for pair in space.sweep(store, watermark, ticks):
        changed.discard(pair)
        evicted.append(pair)


class Dispatched(NamedTuple):
    """What `collect` needs to put a batch's replies back: per worker, each request's event index and
    keys; each read event's index and time (a key it has no entity of reads as a blank state)."""

    size: int
    where: list[list[Routed]]
    reads: list[tuple[int, float]]


class EntityPartitions(WorkerPool):
    """`workers` processes owning the entities of `space`'s keys. Start it from a thread that lives as
    long as the workers should (the kernel kills them when it ends)."""

    def __init__(self, config: Config, space: FeatureSpace, workers: int) -> None:
        super().__init__(serve, (config, os.getpid()), workers, "entity partition",
                         "the dataflow fails and restarts from its checkpoint")
        self.space = space
        self.keys = list(space.layouts)
        self.order = {key: i for i, key in enumerate(self.keys)}
        self.every = {key: layout.sweep_every for key, layout in space.layouts.items()}
        self.ticks: dict[str, int] = {}
        self.next_tick = self._next_tick()

    def load(self, states: Sequence[tuple[str, str, bytes]], sweep_ticks: dict[str, int]) -> None:
        """Hand each worker its share of an engine's entity states (at start, and after a restart),
        replacing what it kept. `sweep_ticks` is the engine's (checkpointed with it), moved here as the
        admitted watermarks cross eviction ticks."""
        self.ticks = sweep_ticks
        self.next_tick = self._next_tick()
        shares: list[list[tuple[str, str, bytes]]] = [[] for _ in range(self.workers)]
        for state in states:
            shares[owner(state[0], state[1], self.workers)].append(state)
        for worker, share in enumerate(shares):
            self.send_to(worker, EntityLoad(share, dict(self.ticks)))

    def dispatch(self, batch: Sequence[Item], verdicts: Sequence[Any]) -> Dispatched:
        """Send every worker its requests for an admitted batch."""
        workers, keys = self.workers, self.keys
        requests = [EntityRequests([], [], [], [], [], [], []) for _ in range(workers)]
        where: list[list[Routed]] = [[] for _ in range(workers)]
        sweeps: list[tuple[int, float]] = []
        reads: list[tuple[int, float]] = []
        for index, (item, verdict) in enumerate(zip(batch, verdicts)):
            if item.__class__ is not EventItem or verdict.__class__ is not EventAdmitted:
                continue
            read, fold = item.served is None, item.ingest
            if not (read or fold):
                continue  # scored only, over the socket: nothing to read or fold
            values = item.event.values
            owned: dict[int, list[str]] = {}
            for key in keys:
                entity = values.get(key)
                if entity is not None:
                    owned.setdefault(owner(key, entity, workers), []).append(key)
            for worker, mine in owned.items():
                request, owned_keys = requests[worker], tuple(mine)
                request.positions.append(index)
                request.keys.append(owned_keys)
                request.values.append(values)
                request.ts.append(item.event.ts)
                request.read.append(read)
                request.fold.append(fold)
                where[worker].append(Routed(index, owned_keys))
            if read and owned:
                reads.append((index, item.event.ts))
            if verdict.advanced and verdict.watermark >= self.next_tick:
                sweeps.append((index, verdict.watermark))
                self._tick(verdict.watermark)
        for worker, request in enumerate(requests):
            self.send_to(worker, request._replace(sweeps=sweeps))
        return Dispatched(len(batch), where, reads)

    def collect(self, dispatched: Dispatched) -> tuple[list[list[dict[str, float] | None] | None], EntityReplies]:
        """Each item's aggregates (None for an item with nothing read) and what the batch changed."""
        width = len(self.keys)
        aggregates: list[list[dict[str, float] | None] | None] = [None] * dispatched.size
        states: list[tuple[str, str, bytes]] = []
        evicted: list[tuple[str, str]] = []
        order = self.order
        for worker in range(self.workers):
            reply: EntityReplies = self.receive_from(worker)
            for (index, owned_keys), pieces in zip(dispatched.where[worker], reply.aggregates):
                if pieces is None:
                    continue
                row = aggregates[index]
                if row is None:
                    row = aggregates[index] = [None] * width
                for key, piece in zip(owned_keys, pieces):
                    row[order[key]] = piece
            states += reply.states
            evicted += reply.evicted
        layouts = list(self.space.layouts.values())
        for index, ts in dispatched.reads:
            row = aggregates[index]
            for i, piece in enumerate(row):
                if piece is None:
                    blank: dict[str, float] = {}
                    aggregates_into(blank, layouts[i], None, ts)
                    row[i] = blank
        return aggregates, EntityReplies([], states, evicted)

    def _tick(self, watermark: float) -> None:
        for key, every in self.every.items():
            tick = math.floor(watermark / every)
            if tick > self.ticks.get(key, -math.inf):
                self.ticks[key] = tick
        self.next_tick = self._next_tick()

    def _next_tick(self) -> float:
        """The first watermark at which some key's eviction tick moves (where `FeatureSpace.sweep` acts)."""
        ticks = self.ticks
        return min(((ticks[key] + 1) * every if key in ticks else -math.inf for key, every in self.every.items()),
                   default=math.inf)  # no entity key: nothing to evict
