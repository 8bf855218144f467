"""The soak script runs the real appliance under load and writes its samples (a smoke run, seconds long)."""

from __future__ import annotations

import orjson

from appliance.bench.soak import main


def test_a_short_soak_samples_memory_and_latency_and_stops_the_appliance_cleanly(short_dir, capsys):
    out = short_dir / "soak.jsonl"
    code = main(["--minutes", "0.08", "--every", "1.5", "--rate", "100", "--out", str(out),
                 "--workdir", str(short_dir / "w")])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "stopped cleanly" in printed
    rows = [orjson.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 2
    for row in rows:
        assert row["rss_mib"] > 0 and row["fds"] > 0 and row["predicts"] > 0 and row["p99_ms"] >= row["p50_ms"]
    assert rows[-1]["ingested"] > rows[0]["ingested"] and rows[-1]["events"] > 0
