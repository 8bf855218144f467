"""The primary's serving children: started with the listening socket, restarted when one dies.

With `--serve-processes N` (N > 1) the primary starts N children (`appliance.serving.child`), which
take every new client connection: the primary accepts only while none of them runs
(`runtime.app.Appliance._route_connections`). Each child gets the
listening Unix socket (and the TCP one, with the token on stdin, when TCP is on) by `pass_fds` (no fork of this process's state: `Popen` execs a fresh
interpreter), the config as JSON on stdin, and the path of the primary's private socket to forward
the ops it does not answer itself. `check` (called from the primary's main loop) restarts a child
that exited; `stop` terminates them all and waits. Children started from the main thread only:
`PR_SET_PDEATHSIG` fires when the thread that started a child ends.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field

from appliance.config.file import Config
from appliance.serving.access import AUTH_TIMEOUT
from appliance.serving.child import ChildOptions

log = logging.getLogger(__name__)

STOP_WAIT = 10.0  # seconds a child has to exit after SIGTERM before it is killed


def default_serve_processes() -> int:
    """Serving processes by default: one per core, at most 4 (beside the primary, when more than 1)."""
    return max(1, min(os.cpu_count() or 1, 4))


@dataclass
class ServingChildren:
    """`count` child processes accepting on `unix_fd`, forwarding to `private_socket`."""

    config: Config
    count: int
    unix_fd: int
    private_socket: str
    tcp_fd: int | None = None  # the primary's TCP listener, accepted on by the children too
    token: str | None = None  # TCP clients' token (given on stdin, never on the command line)
    auth_timeout: float = AUTH_TIMEOUT
    status_path: str | None = None  # the primary's status record (None: the store's)
    processes: dict[int, subprocess.Popen] = field(default_factory=dict)
    first_index: int = 1  # inboxes `<db>-inbox-<first_index>` onwards
    restarts: int = 0
    stopped: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock)

    def start(self) -> None:
        """Start every child at once, then wait for each to say it is accepting."""
        with self.lock:
            launched = {index: self._launch(index) for index in range(self.first_index, self.first_index + self.count)}
            for index, process in launched.items():
                self._await_ready(index, process)

    def _spawn(self, index: int) -> None:
        self._await_ready(index, self._launch(index))

    def _launch(self, index: int) -> subprocess.Popen:
        tcp = "-" if self.tcp_fd is None else str(self.tcp_fd)
        args = [sys.executable, "-m", "appliance.serving.child", str(index), str(self.unix_fd), tcp,
                self.private_socket, str(os.getpid())]
        fds = (self.unix_fd,) if self.tcp_fd is None else (self.unix_fd, self.tcp_fd)
        process = subprocess.Popen(args, pass_fds=fds, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        options = ChildOptions(self.config, token=self.token, auth_timeout=self.auth_timeout,
                               serving_processes=self.serving_processes, status_path=self.status_path)
        process.stdin.write(options.to_json())
        process.stdin.close()
        return process

    def _await_ready(self, index: int, process: subprocess.Popen) -> None:
        assert process.stdout is not None
        ready = process.stdout.readline()  # the child is accepting once it says so
        if ready.strip() != b"ready":
            log.warning("serving child %d did not start (exit %s)", index, process.poll())
        self.processes[index] = process

    @property
    def serving_processes(self) -> int:
        """Every process that may accept, the primary included (it does while no child runs); each
        takes its share of the failed-authentication budget."""
        return self.first_index + self.count

    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.values()]

    def running(self) -> int:
        """Children started and not exited (each said it was accepting when it started)."""
        with self.lock:
            return sum(process.poll() is None for process in self.processes.values())

    def check(self) -> None:
        """Restart each child that has exited (not once `stop` began)."""
        with self.lock:
            if not self.stopped:
                self._restart_exited()

    def _restart_exited(self) -> None:
        for index, process in list(self.processes.items()):
            code = process.poll()
            if code is not None:
                log.warning("serving child %d (pid %d) exited with %s; restarting it", index, process.pid, code)
                if process.stdout is not None:
                    process.stdout.close()
                self.restarts += 1
                self._spawn(index)

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self._stop_all()

    def _stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(STOP_WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()
        self.processes.clear()
