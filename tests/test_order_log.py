"""The order log: what the engine processed after its checkpoint is redone in the same order."""

from __future__ import annotations

from appliance.order_log import OrderLog


def items(source, offsets):
    return [("event", source, offset) for offset in offsets]


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
