"""When the dataflow fails: restart it from its checkpoint, within a budget; a poison item dead-lettered.

The dataflow runs on a thread of the primary process (with `--workers N`, beside N processes that
keep the entity state, `engine.partitions`): an exception in it (a bug met on one item, a user's
model raising in `learn_one`, memory running out, an entity worker that died) ends the whole flow. The engine's state may then be half-changed by the item it failed on, so the flow is never
resumed where it stopped: `appliance.runtime.app` waits for the store writer to commit what the
dead flow emitted, restores a fresh engine from the last committed checkpoint, and starts a new flow
from the checkpoint's offsets, exactly as a start after `kill -9` does (the order log makes it redo
the same items in the same order). The socket stays up all along; writes are refused with
`unavailable` until the new flow runs.

`FlowSupervisor` decides, per failure, whether to restart and after how long:

- at most `max_restarts` restarts within `WINDOW` seconds; one more failure stops the appliance
  with the error, as a start that fails would (0 restarts: stop on the first failure);
- the first restart in the window is immediate, each next one waits twice as long (1 s, 2 s, 4 s...,
  at most `MAX_DELAY`), so a fault that needs time to clear (a full disk) gets it;
- an item the engine failed on `POISON_AFTER` times is a poison item: every later flow dead-letters
  it (with the error in its reason) instead of processing it, so one bad item cannot stop the stream
  for good. It was acknowledged and is not lost: it is in `dead_letters`, with its payload.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from appliance.engine.items import ItemRef

__all__ = ["FlowFailure", "FlowSupervisor", "Restart", "describe"]

log = logging.getLogger(__name__)

WINDOW = 600.0  # seconds over which restarts are counted against the budget
MAX_DELAY = 30.0  # seconds the longest wait before a restart
POISON_AFTER = 2  # failures on the same item that make it a dead letter for every later flow
MAX_RESTARTS = 5  # the default budget (`appliance up --restarts`)


@dataclass(frozen=True)
class FlowFailure:
    """One failure of the dataflow."""

    at: float  # wall-clock time (seconds since the epoch)
    error: str  # one line: the exception's type and message
    item: ItemRef | None  # the item the engine was processing, if the engine failed on one
    resumed_at: dict[str, int] | None = None  # the offsets of the checkpoint the next flow started from


@dataclass(frozen=True)
class Restart:
    """What to do about a failure: restart after `delay` seconds, or stop (`restart` false)."""

    restart: bool
    delay: float = 0.0
    reason: str = ""  # why not, when it does not restart


@dataclass
class FlowSupervisor:
    """Counts the flow's failures, decides on restarts, remembers poison items."""

    max_restarts: int = MAX_RESTARTS
    clock: Callable[[], float] = time.monotonic
    restarts: int = 0  # restarts so far, this start
    failures: list[FlowFailure] = field(default_factory=list)  # the most recent first, at most 10
    poisoned: dict[ItemRef, str] = field(default_factory=dict)  # item -> the dead letter's reason
    _recent: list[float] = field(default_factory=list)  # monotonic times of the restarts within WINDOW
    _counts: dict[ItemRef, int] = field(default_factory=dict)  # failures per item

    def failed(self, error: BaseException, item: ItemRef | None) -> Restart:
        """Record a failure of the flow; return whether and when to restart it."""
        failure = FlowFailure(time.time(), describe(error), item)
        self.failures = [failure, *self.failures[:9]]
        if item is not None:
            count = self._counts.get(item, 0) + 1
            self._counts[item] = count
            if count >= POISON_AFTER and item not in self.poisoned:
                self.poisoned[item] = (f"the engine failed on this item {count} times ({failure.error}); "
                                       "dead-lettered so the stream goes on")
                log.error('%s at offset %s: the engine failed on it %d times; it is dead-lettered',
                          item.source, item.offset, count)
        now = self.clock()
        self._recent = [t for t in self._recent if now - t < WINDOW]
        if len(self._recent) >= self.max_restarts:
            return Restart(False, reason=(f"the dataflow failed {len(self._recent) + 1} times within "
                                          f"{WINDOW / 60:.0f} minutes (at most {self.max_restarts} restarts); "
                                          f"last: {failure.error}"))
        delay = 0.0 if not self._recent else min(MAX_DELAY, 2.0 ** (len(self._recent) - 1))
        self._recent.append(now + delay)
        self.restarts += 1
        return Restart(True, delay)

    def resumed(self, offsets: dict[str, int]) -> None:
        """The flow restarted after the last failure from a checkpoint with these offsets ({}: none yet)."""
        if self.failures:
            self.failures[0] = replace(self.failures[0], resumed_at=dict(offsets))

    def stats(self) -> dict[str, Any]:
        """For `stats`: restarts this start, the recent failures, the poison items dead-lettered."""
        return {"restarts": self.restarts,
                "failures": [{"at": f.at, "error": f.error,
                              "item": None if f.item is None else {"source": f.item.source, "offset": f.item.offset},
                              "resumed_at": f.resumed_at}
                             for f in self.failures],
                "poisoned": [{"source": ref.source, "offset": ref.offset, "reason": reason}
                             for ref, reason in self.poisoned.items()]}


def describe(error: BaseException) -> str:
    """One line naming the root cause: Bytewax wraps the error a step raised in its own."""
    root = error
    while root.__cause__ is not None and root.__cause__ is not root:
        root = root.__cause__
    text = f"{type(root).__name__}: {root}".splitlines()[0] if str(root) else type(root).__name__
    return text[:300]
