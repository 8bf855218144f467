"""`appliance bench drift`: the drift policy on River's synthetic streams with known change points.

Each case is one stream (a River generator switched, or starting to drift, at a known event), one
label timing (inline with the event, or arriving `delay` events later as separate label events),
one champion model and one lifecycle run:

* "no detection": the detector never alerts (its warm-up never ends);
* "alert only": alerts, no automatic action;
* "policy": on concept drift a fresh challenger starts, automatic promotion and rollback on;
* (full plan) the same policy with `warm_start_from = "change"`: the challenger learns only the
  examples after the detector's estimate of the change (the default for a while during issue 15).

Every run drives the real `Engine` (features, served model, shadow candidates, label join,
publication gate, drift detector, policy) with events parsed by `events.parse_event`, the way
`appliance replay` feeds it, and scores what served: the accuracy of the served version's
prediction for each event, before the change, in the first `after` events after it, and over the
last `after` events (recovery). Events are one minute apart in event time, so `alert_cooldown`
(one day by default) is 1,440 events. Stationary streams (no change) count false alarms.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

T0 = 1_767_225_600.0
STEP = 60.0  # event time between two events
RUNS = ("no detection", "alert only", "policy")
SINCE_CHANGE = "policy, warm start since the change"  # the policy with `warm_start_from = "change"`
MODELS = {
    "linear": "preprocessing.StandardScaler() | linear_model.LogisticRegression()",
    "hoeffding": "tree.HoeffdingTreeClassifier()",
    "adaptive": "tree.HoeffdingAdaptiveTreeClassifier(seed=1)",
    "onnx": "preprocessing.StandardScaler() | linear_model.LogisticRegression()",  # the learner beside it
}
ONNX_TRAIN = 1000  # events the frozen ONNX champion is fitted on (the stream's first, before the change)


@dataclass(frozen=True)
class Plan:
    """What to run: scenario, label timing and model names, sizes and seed."""

    scenarios: tuple[str, ...]
    labels: tuple[str, ...] = ("immediate", "delayed")
    models: tuple[str, ...] = tuple(MODELS)
    runs: tuple[str, ...] = RUNS
    events: int = 10_000
    after: int = 1000  # events in the "right after" and "recovery" segments
    delay: int = 500  # events between an event and its label, with delayed labels
    seed: int = 42
    stationary: tuple[str, ...] = ()  # streams without a change, for the false-alarm rate
    stationary_events: int = 20_000


FULL = Plan(scenarios=("agrawal-abrupt", "sea-abrupt", "hyperplane", "rbf-drift", "cds-abrupt", "cds-gradual"),
            runs=(*RUNS, SINCE_CHANGE),
            stationary=("agrawal-stationary", "sea-stationary", "hyperplane-stationary", "rbf-stationary"))
QUICK = Plan(scenarios=("agrawal-abrupt",), labels=("immediate",), models=("hoeffding",), events=3000, after=500,
             stationary=("sea-stationary",), stationary_events=3000)


def stream(name: str, n: int, seed: int) -> tuple[Iterator[tuple[dict, Any]], int | None]:
    """River's generator for scenario `name`: (x, y) pairs and the event of the change (None: none)."""
    from river.datasets import synth

    half = n // 2
    cds = synth.ConceptDriftStream
    def switch(before: Any, after: Any) -> Iterator[tuple[dict, Any]]:  # an abrupt change at `half`
        return itertools.chain(before.take(half), after.take(n - half))

    makers: dict[str, Callable[[], tuple[Any, int | None]]] = {
        "agrawal-abrupt": lambda: (switch(synth.Agrawal(0, seed=seed), synth.Agrawal(2, seed=seed + 1)), half),
        "sea-abrupt": lambda: (switch(synth.SEA(1, noise=0.1, seed=seed), synth.SEA(2, noise=0.1, seed=seed + 1)),
                               half),
        "hyperplane": lambda: (switch(synth.Hyperplane(seed=seed), synth.Hyperplane(seed=seed + 1, mag_change=0.001)),
                               half),
        "rbf-drift": lambda: (switch(synth.RandomRBF(seed_model=seed, seed_sample=seed),
                                     synth.RandomRBFDrift(seed_model=seed, seed_sample=seed + 1, change_speed=0.001)),
                              half),
        # River's own mixer: the new concept's share follows a sigmoid of width `width` around `half`
        "cds-abrupt": lambda: (cds(position=half, width=max(50, n // 100), seed=seed).take(n), half),
        "cds-gradual": lambda: (cds(position=half, width=n // 5, seed=seed).take(n), half),
        "agrawal-stationary": lambda: (synth.Agrawal(0, seed=seed, perturbation=0.2).take(n), None),
        "sea-stationary": lambda: (synth.SEA(1, noise=0.3, seed=seed).take(n), None),
        "hyperplane-stationary": lambda: (synth.Hyperplane(seed=seed, noise_percentage=0.3).take(n), None),
        "rbf-stationary": lambda: (synth.RandomRBF(seed_model=seed, seed_sample=seed).take(n), None),
    }
    if name not in makers:
        raise KeyError(f'unknown scenario "{name}"; known: {", ".join(sorted(makers))}')
    generator, change = makers[name]()
    return iter(generator), change


def events(pairs: Iterator[tuple[dict, Any]], labels: str, delay: int) -> Iterator[dict]:
    """JSON-like events (one a minute), each with its label inline or `delay` events later."""
    waiting: list[tuple[int, dict]] = []
    i = -1
    for i, (x, y) in enumerate(pairs):
        event = {"type": "sample", "event_id": f"e{i}", "ts": T0 + i * STEP,
                 **{f"x{k}" if isinstance(k, int) else str(k): float(v) for k, v in x.items()}}
        if labels == "immediate":
            event["label"] = int(bool(y))
        else:
            waiting.append((i, {"type": "label", "event_id": f"e{i}", "label": int(bool(y))}))
        yield event
        while waiting and waiting[0][0] <= i - delay:
            j, label = waiting.pop(0)
            yield {**label, "ts": T0 + (j + delay) * STEP + 1.0}
    for j, label in waiting:
        yield {**label, "ts": T0 + max(j + delay, i) * STEP + 1.0}


def config_for(fields: list[str], spec: str, delay: int, lifecycle: Any) -> Any:
    """A config over the generator's fields as they are (no aggregates), labels awaited 2x `delay` minutes."""
    from appliance.config.file import config_from_dict

    config = config_from_dict({
        "event": {"numeric": fields, "allowed_lateness": "1h"},
        "labels": {"horizon": f"{max(1, 2 * delay)}m"},
        "model": {"task": "classification", "spec": spec},
        "features": {"numeric": fields}})
    return replace(config, lifecycle=lifecycle)


def lifecycle_for(run: str) -> Any:
    from appliance.config.lifecycle import Lifecycle

    base = Lifecycle()
    if run in ("policy", SINCE_CHANGE):
        policy = replace(base, on_concept_drift="challenger", auto_promote=True, auto_rollback=True)
        return replace(policy, warm_start_from="change") if run == SINCE_CHANGE else policy
    quiet = replace(base, on_concept_drift="alert", auto_promote=False, auto_rollback=False)
    return replace(quiet, drift_warmup=10**12) if run == "no detection" else quiet


@dataclass
class Outcome:
    """What one run did and how the served predictions scored."""

    correct: list[bool] = field(default_factory=list)  # by event index
    alerts: list[float] = field(default_factory=list)  # event times of concept-drift alerts
    actions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def run_case(scenario: str, labels: str, model: str, run: str, plan: Plan, n: int | None = None) -> tuple[Outcome, int | None]:
    """Replay one generated stream through a real Engine; return what served and the change point."""
    from appliance.engine.core import Engine
    from appliance.engine.items import EventItem, LabelItem
    from appliance.ingest.events import Label, parse_event

    n = n or plan.events
    pairs, change = stream(scenario, n, plan.seed)
    raw = list(events(pairs, labels, plan.delay))
    fields = sorted(k for k in raw[0] if k not in ("type", "event_id", "ts", "label"))
    config = config_for(fields, MODELS[model], plan.delay if labels == "delayed" else 1, lifecycle_for(run))
    engine = Engine(config)
    if model == "onnx":
        serve_onnx(engine, raw[:ONNX_TRAIN * (2 if labels == "delayed" else 1)], fields)
    started = time.perf_counter()
    scores: dict[str, float] = {}
    out = Outcome(correct=[False] * n)
    seen = [False] * n
    for offset, item in enumerate(raw, start=1):
        parsed = parse_event(item, config.event, "classification")
        if isinstance(parsed, Label):
            engine.process(LabelItem("bench", offset, parsed))
        else:
            engine.process(EventItem("bench", offset, parsed))
        if offset % 500 == 0 or offset == len(raw):
            collect(engine.take_rows(), scores, out, seen)
    out.seconds = time.perf_counter() - started
    if not all(seen):
        raise RuntimeError(f"{scenario}/{labels}/{model}/{run}: {seen.count(False)} events never got their label")
    return out, change


def collect(rows: dict[str, list], scores: dict[str, float], out: Outcome, seen: list[bool]) -> None:
    for row in rows["predictions"]:
        scores[row["event_id"]] = row["score"]
    for row in rows["labels"]:
        index = int(row["event_id"][1:])
        out.correct[index] = (scores.pop(row["event_id"]) >= 0.5) == bool(row["label"])
        seen[index] = True
    out.alerts += [row["event_ts"] for row in rows["alerts"] if row["kind"] == "concept"]
    for row in rows["audit"]:
        if row["actor"] == "policy" and row["action"] in ("challenger", "promote", "rollback"):
            out.actions[row["action"]] = out.actions.get(row["action"], 0) + 1


def serve_onnx(engine: Any, raw: list[dict], fields: list[str]) -> None:
    """Fit a logistic regression offline on the first labelled events, serve it as a frozen champion."""
    from appliance.engine.control import Promote
    from appliance.engine.items import ControlItem
    from appliance.offline.train import train

    labelled = {e["event_id"]: e.get("label") for e in raw if e["type"] == "label"}
    rows = [{**e, "label": e.get("label", labelled.get(e["event_id"]))} for e in raw if e["type"] == "sample"]
    rows = [r for r in rows if r["label"] is not None][:ONNX_TRAIN]
    onnx, _ = train(rows, fields, "classification", "logistic", holdout=0.0)
    published = engine.model.register(onnx, "onnx logistic", len(rows), {}, None, candidate="import")
    engine.process(ControlItem("bench", None, Promote(version=published.version, actor="bench")))
    engine.take_rows()


def segment(correct: list[bool], start: int, stop: int) -> float | None:
    part = correct[max(0, start):max(0, stop)]
    return round(sum(part) / len(part), 4) if part else None


def summarise(scenario: str, labels: str, model: str, run: str, out: Outcome, change: int | None,
              plan: Plan) -> dict[str, Any]:
    n, after = len(out.correct), plan.after
    alerts_at = [round((ts - T0) / STEP) for ts in out.alerts]
    row: dict[str, Any] = {"scenario": scenario, "labels": labels, "model": model, "run": run, "events": n,
                           "change_at": change, "alerts": len(alerts_at), "seconds": round(out.seconds, 1),
                           "challengers": out.actions.get("challenger", 0),
                           "promotions": out.actions.get("promote", 0), "rollbacks": out.actions.get("rollback", 0)}
    if change is None:
        row["alerts_per_10k"] = round(len(alerts_at) * 10_000 / n, 2)
        row["accuracy"] = segment(out.correct, 0, n)
        return row
    later = [i - change for i in alerts_at if i >= change]
    row.update({"alerts_before_change": sum(1 for i in alerts_at if i < change),
                "alert_delay": later[0] if later else None,
                "before": segment(out.correct, change - after, change),
                "right_after": segment(out.correct, change, change + after),
                "recovery": segment(out.correct, n - after, n),
                "mean_after": segment(out.correct, change, n)})
    return row


def run(plan: Plan, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every case of `plan`; the rows, the false-alarm rows and the machine."""
    from appliance.bench.measure import machine

    rows, stationary = [], []
    for scenario in plan.scenarios:
        for labels in plan.labels:
            for model in plan.models:
                for name in plan.runs:
                    out, change = run_case(scenario, labels, model, name, plan)
                    rows.append(summarise(scenario, labels, model, name, out, change, plan))
                    log(format_row(rows[-1]))
    for scenario in plan.stationary:
        for model in plan.models:
            out, _ = run_case(scenario, "immediate", model, "alert only", plan, plan.stationary_events)
            stationary.append(summarise(scenario, "immediate", model, "alert only", out, None, plan))
            log(f"{scenario} {model}: {stationary[-1]['alerts']} alerts in {plan.stationary_events} events")
    return {"plan": {"events": plan.events, "after": plan.after, "delay": plan.delay, "seed": plan.seed,
                     "stationary_events": plan.stationary_events},
            "rows": rows, "stationary": stationary, "machine": machine()}


def format_row(row: dict[str, Any]) -> str:
    return " | ".join(str(row.get(k, "")) for k in COLUMNS)


COLUMNS = ("scenario", "labels", "model", "run", "alert_delay", "alerts_before_change", "alerts", "before",
           "right_after", "recovery", "mean_after", "challengers", "promotions", "rollbacks")
STATIONARY_COLUMNS = ("scenario", "model", "events", "alerts", "alerts_per_10k", "accuracy")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def format_table(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per stream, label timing and model, the runs side by side
    ("a / b / c" in the order of the header), then the false alarms on stationary streams."""
    cases: dict[tuple, dict[str, dict]] = {}
    for row in report["rows"]:
        cases.setdefault((row["scenario"], row["labels"], row["model"]), {})[row["run"]] = row
    runs = list(dict.fromkeys(row["run"] for row in report["rows"]))
    head = " / ".join(runs)
    header = ["scenario", "labels", "model", "alert delay", "alerts before change", "before",  # of "alert only"
              f"right after: {head}", f"recovery: {head}", f"mean after: {head}",
              "challengers / promotions / rollbacks (policy runs)"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for (scenario, labels, model), by_run in cases.items():
        alerted = by_run.get("alert only") or next(iter(by_run.values()))
        acts = " ; ".join(f"{r['challengers']} / {r['promotions']} / {r['rollbacks']}" for name, r in by_run.items()
                          if name not in ("no detection", "alert only"))
        cells = [scenario, labels, model, _fmt(alerted["alert_delay"]), _fmt(alerted["alerts_before_change"]),
                 _fmt(alerted["before"])]
        cells += [" / ".join(_fmt(by_run[run].get(key)) for run in runs if run in by_run)
                  for key in ("right_after", "recovery", "mean_after")]
        lines.append("| " + " | ".join(cells + [acts or "-"]) + " |")
    if report["stationary"]:
        lines += ["", "| " + " | ".join(STATIONARY_COLUMNS) + " |", "|" + " --- |" * len(STATIONARY_COLUMNS)]
        lines += ["| " + " | ".join(_fmt(row.get(k)) for k in STATIONARY_COLUMNS) + " |" for row in report["stationary"]]
    return "\n".join(lines)
