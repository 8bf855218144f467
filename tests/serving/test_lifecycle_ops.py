"""Champion/challenger and drift on a running appliance: socket ops, the CLI, error replies."""

from __future__ import annotations

import copy

import orjson
import pytest
from click.testing import CliRunner

from appliance.cli.main import main
from appliance.config.file import config_from_dict
from appliance.errors import RequestError
from appliance.serving.client import Client
from tests.conftest import SMALL_CONFIG, feed, flip_stream, serving, wait_for_models


@pytest.fixture
def running(short_dir):
    data = copy.deepcopy(SMALL_CONFIG)
    data["model"]["challenger"] = [{"name": "tree", "spec": "tree.HoeffdingTreeClassifier()"}]
    data["lifecycle"] = {"auto_promote": False, "alert_cooldown": "1h", "drift_features": ["amount"],
                         "drift_warmup": 100}
    data["serve"] = {"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}
    config = config_from_dict(data)
    with serving(config) as appliance, Client(config.socket) as client:
        yield appliance, client, config


def cli(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_leaderboard_challenge_promote_retire_and_alerts_over_the_socket(running):
    appliance, client, config = running
    feed(client, flip_stream(1200, change=600, shift_amount=True))
    state = wait_for_models(client, lambda s: len(s["leaderboard"]) == 2 and s["leaderboard"][0]["labels_scored"] == 1200)
    assert state["champion"] == "main" and [row["name"] for row in state["leaderboard"]] == ["main", "tree"]
    board = cli("models", "leaderboard", "--socket", config.socket)
    assert "* main" in board and "tree" in board and "vs champion" in board

    # a registered version as a challenger, scored from the next event on
    version = state["served"]
    assert f"v{version} is a challenger" in cli("models", "challenge", version, "--socket", config.socket)
    with pytest.raises(RequestError) as conflict:
        client.request("challenge", version=version)
    assert conflict.value.code == "conflict"
    with pytest.raises(RequestError) as missing:
        client.request("challenge", version=999)
    assert missing.value.code == "not_found"
    with pytest.raises(RequestError) as champion:
        client.request("retire", challenger="main")
    assert champion.value.code == "conflict"
    assert client.request("health")["model_version"] == f"v{version}"  # the connection stays open after errors

    # promote a challenger by hand: it becomes the champion and a copy of its learner serves
    out = cli("models", "promote", "--challenger", "tree", "--socket", config.socket)
    assert "tree is the champion" in out
    state = client.request("models")
    assert state["champion"] == "tree" and state["versions"][-1]["candidate"] == "tree"
    assert client.request("predict", event={"event_id": "p1", "ts": 1_767_300_000.0, "user": "u1", "card": "c1",
                                            "amount": 10.0, "city": "faro"}, ingest=False)["version"] == \
        f"v{state['served']}"
    assert f"v{version} retired" in cli("models", "retire", f"v{version}", "--socket", config.socket)

    # the amount distribution moved at event 600: a data drift alert, over the socket and in the store
    alerts = client.request("alerts")
    assert alerts["total"] >= 1
    data = [a for a in alerts["alerts"] if a["kind"] == "data"]
    assert data and data[0]["subject"] == "feature amount" and data[0]["evidence"]["mean_after"] > data[0]["evidence"]["mean_before"]
    appliance.stop()
    listed = cli("alerts", "--db", config.db, "--json")
    stored = orjson.loads(listed)
    assert any(row["kind"] == "data" and row["subject"] == "feature amount" for row in stored)
    audit = cli("models", "show", state["served"], "--db", config.db)
    assert "promote by" in audit
