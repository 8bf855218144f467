"""Measurements behind `appliance bench` and docs/benchmarks.md; nothing here is asserted in tests.

* `measure`: single figures (predict round trip of a running appliance, memory per entity, ONNX
  scoring per row), the `appliance bench predict|memory|offline` commands.
* `suite`: `appliance bench` itself, every comparison of issue 6 in one run, interleaved rounds,
  printed as one table of figures and ratios (`--smoke` proves the harness end to end in CI).
* `wire`: raw-socket clients (sequential latency, N concurrent connections) for any line protocol.
* `peers`: the servers the appliance is compared with (FastAPI + uvicorn, an asyncio echo server,
  redis-server), each started as a subprocess.
* `ingest`, `lifecycle`, `console`: the ingest, start-up/recovery and console-CPU measurements.
"""

from appliance.bench.measure import (
    entity_memory,
    machine,
    offline_latency,
    payments_like_sample,
    predict_latency,
    predict_line,
)

__all__ = ["entity_memory", "machine", "offline_latency", "payments_like_sample", "predict_latency", "predict_line"]
