"""Skills good by default: hyperparameters chosen from the data, the best checkpoint kept, forgetting measured."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from adapters.auto import AUTO_FIELDS, METHOD_AUTO_FIELDS, RULES, TRAINER_AUTO_FIELDS, choose, chosen_fields
from adapters.schema import Hyperparameters
from trainer.loop import MIN_ROWS_TO_STOP_EARLY, BestCheckpoint, eval_every, kept_record, patience

# --- the rules that choose the defaults ----------------------------------------------------------------------


def test_every_auto_field_is_chosen_from_the_number_of_rows() -> None:
    small, medium, large = (choose(Hyperparameters(), rows) for rows in (50, 500, 5000))
    assert (small.batch_size, small.epochs, small.rank, small.alpha) == (4, 3.0, 8, 16)
    assert (medium.batch_size, medium.epochs, medium.rank) == (8, 3.0, 8)
    assert (large.batch_size, large.epochs, large.rank, large.alpha) == (16, 2.0, 16, 32)
    assert choose(Hyperparameters(), 20_000).epochs == 1.0
    # The learning rate follows the batch size (square root), so the update noise stays alike.
    assert medium.learning_rate == 1e-3
    assert small.learning_rate == pytest.approx(1e-3 * 0.5**0.5, rel=0.02)
    assert large.learning_rate == pytest.approx(1e-3 * 2**0.5, rel=0.02)
    # Preference training moves the model with a tenth of the rate.
    assert choose(Hyperparameters(), 500, method="dpo").learning_rate == 1e-4
    for hp in (small, medium, large):
        assert all(getattr(hp, name) is not None for name in AUTO_FIELDS)


def test_a_value_the_user_sets_is_kept() -> None:
    asked = Hyperparameters(learning_rate=1e-3, batch_size=2, rank=4)
    chosen = choose(asked, 50)
    assert (chosen.learning_rate, chosen.batch_size, chosen.rank) == (1e-3, 2, 4)
    assert chosen.alpha == 8 and chosen.epochs == 3.0  # alpha follows the rank the user chose
    assert chosen_fields(asked) == ["alpha", "epochs", *TRAINER_AUTO_FIELDS]
    assert choose(Hyperparameters(epochs=1, alpha=64), 50).model_dump(include={"epochs", "alpha"}) == {
        "epochs": 1.0, "alpha": 64,
    }


def test_auto_and_null_mean_the_same_and_bad_values_still_fail() -> None:
    as_auto = Hyperparameters.model_validate({"epochs": "auto", "learning_rate": None}, strict=True)
    assert as_auto.epochs is None and as_auto.learning_rate is None
    assert chosen_fields(as_auto) == list(AUTO_FIELDS + TRAINER_AUTO_FIELDS)
    for bad in ({"rank": 0}, {"epochs": "many"}, {"learning_rate": -1.0}, {"batch_size": "8"}):
        with pytest.raises(ValidationError):
            Hyperparameters.model_validate(bad, strict=True)


def test_every_rule_is_documented_with_its_reason() -> None:
    assert {rule.field for rule in RULES} == set(AUTO_FIELDS) | set(METHOD_AUTO_FIELDS) | set(TRAINER_AUTO_FIELDS)
    assert all(rule.rule and len(rule.reason) > 20 for rule in RULES)


# --- which checkpoint is kept --------------------------------------------------------------------------------


def test_best_checkpoint_is_the_lowest_held_out_loss_and_stops_after_patience() -> None:
    rule = BestCheckpoint(patience=2)
    losses = {4: 1.2, 8: 0.7, 12: 0.75, 16: 0.7, 20: 0.9}
    verdicts = []
    for step, loss in losses.items():
        verdicts.append(rule.update(step, loss))
        if rule.should_stop(step):
            break
    # 0.7 again at step 16 is not better: the earlier, less trained weights win a tie.
    assert verdicts == [True, True, False, False]
    assert (rule.best_step, rule.best_loss, rule.stopped_at) == (8, 0.7, 16)


def test_patience_zero_never_stops() -> None:
    rule = BestCheckpoint(patience=0)
    for step, loss in enumerate([1.0, 2.0, 3.0, 4.0, 5.0], start=1):
        rule.update(step, loss)
        assert not rule.should_stop(step)
    assert rule.best_step == 1


def test_the_manifest_says_which_step_was_kept_and_why() -> None:
    hp = Hyperparameters()
    rule = BestCheckpoint(patience=2)
    for step, loss in ((5, 1.0), (10, 0.5), (15, 0.6), (20, 0.7)):
        rule.update(step, loss)
        rule.should_stop(step)
    kept = kept_record(hp, rule, 20, rows=100, evaluated=True)
    assert kept["kept"] == "best" and kept["kept_step"] == 10 and kept["best_eval_loss"] == 0.5
    assert kept["stopped_early"] and "lowest held-out loss (0.5) at step 10 of 20" in kept["kept_reason"]
    last = kept_record(hp.model_copy(update={"keep": "last"}), rule, 20, rows=100, evaluated=True)
    assert (last["kept"], last["kept_step"]) == ("last", 20)
    tiny = kept_record(hp, BestCheckpoint(2), 3, rows=4, evaluated=False)
    assert tiny["kept_step"] == 3 and "no held-out rows (4 rows" in tiny["kept_reason"]


def test_evaluations_come_twice_an_epoch_when_an_epoch_is_long_enough() -> None:
    assert [eval_every(n) for n in (1, 2, 3, 4, 9, 20)] == [1, 2, 3, 2, 4, 10]


def test_early_stopping_needs_enough_held_out_rows_to_mean_something() -> None:
    hp = Hyperparameters(early_stopping_patience=3)
    assert patience(hp, MIN_ROWS_TO_STOP_EARLY) == 3
    assert patience(hp, MIN_ROWS_TO_STOP_EARLY - 1) == 0  # too few rows: one odd row would decide; best still kept
    assert patience(hp.model_copy(update={"keep": "last"}), 100) == 0


def test_the_train_command_takes_each_hyperparameter_as_its_type_and_leaves_the_rest_to_the_data() -> None:
    from trainer.__main__ import command_line

    args = vars(command_line().parse_args([
        "train", "rows.jsonl", "--out", "out", "--no-padding-free", "--gradient-checkpointing", "--rank", "4",
        "--dtype", "bfloat16", "--keep", "last", "--min-score", "0.5",
    ]))
    given = {k: v for k, v in args.items() if k in Hyperparameters.model_fields and v is not None}
    assert given == {"padding_free": False, "gradient_checkpointing": True, "rank": 4, "dtype": "bfloat16",
                     "keep": "last", "min_score": 0.5}
    hp = Hyperparameters(**given)
    assert chosen_fields(hp) == ["alpha", "epochs", "learning_rate", "batch_size"]
    with pytest.raises(SystemExit):  # a choice outside the field's own is refused by the parser
        command_line().parse_args(["train", "rows.jsonl", "--out", "out", "--keep", "first"])

