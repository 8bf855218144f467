"""Stopping the real `appliance up` with signals: twice in a row, and with a client that never reads."""

from __future__ import annotations

import json
import select
import signal
import socket
import subprocess

import pytest

from appliance.serving.client import Client
from tests.conftest import Running, make_stream, wait_for, write_config


@pytest.fixture
def stream_file(short_dir):
    path = short_dir / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in make_stream(600)) + "\n")
    return path


class Hogs:
    """Clients that pipeline requests and never read."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def close(self) -> None:
        for hog in self.sockets:
            hog.close()


def fill_until_paused(path: str, client: Client) -> Hogs:
    """A client of the primary's own server (`path`: only the primary accepts there) that pipelines
    requests and never reads, until the server has stopped reading from it."""
    hogs = Hogs()
    line = b'{"op": "stats"}\n' * 256
    hog = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    hog.connect(path)
    hog.setblocking(False)
    hogs.sockets.append(hog)
    while select.select([], [hog], [], 0.2)[1]:  # until the server stops reading from it
        try:
            hog.send(line)
        except BlockingIOError:
            pass
    assert client.request("health")["status"] in ("ok", "degraded")  # the others are still answered
    return hogs


def test_a_second_signal_while_stopping_does_not_hang_the_stop(short_dir, stream_file):
    write_config(short_dir, stream_file)
    app = Running(short_dir)
    with Client(app.socket, timeout=30) as client:
        # on the primary's own server (its children take the public socket's connections): the stop
        # now waits ~2 s for it before aborting it
        hog = fill_until_paused(app.primary_socket, client)
    app.proc.send_signal(signal.SIGTERM)
    first = app.proc.stderr.readline()
    while "SIGTERM: stopping" not in first:  # the handler is running: the stop has begun
        first = app.proc.stderr.readline()
        assert first, "the appliance exited without saying it was stopping"
    app.proc.send_signal(signal.SIGINT)  # Ctrl-C on top of the SIGTERM, while the server is stopping
    try:
        out, err = app.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        app.proc.kill()
        raise AssertionError("the appliance hung on a second signal while stopping") from None
    finally:
        hog.close()
    assert app.proc.returncode == 0, err
    assert "stopped cleanly" in out
    again = Running(short_dir)  # and the stop was a clean one: the next start resumes from its checkpoint
    try:
        assert "(resumed)" in "".join(again.lines)
        with Client(again.socket) as client:
            wait_for(lambda: client.request("stats")["counts"]["events"] == 600)
    finally:
        code, _, err = again.stop()
    assert code == 0, err
