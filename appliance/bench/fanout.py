"""What partitioning entity state across Bytewax workers costs when the fan-out is batched.

Issue 18's item 3: each entity key's state owned by one worker, an event's aggregates read (then
the event folded) where each of its entities lives, the slices joined again by event. Measured
before with one Bytewax item per entity request and per slice (docs/benchmarks.md, "Ingest on
several workers"): routing cost two to seven times the feature work it moved. Here the fan-out is
batched, as a flow would do it: per batch of events, one item per partition (its requests,
columnar) and one item back (its slices), so Bytewax's per-item cost and the pickling across
processes are paid per batch, not per entity.

    read      batches of parsed events (values, event time)
    sequence  one key: numbers the batch, splits each event's entities by owner
              (`offline.partitions.owner`: a CRC-32 of "key=value") -> one `PartBatch` per partition
    features  one key per partition ("part-<k>"): reads then folds its entities, in order -> a `SliceBatch`
    join      one key: once every partition's slices of a batch are in, merges them per event

`single` is the same reads and folds on one keyed store (what the engine does today). Both use the
engine's own `aggregates_into` and `updated`; a stand-in for the serial learner (`--learn N`: N
loop iterations per event on the joining key) shows what the partitioned work can gain beside it.

`python -m appliance.bench.fanout [--lines N] [--learn N]` runs single (1 process), batched (1
process) and batched (2 processes, `python -m bytewax.testing ... -p 2`), each in a fresh
subprocess, and prints JSON: CPU (user + system, all processes) and wall per run, less a run that
only imports and builds the flow, and whether every run computed the same features (a checksum of
every event's aggregates).
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, Sink, StatelessSinkPartition

from appliance.features.entity_state import KeyLayout
from appliance.features.partitions import owner, read_then_fold  # the export's owner and worker step
from appliance.features.space import FeatureSpace

BATCH = 1000  # events per batch, about what the dataflow hands the engine at full speed
RESULT = "RESULT "  # the prefix of the summary line a run prints


class Events(NamedTuple):
    """Parsed payments of a stream, in order: what each event carries and when it happened."""

    values: list[dict[str, Any]]
    ts: list[float]


class PartBatch(NamedTuple):
    """One batch's requests to one partition, columnar: for each of its events that has an entity
    there, the event's position in the batch, the keys it owns, the event's values and time."""

    batch: int
    size: int  # events in the whole batch
    positions: list[int]
    keys: list[tuple[str, ...]]
    values: list[dict[str, Any]]
    ts: list[float]


class SliceBatch(NamedTuple):
    """One partition's aggregates for its events of one batch, as its `PartBatch` asked: for each
    event, one dict per key it owns (so the join can put them in the order of the keys)."""

    batch: int
    size: int
    positions: list[int]
    keys: list[tuple[str, ...]]
    slices: list[list[dict[str, float]]]
    pid: int  # the process that computed them


class Summary(NamedTuple):
    events: int
    checksum: int
    pids: tuple[int, ...]  # the processes whose slices were joined


def sample_events(lines: int) -> tuple[FeatureSpace, Events]:
    """The sample config's feature space and the payments among the sample's first `lines` lines."""
    import sample_data
    from appliance.config.file import load_config
    from appliance.errors import InvalidEvent
    from appliance.ingest.events import Event, parse_event

    config = load_config(str(sample_data.CONFIG))
    events = Events([], [])
    with gzip.open(sample_data.EVENTS, "rb") as handle:
        for number, line in enumerate(handle):
            if number >= lines:
                break
            try:
                parsed = parse_event(line, config.event, config.model.task)
            except InvalidEvent:
                continue  # the sample's malformed lines
            if isinstance(parsed, Event):
                events.values.append(parsed.values)
                events.ts.append(parsed.ts)
    return FeatureSpace.for_config(config), events


def merged(pieces: Iterable[dict[str, float] | None]) -> dict[str, float]:
    """One event's aggregates from its keys' dicts, in the order of the keys (as `FeatureSpace.compute`)."""
    x: dict[str, float] = {}
    for piece in pieces:
        if piece is not None:
            x.update(piece)
    return x


def checksum(total: int, x: dict[str, float]) -> int:
    return (total + zlib.crc32(orjson.dumps(x, option=orjson.OPT_SORT_KEYS))) & 0xFFFFFFFFFFFF


def learner_stand_in(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i
    return total


class _Batches(StatefulSourcePartition):
    def __init__(self, events: Events) -> None:
        self.events, self.at = events, 0

    def next_batch(self) -> list[Events]:
        if self.at >= len(self.events.ts):
            raise StopIteration
        start, self.at = self.at, self.at + BATCH
        return [Events(self.events.values[start:self.at], self.events.ts[start:self.at])]

    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource):
    """One partition of events: `load()` runs where it is read (one process parses, not every one)."""

    def __init__(self, load: Callable[[], Events]) -> None:
        self.load = load

    def list_parts(self) -> list[str]:
        return ["events"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Batches:
        return _Batches(self.load())


class _Single(StatefulBatchLogic):
    """Every entity on one key: the engine's layout today."""

    def __init__(self, layouts: dict[str, KeyLayout], learn: int, collect: bool) -> None:
        self.layouts, self.learn, self.collect = layouts, learn, collect
        self.store: dict[str, dict] = {key: {} for key in layouts}
        self.total = self.events = 0

    def on_batch(self, batches: list[Events]) -> tuple[list, bool]:
        out = []
        for batch in batches:
            xs = []
            for values, ts in zip(batch.values, batch.ts):
                x = merged(read_then_fold(self.layouts, self.store,
                                          [k for k in self.layouts if values.get(k) is not None], values, ts))
                learner_stand_in(self.learn)
                self.total, self.events = checksum(self.total, x), self.events + 1
                xs.append(x)
            if self.collect:
                out.append(xs)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        return [Summary(self.events, self.total, (os.getpid(),))], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


