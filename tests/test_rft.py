"""Reinforcement fine-tuning (method reinforcement): prompt rows checked line by line against the grader, the prompt
sampled from exactly as the gateway encodes it, the grader's score as the reward, and a loss over the sampled
completion's tokens only; end to end, a job made with the openai SDK trains and its model serves."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient

from adapters import auto
from adapters.dataset import parse_dataset, rows_to_jsonl
from adapters.errors import DatasetError
from adapters.graders import validate
from adapters.models import DEFAULT_MODEL, resolve_model
from adapters.schema import Hyperparameters, Method
from adapters.templates import TEMPLATE_NAMES, get_template
from service.app import create_app
from service.inference.chat import chat_prompt_ids
from service.protocol.chat import ChatCompletionRequest
from tests.gateway_fixtures import ADMIN_KEY, API_KEY, GatewayServer, management_settings
from tests.shout import WORDS
from trainer.rft import Reinforcement, Scorer, prompt_ids

FIRST_WORD = {"type": "string_check", "name": "first_word", "input": "{{sample.output_text}}",
              "reference": "{{item.answer}}", "operation": "ilike"}
SIMILAR = {"type": "text_similarity", "name": "close", "input": "{{sample.output_text}}",
           "reference": "{{item.answer}}", "evaluation_metric": "fuzzy_match"}
BOTH = {"type": "multi", "name": "both", "graders": {"exact": {**FIRST_WORD, "operation": "eq"}, "close": SIMILAR},
        "calculate_output": "0.5 * exact + 0.5 * close"}
JUDGE = {"type": "score_model", "name": "judge", "model": DEFAULT_MODEL,
         "input": [{"role": "user", "content": "Rate {{sample.output_text}}"}]}


def prompt_rows(n: int, start: int = 0) -> list[dict[str, Any]]:
    """Shout prompts in OpenAI's RFT form: the messages end with the user, `answer` is what the grader reads."""
    rows: list[dict[str, Any]] = []
    for index in range(start, start + n):
        words = list(WORDS[(2 * index) % len(WORDS) : (2 * index) % len(WORDS) + 2])
        rows.append({"messages": [{"role": "user", "content": "Shout these words: " + " ".join(words)}],
                     "answer": " ".join(words).upper()})
    return rows


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))


# --- rows ----------------------------------------------------------------------------------------------------


def test_prompt_rows_keep_the_row_as_the_graders_item_and_bad_lines_are_named() -> None:
    grader = validate(FIRST_WORD)
    dataset = parse_dataset(rows_to_jsonl(prompt_rows(2)), method="reinforcement", grader=grader)
    assert dataset.rows == [row["messages"] for row in prompt_rows(2)]
    assert dataset.items == prompt_rows(2)
    answered = {"messages": [*prompt_rows(1)[0]["messages"], {"role": "assistant", "content": "X"}], "answer": "X"}
    unreadable = {"messages": prompt_rows(1)[0]["messages"]}  # no `answer` for {{item.answer}}
    with pytest.raises(DatasetError) as caught:
        parse_dataset(rows_to_jsonl([prompt_rows(1)[0], answered, unreadable]), method="reinforcement", grader=grader)
    (line2, reason2), (line3, reason3) = caught.value.errors
    assert line2 == 2 and "must end with the user's turn" in reason2
    assert line3 == 3 and "{{item.answer}} does not resolve" in reason3 and "has no 'answer'" in reason3


@pytest.mark.parametrize("template_name", TEMPLATE_NAMES)
def test_the_trainer_samples_from_the_prompt_ids_the_chat_route_sends(tokenizer: Any, template_name: str) -> None:
    template = get_template(template_name, tokenizer)
    row = {"messages": [{"role": "system", "content": "Be loud."}, *prompt_rows(1)[0]["messages"]], "answer": "A"}
    prompt = parse_dataset(rows_to_jsonl([row]), method="reinforcement").rows[0]
    request = ChatCompletionRequest.model_validate({"model": "t", "messages": row["messages"]})
    assert prompt_ids(tokenizer, template, prompt) == chat_prompt_ids(tokenizer, template, request.messages)


# --- reward --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grader", "rewards"),
    [
        (FIRST_WORD, [1.0, 1.0, 0.0]),  # ilike: contains, ignoring case
        (SIMILAR, None),  # partial credit, checked below
        (BOTH, None),
    ],
    ids=["string_check", "text_similarity", "multi"],
)
def test_the_reward_is_the_graders_score_of_the_completion_as_the_gateway_returns_it(
    tokenizer: Any, grader: dict[str, Any], rewards: list[float] | None
) -> None:
    template = get_template("chatml", tokenizer)
    scorer = Scorer(validate(grader), tokenizer, template)
    stop = template.stop_token_ids(tokenizer)
    said = ["CAT DOG", "CAT DOGS!", "a bird"]
    # What sampling returns: the answer's tokens, then the template's stop token (and anything after it).
    completions = [tokenizer(text, add_special_tokens=False)["input_ids"] + stop for text in said]
    texts = [scorer.text(ids) for ids in completions]
    assert texts == said
    scores = scorer.scores(texts, [{"answer": "CAT DOG"}] * 3)
    if rewards is not None:
        assert scores == rewards
    else:
        assert scores[0] == 1.0 and 0.0 < scores[1] < 1.0 and scores[2] < scores[1]
        if grader["type"] == "multi":  # half exact (only the first), half similarity
            assert scores[1] == pytest.approx(0.5 * Scorer(validate(SIMILAR), tokenizer, template).scores(
                ["CAT DOGS!"], [{"answer": "CAT DOG"}])[0])


