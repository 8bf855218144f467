"""What the serving processes tell each other through shared files: the primary's word to its
children (whether writes are refused, how far the flow has read: `ServingStatus`), and each child's
predict service times and connection counters for the primary's `stats` (`LatencyReport`,
`PeerLatencies`).

A child answers `ingest`, `label` and logged `predict` itself, so it must refuse them when the
primary would: while a stage is down (`Availability`'s outage: a full disk, a failing store writer,
a stopped flow...) and while the flow is more than `MAX_INBOX_LAG` behind the child's own inbox.
The primary rewrites a `ServingStatus` into a fixed-size, owner-only file `<db>-serving` from its
main loop (every 0.2 s, only when it changed); every child maps it read-only and reads it per write.

The file is written once, whole, when it is created (so rewriting it never needs a new block: a
full disk does not stop the news that the disk is full), and is then only changed through a shared
memory map under a sequence lock: the writer makes the sequence odd, writes the record, makes it
even; a reader retries until it read the same even sequence before and after the record.

>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "db-serving")
>>> writer = StatusWriter(path)
>>> writer.publish(ServingStatus(outage=None, offsets={"inbox-1": 120}))
True
>>> reader = StatusReader(path)
>>> reader.read()
ServingStatus(outage=None, offsets={'inbox-1': 120})
>>> writer.publish(ServingStatus(Outage("disk", "12 MiB free", "disk_low"), {"inbox-1": 130}))
True
>>> reader.read().outage.code
'disk_low'
>>> reader.close(); writer.close()
"""

from __future__ import annotations

import glob
import mmap
import os
import struct
import threading
from array import array
from dataclasses import dataclass, field

import orjson

from appliance.serving.availability import Outage
from appliance.serving.latency import RING_SIZE, LatencyRing

__all__ = ["CHILD_COUNTERS", "RECORD_BYTES", "LatencyReport", "PeerLatencies", "PeerReport", "ServingStatus", "SharedRecord", "report_path", "StatusReader", "StatusWriter", "status_path"]

RECORD_BYTES = 16 << 10  # the whole file; a record longer than this has its outage reason shortened
_HEAD = struct.Struct("<QI")  # sequence (odd while being written), payload length
_MAX_REASON = 1000
_TRIES = 10_000


def status_path(db: str) -> str:
    """The status record of the appliance whose store is `db`."""
    return f"{db}-serving"


@dataclass(frozen=True)
class ServingStatus:
    """What a serving child needs of the primary's state to refuse what the primary would refuse.

    Attributes:
        outage: The stage refusing writes now (its code is the error code), or None.
        offsets: The flow's byte offset per input name (`inbox-<n>` for child n's inbox).
    """

    outage: Outage | None = None
    offsets: dict[str, int] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        outage = None if self.outage is None else {**self.outage._asdict(), "reason": self.outage.reason[:_MAX_REASON]}
        return orjson.dumps({"outage": outage, "offsets": self.offsets})

    @classmethod
    def from_bytes(cls, data: bytes) -> ServingStatus:
        fields = orjson.loads(data)
        outage = fields["outage"]
        return cls(None if outage is None else Outage(**outage), fields["offsets"])


class SharedRecord:
    """A fixed-size file of one record, rewritten in place through a shared memory map under a
    sequence lock: one writer process, any number of readers, none of them ever blocked.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "rec")
    >>> writer, reader = SharedRecord(path, 64, create=True), None
    >>> reader = SharedRecord(path, 64)
    >>> reader.read() is None  # nothing written yet
    True
    >>> writer.write(b"abc"); reader.read()
    b'abc'
    """

    def __init__(self, path: str, size: int, create: bool = False) -> None:
        self.path = path
        self.size = size
        if create:  # a new file renamed into place: a reader's map of the old one never sees it shrink
            fresh = f"{path}.{os.getpid()}.new"
            fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            try:
                _write_all(fd, bytes(size))  # blocks allocated now, never again (a short file would SIGBUS)
            except OSError:
                os.close(fd)
                os.unlink(fresh)
                raise
            os.replace(fresh, path)
        else:
            fd = os.open(path, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, size) if create else mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._sequence = 0

    def write(self, payload: bytes) -> None:
        if _HEAD.size + len(payload) > self.size:
            raise ValueError(f"a record of {len(payload)} bytes does not fit in {self.size}")
        self._sequence += 1  # odd: being written
        self._map[:8] = self._sequence.to_bytes(8, "little")
        self._map[8:_HEAD.size + len(payload)] = len(payload).to_bytes(4, "little") + payload
        self._sequence += 1  # even: whole
        self._map[:8] = self._sequence.to_bytes(8, "little")

    def sequence(self) -> int:
        """The record's sequence now (moves with every write: a reader's cache key)."""
        return int.from_bytes(self._map[:8], "little")

    def read(self) -> bytes | None:
        """The last whole record (None if none was ever written)."""
        view = self._map
        payload = None
        for _ in range(_TRIES):
            sequence, length = _HEAD.unpack_from(view, 0)
            if sequence % 2:
                continue
            payload = view[_HEAD.size:_HEAD.size + length]
            if int.from_bytes(view[:8], "little") == sequence:
                return payload if sequence else None
        return payload  # the writer stopped mid-record (it is gone): what is there

    def close(self) -> None:
        self._map.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# A child's connection counters, as the socket server's `stats` names them (summed into `stats.server`)
