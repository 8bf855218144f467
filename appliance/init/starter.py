"""`appliance init`: read a user's events and write a commented starter config.

The guesses come from one pass over the file (`stream_profile`), not from names alone:

- entity keys are fields whose values recur across events with a moderate number of distinct values
  (strings, or integer codes: integers whose neighbouring values are not about as frequent, as a
  quantity's are); a key with few values is also one-hot; a high-cardinality key is kept as a key;
- categoricals are strings (or booleans) with a few hundred values at most, hashed into a bucket
  count about ten times the largest one's distinct values;
- windows at up to three scales of the gaps between an entity's consecutive events: a burst (the
  quickest 1%, when quicker than random arrivals), the median gap, ten median gaps (capped by the span);
- `allowed_lateness` covers how far the file's events arrive out of order;
- the label is inline or arrives as label rows; then the horizon covers the observed delays and,
  when only one outcome is ever labelled, the default is the other.

Each guess is written with its reason as a comment.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, SourceError
from appliance.init.guess import MIN_BUCKETS, Guess, Role, Windows
from appliance.init.layout import detect_layout, read_records
from appliance.init.profile import FieldProfile, StreamProfile, profile_stream, quantile
from appliance.init.render import approx_duration, render_toml
from appliance.timeutil import format_duration

HEAD_ROWS = 5000  # rows read to find the id, the time and the label layout before the whole pass
KEY_MIN_DISTINCT = 10  # fewer values than this: a categorical, not an entity
KEY_MIN_RECURRING = 0.3  # a key's values recur: at least this share of events names an entity seen before
CODE_MIN_ROUGHNESS = 0.5  # neighbouring integers' frequencies differ by e^0.5 = 1.6x (median): a code
MAX_CATEGORIES = 200  # more distinct values than this are not one-hot (a key, if they recur)
MAX_KEYS = 6
LEAK_AUC = 0.99  # a field that alone ranks the inline label this well is probably known only with it
BINARY = frozenset({"0", "1", "true", "false", "0.0", "1.0"})
MAJORITY = 0.99  # a field is numeric (string, ...) when this share of its values are; the rest are dead letters
OPTIONAL_MIN_MISSING = 0.001  # missing in fewer events than this share: bad events, not an optional field
MAX_BUCKETS = 4096  # the most [features] hash_buckets allows
MAX_HASHED_KEY = 2 * MAX_BUCKETS  # a key with more values than this is not also one-hot (most would share a bucket)
BURST_QUANTILE = 0.01  # the burst window: the quickest 1% of an entity's returns...
RANDOM_BURST = -math.log(1 - BURST_QUANTILE)  # ...which for random (Poisson) arrivals is ~1.0% of the mean gap;
BURSTY = 0.5  # an entity's quickest 1% within half that of its own mean gap: bursts, worth a window
LONG_GAPS = 10  # the long window: about this many of an entity's median gaps
MIN_SCALE_RATIO = 3  # a window less than 3x the next shorter one adds little: dropped
LADDER = tuple(s for s in (60, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 3 * 86400,
                           7 * 86400, 14 * 86400, 30 * 86400, 90 * 86400, 180 * 86400, 365 * 86400))
AMOUNT_WORDS = ("amount", "price", "value", "total", "cost", "delay", "duration", "size", "qty", "quantity")


def read_sample(path: str, limit: int = HEAD_ROWS) -> list[dict[str, Any]]:
    """Return up to `limit` records of a JSONL or CSV file (gzip ok), numbers in CSV converted."""
    records = list(itertools.islice(read_records(path), limit))
    if not records:
        raise SourceError(f'"{path}" has no JSON objects or CSV rows to learn the fields from')
    return records


def starter_config(path: str, records: Iterable[dict[str, Any]] | None = None, config_dir: str | Path = ".") -> str:
    """Return the text of a commented `appliance.toml` for the events of `path` (or `records`)."""
    stream = iter(records if records is not None else read_records(path))
    head = list(itertools.islice(stream, HEAD_ROWS))
    layout = detect_layout(head)
    profile = profile_stream(itertools.chain(head, stream), layout)
    source, home = Path(path).resolve(), Path(config_dir).resolve()
    common = os.path.commonpath([source, home])
    spec = os.path.relpath(source, home) if common != os.path.sep else str(source)
    return render_toml(guess_config(profile), path, spec)


def write_starter(events_path: str, out: str, *, force: bool = False) -> str:
    """Write the starter config for `events_path` to `out`; return its text (warnings as "# WARNING:" lines)."""
    target = Path(out)
    if target.exists() and not force:
        raise ConfigError(f'"{out}" already exists; pass --force to overwrite it')
    if not target.parent.is_dir():
        raise ConfigError(f'folder "{target.parent}" for "{out}" does not exist; create it first')
    text = starter_config(events_path, config_dir=target.parent)
    target.write_text(text, encoding="utf-8")
    return text


def guess_config(profile: StreamProfile) -> Guess:
    """Decide every field's role, the windows, buckets, lateness and label policy from a profile."""
    guess = Guess(profile=profile)
    for name, p in profile.fields.items():
        role = _role(name, p, profile.events)
        guess.fields.append(role)
        if "key" in role.roles and len(guess.keys) < MAX_KEYS:
            guess.keys.append(name)
        elif "key" in role.roles:  # one-hot alone if it has few values, else left out
            role.roles = ["categorical"] if "one-hot" in role.roles else []
            role.why += f"; not a key: {MAX_KEYS} keys already"
        for kind, target in (("numeric", guess.numeric), ("categorical", guess.categorical)):
            if kind in role.roles:
                target.append(name)
        if "key" in role.roles and "one-hot" not in role.roles and p.distinct <= MAX_HASHED_KEY and not p.saturated:
            role.roles.append("one-hot")  # a weight, and a label rate, per value of a recurring entity
            role.why += f"; also one-hot (hashed): at most {MAX_HASHED_KEY:,} values"
        if "one-hot" in role.roles or "categorical" in role.roles:
            guess.one_hot.append(name)
        if role.optional and any(r in role.roles for r in ("key", "numeric", "categorical")):
            guess.optional.append(name)
    guess.lateness = _lateness(profile)
    guess.buckets = _buckets(guess)
    guess.collisions = {n: shared_bucket_share(profile.fields[n].distinct, guess.buckets[0]) for n in guess.one_hot}
    for key in guess.keys:
        guess.windows[key] = _windows(profile, key, guess.lateness[0])
    guess.labels = _label_policy(profile)
    guess.label_rates = _label_rates(guess)
    guess.amount = _amount(guess)
    return guess


