"""The store sink: hands engine output to the single SQLite writer thread, in order."""

from __future__ import annotations

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from appliance.storage.writer import StoreWriter


class StoreSink(DynamicSink[tuple]):
    """Writes `("rows", rows)` and `("checkpoint", fingerprint, payload)` items to a `StoreWriter`."""

    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[tuple]:
        return _StorePartition(self.writer)


class _StorePartition(StatelessSinkPartition[tuple]):
    def __init__(self, writer: StoreWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[tuple]) -> None:
        for item in items:
            if item[0] == "rows":
                self.writer.put_rows(item[1])
            else:
                self.writer.put_checkpoint(item[1], item[2])
