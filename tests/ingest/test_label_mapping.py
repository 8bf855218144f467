"""Label events shaped as real label streams send them: the prediction named by a field other than
the events' id, the label's own time field, recognised by a type field or by carrying that field."""

from __future__ import annotations

import copy
import json
import random
import time

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import config_from_dict, load_config
from appliance.errors import ConfigError
from appliance.ingest.events import Event, Label, parse_event
from appliance.serving.client import Client
from tests.conftest import SMALL_CONFIG, serving

T0 = 1_767_225_600.0


def events_and_labels(n: int = 400, seed: int = 5, kind: str | None = None) -> tuple[list[dict], int]:
    """Payments with `id`; labels naming them by `event_id`, stamped `labelled_at`, arriving later."""
    rng = random.Random(seed)
    rows: list[tuple[float, dict]] = []
    t, labels = T0, 0
    for i in range(n):
        t += rng.uniform(5, 60)
        fraud = rng.random() < 0.2
        rows.append((t, {"id": f"p{i}", "ts": t, "user": f"u{rng.randrange(20)}",
                         "amount": round(rng.uniform(60, 200) if fraud else rng.uniform(5, 50), 2)}))
        if rng.random() < 0.7:
            at = t + rng.uniform(30, 900)
            label = {"event_id": f"p{i}", "label": int(fraud), "labelled_at": at}
            if kind is not None:
                label["kind"] = kind
            rows.append((at, label))
            labels += 1
    rows.sort(key=lambda item: item[0])
    return [row for _, row in rows], labels


CONFIG = """
[source]
spec = "stream.jsonl"
[event]
id = "id"
time = "ts"
{mapping}
keys = ["user"]
numeric = ["amount"]
[labels]
horizon = "1h"
[model]
publish_every = 50
[[features.aggregate]]
name = "user_n_1h"
key = "user"
op = "count"
window = "1h"
"""

BY_FIELD = 'type = ""\nlabel_id = "event_id"\nlabel_time = "labelled_at"\nlabel_by = "label_id"'
BY_TYPE = 'type = "kind"\nlabel_type = "outcome"\nlabel_id = "event_id"\nlabel_time = "labelled_at"'


@pytest.mark.parametrize(("mapping", "kind"), [(BY_FIELD, None), (BY_TYPE, "outcome")], ids=["by_field", "by_type"])
def test_replay_joins_every_label_that_names_its_event_by_another_field(tmp_path, monkeypatch, mapping, kind):
    monkeypatch.chdir(tmp_path)
    stream, n_labels = events_and_labels(kind=kind)
    (tmp_path / "stream.jsonl").write_bytes(b"\n".join(orjson.dumps(row) for row in stream) + b"\n")
    (tmp_path / "appliance.toml").write_text(CONFIG.format(mapping=mapping))
    result = CliRunner().invoke(main, ["replay", "--config", "appliance.toml", "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)["counts"]
    assert counts["dead_letters"] == 0
    assert counts["events"] == len(stream) - n_labels
    assert counts["labels"] == n_labels and counts["labels_joined"] == n_labels
    assert counts["labels_orphaned"] == 0 and counts["labels_late"] == 0


def test_the_label_time_comes_from_its_own_field(tmp_path):
    (tmp_path / "stream.jsonl").write_text("")
    (tmp_path / "appliance.toml").write_text(CONFIG.format(mapping=BY_FIELD))
    schema = load_config(tmp_path / "appliance.toml").event
    label = parse_event(b'{"event_id": "p7", "label": 1, "labelled_at": 1767225700, "ts": 5}', schema, "classification")
    assert isinstance(label, Label) and (label.event_id, label.ts, label.value) == ("p7", 1767225700.0, True)
    event = parse_event(b'{"id": "p8", "ts": 1767225600, "user": "u1", "amount": 3}', schema, "classification")
    assert isinstance(event, Event) and event.event_id == "p8"


def test_defaults_keep_todays_label_events():
    schema = config_from_dict({"event": {"keys": ["user"]}}).event
    assert (schema.label_id_field, schema.label_time_field, schema.label_by) == ("event_id", "ts", "type")
    label = parse_event(b'{"type": "label", "event_id": "e1", "ts": 10, "label": 0}', schema, "classification")
    assert isinstance(label, Label) and (label.event_id, label.ts, label.value) == ("e1", 10.0, False)


@pytest.mark.parametrize(("event", "message"), [
    ({"id": "id", "label_by": "label_id"}, 'label_id field other than the id field "id"'),
    ({"label_by": "presence"}, 'label_by "presence" must be "type"'),
    ({"type": "", "label_by": "type"}, 'label_by = "type" needs a type field'),
    ({"label_id": "user", "label_by": "label_id", "keys": ["user"]}, 'label_id "user" is also an event field'),
    ({"label": "amount", "numeric": ["amount"]}, 'label "amount" is also an id, time, key or value field'),
    ({"label_id": ""}, "label_id must be a field name"),
    ({"label_time": 3}, "label_time must be a field name"),
])
def test_a_bad_label_mapping_is_a_config_error_naming_the_key(event, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_from_dict({"event": event})


def test_the_socket_label_op_keeps_its_shape_under_a_label_mapping(short_dir):
    data = copy.deepcopy(SMALL_CONFIG)
    data["event"].update(id="id", type="", label_id="event_id", label_by="label_id", label_time="labelled_at")
    data["serve"] = {"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}
    config = config_from_dict(data)
    event = {"id": "x1", "ts": T0, "user": "u1", "card": "c1", "amount": 10.0, "city": "faro"}
    with serving(config), Client(config.socket) as client:
        assert client.request("ingest", events=[event])["accepted"] == 1
        assert client.request("label", event_id="x1", label=1, ts=T0 + 60)["accepted"] is True
        deadline = time.monotonic() + 30
        while client.request("stats")["counts"]["labels_joined"] < 1:
            assert time.monotonic() < deadline, client.request("stats")["counts"]
            time.sleep(0.05)
        assert client.request("stats")["counts"]["dead_letters"] == 0
