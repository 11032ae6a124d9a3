"""Batches (batches/<id>.json, changed by compare-and-swap) and their lines' results (batch_lines/<batch-id>/<line>
.json, written once: a line another writer already wrote is skipped, so nothing runs twice into the output)."""

from __future__ import annotations

from collections.abc import Callable

from adapters.registry.keys import batch_key, batch_line_key, batch_lines_prefix
from adapters.registry.records import RecordShelf
from adapters.schema import BATCH_TRANSITIONS, BatchLineResult, BatchRecord


class BatchBook(RecordShelf):
    """Batches and their lines' results."""

    def put_batch(self, record: BatchRecord) -> BatchRecord:
        self.store.put_bytes(batch_key(record.id), record.model_dump_json(indent=2).encode(), if_absent=True)
        return record

    def get_batch(self, batch_id: str) -> BatchRecord:
        return self._read(batch_key(batch_id), BatchRecord, f"batch {batch_id} not found")

    def list_batches(self) -> list[BatchRecord]:
        """Every batch, newest first."""
        records = self._read_all("batches/", BatchRecord, direct=True)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def update_batch(self, batch_id: str, change: Callable[[BatchRecord], BatchRecord | None]) -> BatchRecord | None:
        """`change` by compare-and-swap; a status move BATCH_TRANSITIONS does not allow is declined (None)."""
        return self._swap_status(
            batch_key(batch_id), BatchRecord, change, BATCH_TRANSITIONS, f"batch {batch_id} not found"
        )

    def put_batch_line(self, result: BatchLineResult) -> bool:
        """Write a line's result unless one is there already; whether this call wrote it."""
        return self._put_once(batch_line_key(result.batch_id, result.index), result)

    def list_batch_lines(self, batch_id: str) -> list[BatchLineResult]:
        """A batch's line results in line order."""
        results = self._read_all(batch_lines_prefix(batch_id), BatchLineResult)
        return sorted(results, key=lambda result: result.index)
