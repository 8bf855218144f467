"""The sizes of one `appliance bench` run: `FULL` (what docs/benchmarks.md records) and `SMOKE` (CI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.bench import serve_processes, serving, staleness


@dataclass
class Plan:
    """Sizes of one run. `FULL` is what docs/benchmarks.md records; `SMOKE` runs in the tests."""

    ingest_lines: int = 20_000
    ingest_rounds: int = 5
    serving: serving.ServingPlan = field(default_factory=serving.ServingPlan)
    processes: serve_processes.ProcessesPlan = field(default_factory=serve_processes.ProcessesPlan)
    serve_speed: float = 6000.0  # event-time speed of the appliance's ingest while serving is measured
    serve_lines: int | None = None  # lines of the sample it ingests then (None: all)
    console_seconds: float = 30.0
    startup_rounds: int = 5
    recovery_lines: int | None = None  # None: the whole sample
    memory_entities: tuple[int, ...] = (100_000,)
    store_bytes: int = 10 * 10**9  # the store writer's rate measured as the store grows to this
    staleness: staleness.StalenessPlan = field(default_factory=staleness.StalenessPlan)


FULL = Plan()
SMOKE = Plan(ingest_lines=1500, ingest_rounds=2,
             serving=serving.ServingPlan(rounds=2, requests=200, warmup=20, seconds=0.5, load_warmup=0.2),
             serve_speed=3000.0, serve_lines=3000, console_seconds=1.0, startup_rounds=1, recovery_lines=1500,
             memory_entities=(2000,), store_bytes=16 * 10**6,
             processes=serve_processes.ProcessesPlan(counts=(1, 2), latency_counts=(1, 2), requests=100, warmup=10,
                                                     seconds=0.5, load_warmup=0.2, speed=3000.0, lines=1500,
                                                     switches=2, versions_wait=5.0),
             staleness=staleness.StalenessPlan(lines=1500, speed=3000.0))