def _role(name: str, p: FieldProfile, events: int) -> Role:
    present = p.count / max(events, 1)
    optional = present < 1.0 - OPTIONAL_MIN_MISSING
    if optional:
        missing = f"; missing in {1 - present:.1%} of events"
    elif p.count < events:
        missing = f"; missing in {events - p.count} events only: required, those are dead letters"
    else:
        missing = ""
    recurring = p.repeats / max(p.count, 1)
    per_value = p.count / max(p.distinct, 1)
    many = f"{p.distinct:,}{'+' if p.saturated else ''} values, ~{per_value:,.0f} events each"
    if p.timelike:
        return Role(name, [], "ignored: a second timestamp (the event time is another field)")
    if p.distinct <= 1 and not p.saturated:
        return Role(name, [], f"ignored: always {next(iter(p.counts), None)!r}")
    odd = f"; {p.count - max(p.numbers, p.strings, p.bools)} odd values are dead letters" \
        if max(p.numbers, p.strings, p.bools) < p.count else ""
    if p.bools >= MAJORITY * p.count:
        return Role(name, ["categorical"], "categorical: true/false" + missing + odd, optional)
    auc = _auc(p.pairs)
    if p.numbers >= MAJORITY * p.count and auc is not None and abs(auc - 0.5) >= LEAK_AUC - 0.5:
        return Role(name, [], f"ignored: it nearly decides the label on its own (ROC AUC {max(auc, 1 - auc):.3f}): "
                    "is it known only once the label is? Add it back if it is known at event time")
    if p.numbers >= MAJORITY * p.count and p.ints < p.numbers:
        return Role(name, ["numeric"], f"numeric: {p.distinct:,} values, not all integers" + missing + odd, optional)
    if p.numbers >= MAJORITY * p.count:
        rough = p.roughness()
        dense = p.density() >= 0.9
        code = rough >= CODE_MIN_ROUGHNESS and not (p.clock and p.hundreds) and not dense
        if code and p.distinct >= KEY_MIN_DISTINCT and per_value >= 3 and recurring >= KEY_MIN_RECURRING:
            return Role(name, ["key"], f"key: an integer code ({many}; neighbouring numbers differ in frequency "
                        f"{math.exp(rough):.1f}x, as codes do, not as quantities)" + missing, optional)
        shape = ("a clock time HHMM" if p.clock and p.hundreds
                 else f"{p.distinct:,} integer values, filling {p.low:g}..{p.high:g}: an ordinal" if dense
                 else f"{p.distinct:,} integer values")
        return Role(name, ["numeric"], f"numeric: {shape}" + missing + odd, optional)
    if p.strings + p.numbers < MAJORITY * p.count:
        return Role(name, [], "ignored: neither numbers nor strings throughout")
    roles = []
    if p.distinct >= KEY_MIN_DISTINCT and recurring >= KEY_MIN_RECURRING and per_value >= 2:
        roles.append("key")
    if p.distinct <= MAX_CATEGORIES and not p.saturated:
        roles.append("one-hot" if roles else "categorical")
    if not roles:
        return Role(name, [], f"ignored: {many}, {1 - recurring:.0%} of events bring a value never seen before "
                    "(free text or another id); neither a recurring entity nor a category")
    why = {("key",): f"key: {many}; {recurring:.0%} of events name one seen before",
           ("key", "one-hot"): f"key + one-hot: {many}; {recurring:.0%} of events name one seen before",
           ("categorical",): f"categorical: {p.distinct} values"}[tuple(roles)]
    return Role(name, roles, why + missing, optional)


