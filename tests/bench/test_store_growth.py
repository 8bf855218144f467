"""The store-growth row of `appliance bench`: the real writer grows a real store to its target size."""

from __future__ import annotations

from appliance.bench import store_growth


def test_the_store_grows_to_its_target_and_every_window_is_measured(tmp_path):
    figures = store_growth.measure(8 * 10**6, tmp_path)
    windows = figures["windows"]
    assert windows[-1]["store_bytes"] >= 8 * 10**6
    assert [w["store_bytes"] for w in windows] == sorted(w["store_bytes"] for w in windows)  # it grew each time
    assert all(w["rows"] > 0 and w["rows_per_second"] > 0 for w in windows)
    assert figures["events"] * 2 < sum(w["rows"] for w in windows) + 3 * store_growth.BATCH_EVENTS
    assert figures["ratio"] == round(figures["full_rows_per_second"] / figures["empty_rows_per_second"], 3)
    assert not list(tmp_path.iterdir())  # the store is deleted
