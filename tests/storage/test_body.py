"""An event row's body (rows layout 5): payload and feature vector in one blob, compressed with a
dictionary the store writer trains on the store's first rows; read back exactly, from the store alone."""

from __future__ import annotations

import math
import random
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.storage import body as body_module
from appliance.storage.body import RAW, TRAIN_ROWS, ZSTD, BodyCodec, raw_body, read_dictionaries, split_body
from appliance.storage.payloads import PayloadCodec, decode_payload
from appliance.storage.rows import (
    UnknownNames,
    VectorCodec,
    decode_vector,
    names_row,
    varint,
)
from appliance.storage.writer import StoreWriter

NAMES = [f"f{i}" for i in range(12)]


def event_rows(start: int, count: int, seed: int = 5) -> dict[str, list[dict]]:
    """Events and predictions as the engine hands them: payloads and vectors from the real codecs."""
    rng = random.Random(seed + start)
    payloads, vectors = PayloadCodec(("card",), "event_id"), VectorCodec(NAMES)
    events, predictions = [], []
    for seq in range(start, start + count):
        raw = {"event_id": f"e{seq}", "card": f"c{rng.randrange(50)}", "amount": round(rng.random() * 90, 2),
               "city": rng.choice(["lisbon", "porto", "faro"])}
        x = {name: rng.choice([0.0, 1.0, float(rng.randrange(9)), rng.random()]) for name in NAMES
             if rng.random() < 0.8}
        score = rng.random()
        events.append({"event_id": raw["event_id"], "seq": seq, "ts": 1_767_225_600.0 + seq, "source": 1,
                       "offset": seq, "ingested": 1, "payload": payloads.encode(raw, raw["event_id"])})
        predictions.append({"seq": seq, "version": 1, "score": score, "predicted": int(score > 0.5),
                            "learner_score": score if seq % 3 else rng.random(), "origin": 0,
                            "features": vectors.encode(x)})
    return {"events": events, "predictions": predictions, "payload_shapes": payloads.take_shapes(),
            "feature_names": [names_row(vectors)]}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.one_of(st.none(), st.binary(min_size=1, max_size=300)))
def test_a_body_gives_back_its_payload_and_vector_raw_and_compressed(payload, features):
    assert split_body(raw_body(payload, features)) == (payload, features)
    codec = BodyCodec([TRAINED])
    blob = codec.encode(payload, features)
    assert blob[0] == ZSTD and split_body(blob) == (payload, features)


def _trained() -> bytes:
    codec = BodyCodec()
    rows = event_rows(0, TRAIN_ROWS)
    for event, prediction in zip(rows["events"], rows["predictions"]):
        assert codec.encode(event["payload"], prediction["features"])[0] == RAW
    assert codec.unwritten is not None
    return codec.unwritten["data"]


TRAINED = _trained()


def test_the_writer_commits_the_dictionary_with_the_first_compressed_body_and_every_row_reads_back(tmp_path):
    path = tmp_path / "s.db"
    writer = StoreWriter(path, commit_every=0.0).start()
    batches = [event_rows(start, 500) for start in range(1, 3_001, 500)]
    for rows in batches:
        writer.put_rows(rows)
    writer.close()
    assert writer.failure is None
    conn = sqlite3.connect(path)
    [(did, data)] = conn.execute("SELECT id, data FROM dictionaries").fetchall()
    assert did == body_module.dictionary_id(data) and len(data) <= body_module.DICTIONARY_BYTES
    kinds = dict(conn.execute("SELECT substr(body, 1, 1), count(*) FROM events GROUP BY 1").fetchall())
    assert kinds == {bytes([RAW]): TRAIN_ROWS, bytes([ZSTD]): 3_000 - TRAIN_ROWS}  # trained once, at row 2,000
    read_dictionaries(conn)
    stored = {seq: (event_id, split_body(blob)) for seq, event_id, blob in conn.execute(
        "SELECT seq, event_id, body FROM events")}
    views = {row[0]: row[1:] for row in conn.execute("SELECT seq, version, score, learner_score, origin FROM predictions")}
    nulls = conn.execute("SELECT count(*) FROM events WHERE learner_score IS NULL").fetchone()[0]
    conn.close()
    expected = {e["seq"]: (e, p) for rows in batches for e, p in zip(rows["events"], rows["predictions"])}
    assert set(stored) == set(views) == set(expected)
    for seq, (event, prediction) in expected.items():
        event_id, body = stored[seq]
        assert event_id == event["event_id"] and body.payload == event["payload"]
        assert body.features == prediction["features"]
        assert decode_payload(body.payload, event_id)["card"].startswith("c")
        assert decode_vector(body.features).keys() <= set(NAMES)
        version, score, learner, origin = views[seq]
        assert (version, origin) == (1, 0)
        assert math.copysign(1.0, score) == math.copysign(1.0, prediction["score"]) and score == prediction["score"]
        assert learner == prediction["learner_score"]
    assert nulls == sum(p["learner_score"] == p["score"] for _, p in expected.values()) == 2_000  # stored once


def test_a_store_reopened_keeps_compressing_with_its_dictionary(tmp_path):
    path = tmp_path / "s.db"
    for start in (1, 2_501):  # two writers, one after the other, as two runs of the appliance
        writer = StoreWriter(path, commit_every=0.0).start()
        writer.put_rows(event_rows(start, 2_500))
        writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM dictionaries").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM events WHERE substr(body, 1, 1) = ?", [bytes([ZSTD])]).fetchone()[0] == 3_000
    conn.close()


def test_another_process_reads_the_bodies_from_the_store_alone(tmp_path):
    path = tmp_path / "s.db"
    writer = StoreWriter(path, commit_every=0.0).start()
    rows = event_rows(1, 2_100)
    writer.put_rows(rows)
    writer.close()
    script = ("import sqlite3, sys\n"
              "from appliance.storage.body import read_codecs, split_body\n"
              "from appliance.storage.payloads import decode_payload\n"
              "conn = sqlite3.connect(sys.argv[1])\n"
              "read_codecs(conn)\n"
              "seq, event_id, blob = conn.execute('SELECT seq, event_id, body FROM events ORDER BY seq DESC').fetchone()\n"
              "print(seq, blob[0], decode_payload(split_body(blob).payload, event_id)['card'])\n")
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    last = rows["events"][-1]
    assert out.split() == [str(last["seq"]), str(ZSTD), decode_payload(last["payload"], last["event_id"])["card"]]


def test_a_body_whose_dictionary_is_unknown_is_refused_with_a_clear_error():
    frame = BodyCodec([TRAINED]).encode("[1]", None)[1 + len(varint(body_module.dictionary_id(TRAINED))):]
    with pytest.raises(UnknownNames, match="compression dictionary 4294967295 is not in the store's dictionaries"):
        split_body(bytes([ZSTD]) + varint(2**32 - 1) + frame)
    with pytest.raises(UnknownNames, match="unknown kind 9; start with --fresh"):
        split_body(b"\x09")


def test_a_prediction_without_its_event_stops_the_writer_loudly(tmp_path):
    writer = StoreWriter(tmp_path / "s.db", commit_every=0.0).start()
    rows = event_rows(1, 3)
    writer.put_rows({"events": rows["events"][:2], "predictions": rows["predictions"]})
    writer.close()
    assert "predictions without their events" in (writer.failure or "")
