"""Running window totals: a window read from them is bit for bit the sum of its ring's buckets.

Hypothesis draws streams for one entity (in order, jittered, late past the ring, far ahead, values
whose float sums depend on their order, missing values) and reads every window at times around
each event (behind the newest bucket, on it, one to B+1 hops ahead). The reference is the
summation the state was read with before running totals: B ring positions folded oldest first.
"""

from __future__ import annotations

import math
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.config.file import AggregateSpec
from appliance.features.distinct_pairs import DISTINCT_CAP, count_in_window
from appliance.features.entity_codec import decode_state, encode_state
from appliance.features.entity_state import KeyLayout, _window_totals, aggregates_into, updated

AGGREGATES = [AggregateSpec("n_w1", "k", "count", 600.0), AggregateSpec("sum_w1", "k", "sum", 600.0, "v"),
              AggregateSpec("mean_w2", "k", "mean", 3600.0, "v"), AggregateSpec("std_w2", "k", "std", 3600.0, "v"),
              AggregateSpec("min_w2", "k", "min", 3600.0, "v"), AggregateSpec("max_w1", "k", "max", 600.0, "v"),
              AggregateSpec("rate_w2", "k", "rate", 3600.0)]
VALUES = st.one_of(st.integers(-400, 400).map(lambda n: n / 4), st.sampled_from([0.1, 0.2, 0.3, -0.0, 1e16, -1e16,
                                                                                  1e-16, 3.3e15, 7.0]))


def ring_sum(arr, slot, ts: float) -> tuple:
    """The window's totals summed from the ring, as the state was read before running totals."""
    current = math.floor(ts / slot.hop)
    totals = [0.0] * (1 + len(slot.stats))
    for bid in range(current - slot.buckets + 1, current + 1):
        base = slot.offset + (bid % slot.ring) * slot.stride
        if arr[base] != bid:
            continue
        first = totals[0] == 0.0
        totals[0] += arr[base + 1]
        for j, kind in enumerate(slot.stats):
            value = arr[base + 2 + j]
            if kind == "min":
                totals[1 + j] = value if first else min(totals[1 + j], value)
            elif kind == "max":
                totals[1 + j] = value if first else max(totals[1 + j], value)
            else:
                totals[1 + j] += value
    return tuple(totals)


def bits(values) -> list[bytes]:
    return [struct.pack("<d", v) for v in values]


@st.composite
def streams(draw):
    """(ts, value or None) for one entity: steps of 0 to a few windows, some events late."""
    t = 1_767_225_600.0
    out = []
    for _ in range(draw(st.integers(1, 60))):
        t += draw(st.sampled_from([0.0, 1.0, 30.0, 99.0, 150.0, 601.0, 1200.0, 4000.0]))
        shift = draw(st.sampled_from([0.0, 0.0, 0.0, -45.0, -160.0, -599.0, -2000.0]))
        out.append((t + shift, draw(st.none() | VALUES)))
    return out


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=streams(), buckets=st.integers(1, 7), lateness=st.sampled_from([0.0, 90.0, 700.0]),
       round_trip=st.integers(0, 60))
def test_window_totals_equal_the_ring_sum_bit_for_bit(stream, buckets, lateness, round_trip):
    layout = KeyLayout("k", AGGREGATES, buckets, lateness, None)
    state = None
    for i, (ts, value) in enumerate(stream):
        state = updated(layout, state, {} if value is None else {"v": value}, ts)
        if i == round_trip:  # a checkpoint in the middle: the bytes carry the running totals
            state = decode_state(encode_state(state))
        arr = state[0]
        for slot in layout.slots.values():
            for at in {ts, ts - lateness, *(ts + j * slot.hop for j in range(-2, buckets + 2))}:
                assert bits(_window_totals(arr, slot, at)) == bits(ring_sum(arr, slot, at)), (slot, at)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(stream=streams(), buckets=st.integers(1, 7))
def test_a_state_through_the_codec_reads_and_updates_like_the_one_that_never_left_memory(stream, buckets):
    layout = KeyLayout("k", AGGREGATES, buckets, 90.0, None)
    kept = travelled = None
    for ts, value in stream:
        values = {} if value is None else {"v": value}
        kept = updated(layout, kept, values, ts)
        travelled = decode_state(encode_state(updated(layout, travelled, values, ts)))
        assert bits(travelled[0]) == bits(kept[0])
        x_kept: dict = {}
        x_travelled: dict = {}
        aggregates_into(x_kept, layout, kept, ts + 30.0)
        aggregates_into(x_travelled, layout, travelled, ts + 30.0)
        assert x_kept.keys() == x_travelled.keys() and bits(x_kept.values()) == bits(x_travelled.values())


