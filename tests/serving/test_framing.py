"""`Lines`, the framing every connection shares: however the bytes are cut into reads, the same lines."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.serving.framing import TOO_LONG, Lines

LIMIT = 16


def reference(stream: bytes, limit: int) -> list:
    """What the rules say, read off the whole stream at once: lines (blank ones skipped), and
    TOO_LONG for each line over `limit` + 1 bytes; the unterminated rest is the last line."""
    out: list = []
    for line in stream.split(b"\n"):
        if len(line) > limit + 1:
            out.append(TOO_LONG)
        elif line.strip():
            out.append(line)
    return out


def taken(chunks: list[bytes], limit: int) -> list:
    """Feed `chunks` one read at a time, taking every line after each; then the end of file."""
    lines = Lines()
    out: list = []
    for chunk in chunks:
        lines.feed(chunk)
        while (line := lines.take(limit, ended=False)) is not None:
            out.append(line if line is TOO_LONG else bytes(line))
        lines.compact()
        assert lines.unread <= limit + 1 + len(chunk)  # never more than a line's worth of a long line kept
    while (line := lines.take(limit, ended=True)) is not None:
        out.append(line if line is TOO_LONG else bytes(line))
    return out


streams = st.lists(st.one_of(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), st.just(b" "),
                             st.just(b"")), max_size=12).map(lambda parts: b"\n".join(parts))


@settings(max_examples=400, deadline=None)
@given(stream=streams, cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=8))
def test_any_cutting_into_reads_takes_the_lines_the_whole_stream_holds(stream, cuts):
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in zip(points, points[1:])]
    assert taken(chunks, LIMIT) == reference(stream, LIMIT)


def test_a_line_without_end_is_reported_once_and_its_bytes_dropped():
    lines = Lines()
    reports = 0
    for _ in range(1000):  # 1 MB of one line, read 1 KB at a time
        lines.feed(b"x" * 1024)
        while (line := lines.take(LIMIT, ended=False)) is not None:
            assert line is TOO_LONG
            reports += 1
        lines.compact()
        assert lines.unread <= LIMIT + 1
    lines.feed(b"x\n" + b'{"op": "health"}\n')
    assert lines.take(LIMIT, ended=False) == b'{"op": "health"}'
    assert reports == 1


def test_the_rest_handed_over_is_what_was_not_taken():
    lines = Lines()
    lines.feed(b'{"op": "watch"}\n{"op": "stats"}\n{"op": "he')
    assert lines.take(100, ended=False) == b'{"op": "watch"}'
    assert lines.rest() == b'{"op": "stats"}\n{"op": "he'
    assert lines.unread == 0 and lines.take(100, ended=True) is None
