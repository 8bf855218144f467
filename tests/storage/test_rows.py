"""Packed feature vectors: exact round trips, names once per version, and the store's rows layout."""

from __future__ import annotations

import math
import sqlite3
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.errors import ConfigError
from appliance.storage.rows import (
    JSON,
    PACKED,
    PACKED_2BIT,
    UnknownNames,
    VectorCodec,
    decode_vector,
    names_version,
    read_names,
)
from appliance.storage.snapshot import ROWS_FORMAT
from appliance.storage.store import open_db

NAMES = [f"f{i}" for i in range(40)] + ["city#07", "amount", "card_rides_1h"]
CODEC = VectorCodec(NAMES)
NUMBERS = st.one_of(st.floats(allow_nan=False), st.floats(allow_nan=False, allow_infinity=False, width=16),
                    st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-3, 300).map(float))


def bits(x: dict) -> list[tuple[str, type, bytes | int]]:
    """A vector as (name, type, exact bits) in its order: equal floats with other bits differ here."""
    return [(k, type(v), struct.pack("<d", v) if isinstance(v, float) else v) for k, v in x.items()]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(NAMES), unique=True).flatmap(
    lambda names: st.tuples(st.just(names), st.lists(NUMBERS, min_size=len(names), max_size=len(names)))))
def test_a_packed_vector_decodes_to_the_same_names_order_types_and_bits(drawn):
    names, values = drawn
    x = dict(zip(names, values))  # any subset of the names (the rest missing), in any order
    blob = CODEC.encode(x)
    assert blob[0] == PACKED
    assert bits(decode_vector(blob)) == bits(x)
    assert bits(decode_vector(blob, {CODEC.version: NAMES})) == bits(x)


def test_values_that_are_not_numbers_or_names_the_codec_does_not_know_go_as_json():
    for x in ({"amount": True}, {"amount": "high"}, {"not_a_feature": 1.0}):
        blob = CODEC.encode(x)
        assert blob[0] == JSON and bits(decode_vector(blob)) == bits(x)


def test_negative_zero_nan_and_infinities_keep_their_bits():
    x = {"f0": -0.0, "f1": 0.0, "f2": math.inf, "f3": -math.inf, "f4": math.nan, "f5": 5e-324, "f6": 65504.0}
    assert bits(decode_vector(CODEC.encode(x))) == bits(x)


def test_zeros_and_ones_are_in_the_plan_alone_and_a_two_bit_blob_of_rows_layout_3_still_decodes():
    x = {"f0": 0.0, "f1": 1.0, "amount": 8.75, "f2": -0.0, "f3": 1.0, "card_rides_1h": 0.0}
    bare = {"amount": 8.75, "f2": -0.0}
    assert bits(decode_vector(CODEC.encode(x))) == bits(x)
    plan = lambda blob: blob[6:6 + blob[5]]  # noqa: E731 - the plan after its one-byte length
    # the same stored values (a double and a half), the zeros and ones in three bits each of the plan
    assert len(CODEC.encode(x)) - len(plan(CODEC.encode(x))) == len(CODEC.encode(bare)) - len(plan(CODEC.encode(bare)))
    # rows layout 3: 2-bit kinds (HALF, SINGLE, DOUBLE, INT), every value stored; f0 = 0.0 as a half
    old = (bytes([PACKED_2BIT]) + CODEC.version.to_bytes(4, "little") + bytes([4, 1, 0, 1, 0])  # plan: one run, a half
           + struct.pack("<e", 0.0))
    assert bits(decode_vector(old)) == bits({"f0": 0.0})


def test_a_vector_is_a_fraction_of_its_json_and_its_names_are_stored_once():
    import orjson

    x = {"amount": 8.7, "city#07": 1.0, **{f"f{i}": float(i % 5) for i in range(20)}, "card_rides_1h": 3.0}
    assert len(CODEC.encode(x)) * 3 < len(orjson.dumps(x))
    assert not any(name.encode() in CODEC.encode(x) for name in x)


def test_a_version_unknown_to_the_process_and_the_store_is_a_clear_error():
    blob = bytearray(CODEC.encode({"f1": 1.0}))
    blob[1:5] = (CODEC.version ^ 1).to_bytes(4, "little")
    with pytest.raises(UnknownNames, match="feature_names"):
        decode_vector(bytes(blob))


