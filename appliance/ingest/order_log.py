"""The order log: in which order the engine took items from its inputs, so a restart repeats it.

The engine reads two inputs at once (the replayed file and the socket inbox) and Bytewax interleaves
their batches as they become ready: a matter of timing. After a crash, the inputs are read again
from the offsets of the last checkpoint, and the items processed after that checkpoint would meet
the engine in another interleaving: other feature values, other model versions, and events that
were accepted before the crash turned into late dead letters after it (a socket event far ahead in
event time moves the watermark past file events that came before it the first time).

So before the engine processes a batch it appends the batch's runs, `source\\tfirst\\tlast` (one
line per run of consecutive items from one input, offsets inclusive), to `<db>-order` with one
`write(2)` (which survives a kill -9, like the inbox). On restart, the runs past the checkpoint's
offsets are the plan: the engine holds back items until the plan says their turn has come, so the
work a crash undid is redone in exactly the same order. Then it goes on in arrival order. The file
is compacted to the plan at each start, and while running, once it passes `COMPACT_BYTES`, to the
runs past the last checkpoint known durable (`release`): no restart reads what lies before it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque

__all__ = ["OrderLog"]

log = logging.getLogger(__name__)

MAX_HELD = 100_000  # items held back waiting for a planned run before the plan is given up
RETRY_EVERY = 1.0  # seconds between two attempts at an append that failed (a full disk)
COMPACT_BYTES = 1 << 20  # the log's size past which a durable checkpoint lets it be compacted


class OrderLog:
    """Records the order of processed items and replays it after a restart.

    Args:
        path: The log file (`<db>-order`).
        offsets: The input offsets of the checkpoint the engine was restored from ({} when fresh).
        inputs: The inputs of this run; runs of an input that is not read any more are dropped.
    """

    def __init__(self, path: str, offsets: dict[str, int], inputs: list[str]) -> None:
        self.path = path
        self.plan: deque[tuple[str, int, int]] = deque(run for run in _read_runs(path, offsets) if run[0] in inputs)
        self.held: list[tuple] = []
        self.replayed = 0  # items processed to follow the plan (for tests and logs)
        self.compactions = 0
        self._durable: dict[str, int] | None = None
        self._fd = -1
        self.failure: str | None = None  # why the last append failed, while it goes on failing
        self.give_up: threading.Event | None = None  # set: stop retrying a failed append
        self._rewrite(list(self.plan))

    def release(self, offsets: dict[str, int]) -> None:
        """A checkpoint with these offsets is durable: runs before them may go (from any thread;
        the compaction itself happens on the recording thread, between two appends)."""
        self._durable = dict(offsets)

    def _rewrite(self, runs: list[tuple[str, int, int]]) -> None:
        data = b"".join(_line(run) for run in runs)
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # owner-only whatever the umask, like every file of the store
        with open(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, self.path)  # atomic: a kill leaves the old log or the new one
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = len(data)

    def order(self, items: list[tuple]) -> list[tuple]:
        """Return the items to process now, in order; record the ones the plan did not dictate.

        Items are the parse step's (`items.Item`): each names its `source` and `offset`.
        """
        if not self.plan and not self.held:
            self._record(items)
            return items
        self.held.extend(items)
        ready: list[tuple] = []
        while self.plan:
            source, _first, last = self.plan[0]
            taken = [item for item in self.held if item.source == source and item.offset <= last]
            if taken:
                self.held = [item for item in self.held if not (item.source == source and item.offset <= last)]
                ready.extend(taken)
                self.replayed += len(taken)
            if not taken or taken[-1].offset != last:
                if len(self.held) <= MAX_HELD:
                    return ready  # the rest of this run has not been read yet
                log.warning("order log: %s never reached offset %d (the input changed?); "
                            "going on in arrival order", source, last)
                self.plan.clear()
                break
            self.plan.popleft()
        free, self.held = self.held, []
        self._record(free)
        return ready + free

    def _record(self, items: list[tuple]) -> None:
        if items:
            data = b"".join(_line(run) for run in _runs(items))
            if not self._append(data):
                return
            self._size += len(data)
            if self._size >= COMPACT_BYTES and self._durable is not None:
                durable, self._durable = self._durable, None
                self._rewrite(_read_runs(self.path, durable))
                self.compactions += 1

    def _append(self, data: bytes) -> bool:
        """Write `data` whole; on a write failure (a full disk) undo any part written and retry every
        `RETRY_EVERY` s, the flow waiting, until it succeeds (True) or `give_up` is set (False: the
        appliance is stopping; its last checkpoint cannot be committed either, and the next start
        takes the unlogged items in arrival order)."""
        while True:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                if self.failure is not None:
                    log.warning("the order log is writable again")
                    self.failure = None
                return True
            except OSError as exc:
                os.ftruncate(self._fd, self._size)  # no torn line
                if self.failure is None:
                    log.error("cannot write the order log: %s; the flow waits", exc.strerror or exc)
                self.failure = f"cannot write the order log: {exc.strerror or exc}"
            if self.give_up is not None and self.give_up.wait(RETRY_EVERY):
                return False
            if self.give_up is None:
                raise OSError(f"cannot write the order log {self.path}")

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _runs(items: list[tuple]) -> list[tuple[str, int, int]]:
    runs: list[list] = []
    for item in items:
        source, offset = item.source, item.offset
        if runs and runs[-1][0] == source:
            runs[-1][2] = offset
        else:
            runs.append([source, offset, offset])
    return [tuple(run) for run in runs]  # type: ignore[misc]


def _line(run: tuple[str, int, int]) -> bytes:
    return f"{run[0]}\t{run[1]}\t{run[2]}\n".encode()


def _read_runs(path: str, offsets: dict[str, int]) -> list[tuple[str, int, int]]:
    """The runs recorded after the checkpoint with `offsets`, in order; a torn last line is dropped."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return []
    runs = []
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is an unfinished write
        try:
            source, first, last = line.decode().rsplit("\t", 2)
            run = (source, int(first), int(last))
        except ValueError:
            continue
        if run[2] > int(offsets.get(source, 0)):
            runs.append(run)
    return runs
