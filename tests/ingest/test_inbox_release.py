"""The inbox gives its disk space back once a durable checkpoint covers it: offsets never change,
what a restart reads is intact, and the released bytes no longer occupy the disk."""

from __future__ import annotations

import copy
import os
import time

from appliance.config.file import config_from_dict
from appliance.ingest.inbox import Inbox
from appliance.serving.client import Client
from appliance.storage import writer
from tests.conftest import SMALL_CONFIG, feed, make_stream, serving


def test_release_punches_whole_mib_before_the_offset_and_keeps_the_rest(short_dir):
    inbox = Inbox(str(short_dir / "i"))
    try:
        for i in range(40_000):
            inbox.append([{"event": {"n": i, "pad": "x" * 60}}])
        size = inbox.size
        blocks = os.stat(inbox.path).st_blocks
        mark = inbox.release(size - 100)
        assert mark == ((size - 100) >> 20) << 20 and mark >= 2 << 20
        assert os.stat(inbox.path).st_size == size  # offsets are unchanged
        assert os.stat(inbox.path).st_blocks < blocks - (mark >> 9) // 2  # the space is given back
        with open(inbox.path, "rb") as log:
            assert log.read(16) == b"\0" * 16
            log.seek(mark)
            tail = log.read()
        assert tail.endswith(b'{"event":{"n":39999,"pad":"' + b"x" * 60 + b'"}}\n')
        assert inbox.release(10) == mark  # never backwards
    finally:
        inbox.close()
    assert inbox.release(size) == mark  # a closed inbox is left alone


def test_a_running_appliance_releases_what_its_checkpoints_cover_and_restarts_intact(short_dir, monkeypatch):
    monkeypatch.setattr(writer, "RELEASE_EVERY", 0.0)
    data = copy.deepcopy(SMALL_CONFIG)
    data["serve"] = {"db": str(short_dir / "a.db"), "socket": str(short_dir / "a.sock")}
    data["checkpoint"] = {"every": 0.2}
    config = config_from_dict(data)
    stream = make_stream(3000)
    with serving(config), Client(config.socket) as client:
        for start in range(0, len(stream), 500):
            feed(client, [dict(e, pad="p" * 400) if e.get("type") == "payment" else e for e in stream[start:start + 500]])
        deadline = time.monotonic() + 60
        while client.request("stats")["inbox_bytes"]["released"] < 1 << 20:
            assert time.monotonic() < deadline, client.request("stats")["inbox_bytes"]
            time.sleep(0.05)
        before = client.request("stats")
    with serving(config), Client(config.socket) as client:  # resumes from its checkpoint, not the holes
        after = client.request("stats")
        assert after["counts"] == before["counts"]
        feed(client, [{"type": "payment", "event_id": "late-comer", "ts": stream[-1]["ts"] + 1, "user": "u1",
                       "card": "c1", "amount": 5.0, "city": "faro"}])
        assert client.request("stats")["counts"]["events"] == before["counts"]["events"] + 1
