"""Where the engine's time goes, per phase, and what that lets more Bytewax workers gain (Amdahl).

The engine is fed the first N lines of a stream, parsed beforehand, in batches of 1,000 as the
dataflow does, in this thread; each phase's calls are timed with the thread's CPU clock
(`time.thread_time`, so other processes on a shared machine do not inflate a phase) around them:

    entity reads    the aggregates of each key read before the event (`aggregates_into`)
    entity folds    the event folded into each key's state (`updated`)
    other features  the rest of `FeatureSpace.compute` (passthrough, hashing, attributes, expressions)
    scoring         the served model and every candidate (in shadow) scoring the event
    learning        `OnlineModel.learn` less the two below: each candidate's metrics, duel and learn
    served metrics  the served model's prequential metrics on each label
    checks          the scheduled checks: the gate, publication, promotion
    label join      expiring pending predictions
    rows            handing the batch's rows over
    rest            everything else in `Engine.process` (dead letters, logging, counters)

Only the entity reads and folds belong to one entity key: they are what partitioning entity state
across workers can spread. The rest is the learner's (one model, one label join, one gate) and stays
serial, so with a share `p` that can be spread, n workers give at most 1 / ((1 - p) + p / n)
(Amdahl), before any cost of fanning an event out and joining its slices again.

`python -m appliance.bench.engine_profile [LINES]` prints the table and the bounds as JSON.
"""

from __future__ import annotations

import gzip
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

BATCH = 1000  # items per engine batch, about what the dataflow hands it at full speed
PARTITIONABLE = ("entity reads", "entity folds")


@dataclass(frozen=True)
class Profile:
    """The engine's CPU seconds per phase over `items` items, and what `workers` could gain."""

    items: int
    events: int
    seconds: float
    phases: dict[str, float]
    candidates_per_label: dict[int, int]  # how many candidates there were -> labels learned with that many

    @property
    def partitionable(self) -> float:
        """The share of the engine's time spent on per-entity state (what workers can spread)."""
        return sum(self.phases[name] for name in PARTITIONABLE) / self.seconds

    def bound(self, workers: int) -> float:
        """Amdahl's bound on the speed-up of the engine with `workers` feature workers.

        >>> Profile(1, 1, 10.0, {"entity reads": 1.0, "entity folds": 1.0}, {}).bound(2)
        1.1111111111111112
        """
        p = self.partitionable
        return 1.0 / ((1.0 - p) + p / workers)

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "events": self.events, "seconds": round(self.seconds, 3),
                "us_per_item": round(self.seconds / self.items * 1e6, 1),
                "phases": {name: {"seconds": round(s, 3), "share": round(s / self.seconds, 4)}
                           for name, s in self.phases.items()},
                "candidates_per_label": {str(n): labels for n, labels in self.candidates_per_label.items()},
                "partitionable_share": round(self.partitionable, 4),
                "amdahl_bound": {str(n): round(self.bound(n), 3) for n in (2, 4, 16)}}


class _Clock:
    """Seconds per phase, summed over the calls it wraps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable) -> Callable:
        self.seconds.setdefault(name, 0.0)
        clock, seconds = time.thread_time, self.seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += clock() - started

        return timed


@contextmanager
def _timed_entity_state(clock: _Clock) -> Iterator[None]:
    """Time the per-entity reads and folds where `FeatureSpace` calls them; put them back after."""
    from appliance.features import space

    saved = space.aggregates_into, space.updated
    space.aggregates_into = clock.wrap("entity reads", space.aggregates_into)
    space.updated = clock.wrap("entity folds", space.updated)
    try:
        yield
    finally:
        space.aggregates_into, space.updated = saved


def profile_engine(config: Any, lines: list[bytes], source: str = "sample") -> Profile:
    """Run a fresh engine over `lines` (raw records of `config`'s stream) and time its phases."""
    from appliance.engine.core import Engine
    from dataflows.appliance_flow import make_parser

    engine = Engine(config)
    items = make_parser(config.event, engine.task)([(source, i, line) for i, line in enumerate(lines)])
    clock = _Clock()
    model = engine.model
    candidates: Counter[int] = Counter()
    learn = model.learn

    def counted_learn(*args: Any) -> Any:
        candidates[len(model.candidates)] += 1
        return learn(*args)

    model.learn = clock.wrap("learning", counted_learn)
    model.check = clock.wrap("checks", model.check)
    model.served_eval.update = clock.wrap("served metrics", model.served_eval.update)
    model.predict = clock.wrap("scoring", model.predict)  # the served model's and, in `shadow`, each candidate's
    engine.space.compute = clock.wrap("features", engine.space.compute)
    engine._expired = clock.wrap("label join", engine._expired)
    take_rows = clock.wrap("rows", engine.take_rows)
    process = engine.process
    with _timed_entity_state(clock):
        started = time.thread_time()
        for first in range(0, len(items), BATCH):
            for item in items[first:first + BATCH]:
                process(item)
            take_rows()
        seconds = time.thread_time() - started
    phases = dict(clock.seconds)
    # compute's own figure holds the reads: split it
    phases["other features"] = phases.pop("features") - phases["entity reads"]
    phases["learning"] -= phases["checks"] + phases["served metrics"]  # both run inside learn
    phases["rest"] = seconds - sum(phases.values())
    return Profile(len(items), engine.counts["events"], seconds, phases, dict(sorted(candidates.items())))


def sample_lines(limit: int) -> list[bytes]:
    """The bundled sample's first `limit` lines."""
    import sample_data

    out = []
    with gzip.open(sample_data.EVENTS, "rb") as source:
        for line in source:
            if len(out) >= limit:
                break
            out.append(line)
    return out


def main() -> None:
    from appliance.runtime.settings import resolve_config

    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 10**9
    config = resolve_config(None, "sample", speed=0.0)
    result = profile_engine(config, sample_lines(limit))
    sys.stdout.buffer.write(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2) + b"\n")


if __name__ == "__main__":
    main()
