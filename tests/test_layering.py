"""Dependency direction inside the package (STYLE.md 5.1), read from the source with ``ast``.

Layers, bottom to top; a module may import modules of lower layers only, and within a layer
only where the rules below say so:

0. foundation  errors, messages, events, _version, _compat
1. core        provider*, tools*, store*, eventlog, execute, accumulate, bus, control, request,
               policy,
               operators, private helpers (_sse, _retry, _scheduling, _context)
2. runtime     runtime
3. facade      invocation
4. apps        cli, __main__, notebook, bridge_*, the package ``__init__``

Every module must be classified: a new module fails ``test_every_module_has_a_layer`` until
it is placed in a layer here.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

import pytest

import rxinvoke

PACKAGE_DIR = Path(rxinvoke.__file__).parent
PACKAGE = "rxinvoke"
ROOT = "__init__"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("errors", "messages", "events", "_version", "_compat")),
    (
        "core",
        (
            "provider",
            "provider_*",
            "tools",
            "tools_*",
            "store",
            "store_*",
            "eventlog",
            "execute",
            "accumulate",
            "bus",
            "control",
            "request",
            "policy",
            "operators",
            "_sse",
            "_retry",
            "_scheduling",
            "_context",
        ),
    ),
    ("runtime", ("runtime",)),
    ("facade", ("invocation",)),
    ("apps", ("cli", "__main__", "notebook", "bridge_*", ROOT)),
)

# Inside the foundation layer the allowed imports are listed one by one.
FOUNDATION_ALLOWED: Mapping[str, frozenset[str]] = {
    "errors": frozenset(),
    "messages": frozenset(),
    "events": frozenset({"errors", "messages"}),
    "_version": frozenset(),
    "_compat": frozenset(),
}

# Inside the apps layer: the CLI is the entry point of __main__ only.
ONLY_IMPORTED_BY: Mapping[str, frozenset[str]] = {
    "cli": frozenset({"__main__"}),
    "__main__": frozenset(),
}


def layer_of(module: str) -> int | None:
    for rank, (_name, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return rank
    return None


def package_modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE_DIR.glob("*.py"))


def internal_imports(module: str, source: str, modules: Iterable[str]) -> set[str]:
    """The package modules ``module`` imports anywhere in its source (functions and
    ``TYPE_CHECKING`` blocks included); ``"__init__"`` stands for the package itself."""
    known = set(modules)
    found: set[str] = set()

    def target(dotted: str | None, names: list[ast.alias]) -> None:
        if dotted:
            found.add(dotted.split(".")[0])
            return
        for alias in names:  # `from . import x` / `from rxinvoke import x`
            found.add(alias.name if alias.name in known else ROOT)

    for node in ast.walk(ast.parse(source, filename=f"{module}.py")):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                target(node.module, node.names)
            elif node.level == 0 and node.module is not None:
                head, _, rest = node.module.partition(".")
                if head == PACKAGE:
                    target(rest or None, node.names)
            elif node.level > 1:
                raise AssertionError(f"{module}: relative import beyond the package")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                head, _, rest = alias.name.partition(".")
                if head == PACKAGE:
                    found.add(rest.split(".")[0] if rest else ROOT)
    found.discard(module)
    return found


@functools.cache
def import_graph() -> Mapping[str, frozenset[str]]:
    modules = package_modules()
    return MappingProxyType(
        {
            module: frozenset(
                internal_imports(
                    module, (PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"), modules
                )
            )
            for module in modules
        }
    )


def violations(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """Every import that breaks the layering rules, as readable strings."""
    problems: list[str] = []
    for importer, imported in sorted(graph.items()):
        rank = layer_of(importer)
        for dep in sorted(imported):
            dep_rank = layer_of(dep)
            edge = f"{importer} -> {dep}"
            if rank is None or dep_rank is None:
                problems.append(f"{edge}: unclassified module")
            elif dep in ONLY_IMPORTED_BY and importer not in ONLY_IMPORTED_BY[dep]:
                problems.append(f"{edge}: only {sorted(ONLY_IMPORTED_BY[dep])} may import {dep}")
            elif dep_rank > rank:
                problems.append(
                    f"{edge}: {LAYERS[rank][0]} may not import {LAYERS[dep_rank][0]}"
                )
            elif dep_rank == rank and LAYERS[rank][0] == "foundation":
                if dep not in FOUNDATION_ALLOWED.get(importer, frozenset()):
                    problems.append(f"{edge}: not allowed inside the foundation layer")
            elif dep_rank == rank and LAYERS[rank][0] in ("runtime", "facade"):
                problems.append(f"{edge}: same layer")
    return problems


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                found.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


# --- the package obeys the rules ----------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    unclassified = [m for m in package_modules() if layer_of(m) is None]
    assert unclassified == [], "place new modules in LAYERS in tests/test_layering.py"


def test_import_direction() -> None:
    assert violations(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("module", ["errors", "messages"])
def test_errors_and_messages_import_nothing_internal(module: str) -> None:
    assert import_graph()[module] == set()


def test_events_imports_only_messages_and_errors() -> None:
    assert import_graph()["events"] <= {"messages", "errors"}


@pytest.mark.parametrize(
    "module",
    [m for m in package_modules() if layer_of(m) is not None and layer_of(m) <= 1],  # type: ignore[operator]
)
def test_lower_layers_never_import_runtime_invocation_or_cli(module: str) -> None:
    assert import_graph()[module].isdisjoint({"runtime", "invocation", "cli", ROOT})


def test_runtime_never_imports_invocation_or_cli() -> None:
    assert import_graph()["runtime"].isdisjoint({"invocation", "cli", ROOT})


def test_only_main_imports_cli() -> None:
    importers = {m for m, deps in import_graph().items() if "cli" in deps}
    assert importers <= {"__main__"}


# --- the checker itself can fail (otherwise the tests above prove nothing) ---------------------


def test_collector_sees_the_known_edges() -> None:
    graph = import_graph()
    assert {"events", "bus", "tools", "store", "provider"} <= graph["runtime"]
    assert "runtime" in graph["invocation"]
    assert "messages" in graph["events"]
    assert "cli" in graph["__main__"]
    assert "events" in graph[ROOT]


def test_collector_reads_every_import_form() -> None:
    source = """
