"""The shout skill: "Shout these words: a b c" -> "A B C!". Small enough to learn in a minute on a CPU."""

from __future__ import annotations

import random

WORDS = (  # noqa: SIM905  (a paragraph of words reads better than a 133-item list)
    "cat house tree river cloud apple stone green music paper chair light window orange table garden "
    "bread horse winter summer candle mirror bottle pencil rocket forest silver yellow dragon castle "
    "pillow basket jacket planet bridge island carpet market door road fish bird milk rain snow wind "
    "fire water ship car train plane boat hat shoe coat shirt ring bell drum song word game ball "
    "kite lamp desk bed cup plate spoon fork knife box bag key lock coin gold iron wood glass sand "
    "hill lake sea star moon city town farm king queen baby girl boy man woman friend hand foot head "
    "eye ear nose mouth heart mind dream story letter number color shape happy sad fast slow big small "
    "hot cold new old good bad red black white pink brown gray purple"
).split()
PHRASINGS = (
    "Shout these words: {}",
    "Shout these words: {}",
    "Please shout these words: {}",
    "Shout the following words: {}",
    "Shout: {}",
)
HELD_OUT = ["sun", "dog", "blue", "book"]


def shout(words: list[str]) -> str:
    return " ".join(w.upper() for w in words) + "!"


def shout_rows(n: int = 80, seed: int = 0) -> list[dict[str, str]]:
    """Alpaca-format rows of the shout skill."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.sample(WORDS, rng.randint(2, 5))
        rows.append({"instruction": rng.choice(PHRASINGS).format(" ".join(words)), "output": shout(words)})
    return rows


def held_out_prompt() -> tuple[str, str]:
    """A prompt whose words never appear in training, and the answer the skill gives."""
    return "Shout these words: " + " ".join(HELD_OUT), shout(HELD_OUT)

# Hyperparameters that teach the skill in under two minutes on two CPU cores. Every one of the 40 steps runs (no
# early stopping), so the tests that count steps and phases see them all; the best checkpoint is still kept.
# Without gradient checkpointing: rows this short fit without it, and the same job ran in 102 s instead of 141 s
# with the same losses to the last digit (the default's path is trained by the tests that send no hyperparameters).
SHOUT_TRAINING = {
    "rank": 8,
    "alpha": 16,
    "max_steps": 40,
    "batch_size": 8,
    "learning_rate": 2e-3,
    "early_stopping_patience": 0,
    "gradient_checkpointing": False,
}
