"""Graders: each one's result on a table of cases written from OpenAI's definitions, and bad graders refused
with the field named. "Guide" below is OpenAI's graders guide (platform.openai.com/docs/guides/graders);
"SDK" is the openai package's types under openai/types/graders/. No engine: judges are test doubles."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import pytest

from adapters import formulas
from adapters.errors import GraderError
from adapters.graders import (
    PYTHON_NOT_OFFERED,
    Sample,
    TemplateReferenceError,
    check_template,
    grade_sync,
    render,
    validate,
)


def string_check(operation: str, text: str, reference: str) -> dict[str, Any]:
    return {"type": "string_check", "name": "check", "input": text, "reference": reference, "operation": operation}


def similarity(metric: str, text: str, reference: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text_similarity", "name": "sim", "input": text, "reference": reference,
            "evaluation_metric": metric, **extra}


def refusal(grader: Any) -> GraderError:
    with pytest.raises(GraderError) as caught:
        validate(grader)
    return caught.value


# --- string_check ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "text", "reference", "score"),
    [
        # Guide: "eq: Returns 1 if the input matches the reference (case-sensitive), 0 otherwise"
        ("eq", "Paris", "Paris", 1.0),
        ("eq", "paris", "Paris", 0.0),
        ("eq", "Paris ", "Paris", 0.0),  # nothing is trimmed: a different string is not a match
        # Guide: "ne: Returns 1 if the input does not match the reference (case-sensitive), 0 otherwise"
        ("ne", "Paris", "London", 1.0),
        ("ne", "Paris", "Paris", 0.0),
        ("ne", "paris", "Paris", 1.0),
        # Guide: "like: Returns 1 if the input contains the reference (case-sensitive), 0 otherwise"
        ("like", "The capital is Paris.", "Paris", 1.0),
        ("like", "The capital is Paris.", "paris", 0.0),
        ("like", "anything", "", 1.0),  # every string contains the empty string
        ("like", "abc", "a%c", 0.0),  # a substring test, not SQL's LIKE: % is no wildcard
        ("like", "50% off", "50%", 1.0),
        # Guide: "ilike: Returns 1 if the input contains the reference (not case-sensitive), 0 otherwise"
        ("ilike", "The capital is PARIS.", "paris", 1.0),
        ("ilike", "The capital is Lyon.", "paris", 0.0),
        ("ilike", "a_c", "A_C", 1.0),
    ],
)
def test_string_check_follows_openais_definition(operation: str, text: str, reference: str, score: float) -> None:
    result = grade_sync(string_check(operation, text, reference), {}, "unused")
    assert (result.score, result.passed, result.errors) == (score, score == 1.0, [])


def test_string_check_compares_rendered_templates() -> None:
    grader = string_check("eq", "{{sample.output_text}}", "{{item.answer}}")
    assert grade_sync(grader, {"answer": "KEY=blue"}, "KEY=blue").score == 1.0
    assert grade_sync(grader, {"answer": "KEY=blue"}, "KEY=red").score == 0.0


# --- text_similarity ---------------------------------------------------------------------------------------

CAT, MAT = "the cat sat on the mat", "the cat is on the mat"
# BLEU-4 of CAT against MAT by hand: 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, no 4-gram of 3 smoothed to 1/(2*3)
BLEU_CAT = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25


@pytest.mark.parametrize(
    ("metric", "text", "reference", "score"),
    [
        # Guide: fuzzy_match is a "fuzzy string match, using rapidfuzz"; rapidfuzz's fuzz.ratio docs:
        # ratio("kitten", "sitting") = 61.54, the normalised InDel similarity 2 * LCS / (len a + len b)
        ("fuzzy_match", "kitten", "sitting", 2 * 4 / 13),
        ("fuzzy_match", CAT, MAT, 2 * 20 / 43),
        ("fuzzy_match", "abc", "abc", 1.0),
        ("fuzzy_match", "abc", "xyz", 0.0),
        ("fuzzy_match", "", "", 1.0),
        ("fuzzy_match", "", "abc", 0.0),
        # Guide: bleu "computes BLEU score between strings" (Papineni et al.: clipped n-gram precisions, 1-4)
        ("bleu", CAT, CAT, 1.0),
        ("bleu", CAT, MAT, BLEU_CAT),
        ("bleu", "", MAT, 0.0),
        # Guide: gleu "computes Google BLEU score" (Wu et al. 2016: min(precision, recall) over 1-4-grams);
        # CAT and MAT share 5 + 3 + 1 + 0 of 18 n-grams each
        ("gleu", CAT, MAT, 9 / 18),
        ("gleu", CAT, CAT, 1.0),
        ("gleu", "a b c", "x y z", 0.0),
        # Guide: rouge_1..rouge_5, rouge_l "compute ROUGE score between strings" (F1, Lin 2004)
        ("rouge_1", CAT, MAT, 5 / 6),
        ("rouge_2", CAT, MAT, 3 / 5),
        ("rouge_3", CAT, MAT, 1 / 4),
        ("rouge_4", CAT, MAT, 0.0),
        ("rouge_5", CAT, CAT, 1.0),
        ("rouge_l", CAT, MAT, 5 / 6),
        ("rouge_l", "The Cat", "the cat", 1.0),  # words are compared lower-cased
        ("rouge_l", "crème brûlée", "crème brûlée", 1.0),  # words of any script count
    ],
)
def test_text_similarity_metrics_give_their_definitions_value(metric: str, text: str, reference: str,
                                                              score: float) -> None:
    result = grade_sync(similarity(metric, text, reference), {}, "unused")
    assert result.errors == []
    assert result.score == pytest.approx(score, abs=1e-9)
    assert result.passed is None  # no pass_threshold, no pass mark


@pytest.mark.parametrize(("threshold", "passed"), [(0.8, True), (5 / 6, True), (0.9, False)])
def test_text_similarity_passes_at_or_above_its_threshold(threshold: float, passed: bool) -> None:
    result = grade_sync(similarity("rouge_1", CAT, MAT, pass_threshold=threshold), {}, "unused")
    assert result.passed is passed


@pytest.mark.parametrize(("metric", "why"), [("cosine", "embeddings model"), ("meteor", "WordNet")])
def test_metrics_that_cannot_be_computed_here_are_refused_saying_why(metric: str, why: str) -> None:
    error = refusal(similarity(metric, "a", "b"))
    assert error.param == "grader.evaluation_metric"
    assert "not offered here" in str(error) and why in str(error)


def test_fuzzy_match_of_long_texts_is_computed_without_the_quadratic_table() -> None:
    text = "lorem ipsum dolor sit amet " * 400  # 10,800 characters each: 10^8 cells for the textbook table
    result = grade_sync(similarity("fuzzy_match", text, text[::-1]), {}, "unused")
    assert 0.0 < result.score < 1.0


# --- templates ---------------------------------------------------------------------------------------------

ITEM = {
    "answer": "blue", "none": None, "n": 5, "ok": True, "meta": {"city": "Paris", "tags": ["a", "b"]},
    "rows": [{"x": 1}, "y"],
}
SAMPLE = Sample.of('{"city": "Lyon", "count": 2}')


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        # Guide, templating: "{{ namespace.variable }}", namespaces item and sample, nested variables
        # "with a syntax similar to JSON path"
        ("{{item.answer}}", "blue"),
        ("{{ item.answer }}", "blue"),
        ("{{item.meta.city}}", "Paris"),
        ("{{item.meta.tags[1]}}", "b"),
        ("{{item.rows[0].x}}", "1"),
        ("{{item.rows.1}}", "y"),
        ("{{item.n}} and {{item.ok}}", "5 and true"),  # not strings: as JSON
        ("{{item.meta}}", '{"city": "Paris", "tags": ["a", "b"]}'),
        ("no template", "no template"),
        # Guide: sample.output_text is the output as a string; output_json the output as a JSON object
        ("{{sample.output_text}}", '{"city": "Lyon", "count": 2}'),
        ("{{sample.output_json.city}} x{{sample.output_json.count}}", "Lyon x2"),
    ],
)
def test_templates_render_item_and_sample_fields(template: str, rendered: str) -> None:
    assert render(check_template(template), ITEM, SAMPLE) == rendered


@pytest.mark.parametrize(
    ("template", "sample", "says"),
    [
        ("{{item.answr}}", SAMPLE, "item has no 'answr' (it has answer, meta, n, none, ok, rows)"),
        ("{{item.meta.country}}", SAMPLE, "item.meta has no 'country' (it has city, tags)"),
        ("{{item.meta.tags[2]}}", SAMPLE, "item.meta.tags has 2 element(s)"),
        ("{{item.answer.x}}", SAMPLE, "item.answer is a str, not an object"),
        ("{{sample.output_json.city}}", Sample.of("plain"), "sample.output_json is not set (the sample is not JSON)"),
        ("{{item.none.x}}", SAMPLE, "item.none is null, not an object"),
    ],
)
def test_a_reference_that_does_not_resolve_says_where_it_stopped(template: str, sample: Sample, says: str) -> None:
    with pytest.raises(TemplateReferenceError) as caught:
        render(template, ITEM, sample)
    assert says in str(caught.value) and template in str(caught.value)


def test_an_unresolved_reference_scores_zero_with_the_error_recorded_not_raised() -> None:
    result = grade_sync(string_check("eq", "{{sample.output_text}}", "{{item.missing}}"), ITEM, "blue")
    assert (result.score, result.passed) == (0.0, False)
    assert [error.kind for error in result.errors] == ["invalid_variable_error"]
    assert "item has no 'missing'" in result.errors[0].message


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{itme.answer}}", "is not a reference"),
        ("{{item}}", "is not a reference"),  # Guide: the format must be namespace.variable
        ("{{answer}}", "is not a reference"),
        ("{{sample.output}}", "the sample has no field 'output'"),
        ("{{sample.output_text.x}}", "sample.output_text is a string"),
    ],
)
def test_a_bad_reference_is_refused_when_the_grader_is_validated(template: str, says: str) -> None:
    error = refusal(string_check("eq", "ok", template))
    assert error.param == "grader.reference" and says in str(error)


def test_a_text_sample_gets_output_json_when_it_is_json() -> None:
    assert Sample.of('{"a": 1}').output_json == {"a": 1}
    assert Sample.of("not json").output_json is None
    assert Sample.of("[" * 100_000).output_json is None  # too deep for the parser: not JSON, not a crash
    assert Sample.of({"output_text": "x", "output_json": {"b": 2}}).output_json == {"b": 2}


# --- multi and its formulas --------------------------------------------------------------------------------


def multi(formula: str, **graders: dict[str, Any]) -> dict[str, Any]:
    return {"type": "multi", "name": "total", "graders": graders, "calculate_output": formula}


YES = string_check("eq", "x", "x")  # always 1
NO = string_check("eq", "x", "y")  # always 0


@pytest.mark.parametrize(
    ("formula", "value"),
    [
        # Guide, multigraders: "(name + email) / 2" over the graders' keys; operators + - * / and ^ (power);
        # functions min, max, abs, floor, ceil, exp, sqrt, log
        ("(a + b) / 2", 0.5),
        ("a * 0.25 + b", 0.25),
        ("a - b", 1.0),
        ("(a + 1) ^ 2 / 8", 0.5),
        ("0.5 ^ 2", 0.25),
        # ^ is a power as in mathematics: above * and unary minus, grouping from the right
        ("b + 2 * 0.5 ^ 2", 0.5),
        ("2 ^ 3 ^ 0 / 4", 0.5),
        ("-0.5 ^ 2 + 0.5", 0.25),
        ("0.5 ** 2", 0.25),
        ("min(a, b)", 0.0),
        ("max(a, b, 0.3)", 1.0),
        ("abs(b - a) / 4", 0.25),
        ("floor(a * 2.5) / 4", 0.5),
        ("ceil(0.2) * a", 1.0),
        ("sqrt(0.25)", 0.5),
        ("exp(b) - a", 0.0),
        ("log(exp(0.75))", 0.75),
        ("-a + 1.5", 0.5),
        ("1e-1 * 5", 0.5),
    ],
)
def test_multi_grader_computes_its_formula_over_the_sub_scores(formula: str, value: float) -> None:
    result = grade_sync(multi(formula, a=YES, b=NO), {}, "x")
    assert result.errors == []
    assert result.score == pytest.approx(value)
    assert {name: sub.score for name, sub in result.sub_results.items()} == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    "formula",
    [
        "a.__class__",
        "a[0]",
        "a if b else 0",
        "a < b",
        "a // 2",
        "a % 2",
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "(lambda: 1)()",
        "'1'",
        "True",
        "min",
        "log(a, 2)",
        "max()",
        "sqrt(x=a)",
        "max(*[a, b])",
        "a b",
        "",
        "c + a",
        "(" * 300 + "a" + ")" * 300,
        "a + " * 600 + "a",
    ],
)
def test_a_formula_outside_the_language_is_refused_naming_calculate_output(formula: str) -> None:
    error = refusal(multi(formula, a=YES, b=NO))
    assert error.param == "grader.calculate_output"


def test_a_formula_names_the_unknown_grader() -> None:
    assert "'c' is not a grader of this multi grader (graders: a, b)" in str(refusal(multi("c + a", a=YES, b=NO)))


@pytest.mark.parametrize("formula", ["a / b", "log(b)", "sqrt(b - a)", "(0 - a) ^ 0.5", "9 ^ 9 ^ 9", "exp(1000)"])
def test_a_formula_with_no_value_scores_zero_with_the_error_recorded(formula: str) -> None:
    result = grade_sync(multi(formula, a=YES, b=NO), {}, "x")
    assert result.score == 0.0
    assert [error.kind for error in result.errors] == ["other_error"]


def test_multi_clips_its_value_to_zero_one_and_keeps_the_raw_value() -> None:
    result = grade_sync(multi("a + a + b", a=YES, b=NO), {}, "x")
    assert (result.score, result.details["formula_value"]) == (1.0, 2.0)
    assert grade_sync(multi("b - a", a=YES, b=NO), {}, "x").score == 0.0


def test_multi_scores_a_failing_sub_grader_zero_and_keeps_its_error() -> None:
    broken = string_check("eq", "{{item.nope}}", "x")
    result = grade_sync(multi("(a + broken) / 2", a=YES, broken=broken), {}, "x")
    assert result.score == 0.5
    assert [(error.kind, error.message.split(":")[0]) for error in result.errors] == [
        ("invalid_variable_error", "broken")
    ]


def test_multi_takes_the_sdks_single_grader_named_by_its_name() -> None:
    grader = {"type": "multi", "name": "total", "graders": YES, "calculate_output": "check / 4"}
    assert grade_sync(grader, {}, "x").score == 0.25


def test_formulas_see_only_numbers_even_when_python_would_build_big_integers() -> None:
    formula = formulas.parse("2 ^ 10", set())
    assert formula.evaluate({}) == 1024.0 and isinstance(formula.evaluate({}), float)
    with pytest.raises(formulas.FormulaRuntimeError):
        formulas.parse("10 ^ 10 ^ 10", set()).evaluate({})
    assert math.isfinite(formulas.parse("a", {"a"}).evaluate({"a": 0.5}))


# --- score_model and label_model, with a scripted judge ----------------------------------------------------


class ScriptedJudge:
    """Test double for the gateway's serving path: answers from a script and records what it was asked."""

    def __init__(self, *answers: str | Exception):
        self.answers = list(answers)
        self.calls: list[tuple[str, list[dict[str, str]], dict[str, Any]]] = []

    def __call__(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        self.calls.append((model, messages, params))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class AsyncScriptedJudge(ScriptedJudge):
    async def __call__(self, model: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:  # type: ignore[override]
        await asyncio.sleep(0)
        return super().__call__(model, messages, params)


def score_model(**extra: Any) -> dict[str, Any]:
    return {
        "type": "score_model",
        "name": "judge",
        "model": "SmolLM2-135M-Instruct",
        "input": [
            {"role": "developer", "content": "Score the answer from 0 to 10."},
            {"role": "user", "content": [{"type": "input_text", "text": "Q: {{item.question}}"},
                                         {"type": "output_text", "text": "A: {{sample.output_text}}"}]},
        ],
        "range": [0, 10],
        **extra,
    }


@pytest.mark.parametrize(
    ("answer", "score", "raw"),
    [
        # SDK: range "defaults to [0, 1]"; here [0, 10] and the score is the judge's number within it
        ('{"result": 7}', 0.7, 7.0),
        ('{"steps": [], "result": 2.5}', 0.25, 2.5),
        ("8", 0.8, 8.0),
        ("I would give it a 9.", 0.9, 9.0),
        ('Sure: {"result": "10"}', 1.0, 10.0),
        ("0", 0.0, 0.0),
    ],
)
def test_score_model_normalises_the_judges_number_to_zero_one(answer: str, score: float, raw: float) -> None:
    result = grade_sync(score_model(), {"question": "2+2?"}, "4", ScriptedJudge(answer))
    assert result.errors == []
    assert (result.score, result.details["raw_score"]) == (pytest.approx(score), raw)


@pytest.mark.parametrize(
    "answer", ["7/10", "great answer", "11", "-1", '{"result": true}', "nan", "", "[" * 5000 + "}"]
)
def test_a_judge_answer_that_cannot_be_read_scores_zero_with_the_error_recorded(answer: str) -> None:
    result = grade_sync(score_model(), {"question": "2+2?"}, "4", ScriptedJudge(answer))
    assert (result.score, result.passed) == (0.0, False)
    assert [error.kind for error in result.errors] == ["model_grader_parse_error"]
    assert result.details["judge_output"] == answer


def test_a_judge_that_fails_scores_zero_with_a_server_error_recorded() -> None:
    result = grade_sync(score_model(), {"question": "q"}, "a", ScriptedJudge(RuntimeError("engine overloaded")))
    assert result.score == 0.0
    assert result.errors[0].kind == "model_grader_server_error" and "engine overloaded" in result.errors[0].message


def test_score_model_asks_the_judge_with_rendered_messages_and_its_sampling_params() -> None:
    judge = AsyncScriptedJudge('{"result": 6}')
    grader = score_model(sampling_params={"temperature": 0, "max_completions_tokens": 16, "seed": 3}, pass_threshold=6)
    result = grade_sync(grader, {"question": "2+2?"}, "4", judge)
    assert result.passed is True  # pass_threshold is in the range's units: 6 of 10
    [(model, messages, params)] = judge.calls
    assert model == "SmolLM2-135M-Instruct"
    assert messages == [
        {"role": "system", "content": "Score the answer from 0 to 10."},
        {"role": "user", "content": "Q: 2+2?\nA: 4"},
    ]
    assert {key: params[key] for key in ("temperature", "max_tokens", "seed")} == {"temperature": 0, "max_tokens": 16,
                                                                                  "seed": 3}
    schema = params["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["result"] == {"type": "number", "minimum": 0.0, "maximum": 10.0}


def test_score_model_below_its_threshold_does_not_pass() -> None:
    assert grade_sync(score_model(pass_threshold=6), {"question": "q"}, "a", ScriptedJudge("5")).passed is False


def label_model() -> dict[str, Any]:
    return {
        "type": "label_model",
        "name": "verdict",
        "model": "SmolLM2-135M-Instruct",
        "input": [{"role": "user", "content": "Is {{sample.output_text}} the capital of {{item.country}}?"}],
        "labels": ["correct", "incorrect", "unsure"],
        "passing_labels": ["correct"],
    }


@pytest.mark.parametrize(
    ("answer", "label", "passed"),
    [
        # SDK: "passing_labels: the labels that indicate a passing result"
        ('{"result": "correct"}', "correct", True),
        ("correct", "correct", True),
        ("Incorrect.", "incorrect", False),
        ('"unsure"', "unsure", False),
    ],
)
def test_label_model_passes_on_a_passing_label(answer: str, label: str, passed: bool) -> None:
    judge = ScriptedJudge(answer)
    result = grade_sync(label_model(), {"country": "France"}, "Paris", judge)
    assert (result.details["label"], result.passed, result.score) == (label, passed, 1.0 if passed else 0.0)
    [(_, messages, params)] = judge.calls
    assert messages == [{"role": "user", "content": "Is Paris the capital of France?"}]
    assert params["response_format"]["json_schema"]["schema"]["properties"]["result"]["enum"] == [
        "correct", "incorrect", "unsure"]


@pytest.mark.parametrize("answer", ["maybe", "correct or incorrect", '{"result": "wrong"}'])
def test_a_label_outside_the_labels_scores_zero_with_the_error_recorded(answer: str) -> None:
    result = grade_sync(label_model(), {"country": "France"}, "Paris", ScriptedJudge(answer))
    assert (result.score, result.passed) == (0.0, False)
    assert [error.kind for error in result.errors] == ["model_grader_parse_error"]


def test_a_model_grader_without_a_caller_is_a_grader_error() -> None:
    with pytest.raises(GraderError) as caught:
        grade_sync(label_model(), {"country": "France"}, "Paris")
    assert caught.value.param == "grader.model"


def test_multi_over_a_judge_and_a_string_check() -> None:
    exact = string_check("eq", "{{sample.output_text}}", "4")
    grader = multi("0.5 * judge + 0.5 * exact", judge=score_model(), exact=exact)
    result = grade_sync(grader, {"question": "2+2?"}, "4", AsyncScriptedJudge('{"result": 8}'))
    assert result.score == pytest.approx(0.9)


# --- bad graders name the field ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grader", "param", "says"),
    [
        (string_check("neq", "a", "b"), "grader.operation", "'eq', 'ne', 'like' or 'ilike'"),
        ({**string_check("eq", "a", "b"), "operator": "eq"}, "grader.operator", "Extra inputs"),
        ({"type": "string_check", "name": "x", "input": "a", "operation": "eq"}, "grader.reference", "Field required"),
        ({"type": "regex", "name": "x"}, "grader.type", "must be one of string_check"),
        ({"name": "x"}, "grader.type", "must be one of"),
        ([], "grader", "must be an object"),
        (similarity("rouge_9", "a", "b"), "grader.evaluation_metric", "Input should be"),
        (similarity("bleu", "a", "b", pass_threshold=2), "grader.pass_threshold", "less than or equal to 1"),
        ({**score_model(), "range": [10, 0]}, "grader.range", "low < high"),
        ({**score_model(), "input": []}, "grader.input", "at least 1"),
        ({**score_model(), "input": [{"role": "judge", "content": "x"}]}, "grader.input[0].role", "'user'"),
        ({**score_model(), "input": [{"role": "user", "content": "{{item}}"}]}, "grader.input[0].content",
         "not a reference"),
        ({**score_model(), "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "grader.input[0].content", "input_image is not offered"),
        ({**score_model(), "sampling_params": {"temperature": 5}}, "grader.sampling_params.temperature", "2"),
        ({**label_model(), "passing_labels": ["yes"]}, "grader.passing_labels", "subset of labels"),
        ({**label_model(), "labels": ["a", "a"], "passing_labels": ["a"]}, "grader.labels", "distinct"),
        (multi("a", a=string_check("like", "x", "{{sample.nope}}")), "grader.graders.a.reference", "no field 'nope'"),
        (multi("a", a={"type": "string_check", "name": "a"}), "grader.graders.a.input", "Field required"),
        (multi("x", **{"x y": YES}), "grader.graders", "cannot be used in a formula"),
        (multi("max", max=YES), "grader.graders", "cannot be used in a formula"),
        ({"type": "multi", "name": "m", "graders": {}, "calculate_output": "1"}, "grader.graders", "at least one"),
    ],
)
def test_a_bad_grader_is_refused_naming_the_field(grader: Any, param: str, says: str) -> None:
    error = refusal(grader)
    assert error.param == param, str(error)
    assert says in str(error)


# --- the python grader -------------------------------------------------------------------------------------


def python_grader() -> dict[str, Any]:
    return {"type": "python", "name": "code", "source": "def grade(sample, item) -> float:\n    return 1.0\n"}


def test_the_python_grader_is_refused_as_not_offered() -> None:
    error = refusal(python_grader())
    assert error.param == "grader.type"
    assert str(error) == f"grader.type: {PYTHON_NOT_OFFERED}"
    assert "the python grader is not offered" in str(error)


def test_the_python_grader_is_refused_inside_a_multi_grader_too() -> None:
    error = refusal(multi("code", code=python_grader()))
    assert error.param == "grader.graders.code.type" and "the python grader is not offered" in str(error)


def test_validate_keeps_the_graders_fields() -> None:
    raw = multi("(a + b) / 2", a=YES, b=similarity("rouge_l", "{{sample.output_text}}", "{{item.ref}}"))
    assert json.loads(validate(raw).model_dump_json(exclude_none=True)) == raw


def test_a_long_template_of_unclosed_braces_is_checked_in_one_pass() -> None:
    # A lazy `{{(.*?)}}` scanned to the end from each of the 100,000 openings: minutes, not milliseconds
    text = "{{ item" * 100_000
    assert check_template(text) == text
    assert render(text, {}, None) == text


def test_the_openai_sdks_grader_objects_grade_as_their_json_does() -> None:
    from openai.types.graders import StringCheckGrader

    sdk = StringCheckGrader(type="string_check", name="c", input="{{sample.output_text}}", reference="a",
                            operation="like")
    assert grade_sync(sdk, {}, "cat").score == 1.0