class _Sequencer(StatefulBatchLogic):
    """Numbers each batch and splits its events' entities by owner: one `PartBatch` per partition."""

    def __init__(self, keys: list[str], parts: int) -> None:
        self.keys, self.parts, self.next = keys, parts, 0

    def on_batch(self, batches: list[Events]) -> tuple[list, bool]:
        out = []
        for batch in batches:
            requests = [PartBatch(self.next, len(batch.ts), [], [], [], []) for _ in range(self.parts)]
            for position, (values, ts) in enumerate(zip(batch.values, batch.ts)):
                owned: dict[int, list[str]] = {}
                for key in self.keys:
                    entity = values.get(key)
                    if entity is not None:
                        owned.setdefault(owner(key, entity, self.parts), []).append(key)
                for part, keys in owned.items():
                    request = requests[part]
                    request.positions.append(position)
                    request.keys.append(tuple(keys))
                    request.values.append(values)
                    request.ts.append(ts)
            out += [(f"part-{part}", request) for part, request in enumerate(requests)]
            self.next += 1
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


class _Partition(StatefulBatchLogic):
    """The entities one partition owns: reads then folds its requests in order."""

    def __init__(self, layouts: dict[str, KeyLayout]) -> None:
        self.layouts = layouts
        self.store: dict[str, dict] = {key: {} for key in layouts}

    def on_batch(self, requests: list[PartBatch]) -> tuple[list, bool]:
        out = []
        for request in requests:
            slices = [read_then_fold(self.layouts, self.store, keys, values, ts)
                      for keys, values, ts in zip(request.keys, request.values, request.ts)]
            out.append(("join", SliceBatch(request.batch, request.size, request.positions, request.keys, slices,
                                           os.getpid())))
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


class _Join(StatefulBatchLogic):
    """Merges every partition's slices of a batch, per event, in the order of the keys (as `compute`)."""

    def __init__(self, keys: list[str], parts: int, learn: int, collect: bool) -> None:
        self.order = {key: i for i, key in enumerate(keys)}
        self.width = len(keys)
        self.parts, self.learn, self.collect = parts, learn, collect
        self.waiting: dict[int, list[SliceBatch]] = {}
        self.total = self.events = 0
        self.pids: set[int] = set()

    def on_batch(self, slices: list[SliceBatch]) -> tuple[list, bool]:
        out = []
        for part in slices:
            self.pids.add(part.pid)
            arrived = self.waiting.setdefault(part.batch, [])
            arrived.append(part)
            if len(arrived) < self.parts:
                continue
            del self.waiting[part.batch]
            pieces: list[list[dict[str, float] | None]] = [[None] * self.width for _ in range(part.size)]
            order = self.order
            for got in arrived:
                for position, keys, dicts in zip(got.positions, got.keys, got.slices):
                    event = pieces[position]
                    for key, x in zip(keys, dicts):
                        event[order[key]] = x
            xs = [merged(event) for event in pieces]
            for x in xs:
                learner_stand_in(self.learn)
                self.total, self.events = checksum(self.total, x), self.events + 1
            if self.collect:
                out.append(xs)
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list, bool]:
        return [Summary(self.events, self.total, tuple(sorted(self.pids)))], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


