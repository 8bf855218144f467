"""What a client sends is refused in the reply when the flow would drop it, and no single request
can move the stream's time to the far future or grow memory without bound (docs/reliability.md).

A real appliance in this process (real socket, real SQLite, the real dataflow), and the real
`appliance up` replaying a file for the file-source path.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
from pathlib import Path

import pytest

from appliance.config.file import config_from_dict
from appliance.engine import admission
from appliance.errors import RequestError
from appliance.serving.client import Client
from tests.conftest import SMALL_CONFIG, Running, serving, wait_for, write_config

T = 1_767_225_600.0  # 2026-01-01, behind the wall clock
FAR = "9999-12-29T00:00:00Z"


def payment(event_id: str, ts: float | str, user: str = "u1") -> dict:
    return {"event_id": event_id, "ts": ts, "user": user, "card": "c1", "amount": 10.0, "city": "faro"}


@pytest.fixture
def appliance():
    directory = Path(tempfile.mkdtemp(prefix="apl-b-", dir="/tmp"))
    config = config_from_dict({**SMALL_CONFIG, "serve": {"socket": str(directory / "b.sock"),
                                                         "db": str(directory / "b.db")}})
    with serving(config) as running:
        yield running
    import shutil

    shutil.rmtree(directory, ignore_errors=True)


def settled(appliance, client: Client) -> dict:
    """The stats snapshot once everything in the inbox so far has been processed."""
    size = appliance.inbox.size
    return wait_for(lambda: (s := client.request("stats"))["offsets"].get("inbox") == size and s)


def refused(client: Client, op: str, code: str, **fields) -> str:
    with pytest.raises(RequestError) as info:
        client.request(op, **fields)
    assert info.value.code == code, info.value
    return info.value.message


def test_a_far_future_time_is_refused_on_every_socket_op_and_the_stream_goes_on(appliance):
    with Client(appliance.config.socket, timeout=30) as client:
        assert client.request("ingest", events=[payment("e1", T)])["accepted"] == 1
        settled(appliance, client)
        size = appliance.inbox.size
        message = refused(client, "label", "invalid_event", event_id="e1", label=1, ts=FAR)
        assert "max_future_skew" in message and "9999-12-29" in message
        refused(client, "predict", "invalid_event", event=payment("p1", FAR))
        assert appliance.inbox.size == size  # nothing refused was written
        reply = client.request("ingest", events=[payment("e2", FAR), payment("e3", T + 60)])
        assert reply["accepted"] == 1 and "max_future_skew" in reply["rejected"][0]["reason"]
        stats = settled(appliance, client)
        assert stats["watermark"].startswith("2026-01-01T00:01")  # e3's time, not the year 9999
        assert stats["counts"]["events"] == 2 and stats["counts"]["future_events"] == 1
        assert client.request("features", key="card", entity="c1")["entities"]["card"]["known"] is True


def test_a_far_future_line_in_a_file_is_dead_lettered_and_retention_keeps_the_history(short_dir):
    lines = [payment(f"f{i}", T + 60 * i) for i in range(5)]
    lines.insert(2, {**payment("far", FAR), "type": "payment"})
    lines.insert(4, {"type": "label", "event_id": "f1", "label": 1, "ts": FAR})
    source = short_dir / "events.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    config = write_config(short_dir, source)
    config.write_text(config.read_text() + '\n[retention]\nkeep = "1d"\n')  # relative to the watermark
    app = Running(short_dir)
    try:
        with Client(app.socket, timeout=30) as client:
            stats = wait_for(lambda: (s := client.request("stats"))["offsets"].get(str(source)) == len(lines) and s)
            assert stats["watermark"].startswith("2026-01-01T00:04")
            assert stats["counts"]["events"] == 5 and stats["counts"]["predictions_expired"] == 0
    finally:
        code, _, err = app.stop()
    assert code == 0, err
    with sqlite3.connect(short_dir / "a.db") as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (5,)
        reasons = [row[0] for row in db.execute("SELECT reason FROM dead_letters ORDER BY offset")]
    assert len(reasons) == 2 and all(r.startswith("future: event time 9999-12-29") for r in reasons)


def test_a_label_the_flow_would_dead_letter_is_refused_in_the_reply(appliance):
    with Client(appliance.config.socket, timeout=30) as client:
        size = appliance.inbox.size
        assert "at most 256" in refused(client, "label", "invalid_event", event_id="x" * 300, label=1)
        assert "ISO-8601" in refused(client, "label", "invalid_event", event_id="x", label=1, ts="yesterday")
        assert "out of range" in refused(client, "label", "invalid_event", event_id="x", label=1, ts=-1e300)
        refused(client, "label", "invalid_label", event_id="x", label=7)
        assert appliance.inbox.size == size
        assert client.request("label", event_id="x", label=1, ts=T)["accepted"] is True
        assert settled(appliance, client)["counts"]["dead_letters"] == 0


@pytest.mark.parametrize("entity", ["999999999999999999999999999999", "²", "9" * 5000, "-12", "u1"])
def test_the_entity_op_answers_any_id_with_a_lookup(appliance, entity):
    with Client(appliance.config.socket, timeout=30) as client:
        reply = client.request("entity", key="user", entity=entity)
    assert reply["entity"] == entity and reply["known"] is False and reply["recent"] == []


def test_early_labels_are_bounded_the_oldest_dropped_and_counted(appliance, monkeypatch):
    monkeypatch.setattr(admission, "MAX_EARLY", 50)
    with Client(appliance.config.socket, timeout=30) as client:
        labels = [{"type": "label", "event_id": f"nobody-{i}", "label": 1, "ts": T} for i in range(60)]
        assert client.request("ingest", events=labels)["accepted"] == 60
        stats = settled(appliance, client)
        assert stats["counts"]["labels_early"] == 60 and stats["counts"]["labels_early_dropped"] == 10
        assert stats["early_labels"] == 50


@pytest.mark.parametrize("value", [0, 1, "false", None, [True]])
def test_protocol_booleans_are_strict(appliance, value):
    with Client(appliance.config.socket, timeout=30) as client:
        size = appliance.inbox.size
        message = refused(client, "predict", "bad_request", event=payment("b1", T), ingest=value)
        assert '"ingest" must be true or false' in message
        refused(client, "predict", "bad_request", event=payment("b1", T), explain=value)
        assert appliance.inbox.size == size


def test_a_late_predict_says_it_is_not_logged_and_the_flow_agrees(appliance):
    with Client(appliance.config.socket, timeout=30) as client:
        client.request("ingest", events=[payment("now", T + 36_000)])
        settled(appliance, client)
        reply = client.request("predict", event=payment("old", T))  # 10 h behind; allowed 10 min
        assert 0.0 <= reply["score"] <= 1.0
        assert reply["late"] is True and reply["logged"] is False and reply["reason"].startswith("late: 36000s")
        ingested = client.request("ingest", events=[payment("old2", T)])
        assert ingested["accepted"] == 0 and ingested["rejected"][0]["reason"].startswith("late: ")
        on_time = client.request("predict", event=payment("fresh", T + 36_001))
        assert "late" not in on_time and "logged" not in on_time
        stats = settled(appliance, client)
        assert stats["counts"]["late_events"] == 2 and stats["counts"]["predictions"] == 2
