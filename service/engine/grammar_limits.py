"""What a structured-output grammar may ask for, checked before any grammar backend sees it.

A grammar backend's cost grows with what a schema or regex *says*, not with its size in bytes: `minItems:
1e9` is 40 bytes, and guidance tried to allocate for every item (16.8 GB, the gateway OOM-killed);
`((a{0,1000}){0,1000}){0,1000}` expands to 1e9 repetitions. These are pure checks on the request's
constraint, run on the event loop in microseconds per kilobyte, that refuse with the limit and the
parameter named. They bound what the grammar worker (service/engine/grammar_worker.py) and vLLM's engine core
will ever be handed; the worker's wall-time limit then catches what is costly in ways no static rule
predicts (xgrammar compiles each distinct bounded string in about a second).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# JSON Schema keywords whose value is a repetition count the grammar must unroll or count to; each multiplies
# what is nested inside it (an array's items, an object's members, a string's characters).
COUNT_KEYWORDS = (
    "minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties", "minContains", "maxContains"
)


@dataclass(frozen=True)
class GrammarLimits:
    """The bounds (settings of the same names, see service/settings.py)."""

    max_grammar_bytes: int = 64 * 1024
    max_grammar_depth: int = 32
    max_grammar_members: int = 1000
    max_grammar_repeat: int = 10_000
    max_grammar_repeat_product: int = 100_000


class GrammarLimitError(ValueError):
    """A constraint over one of the limits; `param` is where in the request, `limit` the setting's name."""

    def __init__(self, param: str, limit: str, message: str):
        super().__init__(f"{param}: {message} ({limit})")
        self.param, self.limit = param, limit


def check_constraint(
    fields: dict[str, Any], limits: GrammarLimits, param: str, schema_param: str | None = None
) -> None:
    """Check one request's constraint (vLLM's StructuredOutputsParams fields: json, regex, choice, grammar,
    json_object) against `limits`. Errors name `param.<kind>`, or `schema_param` for a JSON schema given
    elsewhere in the request (`response_format.json_schema.schema`)."""
    for kind in ("json", "regex", "choice", "grammar", "structural_tag"):
        value = fields.get(kind)
        if value is None:
            continue
        where = schema_param if kind == "json" and schema_param else f"{param}.{kind}"
        if kind == "json":
            # The walk first: it stops at the first node over a limit, where serializing a 1.2 MB schema to
            # measure it would hold the event loop for every one of eight concurrent copies.
            check_schema(json.loads(value) if isinstance(value, str) else value, limits, where)
        text = value if isinstance(value, str) else json.dumps(value)
        if len(text) > limits.max_grammar_bytes:
            raise GrammarLimitError(
                where, "max_grammar_bytes",
                f"the constraint is {len(text)} bytes; this gateway compiles at most {limits.max_grammar_bytes}",
            )
        if kind == "regex":
            check_regex(value, limits, where)
        elif kind == "choice":
            _check_members(len(value), limits, where)
        elif kind == "grammar":
            # EBNF/Lark: its `{m,n}` counts are the same hazard as a regex's; no other construct multiplies.
            check_regex(value, limits, where)


