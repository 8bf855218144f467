"""Recent request service times, kept in a fixed ring so recording costs one store and no allocation.

>>> ring = LatencyRing(size=4)
>>> for micros in (10, 20, 30, 40, 50):
...     ring.record(micros * 1000)
>>> ring.quantiles()
{'samples': 4, 'p50_us': 30.0, 'p99_us': 50.0, 'max_us': 50.0}
"""

from __future__ import annotations

from array import array
from typing import Any

RING_SIZE = 4096


def quantiles_of(samples: Any) -> dict[str, Any]:
    """p50, p99 and max of durations in nanoseconds, in microseconds (None before any)."""
    values = sorted(samples)
    n = len(values)
    if not n:
        return {"samples": 0, "p50_us": None, "p99_us": None, "max_us": None}
    return {"samples": n, "p50_us": round(values[(n - 1) // 2] / 1000, 1),
            "p99_us": round(values[min(n - 1, int(n * 0.99))] / 1000, 1),
            "max_us": round(values[-1] / 1000, 1)}


class LatencyRing:
    """The last `size` durations (nanoseconds) of one kind of request.

    `record` runs on the serving thread per request; `quantiles` copies the ring and sorts the
    copy, so it is for stats requests, not for the hot path.
    """

    __slots__ = ("samples", "size", "count")

    def __init__(self, size: int = RING_SIZE) -> None:
        self.samples = array("q", bytes(8 * size))
        self.size = size
        self.count = 0

    def record(self, nanoseconds: int) -> None:
        self.samples[self.count % self.size] = nanoseconds
        self.count += 1

    def recorded(self) -> array:
        """The durations recorded (at most `size`, the newest), in no particular order."""
        return self.samples[:min(self.count, self.size)]

    def quantiles(self) -> dict[str, Any]:
        """p50, p99 and max of the recorded durations, in microseconds (None before any)."""
        return quantiles_of(self.recorded())
