"""A serving child process: accepts on the primary's listening Unix socket, scores from the online store.

`appliance up --serve-processes N` (N > 1) runs N serving children beside the primary (dataflow,
engine, the server its children relay to), started by `runtime.serving_processes` as
`python -m appliance.serving.child PARENT_PID`. A child imports what it serves with (River's
models among them) at once, then waits on its stdin for its `ChildSetup` (`serving.child_setup`):
the listening sockets as descriptors, its index, the primary's private socket and its
`ChildOptions` (the config, the TCP token: never on the command line). `appliance up` starts the
interpreters first thing, so their imports overlap the primary's own start. The kernel hands each
new connection to one of the children accepting on it (the primary accepts only while none runs).

Per connection a child reads request lines in order and answers each before reading the next
(`serving.child_connections`, with the primary's rules for TCP connections):
- `predict` of an event: features and score from its `Replica` (the online store, bit for bit the
  engine's), logged to the child's own inbox `<db>-inbox-<INDEX>` (durable before the reply, as the
  primary's inbox), which the flow reads as one more input partition;
- `ingest` and `label`: appended to the same inbox;
- all three refused as the primary would, with its codes: while the primary reports an outage
  (`unavailable`, `disk_low`) or the flow is more than `MAX_INBOX_LAG` behind this child's inbox
  (`overloaded`), both read from the primary's `ServingStatus` record (`serving.status_record`);
- every other line (stats, health, models, promote, watch, entity, predict by entity, malformed
  lines...) is written to the primary's private owner-only socket and its reply relayed; after a
  `watch` the connection is piped to the primary both ways (pushed updates relayed line by line).

A child dies with the primary: `PR_SET_PDEATHSIG` (SIGKILL) is set first thing, and it exits at
once if the primary is already gone. SIGTERM stops it cleanly: it stops accepting, stops reading
from its connections, answers every whole line it has already read (the reply sent, a write in its
inbox; a relayed line answered by the primary, which stops its children before it stops serving),
closes each connection, then closes its inbox (synced) and exits. An idle connection is closed at
once; a connection still busy after `FINISH_WAIT` seconds is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from appliance.config.file import Config, config_from_dict, config_to_dict
from appliance.learning.metrics import positive_score, predicted_label
from appliance.processes import die_with_parent, settle_collector
from appliance.serving.access import AUTH_TIMEOUT
from appliance.serving.availability import Availability, GuardedInbox
from appliance.serving.child_connections import MAX_LINE, ChildServer
from appliance.serving.child_setup import take_over
from appliance.serving.event_loop import new_event_loop
from appliance.serving.latency import LatencyRing
from appliance.serving.protocol import Protocol
from appliance.serving.replica import Replica, ReplicaScore
from appliance.serving.service import Service
from appliance.serving.status_record import LatencyReport, StatusReader, report_path, status_path
from appliance.storage.online_store import OnlineReader, online_path

REPORT_EVERY = 0.25  # seconds between two reports of the service times and counters (as the stats board's refresh)
FINISH_WAIT = 5.0  # seconds a stopping child gives its connections to answer what they read (killed at 10)


@dataclass(frozen=True)
class ChildOptions:
    """What a child is told on stdin: the config, and the TCP rules when it accepts on TCP too."""

    config: Config
    token: str | None = None  # TCP clients must send it (None: TCP is loopback-only and open)
    auth_timeout: float = AUTH_TIMEOUT
    serving_processes: int = 2  # every process accepting, the primary included: this one's budget share
    status_path: str | None = None  # the primary's `ServingStatus` record; None: the store's (`<db>-serving`)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "config": config_to_dict(self.config)}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ChildOptions:
        return cls(**{**fields, "config": config_from_dict(fields["config"])})


@dataclass(frozen=True)
class ChildSetup:
    """What one child serves: its index (its inbox is `<db>-inbox-<index>`), the primary's private
    socket (where it relays what it does not answer) and its options; the listening sockets travel
    beside it as descriptors, the Unix one first."""

    index: int
    private_socket: str
    options: ChildOptions

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "private_socket": self.private_socket, "options": self.options.to_dict()}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> ChildSetup:
        return cls(int(fields["index"]), str(fields["private_socket"]), ChildOptions.from_dict(fields["options"]))


def child_inbox_path(db: str, index: int) -> str:
    """The inbox a child logs to: `<db>-inbox-<index>` (one input partition of the flow)."""
    return f"{db}-inbox-{index}"


class _StreamClock:
    """What `Service`'s checks read of the engine: the watermark of the online store's meta record,
    as the request's one transaction holds it (`Replica.request`), the batch its score reads."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.offsets: dict[str, int] = {}

    @property
    def watermark(self) -> float:
        watermark = self.replica.meta().watermark
        return float("-inf") if watermark is None else watermark


