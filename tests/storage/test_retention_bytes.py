"""Retention bounded by bytes: a real store driven far past a small `max_bytes` settles at the bound,
oldest rows first, and never loses what a pending label or the last checkpoint still needs."""

from __future__ import annotations

import os
import random
import sqlite3

import pytest

from appliance.config.file import config_from_dict
from appliance.errors import ConfigError
from appliance.storage.writer import StoreWriter
from tests.conftest import SMALL_CONFIG

BOUND = 2 << 20
PER_BATCH = 400
BATCHES = 120


def batch_rows(batch: int) -> dict[str, list[dict]]:
    """Rows whose bodies do not compress (seeded random bytes): each batch adds about the same bytes."""
    events, predictions, labels = [], [], []
    for i in range(PER_BATCH):
        seq = batch * PER_BATCH + i
        rng = random.Random(seq)
        event_id, ts = f"e{seq}", 1_767_225_600.0 + seq
        events.append({"event_id": event_id, "seq": seq, "ts": ts, "source": "t", "offset": seq, "ingested": 0,
                       "payload": f'{{"id": "{event_id}", "pad": "{rng.randbytes(150).hex()}"}}'})
        predictions.append({"seq": seq, "version": 1, "score": 0.5, "predicted": 0,
                            "learner_score": 0.5, "origin": 0, "features": rng.randbytes(160)})
        if i % 2:
            labels.append({"seq": seq, "ts": ts, "label": 1.0, "status": 1})
    return {"events": events, "predictions": predictions, "labels": labels}


def checkpoint(writer: StoreWriter, batch: int, pending: list[tuple]) -> None:
    watermark = 1_767_225_600.0 + (batch + 1) * PER_BATCH
    writer.put_checkpoint("fp", {"entities": [], "offsets": {"t": (batch + 1) * PER_BATCH}, "engine": b"state",
                                 "watermark": watermark, "pending": (pending, [])})


def count(db, sql: str, *args) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(sql, args).fetchone()[0]


def test_a_store_driven_past_its_byte_bound_settles_at_it_keeping_what_pending_labels_need(tmp_path):
    db = tmp_path / "s.db"
    writer = StoreWriter(db, max_bytes=BOUND, commit_every=0.01).start()
    pending_ids = [f"e{seq}" for seq in range(0, PER_BATCH, 37)]  # the oldest events, still waiting for labels
    sizes, used = [], []
    try:
        for batch in range(BATCHES):  # about 25 MB of rows: twelve times the bound
            writer.put_rows(batch_rows(batch))
            pending = [(eid, int(eid[1:]), 0.0, b"packed") for eid in pending_ids] if batch == 0 else []
            checkpoint(writer, batch, pending)
            assert writer.flush()
            assert writer.failure is None
            sizes.append(os.path.getsize(db))
            used.append(writer.used_bytes)
    finally:
        writer.close()
    assert max(used) > 0 and all(u <= BOUND for u in used), used  # never past the bound at a checkpoint
    assert writer.pruned_for_bytes["events"] > 40 * PER_BATCH  # it did prune: most of what was written
    # The file settles: freed pages are reused, so the second half of the run grows it by at most a
    # page or two (rows layout 5, measured over 300 batches: 2,265,088 B from batch 53 on, and not
    # one page more; layout 4 settled at 2,199,552 B by batch 95), never by a batch's rows (~150 KB).
    assert sizes[-1] - sizes[len(sizes) // 2] <= 2 * 4096 and max(sizes) <= BOUND * 1.25, str(sizes)
    # Oldest first: the newest batch is whole, the oldest is gone but for what pending labels need.
    newest = (BATCHES - 1) * PER_BATCH
    assert count(db, "SELECT count(*) FROM events WHERE seq >= ?", newest) == PER_BATCH
    kept_old = count(db, "SELECT count(*) FROM events WHERE seq < ?", PER_BATCH)
    assert kept_old == len(pending_ids)
    marks = ",".join("?" * len(pending_ids))
    assert count(db, f"SELECT count(*) FROM predictions JOIN events USING (seq) WHERE event_id IN ({marks})",
                 *pending_ids) == len(pending_ids)
    assert count(db, "SELECT count(*) FROM labels WHERE seq NOT IN (SELECT seq FROM events)") == 0
    assert count(db, "SELECT count(*) FROM pending_labels") == len(pending_ids)
    assert count(db, "SELECT count(*) FROM checkpoint") == 1
    assert count(db, "SELECT min(seq) FROM events WHERE seq >= ?", PER_BATCH) > PER_BATCH  # a prefix went


def test_rows_newer_than_the_last_checkpoint_are_never_pruned_for_bytes(tmp_path):
    db = tmp_path / "s.db"
    writer = StoreWriter(db, max_bytes=1 << 20, commit_every=0.01).start()
    try:
        for batch in range(12):
            writer.put_rows(batch_rows(batch))
        # A checkpoint whose watermark covers only the first batch: the store is far past its bound.
        writer.put_checkpoint("fp", {"entities": [], "offsets": {"t": PER_BATCH}, "engine": b"state",
                                     "watermark": 1_767_225_600.0 + PER_BATCH})
        assert writer.flush()
    finally:
        writer.close()
    assert count(db, "SELECT count(*) FROM events") == 11 * PER_BATCH  # only the covered batch went
    assert writer.used_bytes > 1 << 20


def test_max_bytes_takes_sizes_and_auto_and_refuses_nonsense():
    assert config_from_dict(dict(SMALL_CONFIG, retention={"max_bytes": "20 GB"})).retention.max_bytes == 20 * 10**9
    assert config_from_dict(dict(SMALL_CONFIG, retention={"max_bytes": "512MiB"})).retention.max_bytes == 512 << 20
    assert config_from_dict(dict(SMALL_CONFIG, retention={"max_bytes": 5_000_000})).retention.max_bytes == 5_000_000
    assert config_from_dict(dict(SMALL_CONFIG, retention={"max_bytes": "auto"})).retention.max_bytes is None
    assert config_from_dict(dict(SMALL_CONFIG)).retention.max_bytes is None
    with pytest.raises(ConfigError, match=r"\[retention\] max_bytes must be a size"):
        config_from_dict(dict(SMALL_CONFIG, retention={"max_bytes": "lots"}))
    with pytest.raises(ConfigError, match=r"\[retention\] max_bytes must be at least 1 MiB"):
        config_from_dict(dict(SMALL_CONFIG, retention={"max_bytes": 1000}))