def test_the_engine_logs_the_names_once_and_a_reader_decodes_from_the_store_alone(tmp_path, small_config):
    from appliance.engine.core import Engine
    from appliance.storage.writer import StoreWriter
    from tests.conftest import items, logged_features, make_stream

    engine = Engine(small_config)
    for item in items(small_config, make_stream(50)):
        engine.process(item)
    rows = engine.take_rows()
    assert [row["version"] for row in rows["feature_names"]] == [names_version(engine.space.names)]
    writer = StoreWriter(tmp_path / "s.db").start()
    writer.put_rows(rows)
    writer.close()
    conn = sqlite3.connect(tmp_path / "s.db")
    names = read_names(conn)
    assert names == {engine.vectors.version: tuple(engine.space.names)}
    logged = logged_features(conn).values()
    assert len(logged) == 50 and all(set(decode_vector(blob, names)) <= set(engine.space.names) for blob in logged)


def test_a_store_records_its_rows_layout_and_one_in_another_layout_is_refused(tmp_path):
    path = tmp_path / "a.db"
    open_db(path).conn.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM store_format WHERE part = 'rows'").fetchone() == (ROWS_FORMAT,)
    conn.execute("UPDATE store_format SET version = ?", [ROWS_FORMAT + 1])
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=f'"{path}" keeps its rows in layout {ROWS_FORMAT + 1}.*--fresh'):
        open_db(path)


def test_a_store_of_layout_2_with_its_entity_expression_indexes_is_refused(tmp_path):
    path = tmp_path / "two.db"
    open_db(path).conn.close()
    conn = sqlite3.connect(path)  # what layout 2 left: its version, an expression index per key
    conn.execute("UPDATE store_format SET version = 2")
    conn.execute("ALTER TABLE events ADD COLUMN payload TEXT")  # where layout 2 kept the payload
    conn.execute("CREATE INDEX events_by_card ON events(json_extract(payload, '$[1]'), ts)")
    conn.commit()
    conn.close()
    assert ROWS_FORMAT == 5
    with pytest.raises(ConfigError, match="layout 2 and this release reads and writes layout 5; start with --fresh"):
        open_db(path)


def test_a_store_written_before_the_layout_was_recorded_is_refused(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)  # the schema of the earlier release: vectors as JSON text, no store_format
    conn.execute("CREATE TABLE predictions (event_id TEXT PRIMARY KEY, ts FLOAT, version INTEGER, score FLOAT, "
                 "predicted INTEGER, learner_score FLOAT, origin TEXT, features TEXT)")
    conn.execute("INSERT INTO predictions VALUES ('e1', 1.0, 1, 0.5, 0, 0.5, 'stream', '{\"amount\": 1.0}')")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=f"layout 1 .* layout {ROWS_FORMAT}; start with --fresh"):
        open_db(path)
    assert sqlite3.connect(path).execute("SELECT count(*) FROM predictions").fetchone() == (1,)  # nothing lost


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
KEYS = st.sampled_from(["event_id", "card", "user", "amount", "city", "ts", "x"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=7), st.sampled_from([None, "e1", "", "7"]),
       st.sampled_from([None, 1767225683.797, 1767225600.0, -0.0005, 253402214400.999]),
       st.sampled_from(["drawn", "iso", "number", "other iso"]))
def test_a_payload_decodes_to_the_same_keys_order_and_values(raw, event_id, when, spelt):
    import orjson

    from appliance.storage import payloads
    from appliance.storage.payloads import PayloadCodec, decode_payload, iso_millis, read_shapes

    if when is not None and "ts" in raw and spelt != "drawn":  # the time as the row's ts spells it, or almost
        raw["ts"] = {"iso": iso_millis(when), "number": when, "other iso": iso_millis(when)[:-1] + "+00:00"}[spelt]
    codec = PayloadCodec(("card", "user"), "event_id", "ts")
    text = codec.encode(raw, event_id, when)
    decoded = decode_payload(text, event_id, when)
    assert list(decoded.items()) == list(raw.items()) and orjson.dumps(decoded) == orjson.dumps(raw)
    omitted = event_id is not None and raw.get("event_id") == event_id  # the row holds the id: not again
    # ...and the time, when the row's ts spells it exactly
    told = raw.get("ts")
    omitted += when is not None and (told == iso_millis(when) if type(told) is str else type(told) is float and told == when)
    assert len(orjson.loads(text)) == 1 + 2 + len([k for k in raw if k not in ("card", "user")]) - omitted
    conn = sqlite3.connect(":memory:")  # and a reader with only the store's shapes reads it the same way
    conn.execute("CREATE TABLE payload_shapes (version INTEGER PRIMARY KEY, keys TEXT)")
    conn.executemany("INSERT OR IGNORE INTO payload_shapes VALUES (:version, :keys)", codec.take_shapes())
    saved = dict(payloads._SHAPES)
    payloads._SHAPES.clear()
    try:
        read_shapes(conn)
        assert decode_payload(text, event_id, when) == raw
    finally:
        payloads._SHAPES.update(saved)
    assert orjson.loads(text)[1:3] == [raw.get("card"), raw.get("user")]  # the entity keys at fixed positions
