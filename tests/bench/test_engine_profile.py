"""The engine profile times every phase of a real engine run on the sample and bounds what workers gain."""

from __future__ import annotations

import orjson
import pytest

from appliance.bench.engine_profile import PARTITIONABLE, profile_engine, sample_lines
from appliance.runtime.settings import resolve_config


def test_the_profile_accounts_for_the_engines_time_and_bounds_the_gain_of_workers(tmp_path):
    config = resolve_config(None, "sample", db=str(tmp_path / "x.db"), speed=0.0)
    profile = profile_engine(config, sample_lines(400))
    assert profile.items == 400 and profile.events > 350
    assert sum(profile.phases.values()) == pytest.approx(profile.seconds)
    timed = {name: s for name, s in profile.phases.items() if name != "rest"}
    assert all(s > 0 for name, s in timed.items() if name != "rows"), timed
    assert 0 < profile.partitionable < 1
    p = profile.partitionable
    assert profile.bound(2) == pytest.approx(1 / ((1 - p) + p / 2))
    assert 1 < profile.bound(2) < profile.bound(4) < 1 / (1 - p)
    assert set(PARTITIONABLE) <= set(profile.as_dict()["phases"])
    learned = profile.candidates_per_label
    assert learned and sum(learned.values()) > 0 and min(learned) >= 1
    printed = orjson.loads(orjson.dumps(profile.as_dict()))  # what `python -m appliance.bench.engine_profile` prints
    assert printed["candidates_per_label"] == {str(n): labels for n, labels in learned.items()}
