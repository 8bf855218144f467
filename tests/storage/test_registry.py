"""The model registry on a running appliance: versions, promote, rollback exactness, pause, audit, export."""

from __future__ import annotations

import pickle
import zipfile

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import config_from_dict
from appliance.errors import RequestError
from appliance.serving.client import Client
from appliance.storage.store import open_db
from tests.conftest import SMALL_CONFIG, feed, make_stream, serving, wait_for

# A payment on entities the stream never uses: its features depend on its own fields only, so the
# same request gives the same vector at any time, and its score depends on the served version alone.
PROBE = {"event_id": "probe", "ts": 1_767_225_600.0, "user": "u-probe", "card": "c-probe", "amount": 120.0,
         "city": "faro"}


@pytest.fixture
def running(short_dir):
    config = config_from_dict(dict(SMALL_CONFIG, serve={"db": str(short_dir / "a.db"),
                                                       "socket": str(short_dir / "a.sock")}))
    with serving(config) as appliance, Client(config.socket) as client:
        yield appliance, client, config


def probe(client):
    reply = client.request("predict", event=PROBE, ingest=False)
    return reply["version"], reply["score"]


def test_rollback_restores_a_version_exactly_and_pauses_publication(running, short_dir):
    appliance, client, config = running
    stream = make_stream(900)
    feed(client, stream[:450])
    early = client.request("models")
    assert early["served"] >= 2 and early["publishing"] == "automatic"
    version_k, score_k = probe(client)
    assert version_k == f"v{early['served']}"
    feed(client, stream[450:])
    later = client.request("models")
    assert later["served"] > early["served"]
    assert probe(client)[1] != score_k

    result = CliRunner().invoke(main, ["models", "rollback", "--to", str(early["served"]), "--socket", config.socket])
    assert result.exit_code == 0, result.output
    assert f"v{early['served']} serves; automatic publication is paused" in result.output
    assert probe(client) == (version_k, score_k)  # exactly the same score as before

    learned = client.request("models")["learner"]["n_learned"]
    more = make_stream(300, seed=11)
    shift = stream[-1]["ts"] - more[0]["ts"] + 60
    for event in more:
        event["event_id"] = "m" + event["event_id"]
        event["ts"] += shift
    feed(client, more)
    assert client.request("models")["learner"]["n_learned"] > learned + SMALL_CONFIG["model"]["publish_every"]
    assert client.request("models")["served"] == early["served"]  # paused: no publication

    result = CliRunner().invoke(main, ["models", "resume", "--socket", config.socket])
    assert result.exit_code == 0 and "resumed" in result.output
    result = CliRunner().invoke(main, ["models", "promote", "--socket", config.socket])
    assert result.exit_code == 0, result.output
    state = client.request("models")
    assert state["served"] == state["total_versions"] and state["versions"][-1]["parent"] == early["served"]

    def stored_actions():
        appliance.writer.flush()  # what the engine has handed over; the promote's row may be a batch behind
        rows = open_db(config.db).query("SELECT * FROM audit ORDER BY id")
        return [(row["action"], row["version"], row["actor"]) for row in rows]

    actions = wait_for(lambda: (found := stored_actions())[-1][0] == "promote" and found,
                       explain=stored_actions)
    assert actions[0] == ("serve", 1, "appliance")
    assert ("rollback", early["served"], "operator") in actions and ("pause", None, "operator") in actions
    assert ("resume", None, "operator") in actions and actions[-1] == ("promote", state["served"], "operator")
    assert any(action == "publish" for action, _, actor in actions if actor == "policy")

    listing = CliRunner().invoke(main, ["models", "list", "--db", config.db])
    assert f"* {'v' + str(state['served']):>8}" in listing.output
    shown = CliRunner().invoke(main, ["models", "show", str(early["served"]), "--db", config.db])
    assert f"rollback by operator: rollback from v{later['served']} to v{early['served']}" in shown.output

    out = short_dir / "model.zip"
    exported = CliRunner().invoke(main, ["models", "export", str(early["served"]), "--out", str(out), "--db", config.db])
    assert exported.exit_code == 0, exported.output
    with zipfile.ZipFile(out) as archive:
        meta = orjson.loads(archive.read("meta.json"))
        model = pickle.loads(archive.read("model.pkl"))  # the test trusts its own export
    assert meta["version"] == early["served"] and meta["format"] == "appliance-model/1"
    x = client.request("predict", event=PROBE, ingest=False, explain=True)["features"]
    assert model.predict_proba_one(x)[True] == score_k

    imported = CliRunner().invoke(main, ["models", "import", str(out), "--db", config.db, "--socket", config.socket])
    assert imported.exit_code == 0, imported.output
    new = client.request("models")["versions"][-1]
    assert f"registered as v{new['version']}" in imported.output
    assert new["parent"] is None and new["n_learned"] == meta["n_learned"]
    promoted = CliRunner().invoke(main, ["models", "promote", str(new["version"]), "--socket", config.socket])
    assert promoted.exit_code == 0, promoted.output
    assert probe(client) == (f"v{new['version']}", score_k)  # the round trip kept the model exactly


def test_an_import_that_is_not_a_model_export_is_refused(running, short_dir):
    _, client, config = running
    bogus = short_dir / "bogus.zip"
    bogus.write_bytes(b"not a zip")
    result = CliRunner().invoke(main, ["models", "import", str(bogus), "--db", config.db, "--socket", config.socket])
    assert result.exit_code == 1 and "is not a model exported by `appliance models export`" in result.output
    with zipfile.ZipFile(bogus, "w") as archive:
        archive.writestr("meta.json", orjson.dumps({"format": "appliance-model/1", "spec": "x"}))
        archive.writestr("model.pkl", pickle.dumps({"not": "a model"}))
    result = CliRunner().invoke(main, ["models", "import", str(bogus), "--db", config.db, "--socket", config.socket])
    assert result.exit_code == 1 and "holds a dict, not a River model for classification" in result.output
    assert client.request("models")["total_versions"] == 1


def test_operator_errors_are_json_replies(running):
    _, client, _ = running
    with pytest.raises(RequestError, match="no model version 99"):
        client.request("rollback", version=99)
    with pytest.raises(RequestError, match="v1 is the only version"):
        client.request("rollback")
    with pytest.raises(RequestError, match='"paused": true or false'):
        client.request("publishing", paused="yes")
    with pytest.raises(RequestError, match="must be a version number"):
        client.request("promote", version="3")
    assert client.request("models")["served"] == 1  # and the connection still works
