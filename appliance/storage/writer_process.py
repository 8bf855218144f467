"""The store writer in its own process, so the dataflow's interpreter never runs a SQLite commit.

`StoreWriter` on a thread of the primary took ~25 % of the primary's CPU while the sample replayed,
and every bit of it held the interpreter lock the dataflow and the socket server need. `WriterProcess`
is what the runtime and the dataflow's sink hold instead: the same calls (`put_rows`,
`put_checkpoint`, `flush`, `abandon`, `close`, `stats`, `failure`, `error`,
`after_durable_checkpoint`), answered by a `StoreWriter` in a child process
(`python -m appliance.storage.writer_process`), the only writer of the store as before.

The two talk over a socket pair (inherited by `pass_fds`, never a path on disk), in frames of a
4-byte big-endian length and a MessagePack body; never pickle:

    primary -> writer   ["rows", {table: [row]}]   ["checkpoint", fingerprint, payload]   ["flush", n]   ["stop"]
    writer -> primary   ["status", stats]  (every STATUS_EVERY s, and last before it exits)
                        ["durable", offsets]  (a checkpoint is durable: `after_durable_checkpoint`)
                        ["flushed", n]  (everything sent before flush n is committed)

Order is the socket's: a checkpoint commits after every row sent before it, as through the thread's
queue. Backpressure is the same queue's: the child's receiver blocks while its writer holds
`max_rows` rows, the socket's buffers fill, and the flow's send waits. `failure` and the stats are the
child's last report (at most STATUS_EVERY old). The child runs at a lower priority (`NICENESS`): on
a machine with fewer cores than busy processes, a commit may wait, a request should not. The child dies with the primary (`PR_SET_PDEATHSIG`)
and a primary that dies is recovered as always: the last committed checkpoint covers only committed
rows. A child that dies on its own is a store failure (writes refused, the error raised at stop);
`abandon` kills it: what it held uncommitted is redone from the checkpoint by the next start.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import orjson

from appliance.errors import ApplianceError
from appliance.processes import die_with_parent
from appliance.storage import writer as thread_writer
from appliance.storage.writer import StoreWriter

__all__ = ["WriterProcess"]

log = logging.getLogger(__name__)

STATUS_EVERY = 0.05  # seconds between two reports of the child's stats (and failure) to the primary
NICENESS = 10  # the child's scheduling priority below the appliance's: a commit waits, a request does not
_HEADER = struct.Struct(">I")


def _pack(message: list) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def _frames(sock: socket.socket) -> Iterator[list]:
    """The messages read from `sock` until it is closed."""
    stream = sock.makefile("rb")
    try:
        while True:
            header = stream.read(_HEADER.size)
            if len(header) < _HEADER.size:
                return
            (size,) = _HEADER.unpack(header)
            body = stream.read(size)
            if len(body) < size:
                return
            yield msgpack.unpackb(body, raw=False, strict_map_key=False)
    except OSError:
        return
    finally:
        stream.close()


class _Flush:
    """A flush waited on: set by the child's report, or given up when the child is gone."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = False