def _lateness(profile: StreamProfile) -> tuple[float, str]:
    if profile.late_rows == 0:
        return 300.0, "the file is in time order; 5m leaves room for a live source's disorder"
    share = profile.late_rows / max(profile.events, 1)
    q = max(0.0, 1.0 - 0.001 * profile.events / profile.late_rows)
    worst = max(profile.lateness)
    wanted = min(quantile(profile.lateness, q) or 0.0, 86400.0)
    chosen = _ceil(max(wanted, 60.0))
    why = (f"{profile.late_rows:,} events ({share:.1%}) arrive after a later one, by up to "
           f"{approx_duration(worst)}; this covers all but 0.1% of events")
    if worst > chosen:
        why += "; later ones are dead letters (sort the file by time to keep them)"
    if share > 0.05:
        why = f"SORT THE FILE BY TIME: {why}"
    return chosen, why


def _buckets(guess: Guess) -> tuple[int, str]:
    sizes = {n: guess.profile.fields[n].distinct for n in guess.one_hot}
    if not sizes:
        return MIN_BUCKETS, "no categorical field"
    widest = max(sizes, key=lambda n: sizes[n])
    wanted = 1 << max(0, math.ceil(math.log2(10 * sizes[widest])))
    buckets = min(MAX_BUCKETS, max(MIN_BUCKETS, wanted))
    why = (f'the widest, "{widest}", has {sizes[widest]:,} values: ~10x that as a power of two keeps nine in '
           "ten values in a bucket of their own")
    return buckets, why if buckets >= wanted else why + f", but {MAX_BUCKETS} is the most allowed"


def shared_bucket_share(distinct: int, buckets: int) -> float:
    """The expected share of a field's values that share their hash bucket with another value.

    >>> round(shared_bucket_share(13, 128), 3), round(shared_bucket_share(4000, 4096), 2)
    (0.09, 0.62)
    """
    return 1.0 - (1.0 - 1.0 / buckets) ** max(distinct - 1, 0)


def _label_rates(guess: Guess) -> tuple[bool, str]:
    if guess.labels.get("task") != "classification":
        return False, ("a value's mean label (true: on) made movielens worse in bench learning (served MAE "
                       "0.7646 -> 0.7859): classification only in init")
    return True, ("each one-hot value's share of positive labels so far (smoothed towards the overall share) "
                  "and the share in the last ~100 labels: what serves follows the labels between publications")


def _windows(profile: StreamProfile, key: str, lateness: float) -> Windows:
    """Windows at up to three scales of one key's own gaps: a burst, its typical pace, a long horizon.

    The burst scale is the quickest 1% of an entity's returns (BURST_QUANTILE): a short run of
    events far quicker than the entity's median gap, which a window at the median averages away.
    It is kept only when, measured against each entity's own mean gap (so that busy and quiet
    entities mixed do not look bursty), the quickest 1% come under half as fast as random (Poisson)
    arrivals' would (1.0% of the mean gap): otherwise a window that short mostly counts 0 or 1.
    Scales land on the LADDER, never below the allowed lateness (a shorter window would miss a late
    event's oldest buckets), the long one within a quarter of the file's span; the burst or the long
    scale within MIN_SCALE_RATIO of the usual one is dropped as adding nothing.
    """
    p = profile.fields[key]
    burst, typical = quantile(p.gaps, BURST_QUANTILE), quantile(p.gaps, 0.5)
    if not burst or not typical:
        burst = typical = profile.span * p.distinct / max(p.count, 1) or 3600.0
        seen = f"about {approx_duration(typical)} between an entity's events (span x values / events)"
    else:
        seen = (f"an entity's next event comes after a median {approx_duration(typical)}, "
                f"{BURST_QUANTILE:.0%} within {approx_duration(burst)}")
    relative = quantile(p.relative_gaps(), BURST_QUANTILE)  # the quickest 1%, over each entity's mean gap
    bursty = relative is not None and relative < BURSTY * RANDOM_BURST
    if relative is not None:
        seen += (f"; its quickest 1% within {relative:.2%} of its own mean gap ({'under' if bursty else 'not under'} "
                 f"half random arrivals' {RANDOM_BURST:.1%}: {'bursts' if bursty else 'no burst window'})")
    floor = max(lateness, 60.0)
    cap = _floor(profile.span / 4) if profile.span > 0 else _ceil(floor)
    usual = _ceil(max(typical, floor))
    long = min(_ceil(LONG_GAPS * typical), cap)
    quick = _ceil(max(burst, floor))
    scales = [(usual, "the usual pace")]
    if long >= MIN_SCALE_RATIO * usual:
        scales.append((long, "about ten events (at most a quarter of the span)"))
    if bursty and MIN_SCALE_RATIO * quick <= usual:
        scales.insert(0, (quick, "a burst"))
    reasons = [f"{format_duration(seconds)} {reason}" for seconds, reason in scales]
    return Windows(tuple(seconds for seconds, _ in scales), f"{seen}: " + ", ".join(reasons))


