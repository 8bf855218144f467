"""The inbox: a durable append-only log of what clients send over the socket.

Events ingested over the socket, predictions that enter the stream, and labels are appended here
before they are acknowledged; the dataflow reads the log back by byte offset (`InboxTail`,
below) and records that offset in its checkpoints. A `write(2)` to the page cache
survives a `kill -9` of the appliance, so nothing acknowledged is lost to a process crash; a
background `fsync` every `sync_every` seconds bounds what an OS crash or power cut can take.

The log only grows in length (offsets never change), but its disk space is given back: once a
checkpoint covering offset N is durable, `release(N)` punches a hole over the bytes before it
(Linux `fallocate(PUNCH_HOLE)`; they read back as zeros and no restart reads them again). Where
the file system cannot punch holes the log keeps its space, as before. An inbox another process
appends to (a serving child's) is released the same way by the process that reads it (`InboxSpace`).

Every complete line is a whole record, and only a whole record is acknowledged. A `kill -9` in the
middle of a large append, or a disk that fills part-way through one, can leave a partial line at the
end. Such a torn tail is never glued to the next record: the inbox ends it with a newline at open
(or, after a failed write, starts its next append with one), so the fragment stays a line of its own,
which the flow dead-letters as a torn write. A failed append is blanked (the bytes it managed to
write are overwritten with spaces, which the reader skips) and raises `InboxWriteError`: the request
is refused, never acknowledged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from typing import IO, Any

import orjson

from appliance.errors import ApplianceError

log = logging.getLogger(__name__)

_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_RELEASE_GRAIN = 1 << 20  # bytes: holes are punched in whole MiB
READ_AHEAD = 1 << 20  # bytes the inbox tail reads at a time, and at most holds unread


def _fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):  # not Linux / glibc
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    return fallocate


class InboxWriteError(ApplianceError):
    """An append did not reach the inbox whole; nothing of it will enter the stream."""

    code = "write_failed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot write to the inbox ({reason}); nothing was recorded, retry later")
        self.message = str(self)


def _ends_torn(fd: int, size: int) -> bool:
    """Whether the file's last byte is not a newline (a write was cut short)."""
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


