"""The order log: what the engine processed after its checkpoint is redone in the same order."""

from __future__ import annotations

from appliance.engine.items import DeadItem
from appliance.ingest.order_log import OrderLog


def items(source, offsets):
    return [DeadItem(source, offset, "{}", "") for offset in offsets]


def test_a_restart_repeats_the_recorded_interleaving_then_goes_on_in_arrival_order(tmp_path):
    path = str(tmp_path / "a.db-order")
    first = OrderLog(path, {}, ["file", "inbox"])
    assert first.order(items("file", [1, 2, 3])) == items("file", [1, 2, 3])
    assert first.order(items("inbox", [10, 20]) + items("file", [4])) == items("inbox", [10, 20]) + items("file", [4])
    first.order(items("file", [5, 6]))
    first.close()
    # Killed after a checkpoint at file=2, inbox=0: the rest is redone as it was first done, whatever
    # order the inputs deliver it in this time.
    again = OrderLog(path, {"file": 2}, ["file", "inbox"])
    assert again.order(items("file", [3, 4, 5])) == items("file", [3])  # then the inbox's turn
    assert again.order(items("inbox", [30])) == []  # not the inbox's next: 10 and 20 come first
    assert again.order(items("inbox", [10, 20])) == items("inbox", [10, 20]) + items("file", [4, 5])
    assert again.order(items("file", [6, 7])) == items("file", [6]) + items("inbox", [30]) + items("file", [7])
    assert again.order(items("inbox", [40])) == items("inbox", [40])
    assert again.replayed == 6
    again.close()
    # What was recorded after the plan is the plan of the next restart.
    third = OrderLog(path, {"file": 6, "inbox": 20}, ["file", "inbox"])
    assert list(third.plan) == [("inbox", 30, 30), ("file", 7, 7), ("inbox", 40, 40)]
    third.close()


def test_a_torn_last_line_and_an_input_no_longer_read_are_dropped(tmp_path):
    path = tmp_path / "a.db-order"
    path.write_bytes(b"old.jsonl\t1\t5\nfile\t1\t3\ninbox\t7\t9\nfile\t4\t")
    log = OrderLog(str(path), {}, ["file", "inbox"])
    assert list(log.plan) == [("file", 1, 3), ("inbox", 7, 9)]
    assert path.read_bytes() == b"file\t1\t3\ninbox\t7\t9\n"  # compacted at start
    log.close()


def test_without_a_plan_items_pass_through_in_arrival_order(tmp_path):
    log = OrderLog(str(tmp_path / "o"), {"file": 100}, ["file"])
    batch = items("file", [101, 102]) + items("inbox", [5]) + items("file", [103])
    assert log.order(batch) == batch
    log.close()
    assert (tmp_path / "o").read_bytes() == b"file\t101\t102\ninbox\t5\t5\nfile\t103\t103\n"


def test_a_running_log_is_compacted_behind_a_durable_checkpoint_and_a_restart_plans_the_same(tmp_path, monkeypatch):
    from appliance.ingest import order_log

    monkeypatch.setattr(order_log, "COMPACT_BYTES", 200)
    paths = [str(tmp_path / "compacted-order"), str(tmp_path / "reference-order")]
    logs = [OrderLog(path, {}, ["file", "inbox"]) for path in paths]
    for i in range(1, 40, 2):  # alternating inputs: a line per item
        for log in logs:
            log.order(items("file", [i]) + items("inbox", [i]))
    grown = (tmp_path / "compacted-order").stat().st_size
    assert grown > 200 and logs[0].compactions == 0  # nothing durable yet: nothing may go
    logs[0].release({"file": 29, "inbox": 27})
    for log in logs:
        log.order(items("file", [41]) + items("inbox", [41]))
        log.close()
    assert logs[0].compactions == 1 and (tmp_path / "compacted-order").stat().st_size < grown
    # A crash now restarts from the durable checkpoint or a later one: same plan as without compaction.
    for offsets in ({"file": 29, "inbox": 27}, {"file": 35, "inbox": 35}):
        restarted = [OrderLog(path, offsets, ["file", "inbox"]) for path in paths]
        plans = [list(log.plan) for log in restarted]
        for log in restarted:
            log.close()
        assert plans[0] == plans[1] and plans[0][0] in (("inbox", 29, 29), ("file", 37, 37))
