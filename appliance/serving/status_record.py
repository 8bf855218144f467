"""The primary's word to its serving children: whether writes are refused, and how far the flow has read.

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

import mmap
import os
import struct
from dataclasses import dataclass, field

import orjson

from appliance.serving.availability import Outage

__all__ = ["RECORD_BYTES", "ServingStatus", "StatusReader", "StatusWriter", "status_path"]

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


class StatusWriter:
    """The primary's side: creates the file (owner-only, every byte written) and rewrites the record."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, bytes(RECORD_BYTES))  # blocks allocated now, never again
            self._map = mmap.mmap(fd, RECORD_BYTES)
        finally:
            os.close(fd)
        self._sequence = 0
        self._last = b""

    def publish(self, status: ServingStatus) -> bool:
        """Write `status` if it differs from the last one written; return whether it was written."""
        payload = status.to_bytes()
        if payload == self._last:
            return False
        if _HEAD.size + len(payload) > RECORD_BYTES:
            raise ValueError(f"a serving status of {len(payload)} bytes does not fit in {RECORD_BYTES}")
        self._sequence += 1  # odd: being written
        self._map[:8] = self._sequence.to_bytes(8, "little")
        self._map[8:_HEAD.size + len(payload)] = len(payload).to_bytes(4, "little") + payload
        self._sequence += 1  # even: whole
        self._map[:8] = self._sequence.to_bytes(8, "little")
        self._last = payload
        return True

    def close(self) -> None:
        self._map.close()


class StatusReader:
    """A child's side: the record as last published (decoded again only when its sequence moved)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._map = mmap.mmap(fd, RECORD_BYTES, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self._sequence = -1
        self._status = ServingStatus()

    def read(self) -> ServingStatus:
        view = self._map
        for _ in range(_TRIES):
            sequence, length = _HEAD.unpack_from(view, 0)
            if sequence == self._sequence:
                return self._status
            if sequence % 2:
                continue
            payload = view[_HEAD.size:_HEAD.size + length]
            if int.from_bytes(view[:8], "little") != sequence:
                continue
            if sequence == 0:  # never published: nothing refused, nothing read
                status = ServingStatus()
            else:
                status = ServingStatus.from_bytes(payload)
            self._sequence, self._status = sequence, status
            return status
        return self._status  # the writer is stuck mid-record (it is gone): the last whole record

    def close(self) -> None:
        self._map.close()
