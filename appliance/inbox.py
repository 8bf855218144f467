"""The inbox: a durable append-only log of what clients send over the socket.

Events ingested over the socket, predictions that enter the stream, and labels are appended here
before they are acknowledged; the dataflow reads the log back by byte offset (see
`sources.InboxTail`) and records that offset in its checkpoints. A `write(2)` to the page cache
survives a `kill -9` of the appliance, so nothing acknowledged is lost to a process crash; a
background `fsync` every `sync_every` seconds bounds what an OS crash or power cut can take.

The log only grows in length (offsets never change), but its disk space is given back: once a
checkpoint covering offset N is durable, `release(N)` punches a hole over the bytes before it
(Linux `fallocate(PUNCH_HOLE)`; they read back as zeros and no restart reads them again). Where
the file system cannot punch holes the log keeps its space, as before.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

import orjson

log = logging.getLogger(__name__)

_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_RELEASE_GRAIN = 1 << 20  # bytes: holes are punched in whole MiB


def _fallocate():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):  # not Linux / glibc
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    return fallocate


class Inbox:
    """Append-only writer; used from the server's event-loop thread only."""

    def __init__(self, path: str, *, sync_every: float = 0.2) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self._fd).st_size
        self._dirty = False
        self.released = 0  # bytes before this offset have been given back to the file system
        self._release_lock = threading.Lock()  # release() runs on the store writer's thread
        self._fallocate = _fallocate()
        self._closed = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, args=(sync_every,), name="inbox-sync", daemon=True)
        self._syncer.start()

    def append(self, records: list[dict]) -> int:
        """Append records as JSON lines; return the byte offset after the last one."""
        data = b"".join(orjson.dumps(record) + b"\n" for record in records)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)
        self._dirty = True
        return self.size

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
            if self._fallocate(self._fd, _PUNCH_HOLE, self.released, end - self.released) != 0:
                error = ctypes.get_errno()
                log.warning("cannot give back inbox space (%s); the inbox keeps it", os.strerror(error))
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