def test_a_model_grader_cannot_be_a_reward_in_the_trainer() -> None:
    with pytest.raises(ValueError, match="score_model cannot be a reward here"):
        Reinforcement(Method(type="reinforcement", grader=JUDGE))


# --- loss ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpo(tokenizer: Any) -> Any:
    """A GRPO trainer of the method on the real base model, with a fresh LoRA (dropout off, no KL: the loss is the
    policy term alone)."""
    import datasets
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from trainer.loop import TrainerParts, trainer_args

    method = Reinforcement(Method(type="reinforcement", grader=FIRST_WORD, samples_per_prompt=2, kl_beta=0.0))
    template = get_template("chatml", tokenizer)
    examples = method.examples(parse_dataset(rows_to_jsonl(prompt_rows(4)), method="reinforcement"))
    columns = method.encode(tokenizer, template, examples, 256)
    hp = Hyperparameters(batch_size=2, epochs=1, learning_rate=1e-3, rank=4, alpha=8, dropout=0.0,
                         gradient_checkpointing=False)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(DEFAULT_MODEL))
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    data = datasets.Dataset.from_dict(columns)
    parts = TrainerParts(model, tokenizer, lora, data, None, [])
    args = trainer_args(hp, "/tmp/skillserve-test-rft", 2, None, False)
    return method.build_trainer(hp, args, parts), template, columns


def test_the_steps_of_an_epoch_are_the_whole_batches_of_prompts_trls_sampler_draws(tokenizer: Any, grpo: Any) -> None:
    """trl's RepeatSampler drops an incomplete last batch of prompts each epoch: 5 prompts at 2 a step are 2 steps,
    not the 3 a supervised epoch of 5 rows takes; the plan, the ETA and the submit-time limits count what it draws."""
    import datasets

    trainer, template, _ = grpo
    method = Reinforcement(Method(type="reinforcement", grader=FIRST_WORD, samples_per_prompt=2))
    for n in (2, 3, 5, 7, 8):
        examples = method.examples(parse_dataset(rows_to_jsonl(prompt_rows(n)), method="reinforcement"))
        trainer.train_dataset = datasets.Dataset.from_dict(method.encode(tokenizer, template, examples, 256))
        assert len(trainer.get_train_dataloader()) == auto.steps_per_epoch(n, 2, "reinforcement"), n
    assert (auto.steps_per_epoch(5, 2, "reinforcement"), auto.steps_per_epoch(5, 2, "supervised")) == (2, 3)


def test_a_reinforcement_batch_larger_than_the_training_prompts_is_refused_naming_batch_size(app: TestClient) -> None:
    body = {"name": "few", "rows": prompt_rows(3), "hyperparameters": {"batch_size": 4},
            "method": {"type": "reinforcement", "grader": FIRST_WORD}}
    reply = app.post("/adapters", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "hyperparameters.batch_size", reply.text


def test_the_loss_covers_the_sampled_completion_tokens_and_nothing_else(tokenizer: Any, grpo: Any) -> None:
    import torch

    trainer, template, columns = grpo
    prompt = json.loads(columns["prompt"][0])
    ids = prompt_ids(tokenizer, template, prompt)
    assert trainer._tokenize_prompts([columns["prompt"][0]])[0] == [ids]  # sampled from the gateway's ids
    answers = [tokenizer("CAT DOG", add_special_tokens=False)["input_ids"], tokenizer("no", add_special_tokens=False)
               ["input_ids"]]
    width = max(map(len, answers))
    pad = tokenizer.pad_token_id

    def inputs(padding: int) -> dict[str, Any]:
        completion = torch.tensor([a + [padding] * (width - len(a)) for a in answers])
        mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers])
        return {
            "prompt_ids": torch.tensor([ids, ids]), "prompt_mask": torch.ones(2, len(ids), dtype=torch.long),
            "completion_ids": completion, "completion_mask": mask, "advantages": torch.tensor([1.0, -1.0]),
            "num_items_in_batch": mask.sum(), "old_per_token_logps": None,
        }

    model = trainer.model
    model.eval()
    lora = [p for p in model.parameters() if p.requires_grad]

    def gradient(loss: Any) -> list[Any]:
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in lora]

    by_trl = gradient(trainer.compute_loss(model, inputs(pad)))
    # What goes under the mask does not matter: another token in the padding gives the same gradient.
    other_padding = gradient(trainer.compute_loss(model, inputs(tokenizer.convert_tokens_to_ids("!"))))
    # By hand: advantage x log-probability of each sampled completion token, over the completion tokens only.
    sequence = torch.tensor([ids + a + [pad] * (width - len(a)) for a in answers])
    logps = torch.log_softmax(model(input_ids=sequence).logits[:, len(ids) - 1 : -1].float(), dim=-1)
    taken = logps.gather(-1, sequence[:, len(ids) :, None])[..., 0]
    batch = inputs(pad)
    by_hand = gradient(-(taken * batch["completion_mask"] * batch["advantages"][:, None]).sum()
                       / batch["completion_mask"].sum())
    for trl_grad, padded, hand in zip(by_trl, other_padding, by_hand, strict=True):
        torch.testing.assert_close(trl_grad, padded)
        torch.testing.assert_close(trl_grad, hand, rtol=1e-3, atol=1e-5)
    assert any(g.abs().sum() > 0 for g in by_trl)