class WriterProcess:
    """The primary's handle on the store writer process (`StoreWriter`'s interface).

    Args:
        path: The store.
        **options: `StoreWriter`'s keyword options (retention, max_bytes, keep_models, cache_bytes,
            entity_keys), sent to the child as JSON.
    """

    def __init__(self, path: str | Path, **options: Any) -> None:
        self.path = str(path)
        options.setdefault("release_every", thread_writer.RELEASE_EVERY)  # read now: a test may have patched it
        self.options = options  # JSON for the child (orjson writes tuples as arrays)
        self.max_bytes = options.get("max_bytes")
        self.after_durable_checkpoint: Callable[[dict[str, int]], None] | None = None
        self.failure: str | None = None  # why writes fail right now (the child's last report, or its death)
        self.error: BaseException | None = None  # what stopped the writer for good, raised by the runtime at stop
        self.process: subprocess.Popen | None = None
        # Until the child's first report (it takes a moment to start): the stats of a writer that has
        # written nothing yet. Building one also creates the store's schema before anyone reads it.
        self._stats: dict[str, Any] = StoreWriter(path, **options).stats()
        # The child writes to the file as it is now: one deleted or replaced before the child opens it (its
        # imports come first) is refused as after. Held open until `close`, so that no new file takes its
        # inode meanwhile (a file created after an unlink can get the same number).
        self._pinned: int | None = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        pinned = os.fstat(self._pinned)
        options["identity"] = (pinned.st_dev, pinned.st_ino)
        self._link: _Link | None = None
        self._flushes: dict[int, _Flush] = {}
        self._flush_ids = itertools.count(1)
        self._abandoned = False
        self._closing = False
        self._gone = threading.Event()  # the child has exited (or was never reachable)
        self._opened = threading.Event()  # the child has opened the store (its first report)

    def start(self) -> WriterProcess:
        """Start the child (from a thread that lives as long as it should: see `die_with_parent`)."""
        ours, theirs = socket.socketpair()
        args = [sys.executable, "-m", "appliance.storage.writer_process", str(theirs.fileno()), str(os.getpid())]
        self.process = subprocess.Popen(args, pass_fds=(theirs.fileno(),), stdin=subprocess.PIPE)
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps({"path": self.path, **self.options}))
        self.process.stdin.close()
        theirs.close()
        self._link = _Link(ours)
        threading.Thread(target=self._receive, name="store-writer-link", daemon=True).start()
        return self

    @property
    def lost(self) -> bool:
        """Whether the child exited without being asked to (killed, out of memory...)."""
        return self._gone.is_set() and not self._closing and not self._abandoned

    @property
    def pruned(self) -> dict[str, int]:
        """Rows deleted for their age, per table (the child's last report)."""
        return dict(self._stats["pruned"])

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def put_rows(self, rows: dict[str, list[dict]]) -> None:
        """Send rows to be written, in order; blocks while the writer is `max_rows` behind."""
        if any(rows.values()):
            self._send(["rows", rows])

    def put_checkpoint(self, fingerprint: str, payload: dict[str, Any]) -> None:
        """Send a checkpoint; it commits after every row sent before it."""
        self._send(["checkpoint", fingerprint, payload])

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything sent so far is committed; False if it was not within `timeout`."""
        if self._abandoned or self._gone.is_set():
            return False
        number = next(self._flush_ids)
        waiting = self._flushes[number] = _Flush()
        self._send(["flush", number])
        if self._gone.is_set():
            waiting.done.set()
        waiting.done.wait(timeout)
        self._flushes.pop(number, None)
        return waiting.ok

    def stats(self) -> dict[str, Any]:
        """The child's last report: what is waiting to be written, what was written, `failure`."""
        stats = dict(self._stats)
        stats.pop("error", None)
        stats["failure"] = self.failure
        stats["pid"] = self.pid
        return stats

    def abandon(self) -> None:
        """Give up on a failing store: the child is killed, what it held is dropped, nothing more is sent.

        Nothing acknowledged is lost: the last committed checkpoint covers only committed rows, and
        the next start reads the inputs again from its offsets."""
        self._abandoned = True
        if self.process is not None and self.process.poll() is None:
            self.process.kill()

    def close(self, timeout: float = 60.0) -> None:
        """Have the child commit what it holds and exit (or give up at once if the store is failing)."""
        if self.process is None:
            self._unpin()
            return
        self._closing = True
        self._send(["stop"])
        deadline = time.monotonic() + timeout
        while not self._gone.wait(0.2) and time.monotonic() < deadline:
            if self.failure is not None:  # what it holds (the last checkpoint...) cannot be committed
                self.abandon()
        if self.process.poll() is None:
            log.error("the store writer process did not stop within %g s; killed", timeout)
            self.abandon()
            self._gone.wait(5.0)
        if self._link is not None:
            self._link.sock.close()
        self._unpin()

    def _unpin(self) -> None:
        if self._pinned is not None:
            os.close(self._pinned)
            self._pinned = None

    def _send(self, message: list) -> None:
        if self._abandoned or self._gone.is_set() or self._link is None:
            return  # dropped: no checkpoint commits after it either
        self._link.send(message)  # a child gone meanwhile is reported by the receiver

    def _receive(self) -> None:
        """On the link's thread: the child's reports, until it exits."""
        assert self._link is not None and self.process is not None
        for message in _frames(self._link.sock):
            kind = message[0]
            if kind == "status":
                self._status(message[1])
            elif kind == "durable":
                if self.after_durable_checkpoint is not None:
                    try:
                        self.after_durable_checkpoint(message[1])
                    except Exception:  # noqa: BLE001 - giving space back is best effort, never a store failure
                        log.exception("releasing input already checkpointed failed")
            elif kind == "flushed":
                waiting = self._flushes.get(message[1])
                if waiting is not None:
                    waiting.ok = True
                    waiting.done.set()
        code = self.process.wait()
        if not self._abandoned and (code != 0 or not self._closing):
            reason = f"the store writer process exited unexpectedly (exit code {code}); nothing more is written"
            log.error("%s", reason)
            self.failure = reason
            if self.error is None:
                self.error = ApplianceError(reason)
        self._gone.set()
        for waiting in list(self._flushes.values()):
            waiting.done.set()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait until the child has opened the store (its imports come first), or has exited: the flow
        starts on a store its writer holds, not one a fault could change before the writer looks."""
        deadline = time.monotonic() + timeout
        while not self._opened.wait(0.05) and not self._gone.is_set() and time.monotonic() < deadline:
            pass

    def _status(self, stats: dict[str, Any]) -> None:
        self._opened.set()
        self._stats = stats
        if not self._gone.is_set():
            self.failure = stats.get("failure")
        if stats.get("error") and self.error is None:
            self.error = ApplianceError(stats["error"])


class _Link:
    """One side of the socket pair: messages sent from several threads, one whole frame at a time; a
    peer gone is not an error here (the primary learns it from the child's exit; a child dies with the
    primary, `PR_SET_PDEATHSIG`)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()

    def send(self, message: list) -> None:
        frame = _pack(message)
        with self.lock:
            try:
                self.sock.sendall(frame)
            except OSError:
                pass