def test_a_read_k_hops_after_the_newest_bucket_drops_the_oldest_buckets():
    """A hand-checked case: 6 buckets of 100 s, one event per bucket, read as the window slides on."""
    layout = KeyLayout("k", [AggregateSpec("sum", "k", "sum", 600.0, "v")], 6, 0.0, None)
    state = None
    for i in range(6):  # buckets 0..5 hold 1, 2, 4, 8, 16, 32
        state = updated(layout, state, {"v": float(2 ** i)}, 100.0 * i + 50.0)
    slot = next(iter(layout.slots.values()))
    sums = [_window_totals(state[0], slot, 550.0 + 100.0 * k)[1] for k in range(7)]
    assert sums == [63.0, 62.0, 60.0, 56.0, 48.0, 32.0, 0.0]


@settings(max_examples=200, derandomize=True, deadline=None)
@given(stream=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 5)), max_size=60),
       buckets=st.integers(1, 7), reads=st.lists(st.integers(-3, 50), min_size=1, max_size=8))
def test_a_distinct_count_is_the_number_of_hashes_in_the_window(stream, buckets, reads):
    """The bisected slice equals a scan of every pair, whatever the read time (behind, on, past)."""
    layout = KeyLayout("k", [AggregateSpec("users", "k", "distinct", 600.0, "u")], buckets, 700.0, None)
    dslot = next(iter(layout.distinct.values()))
    state = None
    for step, user in stream:
        state = updated(layout, state, {"u": f"u{user}"}, 1_767_225_600.0 + step * dslot.hop)
        entries = state[1][0]
        for read in reads:
            ts = 1_767_225_600.0 + read * dslot.hop + 1.0
            current = math.floor(ts / dslot.hop)
            scanned = len({h for h, bid in zip(entries[0::2], entries[1::2]) if current - buckets < bid <= current})
            assert count_in_window(entries, dslot, ts) == scanned


def reference_pairs(seen: list[tuple[int, int]], ring: int) -> list[tuple[int, int]]:
    """The (hash, bucket) pairs a distinct count keeps, spelled out: one per value and bucket, in
    bucket order (a later one after the earlier ones of its bucket), none older than the newest
    bucket minus the ring, at most DISTINCT_CAP of the newest."""
    kept: list[tuple[int, int]] = []
    for pair in seen:
        if pair in kept:
            continue
        at = len(kept)
        while at and kept[at - 1][1] > pair[1]:
            at -= 1
        kept.insert(at, pair)
        kept = [p for p in kept if p[1] > kept[-1][1] - ring][-DISTINCT_CAP:]
    return kept


@settings(max_examples=300, derandomize=True, deadline=None)
@given(stream=st.lists(st.tuples(st.integers(-5, 60), st.integers(0, 200)), max_size=300),
       buckets=st.integers(1, 6), lateness=st.sampled_from([0.0, 300.0, 5000.0]))
def test_a_distinct_count_keeps_the_pairs_it_always_kept(stream, buckets, lateness):
    """The flat array of (hash, bucket) pairs holds what the spelled-out rule keeps, in that order,
    out of order and past the cap (200 values, 128 kept) alike; every state before is left as it was."""
    layout = KeyLayout("k", [AggregateSpec("users", "k", "distinct", 600.0, "u")], buckets, lateness, None)
    dslot = next(iter(layout.distinct.values()))
    state, seen, earlier, last = None, [], [], -math.inf
    for step, user in stream:
        ts = 1_767_225_600.0 + step * dslot.hop + 1.0
        if last < ts - layout.ttl:  # idle past its TTL: the entity starts afresh
            seen = []
        last = max(last, ts)
        state = updated(layout, state, {"u": f"u{user}"}, ts)
        seen.append((zlib.crc32(f"u{user}".encode()), math.floor(ts / dslot.hop)))
        pairs = state[1][0]
        earlier.append((pairs, list(pairs)))
        assert list(zip(pairs[0::2], pairs[1::2])) == reference_pairs(seen, dslot.ring)
    assert all(list(pairs) == copied for pairs, copied in earlier)  # replaced, never changed in place


def test_a_distinct_count_keeps_the_newest_pairs_up_to_its_cap():
    """200 values in one window: the newest DISTINCT_CAP pairs stay, so the count is a lower bound."""
    layout = KeyLayout("k", [AggregateSpec("users", "k", "distinct", 600.0, "u")], 6, 0.0, None)
    dslot = next(iter(layout.distinct.values()))
    state, seen = None, []
    for user in range(200):
        ts = 1_767_225_600.0 + (user // 40) * dslot.hop + 1.0  # 40 values in each of 5 buckets
        state = updated(layout, state, {"u": f"u{user}"}, ts)
        seen.append((zlib.crc32(f"u{user}".encode()), math.floor(ts / dslot.hop)))
    pairs = state[1][0]
    assert list(zip(pairs[0::2], pairs[1::2])) == seen[-DISTINCT_CAP:] == reference_pairs(seen, dslot.ring)
    assert count_in_window(pairs, dslot, ts) == DISTINCT_CAP
