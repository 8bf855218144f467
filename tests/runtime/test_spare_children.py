"""Serving children's interpreters started ahead (`runtime.interpreters`) and handed their setup.

`appliance up` starts the children's interpreters before it has a config or a socket; the
appliance's `ServingChildren` hands each its setup (the listening sockets as descriptors, its index,
its options) once the primary listens. Real interpreters, real sockets, the real `appliance up`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from appliance.config.file import config_from_dict
from appliance.runtime.interpreters import SpareChildren, start_interpreter
from appliance.serving.child_setup import hand_over, take_over
from appliance.serving.client import Client
from tests.conftest import SMALL_CONFIG, flip_stream, serving


def make_config(short_dir: Path):
    return config_from_dict({**SMALL_CONFIG, "serve": {"db": str(short_dir / "d.db"), "socket": str(short_dir / "d.sock")}})


def children_of(pid: int) -> list[int]:
    """Live serving children's interpreters started by process `pid` (their command line names it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if b"appliance.serving.child" in argv and str(pid).encode() in argv and "\nState:\tZ" not in state:
            found.append(int(entry))
    return found


def test_a_hand_over_carries_the_listening_socket_itself():
    """The descriptor received is the same socket: a connection to the sender's listener is accepted on it."""
    ours, theirs = socket.socketpair()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("")  # an abstract address: nothing on disk
    listener.listen(1)
    try:
        hand_over(ours, {"index": 2, "private_socket": "p"}, [listener.fileno()])
        received = take_over(theirs)
        assert received is not None and received.fields == {"index": 2, "private_socket": "p"}
        inherited = socket.socket(fileno=received.fds[0])
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(listener.getsockname())
            accepted, _ = inherited.accept()
            accepted.close()
        inherited.close()
    finally:
        for each in (ours, theirs, listener):
            each.close()


def test_an_interpreter_never_handed_a_setup_exits_quietly():
    started = start_interpreter()
    started.control.close()  # the appliance did not start
    assert started.process.wait(60) == 0
    started.process.stdout.close()


def test_the_appliances_children_are_the_interpreters_started_ahead(short_dir):
    """Both children are the spares (no new interpreter), and they serve: predicts answered by them."""
    config = make_config(short_dir)
    with SpareChildren(2) as spares:
        ahead = sorted(spare.process.pid for spare in spares._spare)
        with serving(config, serve_processes=2, spare_children=spares) as appliance:
            assert sorted(appliance.fleet.children.pids()) == ahead
            assert spares.take() is None
            for i, event in enumerate(flip_stream(10, 10)):
                with Client(config.socket) as client:
                    assert client.request("predict", event=event, ingest=False)["event_id"] == f"e{i}"
            logged = sum(len(Path(f"{config.db}-inbox-{n}").read_bytes().splitlines()) for n in (1, 2))
            assert logged == 10  # answered by the children, each logged in a child's inbox


def test_a_spare_that_died_is_replaced_by_a_new_interpreter(short_dir):
    config = make_config(short_dir)
    with SpareChildren(2) as spares:
        dead, alive = spares._spare
        os.kill(dead.process.pid, signal.SIGKILL)
        dead.process.wait(30)
        with serving(config, serve_processes=2, spare_children=spares) as appliance:
            pids = appliance.fleet.children.pids()
            assert alive.process.pid in pids and dead.process.pid not in pids and len(set(pids)) == 2
            assert appliance.fleet.children.running() == 2
            with Client(config.socket) as client:
                assert client.request("health")["serving_pids"] == [os.getpid(), *pids]
        dead.process.stdout.close()


def test_close_kills_the_spares_not_taken():
    spares = SpareChildren(2)
    processes = [spare.process for spare in spares._spare]
    spares.close()
    assert all(process.returncode is not None for process in processes)
    assert children_of(os.getpid()) == []


def test_appliance_up_that_cannot_start_leaves_no_interpreter(short_dir):
    """The real `appliance up --serve-processes 2` with a config that does not exist: a usage error, and
    the two interpreters it started first are gone with it."""
    up = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--serve-processes", "2", "--config",
                           str(short_dir / "missing.toml")], cwd=short_dir, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    _out, err = up.communicate(timeout=120)
    assert up.returncode != 0 and b"missing.toml" in err, err
    assert children_of(up.pid) == []