class Inbox:
    """Append-only writer. Appends may come from several threads (the primary's public and private
    socket servers): each is whole and alone under `_append_lock`, so its end offset is its own."""

    def __init__(self, path: str, *, sync_every: float = 0.2) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self._fd).st_size
        self.torn = _ends_torn(self._fd, self.size)  # the next append starts with a newline
        if self.torn:
            log.warning("the inbox %s ends in a partial line (a write cut short); it will be dead-lettered", path)
        self._dirty = False
        self.released = 0  # bytes before this offset have been given back to the file system
        self._release_lock = threading.Lock()  # release() runs on the store writer's thread
        self._append_lock = threading.Lock()  # one append at a time: `size` and the file's end move together
        self._fallocate = _fallocate()
        self._closed = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, args=(sync_every,), name="inbox-sync", daemon=True)
        self._syncer.start()
        if self.torn:
            self._end_torn_line()

    def _end_torn_line(self) -> None:
        """End a torn tail found at open with a newline now, so the flow reads the fragment as a line
        (and dead-letters it) at once, not at this inbox's next append, which may never come while
        serving children take every request. If the write fails, the next append starts with it."""
        try:
            if os.write(self._fd, b"\n") == 1:
                self.size += 1
                self.torn = False
                self._dirty = True
        except OSError as exc:
            log.warning("cannot end the torn line of %s now (%s); the next append will", self.path, exc.strerror)

    def append(self, records: list[dict]) -> int:
        """Append records as JSON lines; return the byte offset after the last one.

        Raises:
            InboxWriteError: nothing of `records` will be read back (what was written is blanked).
        """
        with self._append_lock:
            return self._append(records)

    def _append(self, records: list[dict]) -> int:
        """`append`'s work; the caller holds `_append_lock`."""
        data = b"".join(orjson.dumps(record) + b"\n" for record in records)
        if self.torn:
            data = b"\n" + data
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._blank_failed_append()
            raise InboxWriteError(exc.strerror or str(exc)) from None
        self.size += len(data)
        self.torn = False
        self._dirty = True
        return self.size

    def _blank_failed_append(self) -> None:
        """Overwrite what a failed append wrote with spaces (whole records in it must not be read)."""
        size = os.fstat(self._fd).st_size
        if size > self.size:
            try:  # overwriting allocated blocks needs no new space; pwrite on an O_APPEND fd would append
                fd = os.open(self.path, os.O_WRONLY)
                try:
                    os.pwrite(fd, b" " * (size - self.size), self.size)
                finally:
                    os.close(fd)
            except OSError as exc:
                log.warning("cannot blank a failed inbox append (%s)", exc.strerror)
        self.size = size
        self.torn = _ends_torn(self._fd, size)

    def _sync_loop(self, every: float) -> None:
        while not self._closed.wait(every):
            if self._dirty:
                self._dirty = False
                os.fsync(self._fd)

    def release(self, offset: int) -> int:
        """Give back the disk space of the bytes before `offset` (in whole MiB); return the new mark."""
        end = (min(offset, self.size) // _RELEASE_GRAIN) * _RELEASE_GRAIN
        with self._release_lock:
            if self._closed.is_set() or self._fallocate is None or end <= self.released:
                return self.released
            if not _punch(self._fallocate, self._fd, self.released, end):
                self._fallocate = None
                return self.released
            self.released = end
        return end

    def close(self) -> None:
        """Sync and close the log."""
        with self._release_lock:
            if not self._closed.is_set():
                self._closed.set()
                self._syncer.join()
                os.fsync(self._fd)
                os.close(self._fd)


class InboxSpace:
    """The disk space of an inbox another process appends to (a serving child's `<db>-inbox-<n>`),
    given back behind a durable checkpoint's offset by the process that reads it: the same holes,
    in whole MiB, as `Inbox.release`. Holes below what was read never meet the writer's appends at
    the end (`O_APPEND`), so the two processes need no lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.released = 0  # bytes before this offset have been given back (a new start punches them again: a no-op)
        self._fallocate = _fallocate()

    def release(self, offset: int) -> int:
        """Give back the space before `offset` (in whole MiB); return the new mark."""
        end = (offset // _RELEASE_GRAIN) * _RELEASE_GRAIN
        if self._fallocate is None or end <= self.released:
            return self.released
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError:  # not created yet, or gone: nothing to give back
            return self.released
        try:
            end = min(end, (os.fstat(fd).st_size // _RELEASE_GRAIN) * _RELEASE_GRAIN)
            if end <= self.released:
                return self.released
            if not _punch(self._fallocate, fd, self.released, end):
                self._fallocate = None
                return self.released
        finally:
            os.close(fd)
        self.released = end
        return end


def _punch(fallocate: Any, fd: int, start: int, end: int) -> bool:
    """Punch a hole over [start, end) of `fd`, keeping its size; False (logged) where that fails."""
    if fallocate(fd, _PUNCH_HOLE, start, end - start) == 0:
        return True
    log.warning("cannot give back inbox space (%s); the inbox keeps it", os.strerror(ctypes.get_errno()))
    return False


class InboxTail:
    """Reads complete lines appended to the inbox file, from a byte offset.

    It reads ahead at most `READ_AHEAD` bytes past what it has handed out: when the flow is behind,
    the backlog stays in the file, not in memory (a line longer than that is read whole).
    """

    def __init__(self, path: str, start: int = 0) -> None:
        self.path = path
        self.position = start
        self._buffer = b""
        self._start = 0  # where the unread part of `_buffer` begins
        self._handle: IO[bytes] | None = None

    def read(self, limit: int = 1024) -> list[tuple[int, bytes]]:
        """Return up to `limit` new `(offset, line)` items; empty when nothing new has arrived."""
        if self._handle is None:
            if not os.path.exists(self.path):
                return []
            self._handle = open(self.path, "rb")  # noqa: SIM115 - closed in close()
            self._handle.seek(self.position)
        if len(self._buffer) - self._start < READ_AHEAD:
            self._fill()
        items: list[tuple[int, bytes]] = []
        while len(items) < limit:
            end = self._buffer.find(b"\n", self._start)
            if end < 0:
                if items or not self._fill():  # no whole line buffered: read on, unless at the end
                    break
                continue
            line = self._buffer[self._start:end]
            self.position += end + 1 - self._start
            self._start = end + 1
            if line.strip():
                items.append((self.position, line))
        return items

    def _fill(self) -> bool:
        chunk = self._handle.read(READ_AHEAD) if self._handle is not None else b""
        if not chunk:
            return False
        self._buffer = self._buffer[self._start:] + chunk  # one copy per chunk read, not per call
        self._start = 0
        return True

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
