"""Stored chat completions (completions/<id>.json): written once by the gateway's background writer, their metadata
and feedback changed by compare-and-swap, pruned to the retention limits."""

from __future__ import annotations

from collections.abc import Callable

from adapters.registry.keys import STORED_COMPLETIONS_PREFIX, stored_completion_key
from adapters.registry.records import RecordShelf
from adapters.schema import StoredCompletion


class CompletionBook(RecordShelf):
    """Stored chat completions."""

    def put_completion(self, record: StoredCompletion) -> bool:
        """Write a stored completion unless one is there already; whether this call wrote it."""
        return self._put_once(stored_completion_key(record.id), record)

    def get_completion(self, completion_id: str) -> StoredCompletion:
        return self._read(
            stored_completion_key(completion_id), StoredCompletion, f"stored completion {completion_id} not found"
        )

    def list_completions(self) -> list[StoredCompletion]:
        """Every stored completion, oldest first (OpenAI lists them in ascending order by default)."""
        records = self._read_all(STORED_COMPLETIONS_PREFIX, StoredCompletion, direct=True)
        return sorted(records, key=lambda r: (r.created, r.id))

    def update_completion(
        self, completion_id: str, change: Callable[[StoredCompletion], StoredCompletion | None]
    ) -> StoredCompletion | None:
        return self._swap(
            stored_completion_key(completion_id), StoredCompletion, change,
            f"stored completion {completion_id} not found",
        )

    def delete_completion(self, completion_id: str) -> None:
        self.store.delete(stored_completion_key(completion_id))

    def prune_completions(self, now: float, max_age_s: float | None, max_count: int | None) -> int:
        """Delete stored completions older than `max_age_s`, then the oldest beyond `max_count`; how many went."""
        records = self.list_completions()
        doomed = [r for r in records if max_age_s is not None and r.created < now - max_age_s]
        kept = records[len(doomed):] if doomed else records
        if max_count is not None and len(kept) > max_count:
            doomed += kept[: len(kept) - max_count]
        for record in doomed:
            self.delete_completion(record.id)
        return len(doomed)