class _Flushed:
    """Set on the writer's thread once what was sent before flush `number` is committed."""

    def __init__(self, link: _Link, number: int) -> None:
        self.link = link
        self.number = number

    def set(self) -> None:
        self.link.send(["flushed", self.number])


def _report(writer: StoreWriter) -> dict[str, Any]:
    error = writer.error
    return {**writer.stats(), "error": None if error is None else f"{type(error).__name__}: {error}"}


def serve(sock: socket.socket, options: dict[str, Any]) -> None:
    """The child: a `StoreWriter` fed from the socket, reporting back, until told to stop."""
    path = options.pop("path")
    if "entity_keys" in options:
        options["entity_keys"] = tuple(options["entity_keys"])
    writer = StoreWriter(path, **options)
    link = _Link(sock)
    link.send(["status", _report(writer)])  # the store is open: the primary may start its flow
    writer.after_durable_checkpoint = lambda offsets: link.send(["durable", offsets])
    writer.start()
    stopped = threading.Event()

    def report() -> None:
        while not stopped.wait(STATUS_EVERY):
            link.send(["status", _report(writer)])

    threading.Thread(target=report, name="store-writer-status", daemon=True).start()
    for message in _frames(sock):
        kind = message[0]
        if kind == "rows":
            writer.put_rows(message[1])
        elif kind == "checkpoint":
            writer.put_checkpoint(message[1], message[2])
        elif kind == "flush":
            writer.mark(_Flushed(link, message[1]))
        elif kind == "stop":
            break
    writer.close()  # what it holds is committed (the primary closed or asked: either way, it is whole)
    stopped.set()
    link.send(["status", _report(writer)])
    sock.close()


def main(argv: list[str]) -> None:
    fd, parent_pid = int(argv[0]), int(argv[1])
    die_with_parent(parent_pid)
    os.nice(NICENESS)  # batches commit every 50 ms anyway; on a busy machine the serving processes go first
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the primary stops us in order
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # likewise: `stop` then a clean exit, or SIGKILL
    options = orjson.loads(sys.stdin.buffer.read())
    serve(socket.socket(fileno=fd), options)


if __name__ == "__main__":
    main(sys.argv[1:])
