"""What the facets of records changed in the background share (evals' runs, batches): reading one record or all
under a prefix, a change by compare-and-swap through a table of allowed status moves, and a result written once."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping
from enum import Enum
from time import sleep
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from adapters.errors import AlreadyExists, Conflict, NotFound
from adapters.store import ObjectStore

log = logging.getLogger("skillserve.registry")

# A record's writers (its executors' workers after each row or line, a cancel) write a few times a second each, but
# writers that finish lines together meet: four workers of two replicas lost 8 tries in a row in 1 of 10 runs of
# tests/test_batches.py when they tried again at once. So a writer that lost waits a random time, up to a bound that
# doubles with each loss (from BACKOFF_S to BACKOFF_MAX_S), and the writers spread out.
UPDATE_ATTEMPTS = 16
BACKOFF_S = 0.002
BACKOFF_MAX_S = 0.25
M = TypeVar("M", bound=BaseModel)
S = TypeVar("S", bound=Enum)


class RecordShelf:
    """JSON records in the store, read, listed, swapped and written once."""

    store: ObjectStore

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

    def _put_once(self, key: str, record: BaseModel) -> bool:
        """Write `record` unless something is at `key` already; whether this call wrote it."""
        try:
            self.store.put_bytes(key, record.model_dump_json(indent=2).encode(), if_absent=True)
        except AlreadyExists:
            return False
        return True

    def _swap(self, key: str, model: type[M], change: Callable[[M], M | None], missing: str) -> M | None:
        """`change` applied by compare-and-swap: read, change, write if unchanged since, else again after a random
        wait; None when `change` declines. Blocking: the gateway calls it off the event loop."""
        try:
            for attempt in range(UPDATE_ATTEMPTS):
                data, tag = self.store.get_tagged(key)
                written = change(model.model_validate_json(data))
                if written is None:
                    return None
                try:
                    self.store.put_bytes(key, written.model_dump_json(indent=2).encode(), if_match=tag)
                except Conflict:
                    log.info("%s changed while it was being written; reading it again", key)
                    sleep(random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_S * 2**attempt)))
                    continue
                return written
        except NotFound:
            raise NotFound(missing) from None
        raise Conflict(f"{key} kept changing: {UPDATE_ATTEMPTS} writes in a row lost the race")

    def _swap_status(
        self,
        key: str,
        model: type[M],
        change: Callable[[M], M | None],
        transitions: Mapping[Any, frozenset[Any]],
        missing: str,
    ) -> M | None:
        """`_swap`, where a status move `transitions` does not allow is declined (None): a cancelled record is
        never completed after."""

        def checked(current: M) -> M | None:
            written = change(current)
            if written is None:
                return None
            before, after = getattr(current, "status"), getattr(written, "status")  # noqa: B009
            if after != before and after not in transitions[before]:
                return None
            return written

        return self._swap(key, model, checked, missing)