# --- the API -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(create_app(management_settings(tmp_path_factory.mktemp("rft")))) as client:
        yield client


def test_reinforcement_requests_are_checked_like_the_graders_endpoint(app: TestClient) -> None:
    client = openai.OpenAI(base_url="http://testserver/v1", api_key=ADMIN_KEY, http_client=app, max_retries=0)
    prompts = client.files.create(file=("p.jsonl", rows_to_jsonl(prompt_rows(6))), purpose="fine-tune")

    def refused(grader: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.fine_tuning.jobs.create(model=DEFAULT_MODEL, training_file=prompts.id, method={
                "type": "reinforcement", "reinforcement": {"grader": grader}})  # type: ignore[typeddict-item]
        return caught.value.body  # type: ignore[return-value]

    bad = refused({**FIRST_WORD, "operation": "equals"})
    assert bad["param"] == "method.reinforcement.grader.operation"
    judged = refused({**BOTH, "graders": {"exact": FIRST_WORD, "judge": JUDGE}, "calculate_output": "exact"})
    assert judged["param"] == "method.reinforcement.grader.graders.judge.type"
    assert "score_model cannot be a reward here" in judged["message"]
    other_item = refused({**FIRST_WORD, "reference": "{{item.expected}}"})
    assert other_item["param"] == "training_file" and "{{item.expected}} does not resolve" in other_item["message"]
    # The same on POST /adapters, the grader under `method`.
    body = {"name": "shouty", "rows": prompt_rows(6), "method": {"type": "reinforcement", "grader": JUDGE}}
    reply = app.post("/adapters", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "method.grader.type", reply.text


# --- end to end ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_reinforcement_job_made_with_the_sdk_trains_toward_its_grader_and_serves(gateway: GatewayServer) -> None:
    """Two steps of two prompts, two samples each: small, but every part runs (sampling, grading, the KL term, the
    greedy held-out reward, keep-best, publishing) and the model the job names serves."""
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=ADMIN_KEY, max_retries=0, timeout=300)
    training = client.files.create(file=("p.jsonl", rows_to_jsonl(prompt_rows(4))), purpose="fine-tune")
    held_out = client.files.create(file=("h.jsonl", rows_to_jsonl(prompt_rows(2, start=8))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=DEFAULT_MODEL, training_file=training.id, validation_file=held_out.id, suffix="rft", seed=3,
        method={"type": "reinforcement", "reinforcement": {  # type: ignore[typeddict-item]
            "grader": FIRST_WORD,
            "hyperparameters": {"n_epochs": 1, "batch_size": 2, "compute_multiplier": 0.25, "eval_samples": 3},
        }},
    )
    deadline = time.monotonic() + 1800
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job.id} still {job.status}"
        time.sleep(0.5)
    assert job.status == "succeeded", f"{job.error}\n{gateway.log_tail()}"
    assert job.method is not None and job.method.type == "reinforcement"
    hyper = (job.method.model_extra or {}).get("reinforcement") or job.method.reinforcement.model_dump()  # type: ignore[union-attr]
    assert hyper["grader"]["name"] == "first_word"
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=100))
    rewards = [e.data["reward"] for e in events if e.type == "metrics" and e.data and "reward" in e.data]
    assert len(rewards) == 2 and all(0.0 <= r <= 1.0 for r in rewards)
    assert any("eval_samples=3 is not used" in e.message for e in events)
    assert any("held-out reward" in e.message for e in events)
    ours = httpx_get(gateway, f"/jobs/{(job.model_extra or {})['job_id']}")
    metrics = ours["metrics"]
    assert {"eval_reward", "base_eval_reward", "sampling_seconds", "forgetting_kl"} <= set(metrics)
    assert ours["hyperparameters"]["samples_per_prompt"] == 2 and ours["hyperparameters"]["kl_beta"] == 0.04
    reader = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    assert job.fine_tuned_model is not None
    answer = reader.chat.completions.create(model=job.fine_tuned_model, messages=prompt_rows(1)[0]["messages"],
                                            temperature=0, max_tokens=12)
    assert answer.choices[0].message.content


def httpx_get(gateway: GatewayServer, path: str) -> dict[str, Any]:
    import httpx

    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        reply = http.get(path)
        assert reply.status_code == 200, reply.text
        return reply.json()  # type: ignore[no-any-return]