def check_schema(schema: Any, limits: GrammarLimits, param: str) -> None:
    """A JSON schema's nesting, member count, repetition bounds (and their product down nested arrays and
    objects), and every `pattern` in it as a regex."""
    members = 0
    # (node, its path, JSON nesting depth, product of the repetition bounds of the containers above it)
    stack: list[tuple[Any, str, int, int]] = [(schema, param, 1, 1)]
    while stack:
        node, path, depth, above = stack.pop()
        if depth > limits.max_grammar_depth:
            raise GrammarLimitError(
                path, "max_grammar_depth", f"the schema nests deeper than {limits.max_grammar_depth} levels"
            )
        if isinstance(node, list):
            stack.extend((item, f"{path}[{i}]", depth + 1, above) for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        factor = 1
        for key in COUNT_KEYWORDS:
            if not _is_number(node.get(key)):
                continue  # a wrong type is the backend's to refuse, with its own message
            bound: float = node[key]
            if bound > limits.max_grammar_repeat:
                raise GrammarLimitError(
                    f"{path}.{key}", "max_grammar_repeat",
                    f"{key} is {bound}; this gateway allows at most {limits.max_grammar_repeat}",
                )
        for key in COUNT_KEYWORDS:
            if _is_number(node.get(key)):
                factor = max(factor, int(node[key]))
        product = above * factor
        if product > limits.max_grammar_repeat_product:
            raise GrammarLimitError(
                path, "max_grammar_repeat_product",
                f"the repetition bounds nested down to here multiply to {product}; this gateway allows at most "
                f"{limits.max_grammar_repeat_product}",
            )
        for key in ("properties", "patternProperties", "$defs", "definitions"):
            if isinstance(node.get(key), dict):
                members += len(node[key])
        for key in ("enum", "required"):
            if isinstance(node.get(key), list):
                members += len(node[key])
        if members > limits.max_grammar_members:
            raise GrammarLimitError(
                path, "max_grammar_members",
                f"the schema has more than {limits.max_grammar_members} properties, definitions and enum values",
            )
        if isinstance(node.get("pattern"), str):
            check_regex(node["pattern"], limits, f"{path}.pattern", above)
        inner = product if factor > 1 else above
        for key, value in node.items():
            if isinstance(value, dict | list):
                stack.append((value, f"{path}.{key}", depth + 1, inner))


def check_regex(pattern: str, limits: GrammarLimits, param: str, above: int = 1) -> None:
    """Every `{m,n}` count of a regex (or grammar) and the product of counts nested in groups."""
    # Each open group keeps the largest product of counts seen inside it.
    groups: list[int] = [1]
    last = 1  # what a following quantifier applies to: the group just closed, or one atom
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i, last = i + 2, 1
            continue
        if char == "[":
            i, last = _class_end(pattern, i), 1
            continue
        if char == "(":
            groups.append(1)
        elif char == ")" and len(groups) > 1:
            last = groups.pop()
            groups[-1] = max(groups[-1], last)
        elif char == "{":
            count, end = _count(pattern, i)
            if count is not None:
                if count > limits.max_grammar_repeat:
                    raise GrammarLimitError(
                        param, "max_grammar_repeat",
                        f"a repetition of {count}; this gateway allows at most {limits.max_grammar_repeat}",
                    )
                product = last * max(count, 1)
                if product * above > limits.max_grammar_repeat_product:
                    raise GrammarLimitError(
                        param, "max_grammar_repeat_product",
                        f"nested repetitions multiply to {product * above}; this gateway allows at most "
                        f"{limits.max_grammar_repeat_product}",
                    )
                groups[-1] = max(groups[-1], product)
                i, last = end, product
                continue
        else:
            last = 1
        i += 1


def _check_members(count: int, limits: GrammarLimits, param: str) -> None:
    if count > limits.max_grammar_members:
        raise GrammarLimitError(
            param, "max_grammar_members", f"{count} choices; this gateway allows at most {limits.max_grammar_members}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _class_end(pattern: str, start: int) -> int:
    """The index after a `[...]` character class (a `]` first in the class is a literal)."""
    i = start + 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _count(pattern: str, start: int) -> tuple[int | None, int]:
    """(the largest number of a `{m}`, `{m,}` or `{m,n}` quantifier at `start`, the index after it), or
    (None, start) when the brace is a literal."""
    end = pattern.find("}", start)
    body = pattern[start + 1 : end] if end > 0 else ""
    parts = body.split(",")
    numeric = all(p.strip().isdigit() or (k == 1 and not p.strip()) for k, p in enumerate(parts))
    if not body or len(parts) > 2 or not numeric:
        return None, start
    # Digits only: int() of a 5,000-digit count is refused by Python itself; the length says it is too big.
    numbers = [int(p) if len(p.strip()) < 19 else 1 << 62 for p in parts if p.strip()]
    return max(numbers), end + 1