def _label_policy(profile: StreamProfile) -> dict[str, Any]:
    layout = profile.layout
    seen = profile.label_values
    total = sum(seen.values())
    binary_share = sum(n for v, n in seen.items() if v in BINARY) / max(total, 1)
    numeric_share = sum(n for v, n in seen.items() if _is_number(v)) / max(total, 1)
    binary = total > 0 and binary_share >= MAJORITY
    values = {v: n for v, n in seen.items() if v in BINARY} if binary else seen
    task = "classification" if binary or total == 0 or numeric_share < MAJORITY else "regression"
    policy: dict[str, Any] = {"values": values, "task": task, "horizon": None, "default": "drop"}
    if layout.label_field is None:
        policy["why"] = "no label field found; set [event] label (and task)"
        return policy
    if not binary and task == "classification":
        policy["why"] = (f'LABEL NOT BINARY: "{layout.label_field}" has {len(seen)}{"+" if len(seen) >= 1000 else ""} '
                         "values that are not numbers; the appliance learns a binary label (true/false, 1/0) or a "
                         "number: map it (e.g. one class against the rest) before replaying")
        return policy
    if not layout.separate_labels:
        policy["why"] = f'each event carries its label in "{layout.label_field}": learned as soon as it is scored'
        return policy
    delays = profile.delays
    if delays:
        p50, p99, worst = quantile(delays, 0.5), quantile(delays, 0.99), max(delays)
        policy["horizon"] = _ceil(max(p99 or 0.0, 60.0))
        policy["why"] = (f"{len(delays):,} labels matched to their events: delay p50 {approx_duration(p50)}, p99 {approx_duration(p99)}, "
                         f"max {approx_duration(worst)}; the horizon covers 99%")
    else:
        policy["horizon"] = 7 * 86400.0
        policy["why"] = "no label could be matched to its event's time; 7d is a guess"
    if binary and len({v in ("1", "true", "1.0") for v in values}) == 1 and profile.labels < profile.events / 2:
        positive = next(iter(values)) in ("1", "true", "1.0")
        policy["default"] = 0 if positive else 1
        policy["default_why"] = (f"only {'positive' if positive else 'negative'} labels arrive ({profile.labels:,} "
                                 f"for {profile.events:,} events): no label by the horizon means the other outcome")
    return policy


def _auc(pairs: list[tuple[float, bool]]) -> float | None:
    """ROC AUC of a value as a score for the inline label (ties share their ranks), None if one class."""
    positives = sum(label for _, label in pairs)
    negatives = len(pairs) - positives
    if positives == 0 or negatives == 0:
        return None
    ordered = sorted(pairs)
    rank_sum, i = 0.0, 0
    while i < len(ordered):
        j = i
        while j < len(ordered) and ordered[j][0] == ordered[i][0]:
            j += 1
        rank = (i + j + 1) / 2  # average of ranks i+1 .. j
        rank_sum += rank * sum(label for _, label in ordered[i:j])
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _amount(guess: Guess) -> tuple[str | None, str]:
    fields = guess.profile.fields
    numeric = [n for n in guess.numeric if not (fields[n].clock and fields[n].hundreds)]
    named = [n for n in numeric if any(word in n.lower() for word in AMOUNT_WORDS)]
    if named:
        return named[0], "its name says it is an amount"
    if numeric:
        richest = max(numeric, key=lambda n: guess.profile.fields[n].distinct)
        return richest, "the numeric field with the most distinct values"
    return None, ""


def _ceil(seconds: float) -> float:
    return next((s for s in LADDER if s >= seconds), LADDER[-1])


def _floor(seconds: float) -> float:
    return max((s for s in LADDER if s <= seconds), default=LADDER[0])


