"""The grammar limits: a structured-output constraint that asks a backend for absurd work is refused, with the
limit and the place in the request named, before any backend sees it (pure functions, fast)."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

from service.engine.grammar_limits import GrammarLimitError, GrammarLimits, check_constraint

LIMITS = GrammarLimits()
ROOT = "response_format.json_schema.schema"


def _refusal(
    fields: dict[str, Any], param: str = "structured_outputs", schema_param: str | None = ROOT
) -> GrammarLimitError:
    with pytest.raises(GrammarLimitError) as caught:
        check_constraint(fields, LIMITS, param, schema_param)
    return caught.value


def test_the_schema_that_oom_killed_the_gateway_is_refused_naming_min_items() -> None:
    refused = _refusal({"json": {"type": "array", "minItems": 1000000000}})
    assert (refused.param, refused.limit) == (f"{ROOT}.minItems", "max_grammar_repeat")
    assert "1000000000" in str(refused)


def test_every_repetition_keyword_is_bounded_wherever_it_is_nested() -> None:
    for key in ("maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "maxContains"):
        schema = {"type": "object", "properties": {"a": {"type": "array", "items": {key: 10**6}}}}
        refused = _refusal({"json": schema})
        assert refused.param == f"{ROOT}.properties.a.items.{key}", refused.param


def test_nested_regex_repetitions_multiply_and_are_refused() -> None:
    refused = _refusal({"regex": "((a{0,1000}){0,1000}){0,1000}"})
    assert (refused.param, refused.limit) == ("structured_outputs.regex", "max_grammar_repeat_product")
    refused = _refusal({"regex": "a{2000000}"})
    assert refused.limit == "max_grammar_repeat"


def test_nested_array_and_string_bounds_multiply_too() -> None:
    schema = {"type": "array", "maxItems": 1000, "items": {"type": "array", "maxItems": 1000}}
    assert _refusal({"json": schema}).limit == "max_grammar_repeat_product"
    pattern = {"type": "array", "maxItems": 1000, "items": {"type": "string", "pattern": "[a-z]{0,1000}"}}
    refused = _refusal({"json": pattern})
    assert (refused.param, refused.limit) == (f"{ROOT}.items.pattern", "max_grammar_repeat_product")


def test_too_many_properties_too_deep_or_too_big_is_refused() -> None:
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(20_000)}}
    assert _refusal({"json": wide}).limit in ("max_grammar_bytes", "max_grammar_members")
    many = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1001)}}
    assert _refusal({"json": many}).limit == "max_grammar_members"
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(40):
        deep = {"type": "array", "items": deep}
    assert _refusal({"json": deep}).limit == "max_grammar_depth"
    assert _refusal({"choice": [str(i) for i in range(5000)]}).limit == "max_grammar_members"
    assert _refusal({"regex": "a" * 100_000}).limit == "max_grammar_bytes"


def test_ordinary_constraints_pass() -> None:
    city = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 24},
            "tags": {"type": "array", "maxItems": 10, "items": {"type": "string", "maxLength": 50}},
            "when": {"type": "string", "pattern": r"20[0-9]{2}-[01][0-9]-[0-3][0-9]"},
        },
        "required": ["city"],
    }
    check_constraint({"json": city, "disable_any_whitespace": True}, LIMITS, "response_format", ROOT)
    check_constraint({"regex": r"\d{3}-[{}]{0,3}\{9999999\}(ab){2,}x{,5}"}, LIMITS, "structured_outputs")
    check_constraint({"choice": ["yes", "no"]}, LIMITS, "structured_outputs")
    check_constraint({"json_object": True}, LIMITS, "response_format")


def test_a_tools_schema_is_named_by_its_place_among_the_tools() -> None:
    refused = _refusal({"json": {"type": "array", "minItems": 10**9}}, "tools", "tools[2].function.parameters")
    assert refused.param == "tools[2].function.parameters.minItems"


def test_large_constraints_within_the_limits_pass() -> None:
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 9} for i in range(900)}}
    check_constraint({"json": schema}, LIMITS, "response_format", ROOT)
    check_constraint({"regex": "(ab|c){0,9}" * 5000}, GrammarLimits(max_grammar_bytes=10**6), "structured_outputs")


@pytest.mark.slow
def test_a_grammar_worker_over_its_memory_cap_fails_that_request_not_the_gateway() -> None:
    import asyncio

    from adapters.models import DEFAULT_MODEL, resolve_model
    from service.engine.grammar_worker import GrammarRefused, GrammarWorkers

    # Sent straight to the worker, past the static limits: 300,000 alternatives, which xgrammar parses into
    # hundreds of megabytes (uncapped it ran over 120 s). The test's process stands for the gateway: it only
    # waits on a pipe, whatever the worker allocates.
    runaway = "root ::= " + " | ".join(f'"w{i}"' for i in range(300_000))
    workers = GrammarWorkers(resolve_model(DEFAULT_MODEL), 1, timeout_s=120, memory_bytes=32 * 2**20)

    async def scenario() -> None:
        workers.start()
        with pytest.raises(GrammarRefused) as refused:
            await workers.verify({"grammar": runaway})
        assert refused.value.status == 400 and "grammar_worker_memory_mb" in str(refused.value), refused.value
        # The worker (or its replacement) compiles the next constraint as usual.
        assert await workers.verify({"choice": ["yes", "no"]}) == {
            "grammar": 'root ::= "yes" | "no"', "disable_any_whitespace": False, "disable_additional_properties": False
        }

    try:
        asyncio.run(scenario())
    finally:
        workers.shutdown()


def _grammar_workers(expected: int) -> list[Any]:
    """The grammar workers this process started: the children of its multiprocessing fork server, once there are
    `expected` of them or after 60 s (the server imports the workers' code before it forks the first; one just
    killed leaves the list once reaped)."""
    import time

    import psutil

    deadline = time.monotonic() + 60
    while True:
        workers = []
        for server in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if any("forkserver" in part for part in server.cmdline()):
                    workers += [c for c in server.children() if c.status() != psutil.STATUS_ZOMBIE]
        if len(workers) == expected or time.monotonic() > deadline:
            return workers
        time.sleep(0.05)


@pytest.mark.slow
def test_grammar_workers_launched_before_the_engine_load_meanwhile_and_none_outlives_shutdown() -> None:
    import asyncio

    import psutil

    from adapters.models import DEFAULT_MODEL, resolve_model
    from service.engine.grammar_worker import GrammarWorkers

    workers = GrammarWorkers(resolve_model(DEFAULT_MODEL), 2, timeout_s=120, memory_bytes=0)
    try:
        workers.launch()  # returns at once: the engine starts while they import
        workers.launch()  # twice is still two
        assert workers.pids() == [] and len(_grammar_workers(2)) == 2
        workers.start()  # waits for the two launched, starts none
        assert len(workers.pids()) == 2 and all(psutil.pid_exists(pid) for pid in workers.pids())
        assert {p.pid for p in _grammar_workers(2)} == set(workers.pids())
        server = {p.ppid() for p in _grammar_workers(2)}  # one fork server, which imported their code once
        assert len(server) == 1
        verified = asyncio.run(workers.verify({"choice": ["yes", "no"]}))
        assert verified["grammar"] == 'root ::= "yes" | "no"'
    finally:
        workers.shutdown()
    assert _grammar_workers(0) == []
    # Launched and never waited for (an engine that failed to start): shutdown still stops them. They are forked
    # from the same server, whose imports they do not repeat.
    workers.launch()
    assert len(_grammar_workers(2)) == 2 and {p.ppid() for p in _grammar_workers(2)} == server
    workers.shutdown()
    assert _grammar_workers(0) == []
