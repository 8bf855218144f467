"""What the appliance's long-lived processes share: dying with the process that started them, and
a cycle collector tuned for a heap built once at start."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

_PR_SET_PDEATHSIG = 1

# Young-generation collections every 50,000 allocations instead of 700: a request or an event makes
# a few hundred short-lived objects, and with the defaults a collection ran every couple of them.
COLLECTOR_THRESHOLDS = (50_000, 50, 100)


def settle_collector() -> None:
    """Move what the start built (modules, River, the config, restored state) out of the cycle
    collector's reach, so a full collection no longer walks it, and make young collections rarer
    (`COLLECTOR_THRESHOLDS`). For a process that runs for the appliance's life."""
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


@contextmanager
def collector_settled() -> Iterator[None]:
    """`settle_collector` for the length of a block, after one full collection; the thresholds and
    the frozen objects as they were when it ends.

    Objects alive at start (modules, the restored model and state) leave the cycle collector's sight
    and young collections are rarer, so full collections do not stall the flow (or requests): with
    the interpreter's defaults the engine spent ~11 % of its time over the sample's first 50,000 lines
    in the collector, ~130 ms per full collection (docs/benchmarks.md). For the appliance's own
    process (`runtime.app.RunOptions.own_process`); an embedding's collector is its own.
    """
    previous = gc.get_threshold()
    gc.collect()
    settle_collector()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*previous)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies; exit now if it already has.

    The parent must start it from a thread that lives as long as the child should: the kernel sends
    the signal when the *thread* that forked the child ends.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:
        os._exit(0)
