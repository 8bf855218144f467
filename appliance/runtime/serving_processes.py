"""The primary's serving children: started with the listening socket, restarted when one dies.

With `--serve-processes N` (N > 1) the primary starts N children (`appliance.serving.child`), which
take every new client connection: the primary accepts only while none of them runs
(`runtime.fleet.ServingFleet.route_connections`). A child is a fresh interpreter (`Popen` execs it: no
fork of this process's state) whose stdin is one end of a Unix socket pair; once the primary's
sockets listen, it is handed its `ChildSetup` there (`serving.child_setup`): the listening Unix
socket (and the TCP one when TCP is on) as descriptors, the config and the TCP token, and the path
of the primary's private socket to forward the ops it does not answer itself.

A child's start is mostly imports (~1 s of CPU, River's the most). `SpareChildren` starts the
interpreters before the primary has a config or a socket (`appliance up` does, first thing), so
their imports run while the primary starts; `ServingChildren` hands each its setup. Measured on 2
cores: from `appliance up` to its first prediction 2.93 -> 2.25 s (docs/benchmarks.md).

`check` (called from the primary's main loop) restarts a child that exited; `stop` terminates them
all and waits. Children started from the main thread only: `PR_SET_PDEATHSIG` fires when the thread
that started a child ends.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from dataclasses import dataclass, field

from appliance.config.file import Config
from appliance.runtime.interpreters import SpareChildren, start_interpreter
from appliance.serving.access import AUTH_TIMEOUT
from appliance.serving.child import ChildOptions, ChildSetup
from appliance.serving.child_setup import hand_over

log = logging.getLogger(__name__)

STOP_WAIT = 10.0  # seconds a child has to exit after SIGTERM before it is killed


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
    spares: SpareChildren | None = None  # interpreters started ahead, taken before any new one is started

    def start(self) -> None:
        """Start every child at once, then wait for each to say it is accepting."""
        with self.lock:
            launched = {index: self._launch(index) for index in range(self.first_index, self.first_index + self.count)}
            for index, process in launched.items():
                self._await_ready(index, process)

    def _spawn(self, index: int) -> None:
        self._await_ready(index, self._launch(index))

    def _launch(self, index: int) -> subprocess.Popen:
        """A spare interpreter (else a new one) handed child `index`'s setup."""
        options = ChildOptions(self.config, token=self.token, auth_timeout=self.auth_timeout,
                               serving_processes=self.serving_processes, status_path=self.status_path)
        setup = ChildSetup(index, self.private_socket, options).to_dict()
        fds = [self.unix_fd] if self.tcp_fd is None else [self.unix_fd, self.tcp_fd]
        interpreter = (self.spares.take() if self.spares is not None else None) or start_interpreter()
        try:
            hand_over(interpreter.control, setup, fds)
        except OSError as exc:  # a spare that died waiting: a new interpreter instead
            log.warning("serving child %d: a started interpreter took no setup (%s); starting another", index, exc)
            interpreter.discard()
            interpreter = start_interpreter()
            hand_over(interpreter.control, setup, fds)
        finally:
            interpreter.control.close()
        return interpreter.process

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
