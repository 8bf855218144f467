"""Bytes per logged event: page accounting on a real store the engine and the writer filled."""

from __future__ import annotations

import orjson

from appliance.bench.store_bytes import HISTORY, bytes_per_event
from appliance.engine.core import Engine
from appliance.storage.rows import decode_vector, read_names
from appliance.storage.store import open_db
from appliance.storage.writer import StoreWriter
from tests.conftest import items, logged_features, make_stream


def test_bytes_per_event_counts_the_history_tables_and_their_indexes_over_the_events(tmp_path, small_config):
    engine = Engine(small_config)
    for item in items(small_config, make_stream(2000)):
        engine.process(item)
    path = tmp_path / "s.db"
    writer = StoreWriter(path).start()
    writer.put_rows(engine.take_rows())
    writer.close()
    figures = bytes_per_event(str(path))
    db = open_db(path)
    events = db.execute("SELECT count(*) FROM events").fetchone()[0]
    assert figures["events"] == events == 2000
    by_table = figures["by_table"]
    # each figure rounded to 0.1 B on its own: the sum of the rounded tables is within their rounding
    assert abs(figures["history_bytes_per_event"] - sum(by_table[t] for t in HISTORY)) <= 0.05 * (len(HISTORY) + 1)
    assert figures["file_bytes_per_event"] >= figures["history_bytes_per_event"] > 0
    # the packed vectors: an event row with its prediction takes less than its vector alone would as JSON
    names = read_names(db.conn)
    as_json = sum(len(orjson.dumps(decode_vector(blob, names))) for blob in logged_features(db.conn).values()) / events
    assert by_table["events"] < as_json
    db.conn.close()
