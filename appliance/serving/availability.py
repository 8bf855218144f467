"""Whether the appliance may accept writes: an outage of any stage refuses them, loudly.

A write (`ingest`, `label`, a logged `predict`, an operator command) is acknowledged once it is in
the inbox, and it is only worth acknowledging if the stages behind the inbox can take it: the
dataflow alive, the store writer committing, the inbox and the store still the files they were.
`Availability` asks each stage (`watch`) and remembers what cannot heal (`latch`: a file deleted
or truncated under the running appliance); `GuardedInbox` refuses a write with the stable code
`unavailable` while there is an outage, and checks after every append that the bytes landed where
the offsets say (a truncated inbox would swallow them); a deleted or replaced inbox is caught by
`verify`, which the runtime calls every 0.2 s.

Whoever must refuse as this process does (the serving children, through the primary's status
record) is told by `on_change` the moment this process sees the outage begin or end: before the
write it refuses, or the `health` that says it is over, is answered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import NamedTuple

from appliance.errors import RequestError
from appliance.ingest.inbox import Inbox, InboxWriteError

log = logging.getLogger(__name__)

__all__ = ["Availability", "GuardedInbox", "Outage"]


class Outage(NamedTuple):
    """A stage that cannot do its work, and why (one line)."""

    stage: str
    reason: str
    code: str = "unavailable"  # the error code a refused write gets (`disk_low` for the disk stage)


class Availability:
    """The outages of the appliance's stages, asked on every write and by `health`."""

    def __init__(self) -> None:
        self._checks: list[Callable[[], Outage | None]] = []
        self.latched: Outage | None = None
        self.on_change: Callable[[Outage | None], None] | None = None  # told when the outage seen changes
        self._seen: Outage | None = None

    def watch(self, check: Callable[[], Outage | None]) -> None:
        """Ask `check` (cheap, any thread) on every write and every `health`."""
        self._checks.append(check)

    def latch(self, stage: str, reason: str) -> None:
        """Record an outage that lasts until the appliance is restarted; log it once."""
        if self.latched is None:
            self.latched = Outage(stage, reason)
            log.error("%s is down: %s; writes are refused from now on", stage, reason)
        self.outage()  # `on_change` hears of it before the refusal is answered

    def outage(self) -> Outage | None:
        """The outage refusing writes now, or None; `on_change` is told first if it differs from the last seen."""
        found = self.current()
        if found != self._seen:
            self._seen = found
            if self.on_change is not None:
                self.on_change(found)
        return found

    def current(self) -> Outage | None:
        """The outage refusing writes now, or None (`on_change` is not told)."""
        if self.latched is not None:
            return self.latched
        for check in self._checks:
            found = check()
            if found is not None:
                return found
        return None

    def check(self) -> None:
        """Raise `unavailable` (nothing is written) while a stage is down."""
        found = self.outage()
        if found is not None:
            state = "low" if found.code == "disk_low" else "down"
            raise RequestError(found.code, f"not accepting writes: {found.stage} is {state} ({found.reason}); "
                                              "nothing was written; reads still work")


class GuardedInbox(Inbox):
    """The inbox, refusing appends while a stage is down and checking each append landed."""

    def __init__(self, path: str, availability: Availability, **options) -> None:
        super().__init__(path, **options)
        self.availability = availability
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)

    def accepting(self) -> bool:
        return self.availability.outage() is None

    def append(self, records: list[dict]) -> int:
        self.availability.check()
        with self._append_lock:  # another thread's append would move the file's offset under this check
            try:
                end = self._append(records)
            except InboxWriteError as exc:  # what it wrote is blanked: nothing of it will be read
                raise RequestError("unavailable", str(exc)) from None
            landed = os.lseek(self._fd, 0, os.SEEK_CUR)  # O_APPEND: where this write ended (cheaper than fstat)
        if landed != end:
            self.availability.latch("inbox", self._tampered(False, landed, end))
            raise RequestError("unavailable", f"not accepting writes: {self.availability.latched.reason}")
        return end

    def verify(self) -> None:
        """Latch an outage if the inbox file was deleted, replaced or truncated (called periodically)."""
        if self.availability.latched is not None or self._closed.is_set():
            return
        expected = self.size  # read before the fstat: an append on the server's thread may land in between
        st = os.fstat(self._fd)
        try:
            on_disk = os.stat(self.path)
            replaced = (on_disk.st_dev, on_disk.st_ino) != self._identity
        except FileNotFoundError:
            replaced = True
        if replaced or st.st_nlink == 0 or st.st_size < expected:
            self.availability.latch("inbox", self._tampered(replaced or st.st_nlink == 0, st.st_size, expected))

    def _tampered(self, gone: bool, size: int, expected: int) -> str:
        if gone:
            return f'the inbox "{self.path}" was deleted or replaced while running; restart the appliance'
        return (f'the inbox "{self.path}" was truncated while running ({size:,} bytes, {expected:,} expected); '
                "what it held past that is lost to this run; restart the appliance")
