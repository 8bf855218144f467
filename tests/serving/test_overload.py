"""Overload: when the dataflow falls behind the socket, writes are refused with `overloaded` (nothing
acknowledged is lost, memory and disk stay bounded) while reads go on being answered."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import orjson
import pytest

from appliance.config.file import config_from_dict
from appliance.errors import RequestError
from appliance.serving import service
from appliance.serving.client import Client
from dataflows.appliance_flow import EngineLogic
from tests.conftest import SMALL_CONFIG, serving, wait_for

LIMIT = 64 << 10


def events(start: int, n: int) -> list[dict]:
    return [{"event_id": f"o{i}", "ts": 1_767_225_600 + i, "user": f"u{i % 7}", "card": f"c{i % 11}",
             "amount": 10.0 + i % 13, "city": "porto"} for i in range(start, start + n)]


def test_a_stalled_dataflow_makes_writes_overloaded_reads_still_answered_then_it_recovers(monkeypatch):
    gate = threading.Event()  # the engine processes nothing until it is set: processing has fallen behind
    on_batch = EngineLogic.on_batch

    def stalled(self, values):
        gate.wait(60)
        return on_batch(self, values)

    monkeypatch.setattr(EngineLogic, "on_batch", stalled)
    monkeypatch.setattr(service, "MAX_INBOX_LAG", LIMIT)
    directory = Path(tempfile.mkdtemp(prefix="apl-o-", dir="/tmp"))
    config = config_from_dict({**SMALL_CONFIG, "serve": {"socket": str(directory / "o.sock"),
                                                         "db": str(directory / "o.db")}})
    try:
        with serving(config) as appliance, Client(config.socket, timeout=30) as client:
            accepted = 0
            with pytest.raises(RequestError) as info:
                for _ in range(1000):  # bounded: the limit is reached after ~8 batches of 100
                    accepted += client.request("ingest", events=events(accepted, 100))["accepted"]
            assert info.value.code == "overloaded"
            lag = client.request("stats")["inbox_lag_bytes"]
            assert LIMIT < lag < LIMIT + (64 << 10)  # bounded: one request past the limit at most
            for refused in ({"op": "label", "event_id": "o1", "label": 1},
                            {"op": "predict", "event": events(10**6, 1)[0]}):
                reply = client.send_line(orjson.dumps(refused))
                assert reply["error"]["code"] == "overloaded", reply
            # A scored-only predict is still answered, not logged, and says so.
            scored = client.request("predict", event=events(10**6 + 1, 1)[0], ingest=False)
            assert 0.0 <= scored["score"] <= 1.0 and scored["logged"] is False
            assert client.request("stats")["predictions_unlogged"] == 1
            # Reads do not wait for the dataflow: still answered, from the state it last published.
            assert client.request("health")["status"] == "ok"
            assert client.request("features", key="card", entity="c1")["entities"]["card"]["known"] is False
            assert 0.0 <= client.request("predict", entity={"card": "c1"})["score"] <= 1.0
            gate.set()  # the dataflow catches up
            wait_for(lambda: client.request("stats")["inbox_lag_bytes"] == 0)
            assert client.request("ingest", events=events(accepted, 1))["accepted"] == 1
            accepted += 1
            wait_for(lambda: client.request("stats")["counts"]["events"] == accepted,
                     explain=lambda: (accepted, client.request("stats")["counts"]))  # nothing acknowledged lost
            assert appliance.flow_running()
    finally:
        gate.set()
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
