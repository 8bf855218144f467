"""The real entry point under tmux: `appliance console` in a terminal, against a real `appliance up`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import Running, make_stream, wait_for, write_config

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


def test_up_with_console_runs_both_and_quitting_stops_the_appliance(short_dir):
    stream_file = short_dir / "events.jsonl"
    stream_file.write_text("".join(json.dumps(e) + "\n" for e in make_stream(600)))
    write_config(short_dir, stream_file)
    session = f"up-{short_dir.name}"
    tmux = ["tmux", "-L", session]
    exit_file = short_dir / "exit-code"
    command = (f"cd {short_dir} && {sys.executable} -m appliance up --console --socket {short_dir / 'a.sock'} "
               f"--db {short_dir / 'a.db'}; echo $? > {exit_file}")  # Textual draws on stderr: no redirect
    try:
        subprocess.run([*tmux, "new-session", "-d", "-s", session, "-x", "100", "-y", "30", command], check=True)
        subprocess.run([*tmux, "set-option", "-t", session, "remain-on-exit", "on"], check=True)

        def screen():
            return subprocess.run([*tmux, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

        wait_for(lambda: "connected" in screen() and "600" in screen(), explain=screen)
        subprocess.run([*tmux, "send-keys", "-t", session, "q"], check=True)
        wait_for(lambda: exit_file.exists() and exit_file.read_text().strip(), explain=screen)
        after = screen()
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert exit_file.read_text().strip() == "0", after
    assert "stopped cleanly" in after
