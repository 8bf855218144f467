"""The export with entity state in worker processes (`offline.partitions`) writes the one-process rows.

A real store from `appliance replay` of the sample's first lines (its 4 keys, 16 aggregates, the
driver attribute table, hashed categoricals); real forked worker processes. Rows must be equal in
value and in order, through many batches in flight, and a worker that dies must end the export
with a clear error, not a hang.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

import sample_data
from appliance.bench.ingest import sample_subset
from appliance.cli.main import main
from appliance.features import partitions as pool
from appliance.features.space import FeatureSpace
from appliance.offline import export, partitions
from appliance.offline.export import training_set
from appliance.offline.partitions import PartitionFailed
from appliance.runtime.settings import resolve_config


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("partitions")
    source = directory / "events.jsonl"
    sample_subset(20000, source)
    db = directory / "a.db"
    subprocess.run([sys.executable, "-m", "appliance", "replay", str(source), "--config", str(sample_data.CONFIG),
                    "--db", str(db)], check=True, capture_output=True, timeout=300)
    return db


def rows(db: Path, workers: int) -> list[list[tuple]]:
    config = resolve_config(str(sample_data.CONFIG), None, db=str(db))
    return [list(row.items()) for row in training_set(str(db), config, workers=workers)]


def test_rows_equal_the_one_process_export_with_any_number_of_workers(store, monkeypatch):
    reference = rows(store, 0)
    assert len(reference) > 10000  # labelled payments (most labels are the defaulted negatives)
    assert rows(store, 2) == reference
    monkeypatch.setattr(export, "BATCH", 333)  # many batches, one in flight ahead of the one written
    for workers in (1, 3):
        assert rows(store, workers) == reference


def test_the_cli_writes_the_same_bytes_with_workers(store, tmp_path):
    outputs = []
    for workers in ("0", "2"):
        out = tmp_path / f"rows-{workers}.jsonl"
        result = CliRunner().invoke(main, ["export", "training-set", "--config", str(sample_data.CONFIG),
                                           "--db", str(store), "--out", str(out), "--workers", workers])
        assert result.exit_code == 0, result.output
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and outputs[0].count(b"\n") > 10000


def test_a_worker_that_dies_ends_the_export_with_an_error_and_stops_the_others(store, monkeypatch):
    serve = partitions.serve

    def dies_on_its_second_batch(config, connection, index):
        received = 0
        real_recv = connection.recv_bytes

        def recv_bytes():
            nonlocal received
            received += 1
            if received == 2:
                os._exit(3)
            return real_recv()

        connection.recv_bytes = recv_bytes
        serve(config, connection, index)

    monkeypatch.setattr(partitions, "serve", dies_on_its_second_batch)
    monkeypatch.setattr(pool, "start_method", lambda: "fork")  # the patched loop reaches the child
    monkeypatch.setattr(export, "BATCH", 500)
    with pytest.raises(PartitionFailed) as failed:
        rows(store, 2)
    assert "exit code 3" in str(failed.value) and "export worker" in str(failed.value)
    assert multiprocessing.active_children() == []  # none left behind



def test_workers_are_spawned_when_another_thread_runs(store):
    """A fork copies locks other threads hold; with a second thread alive the workers are spawned."""
    reference = rows(store, 0)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        assert pool.start_method() == "spawn"
        assert rows(store, 2) == reference
    finally:
        stop.set()
        other.join()


def test_workers_are_forked_from_a_process_with_one_thread():
    script = "from appliance.features.partitions import start_method; print(start_method())"
    assert subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout == b"fork\n"


def test_an_entity_has_one_owner_in_every_process():
    script = "from appliance.features.partitions import owner; print([owner('card_id', f'c{i}', 4) for i in range(50)])"
    runs = {subprocess.run([sys.executable, "-c", script], capture_output=True, check=True).stdout for _ in range(2)}
    assert len(runs) == 1  # not `hash`, which Python salts per process


def test_a_worker_ignores_ctrl_c_which_the_exports_process_handles(store):
    """Ctrl-C reaches every process of the group: a worker goes on, and ends when it is told."""
    config = resolve_config(str(sample_data.CONFIG), None, db=str(store))
    space = FeatureSpace.for_config(config)
    event = partitions.LoggedEvent(1, "e1", 1_767_225_600.0, {"user_id": "u1", "card_id": "c1", "amount": 5.0},
                                   True, True, 0, None)
    with partitions.Partitions(config, space, 1) as workers:
        worker = workers.processes[0]
        where = workers.send([event], event.ts)  # answered once the worker is up: its handler is set by then
        workers.receive([event], where)
        os.kill(worker.pid, signal.SIGINT)
        where = workers.send([event], event.ts)
        (aggregates,) = workers.receive([event], where)
        assert worker.is_alive() and any(piece for piece in aggregates)
    assert worker.exitcode == 0
