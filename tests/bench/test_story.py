"""`appliance story`: two real replays of one stream, with and without the policy, and the plot."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET

import orjson

from appliance.bench.story import run_story, write_svg
from appliance.config.file import config_from_dict
from tests.conftest import LEARNER, SMALL_CONFIG, flip_stream


def test_story_replays_both_runs_and_draws_them(tmp_path):
    stream = flip_stream(3000, change=1500)
    source = tmp_path / "events.jsonl"
    source.write_text("".join(orjson.dumps(event).decode() + "\n" for event in stream))
    data = copy.deepcopy(SMALL_CONFIG)
    data["model"].update({"spec": LEARNER})
    data["source"] = {"spec": str(source)}
    data["lifecycle"] = {"alert_cooldown": "1h", "drift_warmup": 200, "promote_after": 200}
    config = config_from_dict(data)
    drift_at = stream[1500]["ts"]
    story = run_story(config, tmp_path / "runs", drift_at)
    runs, figures = story["runs"], story["figures"]
    assert set(runs) == {"no policy", "policy"}
    for name in runs:
        assert runs[name]["points"] and figures[name]["first_concept_alert_hours_after_drift"] is not None
        assert figures[name]["before_drift_mean"] > figures[name]["after_drift_worst"]
    # identical until the first automatic action: the same stream in event time
    assert figures["no policy"]["before_drift_mean"] == figures["policy"]["before_drift_mean"]
    assert figures["no policy"]["challengers_started"] == 0 and figures["policy"]["challengers_started"] >= 1
    assert all(a["action"] == "alert only" for a in runs["no policy"]["alerts"])
    out = tmp_path / "story.svg"
    write_svg(story, str(out), "test")
    svg = ET.parse(out).getroot()
    lines = svg.findall("{http://www.w3.org/2000/svg}polyline")
    assert len(lines) == 2 and all(len(line.get("points").split()) == len(runs[name]["points"])
                                   for line, name in zip(lines, ("no policy", "policy")))
    assert any(t.text == "drift starts" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