class ChildService(Service):
    """`Service`'s predict, ingest and label, scored by a `Replica` and logged to the child's inbox;
    refused as the primary would (`outage`, lag) from the primary's `ServingStatus`."""

    def __init__(self, config: Config, replica: Replica, inbox: GuardedInbox, status: StatusReader,
                 input_name: str) -> None:
        # Not Service.__init__: a child has no engine, board or store history.
        self.replica = replica
        self.inbox = inbox  # type: ignore[assignment]
        self.clock = _StreamClock(replica)
        self.engine = self.clock  # type: ignore[assignment]
        self.schema = config.event
        self.task = config.model.task
        self.started = time.time()
        self._ids = itertools.count(1)
        self._prefix = f"s{os.getpid():x}{int(self.started):x}-"
        self.status = status
        self.input_name = input_name  # the flow's name for this child's inbox (`inbox-<n>`)
        self.outage: Callable[[], Any] = inbox.availability.outage
        self.unlogged = 0
        self.predict_latency = LatencyRing()  # Service.predict records into it (stats are the primary's)

    def handlers(self) -> dict[str, Callable[[dict], Any]]:
        return {"predict": self.predict, "ingest": self.ingest, "label": self.label}

    def predict(self, request: dict) -> dict:
        with self.replica.request():  # the checks and the score read one batch, in one transaction
            return super().predict(request)

    def ingest(self, request: dict) -> dict:
        with self.replica.request():
            return super().ingest(request)

    def label(self, request: dict) -> dict:
        with self.replica.request():
            return super().label(request)

    def _score(self, values: dict, ts: float, explain: Any) -> tuple[dict, Any, Any, dict]:
        scored: ReplicaScore = self.replica.score(values, ts)
        reply: dict[str, Any] = {"score": positive_score(scored.y) if self.task == "classification" else scored.y,
                                 "version": scored.version_name}
        if self.task == "classification":
            reply["label"] = predicted_label(scored.y)
        if explain:
            reply["features"] = scored.x
        return scored.x, scored, scored.y, reply

    def _lag(self) -> int:
        return max(0, self.inbox.size - int(self.status.read().offsets.get(self.input_name, 0)))


def serve(options: ChildOptions, index: int, unix_fd: int, tcp_fd: int | None, private_socket: str) -> None:
    """Run one child until SIGTERM (or the primary's death)."""
    config = options.config
    replica = Replica(config, OnlineReader(online_path(config.db)))
    status = StatusReader(options.status_path or status_path(config.db))
    availability = Availability()
    availability.watch(lambda: status.read().outage)  # the primary's outage refuses here too, same code
    inbox = GuardedInbox(child_inbox_path(config.db, index), availability)
    service = ChildService(config, replica, inbox, status, f"inbox-{index}")
    try:
        report: LatencyReport | None = LatencyReport(report_path(config.db, index))
    except OSError as exc:  # a full disk: serve all the same, without reporting service times
        print(f"serving child {index}: no latency report ({exc.strerror or exc})", file=sys.stderr)
        report = None
    protocol = Protocol(service.handlers(), max_line=MAX_LINE)
    server = ChildServer(protocol, private_socket, token=options.token, auth_timeout=options.auth_timeout,
                         serving_processes=options.serving_processes)
    # What the start built (modules, River, the config, the replica) lives as long as the child: out of
    # the cycle collector's reach, a full collection no longer walks it (~40 ms with it, per pause).
    settle_collector()
    listeners = [socket.socket(fileno=fd) for fd in (unix_fd, tcp_fd) if fd is not None]
    for listener in listeners:
        listener.setblocking(False)
    loop = new_event_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def main() -> None:
        running = asyncio.get_running_loop()
        accepting = [await running.create_unix_server(server.unix_connection, sock=listeners[0], backlog=1024)]
        if tcp_fd is not None:  # a stranger's lines are bounded by the unauthenticated limit (`ChildConnection`)
            accepting.append(await running.create_server(server.tcp_connection, sock=listeners[1], backlog=1024))
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        while not stop.is_set():  # the predict service times, for the primary's stats
            if report is not None:
                report.publish(service.predict_latency, server.stats())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_EVERY)
        for each in accepting:
            each.close()
        await server.finish(FINISH_WAIT)  # what each connection read is answered (and logged) first

    try:
        loop.run_until_complete(main())
    finally:
        inbox.close()
        replica.close()
        status.close()
        if report is not None:
            report.close()
        loop.close()


def warm_imports() -> None:
    """Import, before the setup arrives, what the setup imports: River's linear models and
    preprocessing and the appliance's scaler (the default specs' estimators; ~0.8 s of a child's
    ~1 s start). A spec of other estimators imports those at its setup."""
    import river.linear_model  # noqa: F401

    import appliance.learning.scaling  # noqa: F401  (River's preprocessing behind it)


def main(argv: list[str]) -> None:
    die_with_parent(int(argv[0]))
    warm_imports()
    received = take_over(socket.socket(fileno=sys.stdin.fileno()))
    if received is None:  # the primary ended without handing this child a socket: nothing to serve
        return
    setup = ChildSetup.from_dict(received.fields)
    unix_fd, tcp_fd = received.fds[0], (received.fds[1] if len(received.fds) > 1 else None)
    serve(setup.options, setup.index, unix_fd, tcp_fd, setup.private_socket)


if __name__ == "__main__":
    main(sys.argv[1:])
