"""Offline models: scikit-learn on the point-in-time training set, converted to ONNX, registered,
scored in shadow and served by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from appliance.cli.main import main
from appliance.config.file import load_config
from appliance.errors import ConfigError
from appliance.features.space import FeatureSpace
from appliance.learning.onnx_model import check_schema, load_onnx_file
from appliance.offline.export import training_set
from appliance.offline.train import _estimator, train
from appliance.serving.client import Client
from tests.conftest import logged_features, serving, wait_for_models, write_csv


@pytest.fixture(autouse=True)
def one_openmp_thread():
    """The reference fits run as `train` runs them: OpenMP spinning on a shared machine is 25x slower."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture
def replayed(short_dir, monkeypatch):
    """A store filled by a real replay of 1,500 events, with the config `appliance init` wrote."""
    monkeypatch.chdir(short_dir)
    write_csv("events.csv", n=1500)
    runner = CliRunner()
    assert runner.invoke(main, ["init", "events.csv"]).exit_code == 0
    result = runner.invoke(main, ["replay", "--config", "appliance.toml", "--json"])
    assert result.exit_code == 0, result.output
    return load_config("appliance.toml"), runner


def test_onnx_scores_equal_scikit_learn_on_the_same_rows(replayed):
    config, _ = replayed
    names = FeatureSpace.for_config(config).names
    rows = sorted(training_set(config.db, config), key=lambda row: row["ts"])
    model, report = train(rows, names, "classification", "gbdt", seed=3)
    assert "HistGradientBoostingClassifier" in report["estimator"]
    # an independent fit of the same estimator on the same rows (deterministic with the seed)
    matrix = np.array([[float(row.get(n) or 0.0) for n in names] for row in rows], dtype=np.float32)
    labels = np.array([row["label"] for row in rows], dtype=np.int64)
    reference = _estimator("gbdt", "classification", 3).fit(matrix, labels)
    expected = reference.predict_proba(matrix)[:, 1]
    assert np.max(np.abs(model.score_many(matrix) - expected)) < 1e-5
    # one row at a time, from the feature dict the engine logged at prediction time
    import sqlite3

    from appliance.storage.rows import decode_vector, read_names

    conn = sqlite3.connect(config.db)
    versions = read_names(conn)
    for features in logged_features(conn, limit=50).values():
        x = decode_vector(features, versions)
        row = np.array([[float(x.get(n) or 0.0) for n in names]], dtype=np.float32)
        assert model.predict_proba_one(x)[True] == pytest.approx(reference.predict_proba(row)[0, 1], abs=1e-5)
    assert report["rows"] == len(rows) and report["parity_max_abs_diff"] < 1e-4
    assert 0.0 <= report["holdout"]["roc_auc"] <= 1.0


def test_schema_check_refuses_unknown_features_and_wrong_widths(replayed, tmp_path):
    config, _ = replayed
    names = FeatureSpace.for_config(config).names
    model, _ = train(training_set(config.db, config), names, "classification", "logistic")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.onnx_bytes)
    (tmp_path / "short.txt").write_text("\n".join(names[:-1]))
    (tmp_path / "alien.txt").write_text("\n".join(names[:-1] + ["not_a_feature"]))
    from appliance.learning.onnx_model import read_feature_list

    with pytest.raises(ConfigError, match="shape"):
        check_schema(load_onnx_file(str(path), read_feature_list(str(tmp_path / "short.txt")), "classification"),
                     names)
    with pytest.raises(ConfigError, match="does not compute: not_a_feature"):
        check_schema(load_onnx_file(str(path), read_feature_list(str(tmp_path / "alien.txt")), "classification"),
                     names)
    with pytest.raises(ConfigError, match="trained for classification"):
        load_onnx_file(str(path), None, "regression")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a readable ONNX model"):
        load_onnx_file(str(tmp_path / "junk.onnx"), names, "classification")
    check_schema(load_onnx_file(str(path), None, "classification"), names)  # its own metadata: accepted


