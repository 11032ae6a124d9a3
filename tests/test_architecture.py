"""docs/architecture.md kept true: every module's imports of our own packages go the allowed way (read with `ast`, so
an import inside a function or under TYPE_CHECKING counts too), and service/ keeps its size rules."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OURS = ("adapters", "trainer", "service", "client", "docsgen")
ROOT = {"settings", "errors", "metrics", "logs", "gateway", "parent_death", "queued", "__init__", "__main__", "app"}
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def layer(module: str) -> str:
    """The layer of a dotted module name: `adapters`, `service.engine`, `service.root`, `service.app`, ..."""
    parts = module.split(".")
    if parts[0] != "service" or len(parts) == 1:
        return parts[0]
    if parts[1] in ("app", "__main__"):
        return "service.app"
    if parts[1] in ROOT:
        return "service.root"
    return f"service.{parts[1]}"


SERVICE_BELOW_API = {"service.root", "service.protocol", "service.engine", "service.runners", "service.inference",
                     "service.management"}
ALLOWED: dict[str, set[str]] = {
    "adapters": {"adapters"},
    "trainer": {"adapters", "trainer"},
    "service.root": {"adapters", "service.root"},
    "service.protocol": {"adapters", "service.root", "service.protocol"},
    "service.engine": {"adapters", "service.root", "service.engine"},
    "service.runners": {"adapters", "service.root", "service.runners"},
    "service.inference": {"adapters", "service.root", "service.protocol", "service.engine", "service.inference"},
    "service.management": {"adapters", "service.root", "service.protocol", "service.engine", "service.runners",
                           "service.inference", "service.management"},
    "service.api": {"adapters", "service.api", *SERVICE_BELOW_API},
    "service.app": {"adapters", "service.api", "service.app", *SERVICE_BELOW_API},
    "client": {"client"},
    "docsgen": {"adapters", "service.app", "service.api", "docsgen", *SERVICE_BELOW_API},
}
# The Gateway holds the typed parts of the layers above it; it names their types for the type checker only.
TYPE_ONLY = {"service.gateway": {"service.engine", "service.runners", "service.inference", "service.management"}}


def modules() -> list[tuple[str, Path]]:
    found = []
    for package in OURS:
        for path in sorted((REPO / package).rglob("*.py")):
            dotted = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found.append((dotted.removesuffix(".__init__"), path))
    return found


def imports(path: Path, dotted: str) -> list[tuple[str, bool]]:
    """(imported module of ours, under TYPE_CHECKING) for every import in the file."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from service.engine import cpu_lora` imports service.engine.cpu_lora
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{dotted}: relative import; this codebase names modules in full")
        found += [(name, id(node) in type_only) for name in names if name.split(".")[0] in OURS]
    return found


def test_every_import_of_our_own_goes_the_allowed_direction() -> None:
    wrong = []
    for dotted, path in modules():
        mine = layer(dotted)
        for imported, type_only in imports(path, dotted):
            theirs = layer(imported)
            if theirs in ALLOWED[mine] or (type_only and theirs in TYPE_ONLY.get(dotted, set())):
                continue
            wrong.append(f"{dotted} ({mine}) imports {imported} ({theirs})")
    assert not wrong, "imports against docs/architecture.md:\n" + "\n".join(wrong)


def test_the_vllm_plugins_import_nothing_of_ours_but_what_they_need() -> None:
    """vLLM loads them in its own processes: service/engine/__init__.py stays empty, and the plugins reach only
    their own ops (and their decode kernel, which reads the CPU's flags) and the parent-death call."""
    assert (REPO / "service" / "engine" / "__init__.py").read_text().strip() == ""
    allowed: tuple[str, ...]
    for plugin, allowed in (
        ("service.engine.cpu_lora", ("service.engine.cpu_lora_ops.", "service.engine.cpu_lora_kernel")),
        ("service.engine.cpu_lora_kernel", ("adapters.hardware.",)),
        ("service.engine.lifetime", ("service.parent_death.",)),
    ):
        path = REPO / (plugin.replace(".", "/") + ".py")
        found = [name for name, _ in imports(path, plugin)]
        assert found and all(name.startswith(allowed) for name in found), (plugin, found)


def test_the_architecture_test_sees_a_wrong_import(tmp_path: Path) -> None:
    """The check itself: an engine module importing the API layer is caught."""
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from service.api.deps import GatewayDep\n")
    (imported, type_only), = imports(wrong, "service.engine.wrong")
    assert layer(imported) == "service.api" and not type_only
    assert layer(imported) not in ALLOWED[layer("service.engine.wrong")]


def test_no_service_module_over_500_lines_and_no_function_over_60() -> None:
    too_long = []
    for path in sorted((REPO / "service").rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(REPO)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_below_the_edge_nothing_imports_or_raises_http_errors() -> None:
    """Engine, runners, inference and the use cases raise domain errors (adapters/errors.py); service/errors.py
    maps them to HTTP once, at the edge. None of them imports that mapping or names APIError; a record that keeps
    the HTTP answer a request would have had (a batch's error lines) asks the edge's mapping for it as data
    (`answer_of`), and may import that alone."""
    wrong = []
    for dotted, path in modules():
        if layer(dotted) not in ("service.engine", "service.runners", "service.inference", "service.management"):
            continue
        mapping = [name for name, _ in imports(path, dotted) if name.startswith("service.errors")]
        wrong += [f"{dotted} imports {name}" for name in mapping if name != "service.errors.answer_of"]
        tree = ast.parse(path.read_text())
        named = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        named |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
        wrong += [f"{dotted} names {name}" for name in ("APIError", "from_domain") if name in named]
    assert not wrong, "HTTP errors below the edge:\n" + "\n".join(wrong)


def test_the_serving_pipeline_never_calls_back_into_chat_or_completions() -> None:
    """chat.py and completions.py drive a request, calling the pipeline's steps in order; the pipeline neither
    imports them nor takes hooks from them (its one callable parameter is the client's `is_disconnected`)."""
    path = REPO / "service" / "inference" / "pipeline.py"
    endpoints = ("service.inference.chat", "service.inference.completions")
    found = [name for name, _ in imports(path, "service.inference.pipeline") if name.startswith(endpoints)]
    assert not found
    hooks = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for arg in [*node.args.args, *node.args.kwonlyargs]:
                annotation = ast.unparse(arg.annotation) if arg.annotation else ""
                if "Callable" in annotation and arg.arg != "is_disconnected":
                    hooks.append(f"{node.name}({arg.arg}: {annotation})")
        if isinstance(node, ast.AnnAssign) and "Callable" in ast.unparse(node.annotation):
            hooks.append(f"field {ast.unparse(node.target)}: {ast.unparse(node.annotation)}")
    assert not hooks, "the pipeline takes hooks: " + ", ".join(hooks)


def test_the_service_reaches_the_store_only_through_the_registry() -> None:
    """The registry is the one way to the store's records: no `registry.store` in service/ (the registry offers
    the method a use case needs)."""
    wrong = []
    for dotted, path in modules():
        if not dotted.startswith("service."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
                continue
            if node.attr == "store" and node.value.attr == "registry":
                wrong.append(f"{dotted}:{node.lineno} {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)
