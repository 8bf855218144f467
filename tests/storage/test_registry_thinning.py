"""Registry thinning: every version keeps its row and metrics, but only the versions that can still
serve keep their model bytes; the store writer thins at checkpoints, and the freed pages count
against the byte bound. A real store, the real `StoreWriter`, and the real appliance for the ops."""

from __future__ import annotations

import sqlite3

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import config_from_dict
from appliance.errors import ConfigError, NotFound, RequestError
from appliance.serving.client import Client
from appliance.storage import registry
from appliance.storage.retention import used_bytes
from appliance.storage.store import open_db
from appliance.storage.writer import StoreWriter
from tests.conftest import SMALL_CONFIG, feed, make_stream, serving, wait_for

BLOB = 40_000  # bytes of one version's model: enough that thinning frees whole pages


def model_rows(first: int, last: int) -> list[dict]:
    return [{"version": v, "spec": "LogisticRegression()", "parent": v - 1 or None, "n_learned": 100 * v,
             "event_ts": 1_767_225_600.0 + v, "wall_ts": 0.0, "metrics": orjson.dumps({"logloss": 1 / v}).decode(),
             "model": bytes([v % 256]) * BLOB, "candidate": "main"} for v in range(first, last + 1)]


def audit_row(row_id: int, action: str, version: int) -> dict:
    return {"id": row_id, "event_ts": 0.0, "wall_ts": 0.0, "action": action, "version": version, "reason": "",
            "actor": "test"}


def checkpoint(writer: StoreWriter, needed: tuple[int, ...]) -> None:
    writer.put_checkpoint("fp", {"entities": [], "offsets": {}, "engine": b"state", "watermark": None,
                                 "models_kept": needed})
    assert writer.flush()
    assert writer.failure is None


