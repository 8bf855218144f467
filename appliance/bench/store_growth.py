"""The store writer's rows/s as the store grows from empty to a size (10 GB in the full run): is it still
keeping its empty-store rate? `python -m appliance.bench.store_growth [bytes]`.

The real `StoreWriter` (its thread, its batched transactions, the `entity_recent` rows of the
sample's keys) is handed what the engine hands it per event: an `events` row (the sample's own
payload, encoded as the engine logs it, a fresh id), a `predictions` row with a packed feature vector of the sample's
width (random doubles: the compressed body's worst case), and a `labels` row for every other event, 1,000 events a
batch, with a checkpoint row after each window.
Each window (1/40 of the target size) is timed from its first batch to its flush, wall clock; the
empty-store rate is the median of the first 3 windows, the full-store rate that of the last 3.
No byte bound: the file grows to the target, then is deleted. `entities="none"`: no `entity_recent`.
(The design `entity_recent` replaced, an expression index per key on the events' payload, was measured
here until rows layout 5 put the payload in the compressed body; its figures are in docs/benchmarks.md.)
"""

from __future__ import annotations

import gzip
import itertools
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from appliance.config.file import STORE_CACHE
from appliance.storage.disk import store_bytes
from appliance.storage.payloads import PayloadCodec
from appliance.storage.rows import VectorCodec
from appliance.storage.store import open_db
from appliance.storage.writer import StoreWriter

BATCH_EVENTS = 1_000
WINDOWS = 40
FEATURES = 30  # about the sample config's feature count
_VECTORS = VectorCodec([f"f{i}" for i in range(FEATURES)])


def _payloads(keys: tuple[str, ...], limit: int = 5_000) -> list[str]:
    import sample_data

    codec = PayloadCodec(keys, "event_id")  # as the engine logs them, entity keys first
    path = next(Path(sample_data.__file__).parent.glob("*.jsonl.gz"))
    out = []
    with gzip.open(path, "rt") as lines:
        for line in itertools.islice(lines, limit):
            try:
                raw = orjson.loads(line)
                if isinstance(raw, dict):  # the sample's malformed lines are dead letters
                    out.append(codec.encode(raw))
            except orjson.JSONDecodeError:
                continue
    return out


def _flush(writer: StoreWriter) -> None:
    """Wait for the writer to commit everything queued; raise if it fails instead."""
    while not writer.flush(timeout=5.0):
        if writer.failure is not None:
            raise RuntimeError(writer.failure)
    if writer.failure is not None:
        raise RuntimeError(writer.failure)


def _spread(payload: str, seq: int, keys: int, spread: int) -> str:
    """The payload with each entity key's value one of `spread` per key (pseudo-random by seq)."""
    values = orjson.loads(payload)
    for i in range(1, keys + 1):
        values[i] = f"k{i}-{(seq * 2_654_435_761 + i * 97) % spread}"
    return orjson.dumps(values).decode()


def _batch(start: int, payloads: list[str], rng: random.Random, spread: tuple[int, int] | None = None
           ) -> dict[str, list[dict]]:
    events, predictions, labels = [], [], []
    for seq in range(start, start + BATCH_EVENTS):
        event_id, ts = f"g{seq:012d}", 1_767_225_600.0 + seq * 0.05
        payload = payloads[seq % len(payloads)]
        if spread is not None:
            payload = _spread(payload, seq, *spread)
        events.append({"event_id": event_id, "seq": seq, "ts": ts, "source": "bench", "offset": seq, "ingested": 0,
                       "payload": payload})
        features = _VECTORS.encode({f"f{i}": round(rng.random() * 100, 3) for i in range(FEATURES)})
        predictions.append({"seq": seq, "version": 1, "score": rng.random(), "predicted": 0,
                            "learner_score": rng.random(), "origin": 0, "features": features})
        if seq % 2:  # keyed by their event's seq (rows layout 4)
            labels.append({"seq": seq, "ts": ts + 3600.0, "label": float(rng.random() < 0.05),
                           "status": 1})
    return {"events": events, "predictions": predictions, "labels": labels}


