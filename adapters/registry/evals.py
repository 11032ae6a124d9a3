"""Evals (evals/<id>.json), their runs (eval_runs/<eval-id>/<run-id>.json, changed by compare-and-swap) and each
run's output items (eval_items/<run-id>/<row>.json, written once: a row another writer already wrote is skipped)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from adapters.errors import AlreadyExists, Conflict, NotFound
from adapters.registry.keys import eval_item_key, eval_items_prefix, eval_key, eval_run_key, eval_runs_prefix
from adapters.schema import EVAL_RUN_TRANSITIONS, EvalOutputItem, EvalRecord, EvalRunRecord
from adapters.store import ObjectStore

log = logging.getLogger("skillserve.registry")

# A run's writers (its executor after each row, a cancel) write a few times a second at most.
UPDATE_ATTEMPTS = 8
M = TypeVar("M", bound=BaseModel)


class EvalBook:
    """Evals, runs and output items."""

    store: ObjectStore

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

        def checked(current: EvalRunRecord) -> EvalRunRecord | None:
            written = change(current)
            if written is None:
                return None
            if written.status != current.status and written.status not in EVAL_RUN_TRANSITIONS[current.status]:
                return None
            return written

        return self._swap(
            eval_run_key(eval_id, run_id), EvalRunRecord, checked, f"run {run_id} of eval {eval_id} not found"
        )

    def delete_eval_run(self, eval_id: str, run_id: str) -> None:
        self.get_eval_run(eval_id, run_id)
        self.store.delete(eval_run_key(eval_id, run_id))
        for key in self.store.list(eval_items_prefix(run_id)):
            self.store.delete(key)

    # Output items

    def put_output_item(self, item: EvalOutputItem) -> bool:
        """Write a row's output item unless one is there already; whether this call wrote it."""
        try:
            self.store.put_bytes(
                eval_item_key(item.run_id, item.index), item.model_dump_json(indent=2).encode(), if_absent=True
            )
        except AlreadyExists:
            return False
        return True

    def get_output_item(self, run_id: str, index: int) -> EvalOutputItem:
        return self._read(eval_item_key(run_id, index), EvalOutputItem, f"output item {index} of {run_id} not found")

    def list_output_items(self, run_id: str) -> list[EvalOutputItem]:
        """A run's output items in row order."""
        return sorted(self._read_all(eval_items_prefix(run_id), EvalOutputItem), key=lambda item: item.index)

    # Shared

    def _read(self, key: str, model: type[M], missing: str) -> M:
        try:
            return model.model_validate_json(self.store.get_bytes(key))
        except NotFound:
            raise NotFound(missing) from None

    def _read_all(self, prefix: str, model: type[M], direct: bool = False) -> list[M]:
        records = []
        for key in self.store.list(prefix):
            if not key.endswith(".json") or (direct and "/" in key.removeprefix(prefix)):
                continue
            try:
                records.append(model.model_validate_json(self.store.get_bytes(key)))
            except NotFound:  # deleted between the list and the read
                continue
            except ValidationError as exc:
                log.warning("skipping unreadable record %s: %s", key, exc)
        return records

    def _swap(self, key: str, model: type[M], change: Callable[[M], M | None], missing: str) -> M | None:
        try:
            for _ in range(UPDATE_ATTEMPTS):
                data, tag = self.store.get_tagged(key)
                written = change(model.model_validate_json(data))
                if written is None:
                    return None
                try:
                    self.store.put_bytes(key, written.model_dump_json(indent=2).encode(), if_match=tag)
                except Conflict:
                    log.info("%s changed while it was being written; reading it again", key)
                    continue
                return written
        except NotFound:
            raise NotFound(missing) from None
        raise Conflict(f"{key} kept changing: {UPDATE_ATTEMPTS} writes in a row lost the race")