def stored(db) -> dict[int, tuple[bytes | None, dict]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {v: (blob, orjson.loads(metrics)) for v, blob, metrics in
                conn.execute("SELECT version, model, metrics FROM models ORDER BY version")}


def test_the_writer_keeps_the_bytes_of_what_can_serve_and_every_versions_row(tmp_path):
    db = tmp_path / "s.db"
    writer = StoreWriter(db, keep_models=4, commit_every=0.01).start()
    try:
        writer.put_rows({"models": model_rows(1, 30),
                         "audit": [audit_row(1, "serve", 1), audit_row(2, "import", 3), audit_row(3, "publish", 12)]})
        checkpoint(writer, needed=(12, 9))  # the engine's served version and the one a rollback returns to
        first = stored(db)
        assert writer.models_thinned == 30 - len({27, 28, 29, 30, 12, 9, 3})

        writer.put_rows({"models": model_rows(31, 33), "audit": [audit_row(4, "promote", 31)]})
        checkpoint(writer, needed=(31, 12))
        second = stored(db)
    finally:
        writer.close()

    assert sorted(first) == list(range(1, 31))  # every version's row stays...
    assert all(metrics == {"logloss": 1 / v} for v, (_, metrics) in first.items())  # ...with its metrics
    assert {v for v, (blob, _) in first.items() if blob is not None} == {3, 9, 12, 27, 28, 29, 30}
    assert all(blob == bytes([v]) * BLOB for v, (blob, _) in first.items() if blob is not None)
    # Served (audit) 31, newest 30-33, needed 12, imported 3: 9 and 27-29 lose their bytes now.
    assert {v for v, (blob, _) in second.items() if blob is not None} == {3, 12, 30, 31, 32, 33}
    assert sorted(second) == list(range(1, 34))


def test_thinned_bytes_go_to_the_freelist_that_the_byte_bound_counts(tmp_path):
    db = tmp_path / "s.db"
    unthinned = StoreWriter(tmp_path / "full.db", commit_every=0.01).start()
    writer = StoreWriter(db, keep_models=2, max_bytes=64 << 20, commit_every=0.01).start()
    try:
        for each in (unthinned, writer):
            each.put_rows({"models": model_rows(1, 60), "audit": [audit_row(1, "serve", 60)]})
            checkpoint(each, needed=(60,))
    finally:
        writer.close()
        unthinned.close()
    # 58 thinned blobs of 40 KB: the pages in use fall by about that (metadata rows stay).
    assert unthinned.used_bytes is None and writer.used_bytes is not None
    with sqlite3.connect(tmp_path / "full.db") as conn:
        full = used_bytes(conn)
    assert full - writer.used_bytes > 0.9 * 58 * BLOB


def test_a_thinned_version_is_a_clear_error_naming_what_is_kept(tmp_path):
    db = tmp_path / "s.db"
    writer = StoreWriter(db, keep_models=2, commit_every=0.01).start()
    try:
        writer.put_rows({"models": model_rows(1, 10), "audit": [audit_row(1, "serve", 4)]})
        checkpoint(writer, needed=(4,))
    finally:
        writer.close()
    store = open_db(db)
    listed = {row["version"]: row["bytes"] for row in registry.versions(store)}
    assert listed[2] is None and listed[4] == BLOB and len(listed) == 10
    with pytest.raises(NotFound, match=r"v2 is in the registry .* thinned .* kept: v4, v9, v10$"):
        registry.export_version(store, 2, str(tmp_path / "v2.zip"))
    assert not (tmp_path / "v2.zip").exists()
    registry.export_version(store, 9, str(tmp_path / "v9.zip"))  # a kept version still exports


def test_keep_models_is_a_positive_whole_number_with_a_default():
    assert config_from_dict(SMALL_CONFIG).retention.keep_models == registry.KEEP_MODELS
    assert config_from_dict(dict(SMALL_CONFIG, retention={"keep_models": 3})).retention.keep_models == 3
    with pytest.raises(ConfigError, match="keep_models"):
        config_from_dict(dict(SMALL_CONFIG, retention={"keep_models": 0}))


def test_the_running_appliance_refuses_a_rollback_to_a_thinned_version(short_dir):
    config = config_from_dict(dict(SMALL_CONFIG, retention={"keep_models": 1},
                                   serve={"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}))
    with serving(config) as appliance, Client(config.socket) as client:
        feed(client, make_stream(900))
        state = client.request("models")
        assert state["total_versions"] >= 5

        def stored_kept() -> list[int]:
            appliance.writer.flush()
            return [row[0] for row in open_db(config.db).execute(
                "SELECT version FROM models WHERE model IS NOT NULL ORDER BY version")]

        # The writer thins at the checkpoint after a publication; the engine is idle once fed.
        needed = set(appliance.engine.model.needed_versions())
        kept = wait_for(lambda: (found := stored_kept()) and len(found) < state["total_versions"] and found,
                        explain=stored_kept)
        assert needed <= set(kept)
        thinned = next(v for v in range(1, state["total_versions"] + 1) if v not in kept)
        with pytest.raises(RequestError) as refused:
            client.request("rollback", version=thinned)
        assert refused.value.code == "model_thinned"
        assert f"v{thinned} is in the registry" in str(refused.value)
        assert ", ".join(f"v{v}" for v in kept) in str(refused.value)
        previous = appliance.engine.model.previous()
        assert previous in kept
        assert client.request("rollback")["version"] == previous  # what a rollback returns to is kept


def test_models_list_shows_the_newest_versions_and_the_one_that_serves(tmp_path):
    """A following learner is published at every check it passes: thousands of versions after weeks.
    `models list` shows the newest 20 (`--limit`, `--all`), and the serving one wherever it is."""
    db = tmp_path / "s.db"
    writer = StoreWriter(db, commit_every=0.01).start()
    try:
        writer.put_rows({"models": model_rows(1, 30), "audit": [audit_row(1, "serve", 1), audit_row(2, "rollback", 4)]})
        checkpoint(writer, needed=(4,))
    finally:
        writer.close()

    def listed(*args: str) -> list[str]:
        done = CliRunner().invoke(main, ["models", "list", "--db", str(db), *args])
        assert done.exit_code == 0, done.output
        return done.output.splitlines()

    lines = listed()
    assert [line.split()[0] for line in lines[1:4]] == ["*", "...", "v11"] and lines[1].split()[1] == "v4"
    assert [line.split()[0] for line in lines[3:-1]] == [f"v{v}" for v in range(11, 31)]
    assert lines[-1] == "30 versions, 21 shown (--all for every one); * serves (as of the last commit)"
    assert len(listed("--all")) == 1 + 30 + 1 and listed("--all")[-1].startswith("30 versions;")
    assert [line.split()[0] for line in listed("--limit", "2")[1:-1]] == ["*", "...", "v29", "v30"]
    short = orjson.loads(CliRunner().invoke(main, ["models", "list", "--db", str(db), "--limit", "2", "--json"]).output)
    assert (short["served"], short["total"]) == (4, 30)
    assert [row["version"] for row in short["versions"]] == [4, 29, 30]
    refused = CliRunner().invoke(main, ["models", "list", "--db", str(db), "--limit", "0"])
    assert refused.exit_code == 2 and "--limit" in refused.output
