"""The predict handler in process, over real entity states of the sample: `FeatureSpace.compute`,
`FeatureSpace.update` and a whole `predict` through `Protocol.handle_line` (no socket, no other thread).

`python -m appliance.bench.handler [--lines N] [--rounds R]`: the engine processes the sample's first
N lines (entity states, the served model and its learner as they are then); then, each round,
`compute` of the next 2,000 payments at the stream's event time (what a predict does), `update` of
the next 20,000 payments in order on a copy of the store (what ingest does per event), and
`handle_line` of a `predict` request (`"ingest": false`, as `appliance bench` sends) of each of
those 2,000 payments, with the inbox a real file. Prints per call µs, the median over rounds
(and the fastest round). Measured here, never asserted in tests.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from appliance.bench.measure import predict_line
from appliance.config.file import load_config
from appliance.engine.core import Engine
from appliance.engine.items import EventItem, LabelItem
from appliance.ingest.events import Event, parse_event
from appliance.ingest.inbox import Inbox
from appliance.serving.board import StatsBoard
from appliance.serving.protocol import Protocol, Session
from appliance.serving.service import Service


@dataclass
class Sample:
    """An engine after the sample's first lines, and the payments after them."""

    engine: Engine
    probes: list[Event]  # scored at the stream's event time, as a predict without a time is
    stream: list[Event]  # folded in, in order, by the update timing


def load_sample(lines: int, probes: int = 2000, stream: int = 20000) -> Sample:
    """Run the engine over the sample's first `lines` lines; keep the payments that follow."""
    import sample_data

    config = load_config(str(sample_data.CONFIG))
    engine = Engine(config)
    schema, task = config.event, config.model.task
    after: list[Event] = []
    with gzip.open(sample_data.EVENTS, "rb") as handle:
        for offset, line in enumerate(handle, start=1):
            try:
                parsed = parse_event(line, schema, task)
            except Exception:  # noqa: BLE001 - the sample's few malformed lines
                continue
            if offset <= lines:
                item = EventItem("bench", offset, parsed, None, True) if isinstance(parsed, Event) else LabelItem(
                    "bench", offset, parsed)
                engine.process(item)
                if offset % 5000 == 0:
                    engine.take_rows()
            elif isinstance(parsed, Event):
                after.append(parsed)
                if len(after) >= max(probes, stream):
                    break
    engine.take_rows()
    return Sample(engine, after[:probes], after[:stream])


def per_call(fn: Callable[[], int], rounds: int) -> dict[str, float]:
    """CPU µs per call of `fn` (which runs a batch and returns how many calls it made), over rounds:
    the thread's CPU time, not the wall clock, so other processes on a shared machine count less."""
    figures = []
    for _ in range(rounds):
        started = time.thread_time_ns()
        calls = fn()
        figures.append((time.thread_time_ns() - started) / calls / 1000.0)
    return {"median_us": round(statistics.median(figures), 2), "best_us": round(min(figures), 2)}


def measure(sample: Sample, rounds: int, directory: str) -> dict[str, Any]:
    engine = sample.engine
    space = engine.space
    now = engine.watermark
    probes = [event.values for event in sample.probes]

    def compute() -> int:
        for values in probes:
            space.compute(values, now, engine.entities)
        return len(probes)

    def update() -> int:
        store = {key: dict(entities) for key, entities in engine.entities.items()}
        for event in sample.stream:
            space.update(event.values, event.ts, store)
        return len(sample.stream)

    inbox = Inbox(str(Path(directory) / "inbox"))
    try:
        protocol = Protocol(Service(engine, inbox, StatsBoard()).handlers())
        requests = [predict_line(_without_id_and_time(event.raw), i) for i, event in enumerate(sample.probes, 1)]
        session = Session()
        failures = itertools.count()

        def handle() -> int:
            for line in requests:
                if b'"ok":true' not in protocol.handle_line(line, session):
                    next(failures)
            return len(requests)

        figures = {"compute": per_call(compute, rounds), "update": per_call(update, rounds),
                   "predict": per_call(handle, rounds)}
    finally:
        inbox.close()
    figures["predict_failures"] = next(failures)
    return figures


def _without_id_and_time(raw: dict) -> dict:
    return {k: v for k, v in raw.items() if k not in ("event_id", "ts")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=40000, help="sample lines the engine processes first")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    sample = load_sample(args.lines)
    with tempfile.TemporaryDirectory() as directory:
        figures = measure(sample, args.rounds, directory)
    entities = sum(len(e) for e in sample.engine.entities.values())
    print(orjson.dumps({"lines": args.lines, "entities": entities, **figures}, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
