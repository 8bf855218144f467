"""End to end: the real `appliance up` in a subprocess, answering over its real socket."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import orjson
import pytest

from appliance.serving.client import Client
from tests.conftest import Running, labels_in, make_stream, wait_for, write_config


@pytest.fixture
def stream_file(short_dir):
    path = short_dir / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in make_stream(600)) + "\n")
    return path


def test_up_serves_predictions_from_a_model_that_learned(short_dir, stream_file):
    write_config(short_dir, stream_file)
    app = Running(short_dir)
    try:
        with Client(app.socket) as client:
            stats = wait_for(lambda: (s := client.request("stats"))["counts"]["labels_joined"] > 0 and s)
            assert stats["model"]["examples_learned"] > 0
            reply = client.request("predict", event={"user": "u1", "card": "c1", "amount": 12.0, "city": "faro"})
            assert 0.0 <= reply["score"] <= 1.0 and reply["version"].startswith("v")
            bad = client.send_line(b'{"op": "predict", "event": {"user": "u1"}}')
            assert bad["ok"] is False and bad["error"]["code"] == "invalid_event"
            assert client.request("health")["status"] == "ok"
        assert oct(os.stat(app.socket).st_mode & 0o777) == "0o600"
    finally:
        code, out, err = app.stop()
    assert code == 0, err
    assert "stopped cleanly" in out
    assert not os.path.exists(app.socket)


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat is not installed")
def test_socat_is_a_working_client(short_dir, stream_file):
    write_config(short_dir, stream_file)
    app = Running(short_dir)
    try:
        request = b'{"op": "predict", "id": 7, "event": {"user": "u2", "card": "c2", "amount": 30, "city": "porto"}}\n'
        result = subprocess.run(["socat", "-", f"UNIX-CONNECT:{app.socket}"], input=request,
                                capture_output=True, timeout=10)
        reply = orjson.loads(result.stdout.splitlines()[0])
        assert reply["id"] == 7 and reply["ok"] is True and "score" in reply
    finally:
        app.stop()


def test_restart_resumes_from_the_checkpoint(short_dir, stream_file):
    write_config(short_dir, stream_file)
    app = Running(short_dir)
    with Client(app.socket) as client:
        wait_for(lambda: client.request("stats")["offsets"].get(str(stream_file)) == 600 + labels_in(stream_file))
        reply = client.request("ingest", events=[{"event_id": "sock-1", "ts": 1_767_300_000, "user": "u1",
                                                  "card": "c9", "amount": 10.0, "city": "faro"}])
        assert reply["accepted"] == 1, reply
        wait_for(lambda: client.request("stats")["counts"]["events"] == 601, explain=lambda: (reply, os.listdir(short_dir), client.request("stats")["inbox_lag_bytes"]))
    code, _, err = app.stop()
    assert code == 0, err
    again = Running(short_dir)
    try:
        with Client(again.socket) as client:
            stats = client.request("stats")
            assert stats["counts"]["events"] == 601  # nothing replayed twice, nothing lost
            features = client.request("features", key="card", entity="c9")
            assert features["entities"]["card"]["known"] is True
    finally:
        code, out, err = again.stop()
    assert code == 0 and "(resumed)" in out


def test_up_with_no_arguments_serves_the_sample_and_the_cli_clients_work(short_dir):
    """The README's first command: the bundled sample, ./appliance.sock, ./appliance.db."""
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--status-every", "1"], cwd=short_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("ready:"):
                break
        socket_path = str(short_dir / "appliance.sock")
        with Client(socket_path) as client:
            wait_for(lambda: client.request("stats")["model"]["served_version"] != "v1", timeout=60)
            event = {"user_id": "u39817", "card_id": "c219198", "device_id": "dv262614", "driver_id": "dmil0021",
                     "city": "milan", "amount": 84.0, "ride_km": 3.1, "payment_method": "card"}
            reply = client.request("predict", event=event, explain=True)
            assert 0.0 <= reply["score"] <= 1.0 and reply["features"]["amount"] == 84.0
            assert reply["version"] != "v1"  # a version published after learning from labels
            features = client.request("features", entity={"card_id": "c219198", "user_id": "u39817"})
            assert set(features["entities"]) == {"card_id", "user_id"}
        env = dict(os.environ, APPLIANCE_SOCKET=socket_path)
        out = subprocess.run([sys.executable, "-m", "appliance", "predict", json.dumps(event)], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert orjson.loads(out.stdout)["ok"] is True
        out = subprocess.run([sys.executable, "-m", "appliance", "stats"], env=env, capture_output=True, text=True,
                             timeout=30)
        assert out.returncode == 0 and "served version" in out.stdout, out.stderr
        out = subprocess.run([sys.executable, "-m", "appliance", "predict", "{not json"], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 1 and "not a JSON object" in out.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped cleanly" in out
    assert (short_dir / "appliance.db").exists()


def test_replay_reads_stdin_and_reports_dead_letters(short_dir, stream_file):
    write_config(short_dir, "-")
    lines = stream_file.read_text() + "{broken\n" + '{"event_id": "x", "user": "u"}\n'
    out = subprocess.run([sys.executable, "-m", "appliance", "replay", "-", "--json", "--db", str(short_dir / "r.db")],
                         cwd=short_dir, input=lines, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["counts"]["events"] == 600 and stats["counts"]["dead_letters"] == 2
    import sqlite3

    reasons = [r[0] for r in sqlite3.connect(short_dir / "r.db").execute("SELECT reason FROM dead_letters")]
    assert any("not valid JSON" in r for r in reasons) and any("missing time field" in r for r in reasons)


def test_a_missing_source_and_a_bad_model_spec_are_one_line_errors(short_dir):
    out = subprocess.run([sys.executable, "-m", "appliance", "replay", "nope.jsonl", "--config",
                          str(write_config(short_dir, "x.jsonl"))], cwd=short_dir, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1 and "not found" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run([sys.executable, "-m", "appliance", "replay", "river:Phishing", "--model",
                          "os.system('true')"], cwd=short_dir, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "not a River module" in out.stderr and "Traceback" not in out.stderr
    # numbers out of range are usage errors (exit 2) before anything starts: before, `--workers 0`
    # replayed nothing and exited 0, `--speed -5` ran as fast as possible, a port over 65535 was a traceback
    for command, message in ((["replay", "river:Phishing", "--workers", "0"], "'--workers': 0 is not in the range 1<=x<=64"),
                             (["up", "--speed", "-5"], "'--speed': -5.0 is not in the range x>=0"),
                             (["up", "--status-every", "-1"], "'--status-every': -1.0 is not in the range x>=0"),
                             (["up", "--metrics-port", "70000"], "'--metrics-port': 70000 is not in the range 1<=x<=65535")):
        out = subprocess.run([sys.executable, "-m", "appliance", *command], cwd=short_dir, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and message in out.stderr, (command, out.stderr)
        assert "Traceback" not in out.stderr and not (short_dir / "appliance.db").exists()
