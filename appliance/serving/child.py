"""A serving child process: accepts on the primary's listening Unix socket, scores from the online store.

`appliance up --serve-processes N` runs N serving processes: the primary (dataflow, engine, its own
server) and N-1 children started by `runtime.serving_processes` as
`python -m appliance.serving.child INDEX UNIX_FD PRIVATE_SOCKET PARENT_PID`, the config as JSON on
stdin (`config.file.config_to_dict`), the listening socket inherited (`pass_fds`). The kernel hands
each new connection to one process of those accepting on it.

Per connection a child reads request lines in order and answers each before reading the next:
- `predict` of an event: features and score from its `Replica` (the online store, bit for bit the
  engine's), logged to the child's own inbox `<db>-inbox-<INDEX>` (durable before the reply, as the
  primary's inbox), which the flow reads as one more input partition;
- `ingest` and `label`: appended to the same inbox;
- every other line (stats, health, models, promote, watch, entity, predict by entity, malformed
  lines...) is written to the primary's private owner-only socket and its reply relayed; after a
  `watch` the connection is piped to the primary both ways (pushed updates relayed line by line).

A child dies with the primary: `PR_SET_PDEATHSIG` (SIGKILL) is set first thing, and it exits at
once if the primary is already gone. SIGTERM stops it cleanly (the inbox is closed, synced).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from appliance.config.file import Config, config_from_dict
from appliance.ingest.inbox import Inbox
from appliance.learning.metrics import positive_score, predicted_label
from appliance.serving.latency import LatencyRing
from appliance.serving.protocol import Deferred, Protocol, Session
from appliance.serving.replica import Replica, ReplicaScore
from appliance.serving.service import Service
from appliance.storage.online_store import OnlineReader, online_path

MAX_LINE = 1 << 20  # as the primary's protocol
_PR_SET_PDEATHSIG = 1


def child_inbox_path(db: str, index: int) -> str:
    """The inbox a child logs to: `<db>-inbox-<index>` (one input partition of the flow)."""
    return f"{db}-inbox-{index}"


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if it already has."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)


class _StreamClock:
    """What `Service`'s checks read of the engine, from the online store's meta record."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.offsets: dict[str, int] = {}

    @property
    def watermark(self) -> float:
        watermark = self.replica.meta().watermark
        return float("-inf") if watermark is None else watermark


class ChildService(Service):
    """`Service`'s predict, ingest and label, scored by a `Replica` and logged to the child's inbox."""

    def __init__(self, config: Config, replica: Replica, inbox: Inbox) -> None:
        # Not Service.__init__: a child has no engine, board or store history.
        self.replica = replica
        self.inbox = inbox  # type: ignore[assignment]
        self.engine = _StreamClock(replica)  # type: ignore[assignment]
        self.schema = config.event
        self.task = config.model.task
        self.started = time.time()
        self._ids = itertools.count(1)
        self._prefix = f"s{os.getpid():x}{int(self.started):x}-"
        self.outage: Callable[[], Any] = lambda: None
        self.unlogged = 0
        self.predict_latency = LatencyRing()  # Service.predict records into it (stats are the primary's)

    def handlers(self) -> dict[str, Callable[[dict], Any]]:
        return {"predict": self.predict, "ingest": self.ingest, "label": self.label}

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
        return 0  # the flow's offset in a child's inbox is not published yet (see docs/architecture.md)


def is_local(request: Any) -> bool:
    """Whether a child answers this request itself (else the primary does)."""
    if not isinstance(request, dict):
        return False
    op = request.get("op")
    if op in ("ingest", "label"):
        return True
    return op == "predict" and isinstance(request.get("event"), dict)


class ChildServer:
    """Answers connections accepted on the inherited listening socket; relays the rest to the primary."""

    def __init__(self, protocol: Protocol, private_socket: str) -> None:
        self.protocol = protocol
        self.private_socket = private_socket

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(authenticated=True, peer="unix", token=None)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        pump: asyncio.Task | None = None
        try:
            while True:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.IncompleteReadError as exc:
                    line = exc.partial
                    if not line.strip():
                        break
                except asyncio.LimitOverrunError:
                    writer.write(self.protocol.line_too_long())
                    break
                if not line.strip():
                    continue
                if pump is not None:  # piped after a watch: the primary answers everything
                    upstream[1].write(line)  # type: ignore[index]
                    continue
                try:
                    request = orjson.loads(line)
                except orjson.JSONDecodeError:
                    request = None
                if is_local(request):
                    reply = self.protocol.handle_line(line, session)
                    if isinstance(reply, Deferred):  # no local handler defers; kept whole if one ever does
                        reply = self.protocol.complete(reply)
                    writer.write(reply)
                    await writer.drain()
                    continue
                if upstream is None:
                    upstream = await asyncio.open_unix_connection(self.private_socket, limit=MAX_LINE + 2)
                up_reader, up_writer = upstream
                up_writer.write(line if line.endswith(b"\n") else line + b"\n")
                if isinstance(request, dict) and request.get("op") == "watch":
                    pump = asyncio.ensure_future(_relay(up_reader, writer))
                    continue
                reply = await up_reader.readline()
                if not reply:
                    raise ConnectionError("the primary closed the forwarding connection")
                writer.write(reply)
                await writer.drain()
            if pump is not None:
                upstream[1].write_eof()  # type: ignore[index]
                await pump
        except (ConnectionError, OSError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
            if upstream is not None:
                upstream[1].close()
            writer.close()


async def _relay(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    """Copy the primary's lines (replies and pushed updates) to the client until either side closes."""
    while line := await source.readline():
        sink.write(line)
        await sink.drain()


def serve(config: Config, index: int, unix_fd: int, private_socket: str) -> None:
    """Run one child until SIGTERM (or the primary's death)."""
    replica = Replica(config, OnlineReader(online_path(config.db)))
    inbox = Inbox(child_inbox_path(config.db, index))
    service = ChildService(config, replica, inbox)
    protocol = Protocol(service.handlers(), max_line=MAX_LINE)
    server = ChildServer(protocol, private_socket)
    listener = socket.socket(fileno=unix_fd)
    listener.setblocking(False)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    async def main() -> None:
        accepting = await asyncio.start_unix_server(server.handle, sock=listener, limit=MAX_LINE + 2, backlog=1024)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await stop.wait()
        accepting.close()

    try:
        loop.run_until_complete(main())
    finally:
        inbox.close()
        replica.close()
        loop.close()


def main(argv: list[str]) -> None:
    index, unix_fd, private_socket, parent_pid = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    die_with_parent(parent_pid)
    config = config_from_dict(orjson.loads(sys.stdin.buffer.read()))
    serve(config, index, unix_fd, private_socket)


if __name__ == "__main__":
    main(sys.argv[1:])
