"""Entity state partitioned by key across worker processes: who owns an entity, a worker's step, the pool.

Each entity ("key=value") is owned by one worker (`owner`, a CRC-32: the same in every process),
which keeps that entity's state and, for each event that has it, reads its aggregates before the
event then folds the event in (`read_then_fold`), in the order the events came. Two users:
the time-travel export (`offline.partitions`, no learner) and the dataflow's engine
(`engine.partitions`, beside the serial learner).

`WorkerPool` starts the processes and talks to them over `multiprocessing` pipes: anonymous socket
pairs between this process and the children it started, which no other process can reach, so
the pickles on them never came over the appliance's sockets. A worker that dies raises
`PartitionFailed` naming it, at the next message to or from it.
"""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from appliance.errors import ApplianceError
from appliance.features.entity_state import KeyLayout, aggregates_into, updated


class PartitionFailed(ApplianceError):
    """A partition worker died or failed."""


def owner(key: str, entity: Any, workers: int) -> int:
    """The worker that owns `key`'s entity `entity` (not `hash`, which Python salts per process).

    >>> owner("card_id", "c1", 4) == owner("card_id", "c1", 4), 0 <= owner("user_id", 7, 3) < 3
    (True, True)
    """
    return zlib.crc32(f"{key}={entity}".encode()) % workers


def read_then_fold(layouts: dict[str, KeyLayout], store: dict[str, dict], keys: Iterable[str],
                   values: dict[str, Any], ts: float, *, read: bool = True,
                   fold: bool = True) -> list[dict[str, float]] | None:
    """For each of `keys`' entities, its aggregates before the event (one dict per key; None when not
    `read`), then the event folded into it (when `fold`)."""
    pieces: list[dict[str, float]] | None = [] if read else None
    for key in keys:
        layout, entities, entity = layouts[key], store[key], values[key]
        state = entities.get(entity)
        if pieces is not None:
            piece: dict[str, float] = {}
            aggregates_into(piece, layout, state, ts)
            pieces.append(piece)
        if fold:
            entities[entity] = updated(layout, state, values, ts)
    return pieces


class Routed(NamedTuple):
    """Where a worker's request came from: the event's index in its batch and the keys it owns."""

    index: int
    keys: tuple[str, ...]


def received(connection: Connection) -> Iterator[Any]:
    """A worker's messages, unpickled, until None (or until its parent closed the pipe).

    Ctrl-C reaches the whole process group: the parent stops its workers, so a worker ignores it
    rather than print a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            message = pickle.loads(connection.recv_bytes())
        except EOFError:  # the parent closed its end without a word (it is going)
            return
        if message is None:
            return
        yield message


def start_method() -> str:
    """How workers start: forked (at once) from a process with one thread, as the CLI's export is;
    spawned from one with more (a fork copies whatever lock another thread holds)."""
    return "fork" if threading.active_count() == 1 else "spawn"


class WorkerPool:
    """`workers` processes, each running `target(*args, connection, index)`; a context manager.

    `what` names a worker in errors ("export worker", "entity partition"); `consequence` says what
    its death means for the caller."""

    def __init__(self, target: Callable[..., None], args: tuple, workers: int, what: str, consequence: str) -> None:
        self.workers = workers
        self.what = what
        self.consequence = consequence
        context = multiprocessing.get_context(start_method())
        self.connections: list[Connection] = []
        self.processes: list[Any] = []
        for index in range(workers):
            mine, theirs = context.Pipe()
            process = context.Process(target=target, args=(*args, theirs, index), daemon=True)
            process.start()
            theirs.close()
            self.connections.append(mine)
            self.processes.append(process)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Ask every worker to end (None), then wait for it (killed if it does not end)."""
        for connection in self.connections:
            try:
                connection.send_bytes(pickle.dumps(None))
            except OSError:
                pass  # it is gone already
            connection.close()
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()

    def send_to(self, worker: int, message: Any) -> None:
        try:
            self.connections[worker].send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            raise self._failed(worker) from None

    def receive_from(self, worker: int) -> Any:
        try:
            return pickle.loads(self.connections[worker].recv_bytes())
        except (EOFError, OSError):
            raise self._failed(worker) from None

    def _failed(self, worker: int) -> PartitionFailed:
        process = self.processes[worker]
        process.join(timeout=1)
        return PartitionFailed(f"{self.what} {worker + 1} of {self.workers} (pid {process.pid}) ended "
                               f"(exit code {process.exitcode}); {self.consequence}")
