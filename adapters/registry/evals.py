"""Evals (evals/<id>.json), their runs (eval_runs/<eval-id>/<run-id>.json, changed by compare-and-swap) and each
run's output items (eval_items/<run-id>/<row>.json, written once: a row another writer already wrote is skipped)."""

from __future__ import annotations

from collections.abc import Callable

from adapters.registry.keys import eval_item_key, eval_items_prefix, eval_key, eval_run_key, eval_runs_prefix
from adapters.registry.records import RecordShelf
from adapters.schema import EVAL_RUN_TRANSITIONS, EvalOutputItem, EvalRecord, EvalRunRecord


class EvalBook(RecordShelf):
    """Evals, runs and output items."""

    # Evals

    def put_eval(self, record: EvalRecord) -> EvalRecord:
        self.store.put_bytes(eval_key(record.id), record.model_dump_json(indent=2).encode(), if_absent=True)
        return record

    def get_eval(self, eval_id: str) -> EvalRecord:
        return self._read(eval_key(eval_id), EvalRecord, f"eval {eval_id} not found")

    def list_evals(self) -> list[EvalRecord]:
        """Every eval, newest first."""
        records = self._read_all("evals/", EvalRecord, direct=True)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def update_eval(self, eval_id: str, change: Callable[[EvalRecord], EvalRecord | None]) -> EvalRecord | None:
        return self._swap(eval_key(eval_id), EvalRecord, change, f"eval {eval_id} not found")

    def delete_eval(self, eval_id: str) -> None:
        """The eval, then its runs and their items; a run still executing finds its record gone and stops."""
        self.get_eval(eval_id)
        self.store.delete(eval_key(eval_id))
        for run in self.list_eval_runs(eval_id):
            self.delete_eval_run(eval_id, run.id)

    # Runs

    def put_eval_run(self, record: EvalRunRecord) -> EvalRunRecord:
        key = eval_run_key(record.eval_id, record.id)
        self.store.put_bytes(key, record.model_dump_json(indent=2).encode(), if_absent=True)
        return record

    def get_eval_run(self, eval_id: str, run_id: str) -> EvalRunRecord:
        return self._read(eval_run_key(eval_id, run_id), EvalRunRecord, f"run {run_id} of eval {eval_id} not found")

    def list_eval_runs(self, eval_id: str | None = None) -> list[EvalRunRecord]:
        """An eval's runs (every eval's with None), newest first."""
        prefix = eval_runs_prefix(eval_id) if eval_id is not None else "eval_runs/"
        records = self._read_all(prefix, EvalRunRecord)
        return sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)

    def update_eval_run(
        self, eval_id: str, run_id: str, change: Callable[[EvalRunRecord], EvalRunRecord | None]
    ) -> EvalRunRecord | None:
        """`change` applied by compare-and-swap (as `JobBook.update_job`); a status move the table
        EVAL_RUN_TRANSITIONS does not allow is declined (None), so a canceled run is never completed after."""
        return self._swap_status(
            eval_run_key(eval_id, run_id), EvalRunRecord, change, EVAL_RUN_TRANSITIONS,
            f"run {run_id} of eval {eval_id} not found",
        )

    def delete_eval_run(self, eval_id: str, run_id: str) -> None:
        self.get_eval_run(eval_id, run_id)
        self.store.delete(eval_run_key(eval_id, run_id))
        for key in self.store.list(eval_items_prefix(run_id)):
            self.store.delete(key)

    # Output items

    def put_output_item(self, item: EvalOutputItem) -> bool:
        """Write a row's output item unless one is there already; whether this call wrote it."""
        return self._put_once(eval_item_key(item.run_id, item.index), item)

    def get_output_item(self, run_id: str, index: int) -> EvalOutputItem:
        return self._read(eval_item_key(run_id, index), EvalOutputItem, f"output item {index} of {run_id} not found")

    def list_output_items(self, run_id: str) -> list[EvalOutputItem]:
        """A run's output items in row order."""
        return sorted(self._read_all(eval_items_prefix(run_id), EvalOutputItem), key=lambda item: item.index)
