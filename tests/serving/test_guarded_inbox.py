"""The guarded inbox written from two threads at once, as the primary's is by its public and its
private socket servers (a serving child relays commands and predicts by entity to the private one)."""

from __future__ import annotations

import sys
import threading

import orjson

from appliance.serving.availability import Availability, GuardedInbox


def test_appends_from_two_threads_at_once_are_whole_and_latch_no_outage(tmp_path):
    availability = Availability()
    inbox = GuardedInbox(str(tmp_path / "a.db-inbox"), availability)
    errors: list[Exception] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two bytecodes, as a loaded machine may

    def write(server: str) -> None:
        try:
            for n in range(10_000):
                inbox.append([{"event": {"event_id": f"{server}-{n}"}}])
        except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(server,)) for server in ("public", "private")]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
        inbox.close()
    assert errors == [] and availability.latched is None  # no append took another's end for a truncation
    lines = (tmp_path / "a.db-inbox").read_bytes().splitlines()
    assert inbox.size == (tmp_path / "a.db-inbox").stat().st_size
    ids = [orjson.loads(line)["event"]["event_id"] for line in lines]
    assert sorted(ids) == sorted(f"{server}-{n}" for server in ("public", "private") for n in range(10_000))
