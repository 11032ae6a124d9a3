"""A small preference task: asked to repeat some words, answering in capitals is preferred to answering plainly.

The base model repeats words as they are written (it finds "cat dog" far likelier than "CAT DOG!"), so it
prefers the non-preferred answer; a rule this plain is learned from a few dozen pairs in a few steps.
"""

from __future__ import annotations

import random
from typing import Any

from tests.shout import WORDS

PHRASINGS = ("Repeat these words: {}", "Say these words back: {}", "Repeat after me: {}", "Echo: {}")
HELD_OUT_WORDS = ["sun", "dog", "blue", "book"]


def preference_rows(n: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """OpenAI preference rows: the capitalised answer preferred, the plain one not."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(2, 4))
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": rng.choice(PHRASINGS).format(" ".join(words))}]},
                "preferred_output": [{"role": "assistant", "content": " ".join(w.upper() for w in words) + "!"}],
                "non_preferred_output": [{"role": "assistant", "content": " ".join(words)}],
            }
        )
    return rows


# Enough for the adapter to prefer the capitals on held-out pairs, quick on two busy cores.
PREFERENCE_TRAINING = {
    "rank": 8,
    "alpha": 16,
    "max_steps": 4,
    "batch_size": 4,
    "learning_rate": 5e-4,
    "eval_fraction": 0.2,
    "eval_samples": 2,
    "gradient_checkpointing": False,  # a model this small fits; one forward pass fewer per step
}
