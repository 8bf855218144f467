"""The operator's ops behind the console's views, against a real appliance over its socket:
`entity` (features with freshness, newest predictions and their labels), `data` (missing values,
unseen categories, dead letters with reasons), `curve` (metric history per candidate) and the
stage health and predict latency in `stats`."""

from __future__ import annotations

import copy
import time

import pytest

from appliance.config.file import config_from_dict
from appliance.errors import RequestError
from appliance.serving.client import Client
from appliance.storage.entity_history import RECENT_PER_ENTITY
from tests.conftest import SMALL_CONFIG, feed, make_stream, serving


def config_in(short_dir, **changes):
    data = copy.deepcopy(SMALL_CONFIG)
    data["event"]["optional"] = ["city"]
    data["model"]["challenger"] = [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]
    data["serve"] = {"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}
    data.update(changes)
    return config_from_dict(data)


def test_entity_shows_features_and_the_newest_predictions_with_their_labels(short_dir):
    config = config_in(short_dir)
    stream = make_stream(800)
    with serving(config), Client(config.socket) as client:
        feed(client, stream)
        card = "c3"
        events = [e for e in stream if e.get("type") == "payment" and e["card"] == card]
        labels = {e["event_id"]: e["label"] for e in stream if e.get("type") == "label"}
        expected = [e["event_id"] for e in sorted(events, key=lambda e: e["ts"], reverse=True)[:10]]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the store writer commits a moment after the engine
            reply = client.request("entity", key="card", entity=card, limit=10)
            if [row["event_id"] for row in reply["recent"]] == expected and all(
                    row["score"] is not None for row in reply["recent"]):
                break
        assert [row["event_id"] for row in reply["recent"]] == expected
        features = client.request("features", key="card", entity=card)["entities"]["card"]
        assert reply["values"] == features["values"] and reply["known"] and reply["age_seconds"] >= 0
        for row in reply["recent"]:
            assert 0.0 <= row["score"] <= 1.0 and row["version"] >= 1
            if row["label_status"] == "joined":
                assert row["label"] == labels[row["event_id"]]
        assert reply["recent_labelled"] == sum(row["label"] is not None for row in reply["recent"])
        assert any(row["label_status"] == "joined" for row in reply["recent"])
        # an entity never seen has no rows; an unknown key and a bad limit are clear errors
        assert client.request("entity", key="card", entity="nobody")["recent"] == []
        with pytest.raises(RequestError) as error:
            client.request("entity", key="iban", entity="x")
        assert error.value.code == "unknown_key"
        with pytest.raises(RequestError) as error:
            client.request("entity", key="card", entity=card, limit=0)
        assert error.value.code == "bad_request"
        with pytest.raises(RequestError) as error:  # more than an entity's row lists
            client.request("entity", key="card", entity=card, limit=RECENT_PER_ENTITY + 1)
        assert error.value.code == "bad_request"


def test_data_counts_missing_values_and_keeps_dead_letters_with_reasons(short_dir):
    config = config_in(short_dir)
    stream = make_stream(300)
    for event in stream[:30]:
        if event.get("type") == "payment":
            event.pop("city")
    missing = sum(1 for e in stream[:30] if e.get("type") == "payment")
    stream.insert(40, {"type": "payment", "event_id": "bad-ts", "ts": "yesterday", "user": "u1", "card": "c1",
                       "amount": 3})
    stream.insert(50, {"type": "payment", "event_id": "bad-amount", "ts": stream[49]["ts"], "user": "u1",
                       "card": "c1", "amount": "lots", "city": "faro"})
    with serving(config), Client(config.socket) as client:
        feed(client, stream)
        data = client.request("data")
        assert data["fields"]["city"]["missing"] == missing
        assert data["fields"]["amount"]["missing"] == 0
        assert data["fields"]["city"]["missing_rate"] == round(missing / data["events"], 4)
        assert data["categorical"]["city"]["distinct"] == 3
        assert data["dead_letters"] == 2
        reasons = [row["reason"] for row in data["dead_letters_recent"]]
        assert len(reasons) == 2 and "yesterday" in reasons[1] and "amount" in reasons[0]


def test_curve_tracks_every_candidate_and_stats_carry_stage_health_and_latency(short_dir):
    config = config_in(short_dir)
    with serving(config), Client(config.socket) as client:
        stats = client.request("stats")
        assert [s["state"] for s in stats["stages"]] == ["idle"] * 5 + ["ok", "ok"]  # the store and its disk: ready
        feed(client, make_stream(1500))
        curve = client.request("curve")
        assert curve["metric"] == "roc_auc_window" and len(curve["points"]) >= 3
        labels = [point["labels"] for point in curve["points"]]
        assert labels == sorted(labels) and labels[0] == 200
        assert all(set(point["candidates"]) == {"main", "tree"} for point in curve["points"])
        for _ in range(7):
            client.request("predict", event={"user": "u1", "card": "c1", "amount": 9.5, "city": "faro"}, ingest=False)
        stats = client.request("stats")
        assert stats["predict_latency"]["samples"] == 7 and stats["predict_latency"]["p50_us"] > 0
        assert {s["stage"]: s["state"] for s in stats["stages"]} == {
            "ingest": "ok", "features": "ok", "predict": "ok", "labels": "ok", "learn": "ok", "store": "ok", "disk": "ok"}
        assert stats["store"]["rows_written"] > 0 and stats["store"]["queued_rows"] <= stats["store"]["max_rows"]
        assert "curve" not in stats  # too long for every poll: the curve op's alone
    # the dataflow stopped: ingest is down, and says so
    from appliance.serving.health import stage_health
    assert stage_health(stats, flow_alive=False)[0]["state"] == "down"
    # the store writer's queue nearly full: the store is behind, and says so
    full = {**stats, "store": {**stats["store"], "queued_rows": 45_000, "max_rows": 50_000}}
    assert {s["stage"]: s["state"] for s in stage_health(full, flow_alive=True)}["store"] == "behind"


def test_stats_watch_streams_pushed_updates_to_the_cli(short_dir):
    import os
    import subprocess
    import sys

    import orjson

    config = config_in(short_dir)
    with serving(config), Client(config.socket) as client:
        feed(client, make_stream(200))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        watcher = subprocess.Popen([sys.executable, "-m", "appliance", "stats", "--socket", config.socket,
                                    "--watch", "0.1", "--json"], stdout=subprocess.PIPE, text=True, env=env)
        try:
            updates = [orjson.loads(watcher.stdout.readline()) for _ in range(3)]
        finally:
            watcher.terminate()
            watcher.wait(10)
        assert all(u["counts"]["events"] == 200 and "stages" in u for u in updates)
        assert client.request("stats")["server"]["watch_updates_pushed"] >= 3


def test_a_scored_only_event_is_logged_never_late_and_does_not_move_event_time(short_dir):
    config = config_in(short_dir)
    stream = make_stream(200)
    with serving(config), Client(config.socket) as client:
        feed(client, stream)
        before = client.request("stats")
        old = {"event_id": "old", "ts": stream[0]["ts"] - 86_400, "user": "u1", "card": "c1", "amount": 9.5, "city": "faro"}
        ahead = {"event_id": "ahead", "ts": stream[-1]["ts"] + 86_400 * 30, "user": "u1", "card": "c1", "amount": 9.5,
                 "city": "faro"}
        for event in (old, ahead):
            client.request("predict", event=event, ingest=False)
        deadline = time.monotonic() + 30
        while client.request("stats")["counts"]["predictions"] < before["counts"]["predictions"] + 2:
            assert time.monotonic() < deadline
        after = client.request("stats")
        assert after["counts"]["late_events"] == 0 and after["counts"]["dead_letters"] == 0
        assert after["watermark"] == before["watermark"]
        assert after["counts"]["events"] == before["counts"]["events"]  # no entity state changed
        # the next event of the stream is not late because of the one far ahead
        feed(client, [{"type": "payment", "event_id": "next", "ts": stream[-1]["ts"] + 1, "user": "u2", "card": "c2",
                       "amount": 5.0, "city": "porto"}])
        assert client.request("stats")["counts"]["late_events"] == 0
