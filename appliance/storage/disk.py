"""The store's disk: its size, its growth, the time until the disk is full, and when to stop writing.

`DiskGauge.sample` (the runtime calls it every 0.2 s, off the serving path) stats the store's files
and the disk under them, keeps a minute of samples for the growth rate, and caches a `DiskReading`;
a write asks only the cached reading, so the check costs an attribute read.

Thresholds (of the disk holding the store): below `warn_below` free bytes the disk stage is `low`
(health `degraded`); below `refuse_below` it is `refusing`: writes are refused with the stable code
`disk_low` while what was already acknowledged still has room to be committed. `refuse_below` is
`[retention] disk_reserve`, by default 5 % of the disk's size capped at 1 GiB; `warn_below` twice that.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import NamedTuple

REFUSE_SHARE = 0.05  # of the disk's size: free space below this refuses writes
REFUSE_CAP = 1 << 30  # ... but never more than 1 GiB
GROWTH_WINDOW = 60.0  # seconds of samples behind the growth rate
AUTO_SHARE = 0.5  # the default byte bound: the store's size at start + this share of the disk's free space
AUTO_FLOOR = 256 << 20  # ... and at least this


class DiskReading(NamedTuple):
    """One look at the store's files and their disk."""

    store_bytes: int  # the store file and its WAL, as the disk holds them
    disk_free: int  # bytes an unprivileged writer may still use
    disk_total: int
    growth_bytes_per_s: float | None  # over the last GROWTH_WINDOW seconds (None: one sample yet)
    seconds_until_full: float | None  # disk_free / growth (None: not growing)
    state: str  # "ok", "low" (health degraded) or "refusing" (writes refused with `disk_low`)
    warn_below: int
    refuse_below: int


def store_paths(db: str | Path) -> tuple[Path, Path]:
    return Path(db), Path(f"{db}-wal")


def store_bytes(db: str | Path) -> int:
    """Bytes the store file and its WAL hold on disk (0 for a file not there)."""
    total = 0
    for path in store_paths(db):
        try:
            total += os.stat(path).st_size
        except FileNotFoundError:
            pass
    return total


def thresholds(disk_total: int, reserve: int | None = None) -> tuple[int, int]:
    """(warn_below, refuse_below) free bytes for a disk of `disk_total` bytes; `reserve` (`[retention]
    disk_reserve`) replaces the automatic 5 % capped at 1 GiB; 0 turns both off."""
    refuse = min(REFUSE_CAP, int(disk_total * REFUSE_SHARE)) if reserve is None else reserve
    return 2 * refuse, refuse


def disk_space(db: str | Path) -> tuple[int, int]:
    """(free, total) bytes of the disk holding the store."""
    st = os.statvfs(Path(db).resolve().parent)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def default_max_bytes(db: str | Path) -> int:
    """The byte bound when `[retention] max_bytes` is "auto": the store's size now plus half the
    disk's free space, at least 256 MiB."""
    free, _ = disk_space(db)
    return max(AUTO_FLOOR, store_bytes(db) + int(free * AUTO_SHARE))


class DiskGauge:
    """Samples the store's size and its disk; the latest reading is read by any thread."""

    def __init__(self, db: str | Path, *, reserve: int | None = None, clock=time.monotonic,
                 window: float = GROWTH_WINDOW) -> None:
        self.db = str(db)
        self.reserve = reserve
        self.clock = clock
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self.reading: DiskReading | None = None
        self.samples = 0  # readings taken (a client can wait for the next one)
        self.refusing: str | None = None  # why writes are refused now (an attribute read per write), or None

    def sample(self) -> DiskReading:
        """Look at the files and the disk now; update the growth rate and the state."""
        size = store_bytes(self.db)
        free, total = disk_space(self.db)
        now = self.clock()
        with self._lock:
            self._samples.append((now, size))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
                self._samples.popleft()
            first_t, first_size = self._samples[0]
        growth = (size - first_size) / (now - first_t) if now > first_t else None
        until_full = free / growth if growth is not None and growth > 0 else None
        warn, refuse = thresholds(total, self.reserve)
        state = "refusing" if free < refuse else "low" if free < warn else "ok"
        self.reading = DiskReading(size, free, total, growth, until_full, state, warn, refuse)
        self.refusing = None if state != "refusing" else (
            f"{free:,} bytes free on the store's disk, under the {refuse:,} kept for what is already "
            "acknowledged; free space or lower [retention] max_bytes")
        self.samples += 1
        return self.reading

    def stats(self) -> dict:
        """The latest reading for `stats` (a plain dict)."""
        reading = self.reading
        if reading is None:
            return {}
        out = {**reading._asdict(), "samples": self.samples}
        if out["growth_bytes_per_s"] is not None:
            out["growth_bytes_per_s"] = round(out["growth_bytes_per_s"], 1)
        if out["seconds_until_full"] is not None:
            out["seconds_until_full"] = round(out["seconds_until_full"], 1)
        return out