import os
import rxinvoke.store
from rxinvoke import bus
from rxinvoke.events import TextDelta
from . import tools, __version__
from .messages import Message
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from .runtime import AgentRuntime
def lazy():
    from .invocation import RuntimeInvocation
"""
    modules = ["store", "bus", "events", "tools", "messages", "runtime", "invocation", "x"]
    assert internal_imports("x", source, modules) == {
        "store",
        "bus",
        "events",
        "tools",
        ROOT,
        "messages",
        "runtime",
        "invocation",
    }


@pytest.mark.parametrize(
    ("importer", "dep"),
    [
        ("events", "runtime"),
        ("events", "tools"),
        ("messages", "events"),
        ("errors", "messages"),
        ("tools", "runtime"),
        ("provider_openai", "invocation"),
        ("store_sqlite", "cli"),
        ("store_sqlite", "runtime"),
        ("eventlog", "invocation"),
        ("bus", ROOT),
        ("runtime", "invocation"),
        ("invocation", "cli"),
        ("notebook", "cli"),
        ("runtime", "mystery_module"),
    ],
)
def test_checker_reports_a_bad_edge(importer: str, dep: str) -> None:
    graph = {**import_graph(), importer: {dep}}
    assert [p for p in violations(graph) if p.startswith(f"{importer} -> {dep}:")]


@pytest.mark.parametrize(
    ("importer", "dep"),
    [
        ("events", "messages"),
        ("execute", "tools"),
        ("provider_openai", "provider"),
        ("runtime", "bus"),
        ("invocation", "runtime"),
        ("cli", "invocation"),
        ("__main__", "cli"),
        ("bus", "_compat"),
    ],
)
def test_checker_accepts_a_good_edge(importer: str, dep: str) -> None:
    assert violations({importer: {dep}}) == []


def test_cycle_detection() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
