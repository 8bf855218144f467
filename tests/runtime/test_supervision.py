"""`FlowSupervisor`'s decisions: the restart budget over a window, the back-off, poison items."""

from __future__ import annotations

from appliance.engine.items import ItemRef
from appliance.runtime.supervision import MAX_DELAY, POISON_AFTER, WINDOW, FlowSupervisor, describe


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restarts_back_off_and_stop_past_the_budget():
    clock = Clock()
    supervisor = FlowSupervisor(max_restarts=3, clock=clock)
    delays = [supervisor.failed(RuntimeError(f"boom {i}"), None) for i in range(3)]
    assert [d.restart for d in delays] == [True, True, True]
    assert [d.delay for d in delays] == [0.0, 1.0, 2.0]
    final = supervisor.failed(RuntimeError("boom 3"), None)
    assert not final.restart
    assert final.reason == "the dataflow failed 4 times within 10 minutes (at most 3 restarts); last: RuntimeError: boom 3"
    assert supervisor.restarts == 3 and [f.error for f in supervisor.failures][:2] == ["RuntimeError: boom 3",
                                                                                      "RuntimeError: boom 2"]


def test_restarts_older_than_the_window_no_longer_count():
    clock = Clock()
    supervisor = FlowSupervisor(max_restarts=1, clock=clock)
    assert supervisor.failed(RuntimeError("a"), None).restart
    clock.now += WINDOW + 1
    assert supervisor.failed(RuntimeError("b"), None).delay == 0.0  # a fresh window: at once again
    assert not supervisor.failed(RuntimeError("c"), None).restart


def test_the_delay_is_capped():
    supervisor = FlowSupervisor(max_restarts=100, clock=Clock())
    delays = [supervisor.failed(RuntimeError("x"), None).delay for _ in range(12)]
    assert max(delays) == MAX_DELAY and delays[-1] == MAX_DELAY


def test_zero_restarts_stops_on_the_first_failure():
    assert not FlowSupervisor(max_restarts=0, clock=Clock()).failed(RuntimeError("x"), None).restart


def test_an_item_failed_on_twice_is_poisoned_with_the_error():
    supervisor = FlowSupervisor(max_restarts=10, clock=Clock())
    item, other = ItemRef("inbox", 120), ItemRef("inbox", 300)
    supervisor.failed(ValueError("bad"), item)
    supervisor.failed(ValueError("bad"), other)
    assert supervisor.poisoned == {}
    for _ in range(POISON_AFTER - 1):
        supervisor.failed(ValueError("bad again"), item)
    assert list(supervisor.poisoned) == [item]
    assert supervisor.poisoned[item].startswith(f"the engine failed on this item {POISON_AFTER} times (ValueError: bad again)")
    supervisor.resumed({"inbox": 100})
    stats = supervisor.stats()
    assert stats["poisoned"] == [{"source": "inbox", "offset": 120, "reason": supervisor.poisoned[item]}]
    assert stats["failures"][0]["resumed_at"] == {"inbox": 100} and stats["failures"][1]["resumed_at"] is None


def test_describe_names_the_root_cause_bytewax_wrapped():
    try:
        try:
            raise KeyError("k")
        except KeyError as inner:
            raise RuntimeError("(src/operators.rs:206:80): error calling `mapper`") from inner
    except RuntimeError as outer:
        assert describe(outer) == "KeyError: 'k'"
    assert describe(MemoryError()) == "MemoryError"
