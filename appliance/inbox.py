"""The inbox: a durable append-only log of what clients send over the socket.

Events ingested over the socket, predictions that enter the stream, and labels are appended here
before they are acknowledged; the dataflow reads the log back by byte offset (see
`sources.InboxTail`) and records that offset in its checkpoints. A `write(2)` to the page cache
survives a `kill -9` of the appliance, so nothing acknowledged is lost to a process crash; a
background `fsync` every `sync_every` seconds bounds what an OS crash or power cut can take.
"""

from __future__ import annotations

import os
import threading

import orjson


class Inbox:
    """Append-only writer; used from the server's event-loop thread only."""

    def __init__(self, path: str, *, sync_every: float = 0.2) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self._fd).st_size
        self._dirty = False
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

    def close(self) -> None:
        """Sync and close the log."""
        if not self._closed.is_set():
            self._closed.set()
            self._syncer.join()
            os.fsync(self._fd)
            os.close(self._fd)