def test_train_offline_registers_a_model_that_competes_and_serves(replayed, short_dir):
    config, runner = replayed
    result = runner.invoke(main, ["train-offline", "--config", "appliance.toml", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[:result.output.rindex("}") + 1])
    assert report["parity_max_abs_diff"] < 1e-4 and (short_dir / "offline.onnx").exists()
    result = runner.invoke(main, ["bench", "offline", "offline.onnx", "--config", "appliance.toml", "--rows", "300",
                                  "--json"])
    assert result.exit_code == 0, result.output
    bench = json.loads(result.output)
    assert bench["rows"] == 300 and bench["features"] == len(FeatureSpace.for_config(config).names)
    # the user's own file (here: the same bytes) with an explicit feature list goes in too
    names = FeatureSpace.for_config(config).names
    (short_dir / "features.txt").write_text("\n".join(names))
    result = runner.invoke(main, ["models", "import", "offline.onnx", "--features", "features.txt",
                                  "--config", "appliance.toml"])
    assert result.exit_code == 0, result.output

    config = config.with_overrides(socket=str(short_dir / "a.sock"))
    with serving(config) as appliance, Client(config.socket) as client:
        state = client.request("models")
        offline = [v for v in state["versions"] if v["candidate"] == "offline"]
        own = [v for v in state["versions"] if v["candidate"] == "onnx"]
        assert len(offline) == 1 and len(own) == 1 and offline[0]["spec"].startswith("onnx: logistic")
        version = offline[0]["version"]
        result = runner.invoke(main, ["models", "challenge", str(version), "--socket", config.socket])
        assert result.exit_code == 0, result.output
        board = {row["name"]: row for row in wait_for_models(client, lambda s: len(s["leaderboard"]) == 2)["leaderboard"]}
        assert board[f"v{version}"]["learns"] is False

        result = runner.invoke(main, ["models", "promote", str(version), "--socket", config.socket])
        assert result.exit_code == 0, result.output
        event = {"event_id": "probe", "ts": 1_767_300_000.0, "user_id": "u1", "card_id": "c1",
                 "amount": 42.0, "city": "faro"}
        reply = client.request("predict", event=event, ingest=False, explain=True)
        assert reply["version"] == f"v{version}"
        served = appliance.engine.model.served.model
        assert reply["score"] == served.score_one(reply["features"])
        # an offline model serves as a frozen champion: the online learners now challenge it
        state = wait_for_models(client, lambda s: s["leaderboard"][0]["name"] == f"v{version}")
        assert state["champion"] == f"v{version}" and state["leaderboard"][0]["learns"] is False


def test_an_offline_score_is_a_feature_of_the_online_model(replayed, short_dir):
    """The offline model plus an online correction: its score is logged with the vector, learned
    on, and rebuilt identically by the training-set export."""
    config, runner = replayed
    result = runner.invoke(main, ["train-offline", "--config", "appliance.toml"])
    assert result.exit_code == 0, result.output
    text = (short_dir / "appliance.toml").read_text()
    text = text.replace('db = "appliance.db"', 'db = "second.db"')
    text += '\n[[features.model]]\nname = "offline_score"\npath = "offline.onnx"\n'
    (short_dir / "second.toml").write_text(text)
    result = runner.invoke(main, ["replay", "--config", "second.toml", "--json"])
    assert result.exit_code == 0, result.output
    second = load_config("second.toml")
    assert second.db.endswith("second.db")
    space = FeatureSpace.for_config(second)
    assert space.names[-1] == "offline_score"
    model = load_onnx_file(str(short_dir / "offline.onnx"), None, "classification")
    import sqlite3

    from appliance.storage.rows import decode_vector, read_names

    conn = sqlite3.connect(second.db)
    names = read_names(conn)
    logged = logged_features(conn)
    vectors = [decode_vector(v, names) for v in logged.values()]
    assert all("offline_score" in x for x in vectors)
    for x in vectors[:200]:
        assert x["offline_score"] == model.score_one({k: v for k, v in x.items() if k != "offline_score"})
    exported = list(training_set(second.db, second))
    assert exported
    for row in exported:
        event_id = row.pop("event_id")
        row.pop("ts"), row.pop("label")
        assert row == decode_vector(logged[event_id], names)
    (short_dir / "third.toml").write_text(text.replace('path = "offline.onnx"', 'path = "missing.onnx"'))
    result = runner.invoke(main, ["replay", "--config", "third.toml"])
    assert result.exit_code == 1 and "offline_score" in result.output and "not a readable ONNX model" in result.output


def test_the_sparse_training_matrix_equals_the_dense_one(replayed):
    from appliance.offline.train import feature_matrix

    config, _ = replayed
    names = FeatureSpace.for_config(config).names
    rows = sorted(training_set(config.db, config), key=lambda row: row["ts"])
    dense = np.array([[float(row.get(n) or 0.0) for n in names] for row in rows], dtype=np.float32)
    matrix = feature_matrix(rows, names)
    assert matrix.shape == dense.shape and matrix.nnz == np.count_nonzero(dense)
    assert np.array_equal(matrix.toarray(), dense)


def test_histogram_boosting_regression_converts_and_matches_scikit_learn():
    """gbdt is HistGradientBoosting: a regression on wide, mostly empty rows (as hashed one-hots are)."""
    rng = np.random.default_rng(7)
    names = ["amount"] + [f"city#{i}" for i in range(300)]
    rows = []
    for i in range(1200):
        city = int(rng.integers(300))
        amount = float(rng.gamma(2.0, 10.0))
        rows.append({"ts": float(i), "label": amount * 0.5 + (city % 7), "amount": amount, f"city#{city}": 1.0})
    model, report = train(rows, names, "regression", "gbdt", seed=1)
    assert "HistGradientBoostingRegressor" in report["estimator"] and report["nonzero"] == 2400
    dense = np.array([[float(row.get(n) or 0.0) for n in names] for row in rows], dtype=np.float32)
    reference = _estimator("gbdt", "regression", 1).fit(dense, np.array([row["label"] for row in rows]))
    assert np.max(np.abs(model.score_many(dense) - reference.predict(dense))) < 1e-3
    assert report["parity_max_abs_diff"] < 1e-4 and report["holdout"]["mae"] < 5.0


def test_histogram_gbdt_and_a_sparse_forest_register_and_serve(replayed, short_dir):
    config, runner = replayed
    versions = {}
    for kind in ("gbdt", "forest"):
        result = runner.invoke(main, ["train-offline", "--model", kind, "--out", f"{kind}.onnx",
                                      "--config", "appliance.toml", "--json"])
        assert result.exit_code == 0, result.output
        report = json.loads(result.output[:result.output.rindex("}") + 1])
        assert report["parity_max_abs_diff"] < 1e-4 and report["nonzero"] > 0
        versions[kind] = report
    assert "HistGradientBoostingClassifier" in versions["gbdt"]["estimator"]
    config = config.with_overrides(socket=str(short_dir / "a.sock"))
    with serving(config) as appliance, Client(config.socket) as client:
        offline = [v for v in client.request("models")["versions"] if v["candidate"] == "offline"]
        gbdt = [v for v in offline if v["spec"].startswith("onnx: gbdt (HistGradientBoostingClassifier)")]
        assert len(offline) == 2 and len(gbdt) == 1
        result = runner.invoke(main, ["models", "promote", str(gbdt[0]["version"]), "--socket", config.socket])
        assert result.exit_code == 0, result.output
        event = {"event_id": "probe", "ts": 1_767_300_000.0, "user_id": "u1", "card_id": "c1",
                 "amount": 42.0, "city": "faro"}
        reply = client.request("predict", event=event, ingest=False, explain=True)
        assert reply["version"] == f"v{gbdt[0]['version']}"
        served = appliance.engine.model.served.model
        assert "HistGradientBoosting" in served.description
        assert reply["score"] == served.score_one(reply["features"])
