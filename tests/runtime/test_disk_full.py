"""A full disk and files pulled from under the running appliance, for real: the store on a small
tmpfs filled up, the real `appliance up` in a subprocess. Health says which stage is down, writes
are refused (`unavailable`), nothing acknowledged is lost, and a stop during it is clean."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from appliance.errors import RequestError
from appliance.serving.client import Client
from tests.conftest import Running, fill, make_stream, wait_for, write_config

EVENT = {"user": "u1", "card": "c1", "amount": 12.5, "city": "faro"}


def start(directory: Path, disk_stage: bool = False, serve_processes: int | None = None) -> Running:
    """`appliance up` on `directory`; without `disk_stage` (`disk_reserve = 0`), a filling disk reaches
    the last line of defence, the store writer's retries, as these tests mean it to."""
    source = directory / "events.jsonl"
    if not source.exists():
        source.write_text("\n".join(json.dumps(e) for e in make_stream(50)) + "\n")
    config = write_config(directory, source)
    if not disk_stage:
        config.write_text(config.read_text() + "\n[retention]\ndisk_reserve = 0\n")
    return Running(directory, *(() if serve_processes is None else ("--serve-processes", str(serve_processes))))


def ingest_until_down(client: Client) -> list[str]:
    """Ingest events until the appliance says a stage is down; return the ids acknowledged."""
    acknowledged: list[str] = []
    for batch in range(4000):
        if client.request("health")["status"] == "down":
            return acknowledged
        ids = [f"d{batch}-{i}" for i in range(20)]
        events = [{**EVENT, "event_id": eid, "ts": 1_767_300_000 + batch, "pad": "x" * 400} for eid in ids]
        try:
            client.request("ingest", events=events)
        except RequestError as exc:
            assert exc.code == "unavailable", exc
            wait_for(lambda: client.request("health")["status"] == "down")
            return acknowledged
        acknowledged.extend(ids)
    raise AssertionError("the disk never filled up")


