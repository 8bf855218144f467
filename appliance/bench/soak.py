"""A soak run: `appliance up` on the bundled sample under steady socket load, sampled every few seconds.

    appliance soak --minutes 30 --out soak.jsonl

Starts `appliance up --fresh` in a work directory (the sample replayed at its own speed, then
serving), and for the whole run keeps two clients busy: one ingests payments (and labels for a
tenth of them, a little later) at `--rate` events per second, one sends `predict` requests
(`"ingest": false`) back to back and times them. Every `--every` seconds one JSON line goes to
`--out` (and a summary line to the terminal): the appliance's resident memory, open file
descriptors and threads, its store and inbox sizes, its counters and inbox lag, and the predict
latency quantiles of the interval. At the end it stops the appliance with SIGTERM and reports
whether it stopped cleanly. The exit code is 1 if the appliance died, a request failed for a reason
other than `overloaded`, or the stop was not clean.

Measurements, never assertions: read the lines for growth (memory or latency rising with time).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from appliance.errors import ApplianceError, RequestError
from appliance.serving.client import Client

EPOCH = 1_772_323_200.0  # 2026-03-01T00:00Z: where the soak's own event time starts
CITIES = ["lisbon", "porto", "madrid", "barcelona", "paris", "lyon", "berlin", "milan"]


def payment(rng: random.Random, event_id: str | None, ts: float | None = None) -> dict[str, Any]:
    """A payment shaped like the sample's; without `ts` it takes the stream's current event time."""
    city = rng.choice(CITIES)
    event: dict[str, Any] = {} if ts is None else {"ts": round(ts, 3)}
    return {**event, "type": "payment", "event_id": event_id, "user_id": f"u{rng.randrange(5000):05d}",
            "card_id": f"c{rng.randrange(6500):06d}", "driver_id": f"d{city[:3]}{rng.randrange(160):04d}",
            "device_id": f"dv{rng.randrange(5000):06d}", "city": city, "amount": round(rng.uniform(3, 60), 2),
            "payment_method": rng.choice(["card", "wallet"]), "ride_km": round(rng.uniform(1, 20), 1)}


class Load:
    """The two clients, on their own threads, until `stop` is set."""

    def __init__(self, socket_path: str, rate: float, seed: int,
                 clock: Callable[[], float | None] = lambda: None) -> None:
        self.socket_path = socket_path
        self.clock = clock  # the event time to stamp on what is sent now (None: leave it to the stream)
        self.rate = rate
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.ingested = 0
        self.overloaded = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._ingest, daemon=True),
                        threading.Thread(target=self._predict, daemon=True)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def take_latencies(self) -> list[float]:
        with self.lock:
            taken, self.latencies = self.latencies, []
        return taken

    def _fail(self, what: str) -> None:
        with self.lock:
            self.failures.append(what)

    def _ingest(self) -> None:
        batch_every = 0.1
        per_batch = max(1, round(self.rate * batch_every))
        rng = random.Random(self.rng.random())
        pending_labels: list[dict] = []
        n = 0
        try:
            with Client(self.socket_path, timeout=30) as client:
                next_at = time.monotonic()
                while not self.stop.is_set():
                    now = self.clock()
                    events = [payment(rng, f"soak-{n + i}", now) for i in range(per_batch)]
                    labels, pending_labels = pending_labels, [
                        {"type": "label", "event_id": e["event_id"], "label": int(rng.random() < 0.05)}
                        for e in events if rng.random() < 0.1]
                    if now is not None:  # labels arrive a batch later, in event time too
                        labels = [dict(label, ts=round(now, 3)) for label in labels]
                    try:
                        reply = client.request("ingest", events=events + labels)
                        if reply["rejected"]:
                            self._fail(f"ingest rejected {reply['rejected'][:1]}")
                        with self.lock:
                            self.ingested += reply["accepted"]
                    except RequestError as exc:
                        if exc.code != "overloaded":
                            raise
                        with self.lock:
                            self.overloaded += 1
                    n += per_batch
                    next_at += batch_every
                    self.stop.wait(max(0.0, next_at - time.monotonic()))  # pacing the load, not synchronising
        except ApplianceError as exc:
            if not self.stop.is_set():
                self._fail(f"ingest: {exc}")

    def _predict(self) -> None:
        rng = random.Random(self.rng.random())
        try:
            with Client(self.socket_path, timeout=30) as client:
                while not self.stop.is_set():
                    line = orjson.dumps({"op": "predict", "event": payment(rng, None), "ingest": False})
                    started = time.perf_counter()
                    reply = client.send_line(line)
                    elapsed = time.perf_counter() - started
                    if reply.get("ok"):
                        with self.lock:
                            self.latencies.append(elapsed)
                    elif reply["error"]["code"] == "overloaded":
                        with self.lock:
                            self.overloaded += 1
                    else:
                        self._fail(f"predict: {reply['error']}")
        except ApplianceError as exc:
            if not self.stop.is_set():
                self._fail(f"predict: {exc}")


def process_figures(pid: int) -> dict[str, Any]:
    """Resident memory (MiB), open descriptors and threads of a process, from /proc."""
    figures: dict[str, Any] = {}
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    figures["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
                elif line.startswith("Threads:"):
                    figures["threads"] = int(line.split()[1])
        figures["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return figures


def quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    values = sorted(values)
    pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 3)  # noqa: E731
    return {"p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(values[-1] * 1000, 3)}


def disk(path: Path) -> int:
    """Bytes the file occupies on disk (less than its length where holes were punched)."""
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def soak(minutes: float, every: float, rate: float, out: Path, workdir: Path, seed: int = 1,
         echo=print, event_speed: float = 0.0) -> int:
    """Run the soak; return the process exit code (0 when everything held).

    With `event_speed` > 0 the soak's clients are the whole stream (the appliance replays no file):
    their events carry event times running at `event_speed` times wall time from `EPOCH`, so label
    horizons pass and pending predictions expire within the run. With 0, the bundled sample replays
    first and the soak's events carry no time.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    socket_path, db = str(workdir / "soak.sock"), workdir / "soak.db"
    errors = (workdir / "soak-appliance.err").open("w+")  # a file: a full pipe would stall the appliance
    source: list[str] = []
    if event_speed > 0:
        (workdir / "no-file.jsonl").write_text("")
        import sample_data

        source = ["--config", str(sample_data.CONFIG), "--source", str(workdir / "no-file.jsonl")]
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "up", "--fresh", "--socket", socket_path,
                             "--db", str(db), "--status-every", "0", *source], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=errors, text=True)
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("ready:"):
            break
    else:
        proc.wait()
        errors.seek(0)
        echo(f"appliance up never became ready: {errors.read()[-2000:]}")
        return 1
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    started = time.monotonic()
    clock = (lambda: EPOCH + (time.monotonic() - started) * event_speed) if event_speed > 0 else (lambda: None)
    load = Load(socket_path, rate, seed, clock)
    load.start()
    end = started + minutes * 60
    died = False
    with out.open("w") as sink, Client(socket_path, timeout=30) as client:
        while time.monotonic() < end and not load.failures:
            time.sleep(min(every, max(0.0, end - time.monotonic())))  # the sampling period
            if proc.poll() is not None:
                died = True
                break
            stats = client.request("stats")
            counts = stats.get("counts", {})
            row = {"t": round(time.monotonic() - started, 1), **process_figures(proc.pid),
                   "db_bytes": size(db), "inbox_bytes": size(Path(str(db) + "-inbox")),
                   "inbox_disk_bytes": disk(Path(str(db) + "-inbox")),
                   "events": counts.get("events"), "predictions": counts.get("predictions"),
                   "labels_joined": counts.get("labels_joined"), "inbox_lag_bytes": stats.get("inbox_lag_bytes"),
                   "pending_labels": stats.get("pending_labels"), "store_queued_rows": stats.get("store", {}).get("queued_rows"),
                   "unlogged": stats.get("predictions_unlogged"),
                   "ingested": load.ingested, "overloaded": load.overloaded}
            latencies = load.take_latencies()
            row["predicts"] = len(latencies)
            row.update(quantiles(latencies))
            sink.write(orjson.dumps(row).decode() + "\n")
            sink.flush()
            echo(f"[{row['t']:>7.1f}s] rss {row.get('rss_mib')} MiB · fds {row.get('fds')} · events {row['events']} · "
                 f"lag {row['inbox_lag_bytes']} B · store queue {row['store_queued_rows']} · pending {row['pending_labels']} · inbox {row['inbox_bytes'] >> 20} MiB ({row['inbox_disk_bytes'] >> 20} on disk) · predict p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms "
                 f"max {row['max_ms']} ms ({row['predicts']}) · overloaded {row['overloaded']}")
    load.stop.set()
    for thread in load.threads:
        thread.join(30)
    if not died:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    errors.seek(0)
    err = errors.read()
    errors.close()
    clean = proc.returncode == 0 and not died
    for failure in load.failures[:5]:
        echo(f"failure: {failure}")
    echo(f"appliance {'stopped cleanly' if clean else f'exited with {proc.returncode}'}; "
         f"{load.ingested} events ingested; samples in {out}")
    if not clean:
        echo(err[-2000:])
    return 0 if clean and not load.failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=5.0, help="seconds between two samples")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second ingested over the socket")
    parser.add_argument("--out", type=Path, default=Path("soak.jsonl"))
    parser.add_argument("--workdir", type=Path, default=None, help="where the store goes [a temporary directory]")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--event-speed", type=float, default=0.0,
                        help="event time runs this many times faster than wall time, and the soak's "
                             "clients are the whole stream; 0: replay the sample first, events without ts")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="apl-soak-", dir="/tmp"))
    return soak(args.minutes, args.every, args.rate, args.out, workdir, args.seed, event_speed=args.event_speed)


if __name__ == "__main__":
    sys.exit(main())