class _Printed(DynamicSink):
    """Prints the run's `Summary` as one JSON line (what `measure` reads from a subprocess)."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        class _Lines(StatelessSinkPartition):
            def write_batch(self, items: list) -> None:
                for item in items:
                    if isinstance(item, Summary):
                        sys.stdout.write(RESULT + orjson.dumps(item._asdict()).decode() + "\n")
                        sys.stdout.flush()

        return _Lines()


def build_flow(space: FeatureSpace, events: Callable[[], Events], variant: str, *, parts: int = 2, learn: int = 0,
               sink: Sink | None = None, collect: bool = False) -> Dataflow:
    """The flow of `variant` ("single" or "batched" over `parts` partitions) over what `events()` returns.

    With `collect`, every batch's aggregates (a list of dicts, in event order) reach `sink` too."""
    layouts = space.layouts
    keys = list(layouts)
    flow = Dataflow(f"fanout_{variant}")
    batches = op.input("read", flow, _Source(events))
    if variant == "single":
        out = op.stateful_batch("engine", op.key_on("one", batches, lambda _: "engine"),
                                lambda _resume: _Single(layouts, learn, collect))
    else:
        split = op.stateful_batch("sequence", op.key_on("one", batches, lambda _: "sequence"),
                                  lambda _resume: _Sequencer(keys, parts))
        slices = op.stateful_batch("features", op.map("to_owner", split, lambda kv: kv[1]),
                                   lambda _resume: _Partition(layouts))
        out = op.stateful_batch("join", op.map("to_join", slices, lambda kv: kv[1]),
                                lambda _resume: _Join(keys, parts, learn, collect))
    op.output("out", op.key_rm("unkey", out), sink if sink is not None else _Printed())
    return flow


def get_flow(variant: str = "batched", lines: int = 30000, parts: int = 2, learn: int = 0) -> Dataflow:
    """For `python -m bytewax.testing "appliance.bench.fanout:get_flow(...)" -p N`."""
    import sample_data
    from appliance.config.file import load_config

    space = FeatureSpace.for_config(load_config(str(sample_data.CONFIG)))
    return build_flow(space, lambda: sample_events(lines)[1], variant, parts=parts, learn=learn)


def _run(variant: str, lines: int, processes: int, learn: int) -> dict[str, Any]:
    """One run in a fresh subprocess: its summary, wall clock and CPU of all its processes."""
    flow = f"appliance.bench.fanout:get_flow(variant={variant!r}, lines={lines}, parts={processes}, learn={learn})"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bytewax.testing", flow, "-p", str(processes)],
                          capture_output=True, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summaries = [orjson.loads(line[len(RESULT):]) for line in proc.stdout.decode().splitlines()
                 if line.startswith(RESULT)]
    return {"cpu": cpu, "wall": wall, "summary": summaries[0] if summaries else None}


def measure(lines: int, learn: int) -> dict[str, Any]:
    """Each run less the run of the same process count that builds the flow over no event."""
    runs = {}
    idle = {processes: _run("batched", 0, processes, 0) for processes in (1, 2)}
    for name, variant, processes in (("single, 1 process", "single", 1), ("batched, 1 process", "batched", 1),
                                     ("batched, 2 processes", "batched", 2)):
        run = _run(variant, lines, processes, learn)
        events = run["summary"]["events"]
        runs[name] = {"events": events, "pids": run["summary"]["pids"],
                      "wall_s": round(run["wall"] - idle[processes]["wall"], 3),
                      "cpu_s": round(run["cpu"] - idle[processes]["cpu"], 3),
                      "cpu_us_per_event": round((run["cpu"] - idle[processes]["cpu"]) / events * 1e6, 1),
                      "checksum": run["summary"]["checksum"]}
    same = len({run["checksum"] for run in runs.values()}) == 1
    return {"lines": lines, "learn_iterations": learn, "batch": BATCH, "same_features": same, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=30000, help="sample lines (payments among them are the events)")
    parser.add_argument("--learn", type=int, default=0, help="loop iterations per event standing in for the learner")
    args = parser.parse_args(argv)
    sys.stdout.buffer.write(orjson.dumps(measure(args.lines, args.learn), option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    main()
