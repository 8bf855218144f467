"""Entity state partitioned by key with a batched fan-out computes exactly the one-store aggregates.

The reference is the engine's own path, `FeatureSpace.compute` then `update` on one store; every
event's aggregates must be equal, in the same order, whatever the partitions and the workers
(threads of this process, and two real processes). Nothing here is timed.
"""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
from bytewax.testing import TestingSink, cluster_main, run_main

from appliance.bench import fanout

LINES = 3000


@pytest.fixture(scope="module")
def sample():
    space, events = fanout.sample_events(LINES)
    names = {read.name for layout in space.layouts.values() for read in layout.reads}
    store = space.new_store()
    reference = []
    for values, ts in zip(events.values, events.ts):
        x = space.compute(values, ts, store)
        reference.append([(name, value) for name, value in x.items() if name in names])
        space.update(values, ts, store)
    assert len(reference) > 2500 and sum(1 for x in reference if x) > 2000
    return space, events, reference


def collected(space, events, variant, parts, workers=1) -> list[list[tuple[str, float]]]:
    out: list = []
    flow = fanout.build_flow(space, lambda: events, variant, parts=parts, sink=TestingSink(out), collect=True)
    if workers == 1:
        run_main(flow)
    else:
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
    batches = [item for item in out if isinstance(item, list)]
    return [list(x.items()) for batch in batches for x in batch]


@pytest.mark.parametrize(("parts", "workers"), [(1, 1), (2, 1), (4, 1), (2, 2), (4, 2)])
def test_partitioned_aggregates_equal_the_one_store_in_order(sample, parts, workers):
    space, events, reference = sample
    assert collected(space, events, "batched", parts, workers) == reference


def test_the_one_store_variant_is_the_reference_too(sample):
    space, events, reference = sample
    assert collected(space, events, "single", 1) == reference


def test_two_processes_split_the_state_and_agree(sample):
    _, _, reference = sample
    flow = f"appliance.bench.fanout:get_flow(variant='batched', lines={LINES}, parts=2)"
    proc = subprocess.run([sys.executable, "-m", "bytewax.testing", flow, "-p", "2"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    lines = [line for line in proc.stdout.decode().splitlines() if line.startswith(fanout.RESULT)]
    summary = orjson.loads(lines[0][len(fanout.RESULT):])
    expected = 0
    for x in reference:
        expected = fanout.checksum(expected, dict(x))
    assert summary["events"] == len(reference) and summary["checksum"] == expected
    assert len(summary["pids"]) == 2  # each process computed slices: the state was split between them