def stored_ids(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM events")}


def test_a_full_disk_is_reported_writes_refused_then_everything_acknowledged_is_stored_when_space_returns(small_disk):
    app = start(small_disk)
    try:
        with Client(app.socket, timeout=30) as client:
            wait_for(lambda: client.request("stats")["counts"]["events"] >= 50)
            filler = fill(small_disk)
            acknowledged = ingest_until_down(client)
            assert acknowledged, "nothing was acknowledged before the disk filled"
            health = client.request("health")
            assert health["accepting_writes"] is False and health["outage"]["stage"] in ("store", "order log")
            with pytest.raises(RequestError) as refused:
                client.request("ingest", events=[{**EVENT, "event_id": "refused-1"}])
            assert refused.value.code == "unavailable"
            with pytest.raises(RequestError) as refused:
                client.request("label", event_id=acknowledged[0], label=1)
            assert refused.value.code == "unavailable"
            scored = client.request("predict", event=EVENT, ingest=False)  # reads still work, unlogged
            assert scored["logged"] is False and 0.0 <= scored["score"] <= 1.0
            stages = {s["stage"]: s for s in client.request("stats")["stages"]}
            assert "down" in (stages["store"]["state"], stages["ingest"]["state"]), stages
            filler.unlink()  # space returns: the held-back writes are retried and committed
            wait_for(lambda: client.request("health")["status"] == "ok", timeout=60)
            wait_for(lambda: set(acknowledged) <= stored_ids(small_disk / "a.db"), timeout=60)
            assert client.request("ingest", events=[{**EVENT, "event_id": "after"}])["accepted"] == 1
    finally:
        code, out, err = app.stop()
    assert code == 0, err
    assert "stopped cleanly" in out
    assert "refused-1" not in stored_ids(small_disk / "a.db")


def test_a_stop_while_the_disk_is_full_is_clean_and_a_restart_recovers_everything_acknowledged(small_disk):
    app = start(small_disk)
    with Client(app.socket, timeout=30) as client:
        wait_for(lambda: client.request("stats")["counts"]["events"] >= 50)
        filler = fill(small_disk)
        acknowledged = ingest_until_down(client)
    code, out, err = app.stop()
    assert code == 0, err
    assert "stopped, but the last state could not be saved" in out, out
    filler.unlink()
    again = Running(small_disk)
    try:
        with Client(again.socket, timeout=30) as client:
            wait_for(lambda: set(acknowledged) <= stored_ids(small_disk / "a.db"), timeout=60)
            assert client.request("health")["status"] == "ok"
    finally:
        code, _, err = again.stop()
    assert code == 0, err


def test_a_stop_on_a_disk_full_to_the_last_byte_is_clean(small_disk):
    app = start(small_disk)
    with Client(app.socket, timeout=30) as client:
        wait_for(lambda: client.request("stats")["counts"]["events"] >= 50)
    filler = fill(small_disk, leave=0)
    code, out, err = app.stop()  # the final checkpoint cannot be written: this used to hang
    assert code == 0, err
    # (SQLite may find room in a WAL it reuses; then the stop is simply clean)
    assert "stopped, but the last state could not be saved" in out or "stopped cleanly" in out, out
    filler.unlink()
    again = Running(small_disk)
    try:
        with Client(again.socket, timeout=30) as client:
            wait_for(lambda: client.request("stats")["counts"]["events"] >= 50)
    finally:
        code, _, err = again.stop()
    assert code == 0, err


def test_an_inbox_truncated_or_a_store_deleted_while_running_stops_writes_loudly(short_dir):
    app = start(short_dir)
    try:
        # the primary's own inbox is truncated, and written through the primary (its private socket when it has
        # serving children: the kernel hands a public connection to any serving process)
        with Client(app.primary_socket, timeout=30) as client:
            wait_for(lambda: client.request("stats")["counts"]["events"] >= 50)
            client.request("ingest", events=[{**EVENT, "event_id": "before", "ts": 1_767_300_000}])
            os.truncate(short_dir / "a.db-inbox", 0)
            with pytest.raises(RequestError) as refused:  # refused, not acknowledged-then-lost
                client.request("ingest", events=[{**EVENT, "event_id": "lost?", "ts": 1_767_300_001}])
            assert refused.value.code == "unavailable" and "truncated" in refused.value.message
            health = client.request("health")
            assert health["status"] == "down" and health["outage"]["stage"] == "inbox"
            stages = {s["stage"]: s["state"] for s in client.request("stats")["stages"]}
            assert stages["ingest"] == "down"
        for n in range(8):  # every serving process refuses from then on, whichever the kernel picks
            with Client(app.socket, timeout=30) as anyone:
                with pytest.raises(RequestError) as refused:
                    anyone.request("ingest", events=[{**EVENT, "event_id": f"after-{n}", "ts": 1_767_300_002}])
                assert refused.value.code == "unavailable" and "truncated" in refused.value.message
    finally:
        code, out, err = app.stop()
    assert code == 0, err
    assert "inbox" in err and "truncated" in err  # a clear log line
    assert "writes were refused since inbox went down" in out


def test_a_store_file_deleted_while_running_is_reported_and_writes_refused(short_dir):
    app = start(short_dir)
    try:
        with Client(app.socket, timeout=30) as client:
            wait_for(lambda: client.request("stats")["counts"]["events"] >= 50)
            os.unlink(short_dir / "a.db")
            client.request("ingest", events=[{**EVENT, "event_id": "wakes-the-writer", "ts": 1_767_300_000}])
            wait_for(lambda: client.request("health")["status"] == "down")
            assert client.request("health")["outage"]["stage"] == "store"
            with pytest.raises(RequestError) as refused:
                client.request("ingest", events=[{**EVENT, "event_id": "after", "ts": 1_767_300_001}])
            assert refused.value.code == "unavailable" and "deleted or replaced" in refused.value.message
    finally:
        code, _out, err = app.stop()
    assert code == 0, err
    assert "deleted or replaced" in err


def next_disk_sample(client: Client) -> dict:
    """The disk stage's first reading taken after this call (the runtime samples every 0.2 s)."""
    seen = client.request("stats")["disk"]["samples"]
    wait_for(lambda: client.request("stats")["disk"]["samples"] > seen + 1)
    return client.request("stats")["disk"]


def test_the_disk_stage_warns_then_refuses_with_disk_low_before_the_disk_is_full_and_recovers(small_disk):
    app = start(small_disk, disk_stage=True)
    try:
        with Client(app.socket, timeout=30) as client:
            wait_for(lambda: client.request("stats")["counts"]["events"] >= 50)
            disk = next_disk_sample(client)
            assert disk["state"] == "ok" and disk["store_bytes"] > 0 and disk["disk_total"] <= 8 << 20
            assert client.request("health")["status"] == "ok"
            filler = fill(small_disk, leave=(disk["warn_below"] + disk["refuse_below"]) // 2)
            disk = next_disk_sample(client)
            assert disk["state"] == "low", disk
            health = client.request("health")
            assert health["status"] == "degraded" and health["accepting_writes"] is True
            stages = {s["stage"]: s["state"] for s in client.request("stats")["stages"]}
            assert stages["disk"] == "warn"
            acknowledged: list[str] = []
            for batch in range(400):  # each write waits for the next reading: no burst outruns the reserve
                ids = [f"l{batch}-{i}" for i in range(20)]
                events = [{**EVENT, "event_id": eid, "ts": 1_767_300_000 + batch, "pad": "x" * 400} for eid in ids]
                try:
                    client.request("ingest", events=events)
                except RequestError as exc:
                    assert exc.code == "disk_low", exc
                    break
                acknowledged.extend(ids)
                next_disk_sample(client)
            else:
                raise AssertionError("the disk stage never refused")
            assert acknowledged
            health = client.request("health")
            assert health["status"] == "down" and health["outage"]["stage"] == "disk"
            assert health["outage"]["code"] == "disk_low"
            with pytest.raises(RequestError) as refused:
                client.request("label", event_id=acknowledged[0], label=1)
            assert refused.value.code == "disk_low"
            assert client.request("predict", event=EVENT, ingest=False)["logged"] is False  # reads still work
            # Refused before the disk was full: everything acknowledged is committed, the store never failed.
            wait_for(lambda: set(acknowledged) <= stored_ids(small_disk / "a.db"), timeout=60)
            store = client.request("stats")["store"]
            assert store["failure"] is None and store["write_failures"] == 0, store
            filler.unlink()  # space returns: writes are accepted again
            wait_for(lambda: client.request("health")["status"] == "ok", timeout=60)
            assert client.request("ingest", events=[{**EVENT, "event_id": "after"}])["accepted"] == 1
            wait_for(lambda: "after" in stored_ids(small_disk / "a.db"), timeout=60)
    finally:
        code, out, err = app.stop()
    assert code == 0, err
    assert "stopped cleanly" in out
