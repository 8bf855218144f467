"""The cycle collector while the flow runs: tuned in the appliance's own process, given back after."""

from __future__ import annotations

import gc
import json

from appliance.runtime.app import Appliance, RunOptions
from appliance.runtime.settings import resolve_config
from tests.conftest import make_stream, write_config


def _replay(short_dir, own_process: bool) -> list[tuple]:
    source = short_dir / "events.jsonl"
    source.write_text("\n".join(json.dumps(e) for e in make_stream(300)) + "\n")
    config = resolve_config(str(write_config(short_dir, source)), None, db=str(short_dir / f"{own_process}.db"))
    seen: list[tuple] = []
    options = RunOptions(serve=False, fresh=True, own_process=own_process,
                         on_tick=lambda _app: seen.append((gc.get_threshold(), gc.get_freeze_count())))
    Appliance(config, options).run()
    return seen


def test_the_appliances_own_process_freezes_the_start_and_gets_its_collector_back(short_dir):
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    seen = _replay(short_dir, own_process=True)
    assert seen and all(threshold == (50_000, 50, 100) and frozen > 0 for threshold, frozen in seen)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    embedded = _replay(short_dir, own_process=False)  # an embedding's collector is left alone
    assert embedded and all(state == (before, 0) for state in embedded)


def test_a_long_lived_process_settles_its_collector_as_the_flows_process_does():
    """`settle_collector` (a serving child calls it once its start is built): what exists is frozen,
    young collections are rare; in a fresh interpreter, so this test process's collector is untouched."""
    import subprocess
    import sys

    code = ("import gc; from appliance.processes import settle_collector; before = gc.get_freeze_count(); "
            "settle_collector(); print(gc.get_threshold(), before, gc.get_freeze_count() > 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(")")
    assert out[0] + ")" == "(50000, 50, 100)"
    assert out[1].split() == ["0", "True"]
