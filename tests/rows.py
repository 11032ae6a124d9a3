"""Sample data the tests share: one row of every dataset format, and training jobs put in a store."""

from __future__ import annotations

from typing import Any

from adapters.dataset import rows_to_jsonl
from adapters.models import DEFAULT_MODEL
from adapters.registry import Registry
from adapters.schema import Hyperparameters, JobRecord, JobSpec

# One row of every dataset format the trainer accepts, as a user would write it in JSONL.
ROWS: dict[str, dict[str, Any]] = {
    "alpaca": {"instruction": "Shout these words: cat dog", "output": "CAT DOG!"},
    "alpaca_input": {"instruction": "Shout these words", "input": "red fish", "output": "RED FISH!"},
    "alpaca_system": {"system": "You shout.", "instruction": "Shout: sun", "output": "SUN!"},
    "prompt_completion": {"prompt": "Name a colour.", "completion": "Blue."},
    "chat_system": {
        "messages": [
            {"role": "system", "content": "You answer in capitals."},
            {"role": "user", "content": "Say hello."},
            {"role": "assistant", "content": "HELLO."},
        ]
    },
    "chat_multi_turn": {
        "messages": [
            {"role": "user", "content": "Shout: sun"},
            {"role": "assistant", "content": "SUN!"},
            {"role": "user", "content": "And: moon star"},
            {"role": "assistant", "content": "MOON STAR!"},
            {"role": "user", "content": "Last: sea"},
            {"role": "assistant", "content": "SEA!"},
        ]
    },
}


def stored_job(registry: Registry, rows: list[dict[str, Any]], name: str, template: str, **hp: Any) -> JobRecord:
    """A queued training job on the default base model, its dataset and record in the registry's store."""
    key, sha = registry.put_dataset(rows_to_jsonl(rows))
    spec = JobSpec(
        name=name, base_model=DEFAULT_MODEL, base_model_id=DEFAULT_MODEL, template=template,
        dataset_uri=key, dataset_sha256=sha, dataset_rows=len(rows), hyperparameters=Hyperparameters(**hp),
    )
    record = JobRecord(spec=spec)
    registry.put_job(record)
    return record
