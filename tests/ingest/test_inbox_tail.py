"""The inbox tail: every line once, at its offset, and never the whole backlog in memory."""

from __future__ import annotations

from appliance.ingest import inbox
from appliance.ingest.inbox import InboxTail


def test_a_tail_behind_a_long_backlog_holds_at_most_two_chunks_and_misses_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(inbox, "READ_AHEAD", 4096)
    path = tmp_path / "a.db-inbox"
    lines = [b'{"event": {"n": %d, "pad": "%s"}}' % (i, b"x" * (i % 97)) for i in range(5000)]
    lines.insert(2500, b'{"event": {"long": "' + b"y" * 10_000 + b'"}}')  # longer than a chunk: read whole
    path.write_bytes(b"\n".join(lines) + b"\n")
    tail = InboxTail(str(path))
    got, largest = [], 0
    while batch := tail.read(limit=16):  # the flow takes 16 at a time: it is far behind the file
        got.extend(batch)
        largest = max(largest, len(tail._buffer))
    assert [line for _, line in got] == lines
    ends = [offset for offset, _ in got]
    assert ends[-1] == path.stat().st_size and ends == sorted(ends)
    assert largest <= 2 * 4096 + 10_100  # two chunks, or one line and a chunk: not the 450 KB backlog


def test_a_tail_returns_only_complete_lines_and_resumes_from_an_offset(tmp_path):
    path = tmp_path / "a.db-inbox"
    path.write_bytes(b'{"a": 1}\n{"b": 2}\n{"c"')  # the last line is still being written
    tail = InboxTail(str(path))
    assert tail.read() == [(9, b'{"a": 1}'), (18, b'{"b": 2}')]
    assert tail.read() == []
    with open(path, "ab") as handle:
        handle.write(b': 3}\n')
    assert tail.read() == [(27, b'{"c": 3}')]
    tail.close()
    resumed = InboxTail(str(path), start=18)
    assert resumed.read() == [(27, b'{"c": 3}')]
    resumed.close()
