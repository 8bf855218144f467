"""The stats board: the latest stats snapshot, written on the engine's thread, read on the server's."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from appliance.timeutil import format_timestamp

if TYPE_CHECKING:
    from appliance.engine.core import Engine

RATE_WINDOW = 5.0  # seconds the rates are measured over; they fall to 0 when nothing arrives for this long
RATE_NAMES = ("events_per_second", "labels_per_second", "predictions_per_second", "learns_per_second")


class StatsBoard:
    """The latest stats snapshot, produced on the engine's thread and read by the server's.

    The rates are worked out when read, over the last `RATE_WINDOW` seconds of wall time, so they
    fall to 0 when nothing arrives (no batch publishes a new snapshot then). `source` says which
    finite source the appliance reads and when it ended.
    """

    def __init__(self, every: float = 0.25, window: float = RATE_WINDOW) -> None:
        self.every = every
        self.window = window
        self._snapshot: dict[str, Any] = {}
        self._next = 0.0
        self._samples: deque[tuple[float, ...]] = deque()  # (monotonic time, events, labels, predictions, learns)
        self._lock = threading.Lock()
        self.source: dict[str, Any] | None = None  # {"spec": ..., "ended_at": None or a timestamp}

    @property
    def snapshot(self) -> dict[str, Any]:
        """The latest snapshot, with the rates as of now and the source's state."""
        stats = dict(self._snapshot)
        stats["rates"] = self.rates()
        if self.source is not None:
            stats["source"] = dict(self.source)
        return stats

    def source_ended(self) -> None:
        """Called (on the dataflow's thread) when the finite source has been read to its end."""
        if self.source is not None and self.source.get("ended_at") is None:
            self.source = {**self.source, "ended_at": format_timestamp(time.time())}

    def rates(self, now: float | None = None) -> dict[str, float]:
        """Per-second rates over the last `window` seconds, ending now (0 once nothing has come for that long)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._prune(now)
            samples = list(self._samples)
        if len(samples) < 2 or now <= samples[0][0]:
            return dict.fromkeys(RATE_NAMES, 0.0)
        base, last, span = samples[0], samples[-1], now - samples[0][0]
        return {name: (value - before) / span for name, value, before in zip(RATE_NAMES, last[1:], base[1:])}

    def _prune(self, now: float) -> None:
        # keep one sample at or before the window's start, as the base the rates are measured from
        while len(self._samples) >= 2 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()

    def publish(self, engine: Engine, force: bool = False) -> bool:
        """Refresh the snapshot at most every `every` seconds (called after each engine batch).

        Returns whether it did; the dataflow publishes a skipped refresh a moment later.
        """
        now = time.monotonic()
        if not force and now < self._next:
            return False
        self._next = now + self.every
        stats = engine.stats()
        counts = stats["counts"]
        sample = (now, counts["events"], counts["labels_joined"] + counts["labels_immediate"]
                  + counts["labels_defaulted"], counts["predictions"], engine.model.n_learned)
        with self._lock:
            self._samples.append(sample)
            self._prune(now)
        stats["offsets"] = dict(engine.offsets)
        stats["dead_letters_recent"] = list(reversed(engine.recent_dead))
        stats["curve"] = list(engine.curve)
        self._snapshot = stats
        return True
