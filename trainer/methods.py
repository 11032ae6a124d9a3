"""The training methods by name (a job's `method.type`): the one place a method is added.

Each entry builds a `TrainingMethod` (trainer/loop.py) from the job's `Method` spec, taking the settings it needs.
"""

from __future__ import annotations

from collections.abc import Callable

from adapters.schema import Method
from trainer.dpo import DirectPreference
from trainer.loop import TrainingMethod
from trainer.rft import Reinforcement
from trainer.sft import Supervised

METHODS: dict[str, Callable[[Method], TrainingMethod]] = {
    "supervised": lambda spec: Supervised(),
    "dpo": lambda spec: DirectPreference(beta=spec.beta),
    "reinforcement": Reinforcement,
}


def method_for(spec: Method) -> TrainingMethod:
    """The training method a job's spec names."""
    return METHODS[spec.type](spec)
