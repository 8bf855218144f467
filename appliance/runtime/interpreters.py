"""Serving children's interpreters, started before the appliance knows what they will serve.

A serving child (`appliance.serving.child`) is a fresh interpreter whose stdin is one end of a Unix
socket pair; it imports what it serves with, then waits there for its setup
(`serving.child_setup`), which `runtime.serving_processes.ServingChildren` sends once the primary's
sockets listen. Its start is mostly those imports (~1 s of CPU, River's the most), so `appliance up`
starts the interpreters first thing (`SpareChildren`), and they import while the primary imports,
reads its config and restores its engine. Only the standard library here: this module is imported
before anything else of the appliance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass


def default_serve_processes() -> int:
    """Serving processes by default: one per core, at most 4 (beside the primary, when more than 1)."""
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass
class Interpreter:
    """A child's interpreter, started and importing, not yet told what to serve."""

    process: subprocess.Popen
    control: socket.socket  # the primary's end of the child's stdin: its setup goes there

    def discard(self) -> None:
        """End an interpreter never handed a setup (it holds nothing yet) and release its pipes."""
        self.control.close()
        self.process.kill()
        self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_interpreter() -> Interpreter:
    """Start a serving child's interpreter; it imports, then waits for its setup on stdin."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen([sys.executable, "-m", "appliance.serving.child", str(os.getpid())],
                                   stdin=theirs.fileno(), stdout=subprocess.PIPE)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return Interpreter(process, ours)


class SpareChildren:
    """Serving children's interpreters started ahead of the appliance, taken by `ServingChildren`.

    `close` kills the ones not taken (the appliance did not start, or started fewer): they hold
    nothing yet. (A child whose stdin closes without a setup also exits on its own.)
    """

    def __init__(self, count: int) -> None:
        self._spare = [start_interpreter() for _ in range(count)]

    def __enter__(self) -> SpareChildren:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def take(self) -> Interpreter | None:
        return self._spare.pop(0) if self._spare else None

    def close(self) -> None:
        while self._spare:
            self._spare.pop().discard()
