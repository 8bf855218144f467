"""Regenerate console_replies.json: the replies of a real appliance after a fixed stream, for the
console's snapshot tests. Run from the repository root: `python -m tests.data.make_console_replies`.

The replies are real; only what changes from run to run is pinned (pid, start time, uptime,
wall-clock rates and latencies), so the snapshots are deterministic.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from appliance.serving.client import Client
from appliance.serving.health import stage_health
from tests.conftest import feed, make_stream, serving
from tests.tui.conftest import small_config

OUT = Path(__file__).with_name("console_replies.json")


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="apl-", dir="/tmp"))
    try:
        config = small_config(workdir)
        stream = make_stream(1500)
        stream.insert(30, {"type": "payment", "event_id": "broken", "ts": "yesterday", "user": "u1", "card": "c1",
                           "amount": 3})
        with serving(config), Client(config.socket) as client:
            feed(client, stream)
            for _ in range(20):
                client.request("predict", event={"user": "u1", "card": "c1", "amount": 9.5, "city": "faro"},
                               ingest=False)
            client.request("rollback", actor="console")
            while client.request("models")["publishing"] != "paused":  # the engine applies it between events
                pass
            client.request("stats")
            time.sleep(0.3)  # not synchronisation: lets the stats board refresh (it publishes every 0.25 s)
            replies = {op: client.request(op, **fields) for op, fields in {
                "health": {}, "stats": {}, "models": {"limit": 10}, "alerts": {}, "audit": {"limit": 30},
                "curve": {}, "data": {}, "entity": {"key": "card", "entity": "c3", "limit": 50}}.items()}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    replies["health"].update(pid=4242, started_at="2026-01-01T00:00:00.000Z", uptime_seconds=61.0)
    stats = replies["stats"]
    stats.update(uptime_seconds=61.0, rates={"events_per_second": 812.0, "labels_per_second": 640.0,
                                             "predictions_per_second": 812.0, "learns_per_second": 640.0})
    stats["predict_latency"] = {"samples": 20, "p50_us": 95.0, "p99_us": 310.0, "max_us": 402.0}
    stats["server"].update(requests=120, bytes_in=90_000, bytes_out=150_000, connections_total=3)
    stats["stages"] = stage_health(stats, flow_alive=True)
    for reply in replies.values():
        reply.pop("id", None)
    OUT.write_text(json.dumps(replies, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
