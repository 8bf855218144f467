"""The on-disk format: checkpoints as versioned plain data, entity states as a documented byte layout."""

from __future__ import annotations

import json
import pickle
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from appliance.config.model_spec import DEFAULT_MODELS, build_model
from appliance.engine.core import Engine
from appliance.errors import ConfigError
from appliance.features import entity_codec
from appliance.features.entity_codec import FormatError, decode_state, encode_state
from appliance.storage.snapshot import (
    FORMAT_VERSION,
    dump_object,
    load_object,
    pack,
    pack_checkpoint,
    unpack,
    unpack_checkpoint,
)
from tests.conftest import LEARNER, config_with, flip_stream, items, make_stream, write_config

FROZEN_CHAMPION = {"spec": "linear_model.LogisticRegression(optimizer=optim.SGD(0.0))",
                   "challenger": [{"name": "good", "spec": LEARNER},
                                  {"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]}
POLICY = {"promote_after": 100, "promote_margin": 0.05, "promote_confirm": 50, "rollback_after": 200, "drift_features": ["amount"],
          "on_data_drift": "challenger", "alert_cooldown": "1h", "drift_warmup": 100}


def probe_vectors(engine: Engine, stream) -> list[dict]:
    """Feature vectors of the stream's events computed from the engine's entity state now."""
    return [engine.space.compute(item[3].values, item[3].ts, engine.entities) for item in stream
            if item[0] == "event"][:40]


def settled(data):
    """The checkpoint's fields with each pickled object pickled again from its loaded state: pickle's
    bytes depend on which strings an object graph shares, which an unpickled copy does not reproduce."""
    if isinstance(data, dict):
        return {k: settled(v) for k, v in data.items()}
    if isinstance(data, list):
        return [settled(v) for v in data]
    if isinstance(data, bytes) and data.startswith(b"\x80\x05"):
        return dump_object(load_object(data))
    return data


def restored(config, blob: dict) -> Engine:
    engine = Engine(config)
    engine.restore(blob["engine"], blob["entities"], [(r[0], r[2], r[3]) for r in blob["pending"][0]])
    return engine


def test_a_checkpoint_restores_an_engine_that_predicts_and_checkpoints_identically():
    config = config_with(FROZEN_CHAMPION, POLICY)
    stream = items(config, flip_stream(900, change=450, shift_amount=True))
    first = Engine(config)
    seen = 0
    for seen, item in enumerate(stream, 1):  # noqa: B007 - `seen` is read after the loop  # until a policy promotion: on probation at the checkpoint
        first.process(item)
        if any(row["action"] == "promote" for row in first.rows["audit"]):
            break
    assert first.model.probation is not None and first.model.champion == "good"
    blob = first.checkpoint()
    again = restored(config, blob)
    assert again.model.probation is not None and list(again.model.candidates) == list(first.model.candidates)
    for x in probe_vectors(first, stream):
        assert again.model.shadow(x) == first.model.shadow(x)
        assert again.model.predict(again.model.served.model, x) == first.model.predict(first.model.served.model, x)
    assert settled(unpack_checkpoint(again.checkpoint()["engine"])) == settled(unpack_checkpoint(first.checkpoint()["engine"]))
    rest = stream[seen:]
    for engine in (first, again):
        engine.take_rows()
        for item in rest:
            engine.process(item)
    assert again.counts == first.counts and again.model.served.version == first.model.served.version
    rows_a, rows_b = again.take_rows(), first.take_rows()
    assert rows_a["predictions"] == rows_b["predictions"] and rows_a["labels"] == rows_b["labels"]
    assert [r["action"] for r in rows_a["audit"]] == [r["action"] for r in rows_b["audit"]]


def test_the_core_checkpoint_is_plain_data_with_its_format_version(small_config):
    engine = Engine(small_config)
    for item in items(small_config, make_stream(300)):
        engine.process(item)
    core = unpack(engine.checkpoint()["engine"])  # MessagePack alone: no appliance class in it
    assert core["kind"] == "appliance-checkpoint" and core["format"] == FORMAT_VERSION
    assert core["watermark"] == engine.watermark and core["counts"] == engine.counts
    served = core["model"]["served"]
    assert served["version"] == engine.model.served.version and isinstance(served["model"], bytes)
    assert only_plain(core)


def only_plain(data) -> bool:
    if isinstance(data, dict):
        return all(only_plain(k) and only_plain(v) for k, v in data.items())
    if isinstance(data, list):
        return all(map(only_plain, data))
    return data is None or type(data) in (str, bytes, int, float, bool)


def test_a_checkpoint_of_another_format_version_is_refused_with_the_way_out(small_config):
    core = unpack(Engine(small_config).checkpoint()["engine"])
    with pytest.raises(ConfigError, match=f"format {FORMAT_VERSION + 1}; this release reads format "
                                          f"{FORMAT_VERSION}; start with --fresh"):
        Engine(small_config).restore(pack({**core, "format": FORMAT_VERSION + 1}), [])
    with pytest.raises(ConfigError, match="not in the appliance's on-disk format.*start with --fresh"):
        Engine(small_config).restore(pickle.dumps({"model": None}), [])


DECODE_WITH_STRUCT = r'''
import json, struct, sys
blob = open(sys.argv[1], "rb").read()
version, n = struct.unpack_from("<BI", blob, 0)
at = 5
values = list(struct.unpack_from(f"<{n}d", blob, at)); at += 8 * n
(d,) = struct.unpack_from("<H", blob, at); at += 2
slots = []
for _ in range(d):
    (m,) = struct.unpack_from("<I", blob, at); at += 4
    flat = struct.unpack_from("<" + "Iq" * m, blob, at); at += 12 * m
    slots.append([list(pair) for pair in zip(flat[0::2], flat[1::2])])
assert at == len(blob)
import importlib.util
spec = importlib.util.spec_from_file_location("entity_codec", sys.argv[2])
codec = importlib.util.module_from_spec(spec); spec.loader.exec_module(codec)
state = codec.decode_state(blob)
assert [repr(v) for v in state[0]] == [repr(v) for v in values]
assert [[list(p) for p in zip(slot[0::2], slot[1::2])] for slot in state[1]] == slots
ours = sorted(m for m in sys.modules if m == "appliance" or m.startswith(("appliance.", "dataflows", "river")))
print(json.dumps({"version": version, "values": [repr(v) for v in values], "slots": slots, "imported": ours}))
'''


def test_entity_state_bytes_decode_in_another_process_without_any_appliance_class(small_config, tmp_path):
    engine = Engine(small_config)
    for item in items(small_config, make_stream(300)):
        engine.process(item)
    key, entity, blob = max(engine.checkpoint()["entities"], key=lambda row: (row[0] == "card", len(row[2])))
    state = engine.entities[key][entity]
    assert key == "card" and state[1][0]  # a key with a distinct count holding (hash, bucket) pairs
    (tmp_path / "state.bin").write_bytes(blob)
    done = subprocess.run([sys.executable, "-I", "-c", DECODE_WITH_STRUCT, str(tmp_path / "state.bin"),
                           entity_codec.__file__], capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    decoded = json.loads(done.stdout)
    assert decoded["imported"] == [] and decoded["version"] == entity_codec.LAYOUT_VERSION
    assert decoded["values"] == [repr(v) for v in state[0]]
    assert decoded["slots"] == [[list(pair) for pair in zip(slot[0::2], slot[1::2])] for slot in state[1]]
    assert decode_state(blob) == state and encode_state(decode_state(blob)) == blob


def test_entity_state_bytes_of_another_layout_version_or_cut_short_are_refused():
    from array import array

    blob = encode_state((array("d", [1.0, 2.0]), (array("q", [3, 4]),)))
    version = entity_codec.LAYOUT_VERSION
    with pytest.raises(FormatError, match=f"layout version 9; this release reads version {version}; start with --fresh"):
        decode_state(b"\x09" + blob[1:])
    # version 1, before the running window totals: same framing, values that would be misread
    with pytest.raises(FormatError, match=f"layout version 1; this release reads version {version}"):
        decode_state(b"\x01" + blob[1:])
    with pytest.raises(FormatError, match="cut short"):
        decode_state(blob[:-3])
    with pytest.raises(FormatError, match="past its end"):
        decode_state(blob + b"\x00")


def test_a_stored_model_naming_a_module_that_moved_still_loads():
    model = build_model(DEFAULT_MODELS["classification"], "classification")  # holds appliance.ScaleNumeric
    model.learn_one({"amount": 3.0}, True)
    blob = pickle.dumps(model, protocol=2)  # text GLOBAL opcodes: the module path can be rewritten
    assert b"appliance.learning.scaling\n" in blob
    moved = blob.replace(b"appliance.learning.scaling\n", b"appliance.scaling\n")  # where it lived before
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(moved)
    assert load_object(moved).predict_proba_one({"amount": 3.0}) == model.predict_proba_one({"amount": 3.0})


def _replay(directory: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance", "replay", "--config", str(config),
                           "--db", str(directory / "a.db")], capture_output=True, text=True, timeout=240,
                          cwd=directory, check=False)


def _store_picture(path: Path) -> dict:
    conn = sqlite3.connect(path)
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        picture = {table: conn.execute(f"SELECT count(*) FROM [{table}]").fetchone()[0] for table in tables}
        picture["checkpoint_row"] = conn.execute("SELECT fingerprint, offsets, engine FROM checkpoint").fetchall()
        return picture
    finally:
        conn.close()


@pytest.mark.parametrize("altered", ["fingerprint", "envelope"])
def test_a_store_written_in_another_format_is_refused_at_start_and_nothing_is_deleted(short_dir, altered):
    from appliance.config.file import load_config
    from appliance.runtime.store_files import fingerprint

    source = short_dir / "events.jsonl"
    source.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in make_stream(300)))
    config = write_config(short_dir, source)
    first = _replay(short_dir, config)
    assert first.returncode == 0, first.stderr
    conn = sqlite3.connect(short_dir / "a.db")
    if altered == "fingerprint":  # the format version recorded in the store's fingerprint
        other = fingerprint(load_config(str(config)), format_version=FORMAT_VERSION + 1)
        conn.execute("UPDATE checkpoint SET fingerprint = ?", (other,))
    else:  # the fingerprint agrees but the checkpoint itself says another format
        (engine,) = conn.execute("SELECT engine FROM checkpoint").fetchone()
        conn.execute("UPDATE checkpoint SET engine = ?", (pack_checkpoint({**unpack(engine), "format": 0}),))
    conn.commit()
    conn.close()
    before = _store_picture(short_dir / "a.db")
    again = _replay(short_dir, config)
    assert again.returncode == 1
    assert "start with --fresh" in again.stderr and "format" in again.stderr and "Traceback" not in again.stderr
    assert _store_picture(short_dir / "a.db") == before and before["events"] > 0
