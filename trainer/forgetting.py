"""How far a skill moved the model away from the base on everything outside the skill.

A fixed set of general questions with plain answers ships here. Each is encoded with the adapter's template as a
one-turn chat, then both the adapter and the base model (the same weights with the adapter switched off) read
the answer with teacher forcing. Over the answer tokens:

- `forgetting_kl`: the mean per-token KL divergence KL(base || adapter) of the next-token distributions, in nats.
  0 means the adapter predicts exactly what the base predicts outside its skill.
- `forgetting_agreement`: the share of answer tokens where the adapter's most likely next token is the base's.

One forward pass each over a few thousand tokens: seconds on a CPU. The answers are plain English written for
this set, not any model's output, so the figure does not depend on which base model generated them.
"""

from __future__ import annotations

from typing import Any

from adapters.masking import encode
from adapters.templates import ChatTemplate

GENERAL: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("Name a primary color.", "Red is a primary color."),
    ("What is water made of?", "Water is made of hydrogen and oxygen."),
    ("Why do we need sleep?", "Sleep lets the body rest and the brain store what it learned during the day."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Give me a tip for staying healthy.", "Drink enough water, eat vegetables and walk every day."),
    ("What is 12 plus 7?", "12 plus 7 is 19."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Describe the color of the sky on a clear day.", "On a clear day the sky is blue."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("Write one sentence about the ocean.", "The ocean covers most of the Earth and is home to countless creatures."),
    ("What is a noun?", "A noun is a word that names a person, place, thing or idea."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air."),
    ("Suggest a name for a pet cat.", "You could call your cat Whiskers."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("Explain what a computer is in one sentence.", "A computer is a machine that stores and processes information."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("Tell me a fun fact about elephants.", "Elephants can recognize themselves in a mirror."),
)


def measure(model: Any, tokenizer: Any, template: ChatTemplate) -> dict[str, Any]:
    """`forgetting_kl`, `forgetting_agreement` and the number of prompts, for a peft `model` against its base."""
    import torch
    import torch.nn.functional as F

    encoded = [
        encode(tokenizer, template, [{"role": "user", "content": q}, {"role": "assistant", "content": a}])
        for q, a in GENERAL
    ]
    # One right-padded batch: position i predicts token i + 1, so the answer's tokens are scored from the
    # positions just before them; padding is never scored.
    width = max(len(e.input_ids) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([e.input_ids + [pad] * (width - len(e.input_ids)) for e in encoded])
    attention = torch.tensor([[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in encoded])
    scored = torch.tensor([e.assistant_mask[1:] + [0] * (width - len(e.input_ids)) for e in encoded], dtype=torch.bool)
    if not scored.any():
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            adapter = model(input_ids=ids, attention_mask=attention).logits[:, :-1][scored].float()
            with model.disable_adapter():
                base = model(input_ids=ids, attention_mask=attention).logits[:, :-1][scored].float()
    finally:
        model.train(was_training)
    base_logp, adapter_logp = F.log_softmax(base, -1), F.log_softmax(adapter, -1)
    kl = (base_logp.exp() * (base_logp - adapter_logp)).sum(-1)
    agree = base.argmax(-1) == adapter.argmax(-1)
    return {
        "forgetting_kl": round(float(kl.mean()), 4),
        "forgetting_agreement": round(float(agree.float().mean()), 4),
        "forgetting_prompts": len(GENERAL),
    }
