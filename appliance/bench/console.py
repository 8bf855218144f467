"""Console cost: CPU of `appliance console` at its default refresh, in a real terminal (tmux).

The console runs detached in a private tmux server (120x36) against a running appliance; once it
shows "connected", the CPU time (user + system, `/proc/PID/stat`) of the console process and of the
tmux server is read over `seconds` of wall time. Without tmux it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from typing import Any


def console_cpu(socket_path: str, seconds: float, rate: float | None = None, timeout: float = 60.0) -> dict[str, Any] | str:
    """Percent of one core used by the console (and its tmux server) over `seconds`; or why it was
    not measured."""
    if shutil.which("tmux") is None:
        return "tmux is not installed"
    session = f"bench-console-{os.getpid()}"
    tmux = ["tmux", "-L", session]
    command = f"{sys.executable} -m appliance console --socket {socket_path}" + (f" --rate {rate:g}" if rate else "")
    try:
        subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "120", "-y", "36", command], check=True)
        deadline = time.monotonic() + timeout
        while "connected" not in _screen(tmux, session):
            if time.monotonic() > deadline:
                return "the console never showed 'connected': " + _screen(tmux, session)[-200:]
            time.sleep(0.1)  # polling the screen, with a deadline
        pane = int(subprocess.run([*tmux, "display-message", "-p", "-t", session, "#{pane_pid}"],
                                  capture_output=True, text=True, check=True).stdout)
        console = _python_in(pane)
        server = int(subprocess.run([*tmux, "display-message", "-p", "-t", session, "#{pid}"],
                                    capture_output=True, text=True, check=True).stdout)
        before = (_cpu_seconds(console), _cpu_seconds(server), time.monotonic())
        time.sleep(seconds)  # the measurement window itself
        after = (_cpu_seconds(console), _cpu_seconds(server), time.monotonic())
        wall = after[2] - before[2]
        return {"seconds": round(wall, 1), "rate": rate, "console_percent": round(100 * (after[0] - before[0]) / wall, 1),
                "tmux_percent": round(100 * (after[1] - before[1]) / wall, 1)}
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)


def _screen(tmux: list[str], session: str) -> str:
    return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _python_in(pid: int) -> int:
    """The console's own process: the pane's process, or its child when a shell sits in between."""
    if b"appliance" in open(f"/proc/{pid}/cmdline", "rb").read():
        return pid
    children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    return int(children[0]) if children else pid


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
