"""Start-up and recovery: `appliance up` as a subprocess, timed to its first successful prediction.

`launch` starts the real entry point (`python -m appliance up`) and polls its socket with a
`predict` request until one succeeds; the seconds from `Popen` to that reply are the start-up time
(interpreter start and imports included, as a user would see it).

`recovery` ingests a stream as fast as possible, `kill -9`s the process once it has ingested the
whole stream (or a given number of events), starts it again on the same store and times the first
successful prediction after the restart: checkpoint load, entity state, model, inbox and socket.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.bench.measure import payments_like_sample, predict_line
from appliance.serving.client import Client


@dataclass
class Launched:
    """A running `appliance up` subprocess, its socket and store, and how long it took to serve."""

    proc: subprocess.Popen
    socket: str
    db: str
    seconds_to_first_prediction: float
    log: Path

    def stats(self) -> dict[str, Any]:
        with Client(self.socket) as client:
            return client.request("stats")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the clean shutdown; return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


def launch(directory: Path, config: str, source: str, speed: float, *, fresh: bool = True,
           timeout: float = 120.0, name: str = "a", extra: tuple[str, ...] = ()) -> Launched:
    """Start `appliance up` in `directory` and return once a `predict` succeeds on its socket."""
    sock, db, log = str(directory / f"{name}.sock"), str(directory / f"{name}.db"), directory / f"{name}.log"
    command = [sys.executable, "-m", "appliance", "up", "--config", config, "--source", source,
               "--socket", sock, "--db", db, "--speed", str(speed), "--status-every", "0", *extra]
    if fresh:
        command.append("--fresh")
    line = predict_line(payments_like_sample(1, seed=7)[0] | {"ts": first_event_time(source)})
    with open(log, "ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=directory, stdout=out, stderr=subprocess.STDOUT)
    deadline = started + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"appliance up exited with {proc.returncode}: {log.read_text()[-500:]}")
        if _predicts(sock, line):
            seconds = time.perf_counter() - started
            return Launched(proc, sock, db, round(seconds, 3), log)
        if time.perf_counter() > deadline:
            proc.kill()
            raise RuntimeError(f"appliance up did not serve within {timeout:.0f} s: {log.read_text()[-500:]}")
        time.sleep(0.005)  # polling for the first answer; the resolution of the measurement


def first_event_time(source: str) -> Any:
    """The time field of the first line of a JSONL source (the sample's `ts`).

    The probe carries it: a request without a time is stamped with the stream's watermark, or with
    the wall clock before any event arrived, and a wall-clock time would move the watermark past the
    whole replayed sample, which would then be dead-lettered as late.
    """
    import gzip

    opener = gzip.open if source.endswith(".gz") else open
    with opener(source, "rb") as handle:
        return orjson.loads(handle.readline()).get("ts")


def _predicts(path: str, line: bytes) -> bool:
    """Whether one `predict` on `path` succeeds right now."""
    if not os.path.exists(path):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(line)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    return False
                reply += chunk
        return bool(orjson.loads(reply).get("ok"))
    except (OSError, orjson.JSONDecodeError):
        return False


def startup(directory: Path, config: str, source: str, rounds: int) -> list[float]:
    """Seconds from `appliance up` (fresh store) to its first successful prediction, `rounds` times."""
    seconds = []
    for i in range(rounds):
        app = launch(directory, config, source, speed=1.0, name=f"start{i}")
        seconds.append(app.seconds_to_first_prediction)
        app.stop()
    return seconds


def recovery(directory: Path, config: str, source: str, lines: int, timeout: float = 1800.0) -> dict[str, Any]:
    """Ingest `source` (`lines` lines) as fast as possible until a committed checkpoint covers all of
    it, `kill -9`, restart on the same store, and time the first successful prediction after the
    restart (the whole state is restored from that checkpoint)."""
    app = launch(directory, config, source, speed=0.0, name="recover")
    deadline = time.monotonic() + timeout
    while (done := _checkpointed_lines(app.db)) < lines:
        if app.proc.poll() is not None:
            raise RuntimeError(f"appliance up exited with {app.proc.returncode} before the kill, after {done} "
                               f"checkpointed lines (was it signalled from outside?): {app.log.read_text()[-300:]}")
        if time.monotonic() > deadline:
            app.kill9()
            raise RuntimeError(f"only {done} of {lines} lines checkpointed in {timeout:.0f} s")
        time.sleep(0.2)  # polling the store's checkpoint, with a deadline
    ingested = app.stats()["counts"]["events"]
    app.kill9()
    again = launch(directory, config, source, speed=0.0, fresh=False, name="recover")
    restored = again.stats()["counts"]["events"]
    again.stop()
    return {"events_before_kill": ingested, "events_restored_at_first_prediction": restored,
            "seconds_to_first_prediction": again.seconds_to_first_prediction,
            "cold_start_seconds": app.seconds_to_first_prediction}


def _checkpointed_lines(db: str) -> int:
    """Lines of the source file covered by the newest committed checkpoint (0 before the first)."""
    from appliance.storage.store import open_db

    conn = open_db(db).conn
    try:
        row = conn.execute("SELECT offsets FROM checkpoint ORDER BY id DESC LIMIT 1").fetchone()
    except Exception:  # noqa: BLE001 - no checkpoint table yet
        return 0
    finally:
        conn.close()
    offsets = orjson.loads(row[0]) if row else {}
    return max([int(v) for k, v in offsets.items() if k != "inbox"] or [0])
