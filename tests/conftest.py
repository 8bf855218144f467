"""Shared fixtures and helpers: short socket paths, small configs and event streams, a running
`appliance up`, engine items, drifting streams. Test modules import helpers from here, never from
each other."""

from __future__ import annotations

import copy
import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.config.file import config_from_dict
from appliance.engine.items import EventItem, LabelItem
from appliance.ingest.events import Label, parse_event
from appliance.timeutil import format_timestamp


@pytest.fixture
def short_dir():
    """A short temporary directory: AF_UNIX socket paths must stay under ~107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="apl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


SMALL_CONFIG = {
    "event": {"keys": ["user", "card"], "numeric": ["amount"], "categorical": ["city"],
              "allowed_lateness": "10m", "bounds": {"amount": [0, 1e6]}},
    "labels": {"horizon": "1h", "default": 0},
    "model": {"task": "classification", "publish_every": 20, "metric_window": 50},
    "features": {
        "hash_buckets": 8,
        "aggregate": [
            {"name": "card_n_10m", "key": "card", "op": "count", "window": "10m"},
            {"name": "card_sum_1h", "key": "card", "op": "sum", "field": "amount", "window": "1h"},
            {"name": "user_mean_1h", "key": "user", "op": "mean", "field": "amount", "window": "1h"},
            {"name": "user_max_1h", "key": "user", "op": "max", "field": "amount", "window": "1h"},
            {"name": "user_min_1h", "key": "user", "op": "min", "field": "amount", "window": "1h"},
            {"name": "user_std_1h", "key": "user", "op": "std", "field": "amount", "window": "1h"},
            {"name": "card_users_1h", "key": "card", "op": "distinct", "field": "user", "window": "1h"},
            {"name": "card_since", "key": "card", "op": "since"},
            {"name": "user_last_amount", "key": "user", "op": "last", "field": "amount"},
            {"name": "card_rate_1h", "key": "card", "op": "rate", "window": "1h"},
        ],
        "expression": [{"name": "amount_vs_mean", "expr": "amount / (user_mean_1h + 1)"}],
    },
}


@pytest.fixture
def small_config():
    return config_from_dict(SMALL_CONFIG)


def make_stream(n: int = 400, seed: int = 3, fraud_every: int = 9) -> list[dict]:
    """Payments on a few cards and users, with labels for some of them arriving later."""
    import random

    rng = random.Random(seed)
    events: list[dict] = []
    labels: list[tuple[float, dict]] = []
    t = 1_767_225_600.0
    for i in range(n):
        t += rng.uniform(1, 90)
        fraud = i % fraud_every == 0
        event = {"type": "payment", "event_id": f"e{i}", "ts": t, "user": f"u{rng.randrange(12)}",
                 "card": f"c{rng.randrange(15)}", "amount": round(rng.uniform(50, 200) if fraud else rng.uniform(5, 40), 2),
                 "city": rng.choice(["lisbon", "porto", "faro"])}
        events.append(event)
        if fraud or rng.random() < 0.5:
            labels.append((t + rng.uniform(10, 1800), {"type": "label", "event_id": f"e{i}", "label": int(fraud)}))
    for ts, label in labels:
        label["ts"] = ts
    merged = [(e["ts"], 0, e) for e in events] + [(ts, 1, lab) for ts, lab in labels]
    merged.sort(key=lambda item: (item[0], item[1]))
    return [item[2] for item in merged]


@contextmanager
def serving(config, **options):
    """A real appliance serving `config` in this process (inbox and socket only: no source file)."""
    from appliance.runtime.app import Appliance, RunOptions

    ready = threading.Event()
    appliance = Appliance(config, RunOptions(serve=True, read_source=False, on_ready=ready.set, **options))
    thread = threading.Thread(target=appliance.run)
    thread.start()
    try:
        assert ready.wait(30), "the appliance never became ready"
        yield appliance
    finally:
        appliance.stop()
        thread.join(60)


# Shared by test modules in several rooms (they import them from here, never from each other)

def processed(client):
    counts = client.request("stats")["counts"]
    return counts["predictions"] + counts["labels"] + counts["dead_letters"]


def feed(client, stream):
    """Ingest a stream over the socket and wait until the engine has processed every item of it
    (each item becomes exactly one prediction, label or dead letter)."""
    target = processed(client) + len(stream)
    client.request("ingest", events=stream)
    for _ in range(4000):
        if processed(client) >= target:
            return client.request("stats")
        threading.Event().wait(0.005)
    raise AssertionError(f"the engine did not process the stream: {processed(client)} of {target}")


START = 1_767_225_600.0


FROZEN = "linear_model.LogisticRegression(optimizer=optim.SGD(0.0), intercept_lr=0.0)"  # always scores 0.5


LEARNER = "preprocessing.StandardScaler() | linear_model.LogisticRegression(optimizer=optim.SGD(0.05))"


def flip_stream(n: int, change: int, seed: int = 7, shift_amount: bool = False) -> list[dict]:
    """Labelled payments: fraud is a big amount until event `change`, a small one after it.

    With `shift_amount`, amounts also move to a higher range at the change (data drift)."""
    rng = random.Random(seed)
    out = []
    t = START
    for i in range(n):
        t += rng.uniform(5, 60)
        amount = rng.uniform(0, 200) + (300 if shift_amount and i >= change else 0)
        big = amount % 300 > 100 if shift_amount else amount > 100
        fraud = big if i < change else not big
        if rng.random() < 0.05:
            fraud = not fraud
        out.append({"type": "payment", "event_id": f"e{i}", "ts": t, "user": f"u{rng.randrange(30)}",
                    "card": f"c{rng.randrange(40)}", "amount": round(amount, 2), "city": "lisbon",
                    "label": int(fraud)})
    return out


def mixed_stream() -> list[dict]:
    """Delayed labels, labels before their events and after their horizon, duplicates, late events
    and scored-only events, on a stream whose concept changes (drift starts a challenger, which is
    backfilled with the predictions waiting at that moment)."""
    stream = flip_stream(900, change=450, shift_amount=True)
    for i, event in enumerate(stream):
        if i % 3:
            event.pop("label")  # labelled later below, or never (then the default, at the horizon)
    out: list[dict] = []
    for i, event in enumerate(stream):
        for after in (40, 152):  # within the horizon (1h), and long after it (i % 3 == 2: no label before)
            if i % 3 == after % 3 and i + after < len(stream):
                stream[i + after].setdefault("_labels", []).append(
                    {"type": "label", "event_id": event["event_id"], "label": int(event["amount"] > 100)})
        if i % 50 == 7:  # its label first
            out.append({"type": "label", "event_id": event["event_id"], "label": 1, "ts": event["ts"]})
        for label in event.pop("_labels", []):
            out.append({**label, "ts": event["ts"]})
        out.append(event)
        if i % 97 == 5:
            out.append({**event, "amount": 1.0})  # a duplicate while its prediction waits
        if i % 113 == 9:
            out.append({**event, "event_id": f"late{i}", "ts": event["ts"] - 7200})  # behind the lateness
        if i % 71 == 3:
            out.append({**event, "event_id": f"old{i}", "ts": event["ts"] - 8000})
    return out


def settle_with(pool, engine, batch) -> None:
    """One batch through an engine whose entity state is in `pool` (`engine.partitions`), as the
    flow does it without the overlap: admit every item, the workers read and fold, then settle."""
    verdicts = [engine.admit(item) for item in batch]
    aggregates, changes = pool.collect(pool.dispatch(batch, verdicts))
    engine.take_entity_changes(changes.states, changes.evicted)
    for item, verdict, pieces in zip(batch, verdicts, aggregates):
        engine.settle(item, verdict, pieces)


def config_with(model: dict | None = None, lifecycle: dict | None = None):
    data = copy.deepcopy(SMALL_CONFIG)
    data["model"].update(model or {})
    data["lifecycle"] = lifecycle or {}
    return config_from_dict(data)


def audit_rows(rows, action=None):
    return [row for row in rows["audit"] if action is None or row["action"] == action]


def process_until(engine, items_, action):
    """Process items until the audit trail has an `action` row; return the audit and models rows so far."""
    rows: dict[str, list] = {"audit": [], "models": []}
    for item in items_:
        engine.process(item)
        new = engine.take_rows()
        rows["audit"] += new["audit"]
        rows["models"] += new["models"]
        if audit_rows(rows, action):
            break
    return rows


def items(config, stream, source="test"):
    out = []
    for offset, raw in enumerate(stream, start=1):
        parsed = parse_event(raw, config.event, config.model.task)
        out.append(LabelItem(source, offset, parsed) if isinstance(parsed, Label) else EventItem(source, offset, parsed))
    return out


def run(engine, parsed_items):
    rows: dict[str, list] = {}
    for item in parsed_items:
        engine.process(item)
    for table, new in engine.take_rows().items():
        rows.setdefault(table, []).extend(new)
    return rows


def write_config(directory, source, speed=0):
    lines = [f'[source]\nspec = "{source}"\nspeed = {speed}\n']
    lines.append("[event]\nkeys = [\"user\", \"card\"]\nnumeric = [\"amount\"]\ncategorical = [\"city\"]\n"
                 "allowed_lateness = \"10m\"\n")
    lines.append("[labels]\nhorizon = \"1h\"\ndefault = 0\n")
    lines.append("[model]\ntask = \"classification\"\npublish_every = 20\nmetric_window = 50\n")
    lines.append("[features]\nhash_buckets = 8\n")
    for agg in SMALL_CONFIG["features"]["aggregate"]:
        body = "\n".join(f'{k} = "{v}"' for k, v in agg.items())
        lines.append(f"[[features.aggregate]]\n{body}\n")
    path = directory / "appliance.toml"
    path.write_text("\n".join(lines))
    return path


class Running:
    """An `appliance up` subprocess; waits for its ready line instead of sleeping."""

    def __init__(self, directory, *args):
        self.socket = str(directory / "a.sock")
        command = [sys.executable, "-m", "appliance", "up", "--socket", self.socket,
                   "--db", str(directory / "a.db"), "--status-every", "0.5", *args]
        self.proc = subprocess.Popen(command, cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("ready:"):
                return
        raise AssertionError("appliance up never became ready:\n" + "".join(self.lines) + self.proc.stderr.read())

    @property
    def primary_socket(self) -> str:
        """The primary's own socket: its private one when it has serving children (`<socket>.p`, where
        no child answers), else the public one. For tests whose runs must agree on which inbox an event
        came through (the kernel hands public connections to any serving process)."""
        private = self.socket + ".p"
        return private if os.path.exists(private) else self.socket

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, "".join(self.lines) + out, err


def wait_for(predicate, timeout=30.0, explain=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)  # polling an observable condition with a deadline, not a timing assumption
    raise AssertionError("condition not reached" + (f": {explain()}" if explain else ""))


def labels_in(path):
    return sum(1 for line in path.read_text().splitlines() if '"label"' in line and '"type": "label"' in line)


def wait_for_models(client, condition):
    """Poll the `models` op until `condition(reply)` holds; return that reply."""
    for _ in range(4000):
        state = client.request("models")
        if condition(state):
            return state
        threading.Event().wait(0.005)
    raise AssertionError(f"condition never held: {state}")


def write_csv(path, n=1500):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["type", "event_id", "ts", "user_id", "card_id", "amount",
                                                    "city", "label"])
        writer.writeheader()
        for raw in make_stream(n):
            row = dict(raw, ts=format_timestamp(raw["ts"]))
            if "user" in row:
                row["user_id"], row["card_id"] = row.pop("user"), row.pop("card")
            writer.writerow(row)


# A full disk, for real (tests/runtime/test_disk_full.py, tests/serving/test_serve_processes.py)

@pytest.fixture
def small_disk():
    """An 8 MiB tmpfs (root only); skipped where it cannot be mounted."""
    path = Path(tempfile.mkdtemp(prefix="apl-df-", dir="/tmp"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
        shutil.rmtree(path, ignore_errors=True)
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


def fill(directory: Path, leave: int = 48 << 10) -> Path:
    """Fill the disk to the last byte but `leave` bytes."""
    filler = directory / "filler"
    chunk = b"\0" * (64 << 10)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
    os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
    os.close(fd)
    return filler


def logged_features(conn, limit: int | None = None) -> dict[str, bytes]:
    """Each logged prediction's packed feature vector by its event id, from the store's event rows
    (rows layout 5: inside the compressed body), in seq order; `limit`: the first ones only."""
    from appliance.storage.body import read_codecs, split_body

    read_codecs(conn)
    rows = conn.execute("SELECT event_id, body FROM events WHERE origin IS NOT NULL ORDER BY seq"
                        + ("" if limit is None else f" LIMIT {int(limit)}")).fetchall()
    return {event_id: split_body(body).features for event_id, body in rows}
