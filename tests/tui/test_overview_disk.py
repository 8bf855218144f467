"""The overview's store and disk figures, from a `stats` reply's `disk` (rendered by Rich, no app)."""

from __future__ import annotations

from rich.console import Console as RichConsole

from tui.panels import overview_figures


def rendered(stats: dict) -> str:
    console = RichConsole(width=160, record=True)
    console.print(overview_figures(stats))
    return console.export_text()


def test_the_overview_shows_the_store_size_growth_and_time_until_the_disk_is_full():
    disk = {"store_bytes": 52_400_000, "disk_free": 7_200_000_000, "growth_bytes_per_s": 2_000.0,
            "seconds_until_full": 3_600_000.0, "state": "ok"}
    text = rendered({"disk": disk})
    assert "52.4 MB" in text and "2,000 B/s" in text and "7,200.0 MB" in text and "1,000.0 h" in text
    assert "not growing" in rendered({"disk": {**disk, "growth_bytes_per_s": 0.0, "seconds_until_full": None}})
    assert "not growing" not in rendered({})  # an older appliance's reply: dashes, not a claim
