"""The real entry point under tmux: `appliance console` in a terminal, against a real `appliance up`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from .conftest import make_stream
from .test_up import Running, wait_for, write_config

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is installed by .ci/run")


def test_console_in_tmux_shows_the_appliance_and_quits(short_dir):
    stream_file = short_dir / "events.jsonl"
    stream_file.write_text("".join(json.dumps(e) + "\n" for e in make_stream(600)))
    write_config(short_dir, stream_file)
    app = Running(short_dir)
    session = f"console-{short_dir.name}"
    socket_flag = ["-L", session]  # a private tmux server: nothing shared with the user's
    try:
        subprocess.run(["tmux", *socket_flag, "new-session", "-d", "-s", session, "-x", "100", "-y", "30",
                        f"{sys.executable} -m appliance console --socket {app.socket} --rate 4"], check=True)

        def screen():
            return subprocess.run(["tmux", *socket_flag, "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout

        wait_for(lambda: "connected" in screen() and "events/s" in screen(), explain=screen)
        subprocess.run(["tmux", *socket_flag, "send-keys", "-t", session, "2"], check=True)
        wait_for(lambda: "champion" in screen() and "main" in screen(), explain=screen)
        subprocess.run(["tmux", *socket_flag, "send-keys", "-t", session, "q"], check=True)
        wait_for(lambda: subprocess.run(["tmux", *socket_flag, "has-session", "-t", session],
                                        capture_output=True).returncode != 0, explain=screen)
    finally:
        subprocess.run(["tmux", *socket_flag, "kill-server"], capture_output=True)
        code, _, err = app.stop()
    assert code == 0, err