CHILD_COUNTERS = ("connections_open", "connections_total", "connections_open_tcp", "connections_refused",
                  "auth_failures", "requests", "errors", "bytes_in", "bytes_out", "auth_timeouts", "auth_closed",
                  "paused_clients")


@dataclass(frozen=True)
class PeerReport:
    """What one serving child last reported: its predict service times (ns) and its counters."""

    samples: array
    server: dict[str, int]


def report_path(db: str, index: int) -> str:
    """Where serving child `index` reports its predict service times and counters."""
    return f"{db}-serving-{index}"


class LatencyReport:
    """A serving child's predict service times and connection counters for the primary's `stats`
    (child -> primary).

    The child rewrites its `LatencyRing` (pid, count, its `CHILD_COUNTERS`, the samples) into
    `<db>-serving-<n>`; the primary merges every child's samples with its own and sums the counters
    with its own server's (`PeerLatencies`).
    """

    _FIXED = struct.Struct(f"<QQ{len(CHILD_COUNTERS)}q")
    SIZE = _HEAD.size + _FIXED.size + 8 * RING_SIZE

    def __init__(self, path: str) -> None:
        self._record = SharedRecord(path, self.SIZE, create=True)
        self._last: tuple = ()

    def publish(self, ring: LatencyRing, server: dict[str, int]) -> None:
        """Write the ring and the counters if either changed since the last write."""
        counters = tuple(int(server[name]) for name in CHILD_COUNTERS)  # a counter missing is a bug: loud
        if (ring.count, counters) != self._last:
            self._last = (ring.count, counters)
            self._record.write(self._FIXED.pack(os.getpid(), ring.count, *counters) + ring.recorded().tobytes())

    def close(self) -> None:
        self._record.close()


class PeerLatencies:
    """The primary's side: each child's latest report, from the files present."""

    def __init__(self, db: str) -> None:
        self.pattern = glob.escape(db) + "-serving-*"
        self._open: dict[str, tuple[int, SharedRecord]] = {}

    def clear(self) -> None:
        """Remove the reports of an earlier start (its children are gone)."""
        for path in glob.glob(self.pattern):
            os.unlink(path)

    def read(self) -> dict[int, PeerReport]:
        """Each child's last report, by pid."""
        found: dict[int, PeerReport] = {}
        fixed = LatencyReport._FIXED
        for path in glob.glob(self.pattern):
            if not path.rsplit("-", 1)[-1].isdigit():
                continue
            try:
                inode = os.stat(path).st_ino
                if path not in self._open or self._open[path][0] != inode:  # a restarted child's new file
                    if path in self._open:
                        self._open.pop(path)[1].close()
                    self._open[path] = (inode, SharedRecord(path, LatencyReport.SIZE))
            except OSError:
                continue
            payload = self._open[path][1].read()
            if payload:
                pid, _count, *counters = fixed.unpack_from(payload)
                found[pid] = PeerReport(array("q", payload[fixed.size:]), dict(zip(CHILD_COUNTERS, counters)))
        return found

    def close(self) -> None:
        for _, record in self._open.values():
            record.close()
        self._open.clear()


class StatusWriter:
    """The primary's side: creates the file (owner-only, every byte written) and rewrites the record.

    Any thread may publish (the main loop's tick, a server thread that saw an outage begin or end):
    the record has one writer at a time.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._record = SharedRecord(path, RECORD_BYTES, create=True)
        self._last = b""
        self._lock = threading.Lock()

    def publish(self, status: ServingStatus) -> bool:
        """Write `status` if it differs from the last one written; return whether it was written."""
        payload = status.to_bytes()
        with self._lock:
            if payload == self._last:
                return False
            self._record.write(payload)
            self._last = payload
        return True

    def close(self) -> None:
        self._record.close()


class StatusReader:
    """A child's side: the record as last published (decoded again only when its sequence moved)."""

    def __init__(self, path: str) -> None:
        self._record = SharedRecord(path, RECORD_BYTES)
        self._sequence = -1
        self._status = ServingStatus()

    def read(self) -> ServingStatus:
        sequence = self._record.sequence()
        if sequence != self._sequence:
            payload = self._record.read()
            self._status = ServingStatus() if payload is None else ServingStatus.from_bytes(payload)
            self._sequence = sequence  # a write racing this read moves it again: decoded next time
        return self._status

    def close(self) -> None:
        self._record.close()