def measure(target_bytes: int, workdir: str | Path | None = None, log=lambda _: None,
            cache_bytes: int = STORE_CACHE, entities: str = "recent", spread: int | None = None) -> dict[str, Any]:
    """Grow a fresh store to `target_bytes`; rows/s per window, the first and the last, their ratio.

    `entities`: "recent" or "none" (the module's docstring); `spread`: each entity key
    takes `spread` values instead of the payloads' own (the sample's 5,000 payloads name about
    18,000 entities in all).
    """
    import sample_data
    from appliance.config.file import load_config

    keys = tuple(load_config(sample_data.CONFIG).event.keys)
    payloads = _payloads(keys)
    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="apl-grow-", dir=str(workdir) if workdir else "/tmp") as scratch:
        path = Path(scratch) / "store.db"
        open_db(path).conn.close()
        writer = StoreWriter(path, cache_bytes=cache_bytes, entity_keys=keys if entities == "recent" else ()).start()
        windows: list[dict[str, Any]] = []
        seq = 0
        try:
            widths = None if spread is None else (len(keys), spread)
            writer.put_rows(_batch(seq, payloads, rng, widths))  # one batch to size the windows
            _flush(writer)
            seq += BATCH_EVENTS
            per_batch = max(1, store_bytes(path))
            window_batches = max(1, target_bytes // (WINDOWS * per_batch))
            while store_bytes(path) < target_bytes:
                rows_before = writer.rows_written
                batches = [_batch(seq + i * BATCH_EVENTS, payloads, rng, widths) for i in range(window_batches)]
                started, cpu, io = time.perf_counter(), time.process_time(), _written()
                for rows in batches:
                    writer.put_rows(rows)
                writer.put_checkpoint("bench", {"entities": [], "offsets": {"bench": seq}, "engine": b"",
                                                "watermark": None})
                _flush(writer)
                elapsed, cpu, io = time.perf_counter() - started, time.process_time() - cpu, _written() - io
                seq += window_batches * BATCH_EVENTS
                size = store_bytes(path)
                rows = writer.rows_written - rows_before
                windows.append({"store_bytes": size, "rows": rows, "rows_per_second": round(rows / elapsed, 1),
                                "rows_per_cpu_second": round(rows / max(cpu, 1e-6), 1),
                                "written_bytes_per_event": round(io / (window_batches * BATCH_EVENTS), 1)})
                log(f"store {size / 1e9:.2f} GB: {windows[-1]['rows_per_second']:,.0f} rows/s, "
                    f"{windows[-1]['rows_per_cpu_second']:,.0f} rows/CPU-s, "
                    f"{windows[-1]['written_bytes_per_event']:,.0f} B written/event")
        finally:
            if writer.failure is not None:
                writer.abandon()
            writer.close()
    def median(key: str, part: list[dict[str, Any]]) -> float:
        return statistics.median(w[key] for w in part)

    first, last = windows[:3], windows[-3:]  # the store's first 3/40, its last 3/40
    empty, full = median("rows_per_second", first), median("rows_per_second", last)
    empty_cpu, full_cpu = median("rows_per_cpu_second", first), median("rows_per_cpu_second", last)
    return {"target_bytes": target_bytes, "entities": entities, "spread": spread, "events": seq, "windows": windows, "cache_bytes": cache_bytes,
            "bytes_per_event": round(windows[-1]["store_bytes"] / seq, 1), "empty_rows_per_second": empty,
            "full_rows_per_second": full, "ratio": round(full / empty, 3),
            "empty_rows_per_cpu_second": empty_cpu, "full_rows_per_cpu_second": full_cpu,
            "cpu_ratio": round(full_cpu / empty_cpu, 3),
            "empty_written_bytes_per_event": median("written_bytes_per_event", first),
            "full_written_bytes_per_event": median("written_bytes_per_event", last)}


def _written() -> int:
    """Bytes this process has written so far (`wchar` of /proc/self/io: the WAL and the checkpoints
    into the file, through the page cache or not); 0 where /proc is not there."""
    try:
        with open("/proc/self/io") as handle:
            return next(int(line.split()[1]) for line in handle if line.startswith("wchar:"))
    except (OSError, StopIteration):
        return 0


def main(target_bytes: int = 10 * 10**9, cache_bytes: int = STORE_CACHE, workdir: str | None = None,
         entities: str = "recent", spread: int | None = None) -> None:
    figures = measure(target_bytes, workdir=workdir, log=print, cache_bytes=cache_bytes, entities=entities,
                      spread=spread)
    print(orjson.dumps({k: v for k, v in figures.items() if k != "windows"}).decode())


if __name__ == "__main__":
    main(int(float(sys.argv[1])) if len(sys.argv) > 1 else 10 * 10**9,
         int(float(sys.argv[2])) if len(sys.argv) > 2 else STORE_CACHE, sys.argv[3] if len(sys.argv) > 3 else None,
         sys.argv[4] if len(sys.argv) > 4 else "recent", int(float(sys.argv[5])) if len(sys.argv) > 5 else None)
