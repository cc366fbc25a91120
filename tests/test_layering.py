"""Dependency direction inside the package (STYLE.md 5.1), read from the source with ``ast``.

Modules are named relative to the package, with dots for subpackages (``providers.openai``;
a subpackage's ``__init__`` is the subpackage's name, the package's own is ``__init__``).
Layers, bottom to top; a module may import modules of lower layers, and inside its own layer
only what the layer's rule allows:

0. values       errors, messages, events, request, policy, control (+ _frozen, _version,
                _compat, _clock: time on a scheduler, _display: short reprs, _futures): the imports among them are listed one by one
1. definitions  tools, providers (and providers.*), stores (and stores.*): a family imports
                its own members only; providers never import a store, stores never a provider
2. plumbing     the runtime's private parts (_context, _accumulate, _execute, _doom, _bus,
                _eventlog, _sessions, _run, _model_call, _compaction, _approval, _resume, _claim): listed
                one by one
3. runtime      runtime
4. views        spans, notebook*: pure functions of events (the span model, renderings); the
                notebook may use spans and itself, nothing above the runtime
5. facade       _sink, _runstream, _aiter, operators, invocation: listed one by one
6. apps         cli, _terminal, __main__, transports*, otel, testing*, the deprecated
                provider_openai alias, the package ``__init__``: only ``__main__`` imports the
                CLI, and nothing imports the package ``__init__``

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
    (
        "values",
        ("_version", "_compat", "_clock", "_display", "_frozen", "_futures", "errors", "messages",
         "events", "request", "policy", "control"),
    ),
    ("definitions", ("tools", "providers", "providers.*", "stores", "stores.*")),
    (
        "plumbing",
        ("_context", "_accumulate", "_execute", "_doom", "_bus", "_eventlog", "_sessions", "_run",
         "_model_call", "_compaction", "_approval", "_resume", "_claim"),
    ),
    ("runtime", ("runtime",)),
    ("views", ("spans", "notebook", "notebook.*")),
    ("facade", ("_sink", "_runstream", "_aiter", "operators", "invocation")),
    (
        "apps",
        ("cli", "_terminal", "__main__", "provider_openai", "transports", "transports.*", "otel",
         "conformance", "testing",
         "testing.*", ROOT),
    ),
)

# Inside these layers the allowed imports are listed one by one (anything else is refused).
WITHIN: Mapping[str, Mapping[str, frozenset[str]]] = {
    "values": {
        "_version": frozenset(),
        "_compat": frozenset(),
        "_clock": frozenset({"_compat"}),
        "_display": frozenset(),
        "_frozen": frozenset(),
        "_futures": frozenset(),
        "errors": frozenset(),
        "messages": frozenset({"_display", "_frozen"}),
        "events": frozenset({"_clock", "_display", "_frozen", "errors", "messages"}),
        "request": frozenset({"_display", "_frozen", "messages"}),
        "policy": frozenset({"_frozen"}),
        "control": frozenset({"_frozen"}),
    },
    "plumbing": {
        "_context": frozenset(),
        "_accumulate": frozenset(),
        "_execute": frozenset(),
        "_doom": frozenset(),
        "_bus": frozenset(),
        "_eventlog": frozenset({"_bus"}),
        "_sessions": frozenset(),
        "_run": frozenset(),
        "_model_call": frozenset({"_accumulate"}),
        "_compaction": frozenset({"_context", "_model_call", "_run"}),
        "_approval": frozenset(),
        "_resume": frozenset(),
        "_claim": frozenset(),
    },
    "runtime": {"runtime": frozenset()},
    "facade": {
        "_sink": frozenset(),
        "_runstream": frozenset(),
        "_aiter": frozenset(),
        "operators": frozenset({"_aiter"}),
        "invocation": frozenset({"_sink", "_runstream", "operators"}),
    },
}

# Families of the definitions layer: a member imports members of its own family only.
FAMILIES: tuple[str, ...] = ("providers", "stores")

# Inside the views layer: the notebook package may use the span model and its own modules.
VIEWS_ALLOWED: tuple[str, ...] = ("spans", "notebook", "notebook.*")

# Inside the apps layer: the CLI is the entry point of __main__ only.
ONLY_IMPORTED_BY: Mapping[str, frozenset[str]] = {
    "cli": frozenset({"__main__"}),
    "__main__": frozenset(),
    ROOT: frozenset(),
}


def layer_of(module: str) -> int | None:
    for rank, (_name, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
            return rank
    return None


def family_of(module: str) -> str | None:
    head = module.split(".")[0]
    return head if head in FAMILIES else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or ROOT


def package_modules() -> list[str]:
    return sorted(_module_name(path) for path in PACKAGE_DIR.rglob("*.py"))


def _is_package(module: str, modules: Iterable[str]) -> bool:
    return module == ROOT or any(m.startswith(f"{module}.") for m in modules)


def _resolve(dotted: str, known: set[str]) -> str:
    """The longest known module that ``dotted`` (a module or module.name) starts with."""
    parts = dotted.split(".") if dotted else []
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return ROOT


def internal_imports(module: str, source: str, modules: Iterable[str]) -> set[str]:
    """The package modules ``module`` imports anywhere in its source (functions and
    ``TYPE_CHECKING`` blocks included); ``"__init__"`` stands for the package itself."""
    known = set(modules)
    # the package a relative import of level 1 starts from
    here = [] if module == ROOT else module.split(".")
    if not _is_package(module, known):
        here = here[:-1]
    found: set[str] = set()

    def add(base: list[str], dotted: str | None, names: list[ast.alias]) -> None:
        prefix = ".".join([*base, *(dotted.split(".") if dotted else [])])
        if dotted:
            found.add(_resolve(prefix, known))
            return
        for alias in names:  # `from . import x` / `from rxinvoke import x`
            found.add(_resolve(f"{prefix}.{alias.name}" if prefix else alias.name, known))

    for node in ast.walk(ast.parse(source, filename=f"{module}.py")):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:
                if node.level - 1 > len(here):
                    raise AssertionError(f"{module}: relative import beyond the package")
                base = here[: len(here) - (node.level - 1)]
                add(base, node.module, node.names)
            elif node.module is not None:
                head, _, rest = node.module.partition(".")
                if head == PACKAGE:
                    add([], rest or None, node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                head, _, rest = alias.name.partition(".")
                if head == PACKAGE:
                    found.add(_resolve(rest, known) if rest else ROOT)
    found.discard(module)
    return found


def _source(module: str) -> str:
    if module == ROOT:
        path = PACKAGE_DIR / "__init__.py"
    else:
        base = PACKAGE_DIR.joinpath(*module.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    return path.read_text(encoding="utf-8")


@functools.cache
def import_graph() -> Mapping[str, frozenset[str]]:
    modules = package_modules()
    return MappingProxyType(
        {m: frozenset(internal_imports(m, _source(m), modules)) for m in modules}
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
                continue
            layer = LAYERS[rank][0]
            if dep in ONLY_IMPORTED_BY and importer not in ONLY_IMPORTED_BY[dep]:
                problems.append(f"{edge}: only {sorted(ONLY_IMPORTED_BY[dep])} may import {dep}")
            elif dep_rank > rank:
                problems.append(f"{edge}: {layer} may not import {LAYERS[dep_rank][0]}")
            elif dep_rank < rank:
                continue
            elif layer in WITHIN:
                if dep not in WITHIN[layer].get(importer, frozenset()):
                    problems.append(f"{edge}: not allowed inside the {layer} layer")
            elif layer == "views":
                if not (importer.startswith("notebook") and any(
                    fnmatch.fnmatchcase(dep, p) for p in VIEWS_ALLOWED
                )):
                    problems.append(f"{edge}: not allowed inside the views layer")
            elif layer == "definitions":
                family, dep_family = family_of(importer), family_of(dep)
                if family is None or family != dep_family:
                    problems.append(f"{edge}: {importer} may import its own family only")
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


def test_every_listed_module_exists() -> None:
    """The explicit lists name real modules only (a stale entry would hide a rule)."""
    modules = set(package_modules())
    listed = {name for rules in WITHIN.values() for name in rules}
    assert listed - modules == set()


def test_import_direction() -> None:
    assert violations(import_graph()) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("module", ["errors", "_frozen", "_compat", "_version"])
def test_the_bottom_values_import_nothing_internal(module: str) -> None:
    assert import_graph()[module] == set()


def test_plumbing_modules_are_private() -> None:
    plumbing = LAYERS[2][1]
    assert all(name.startswith("_") for name in plumbing)
    assert "_sink" in LAYERS[5][1]


def test_providers_and_stores_stay_apart() -> None:
    graph = import_graph()
    for module, deps in graph.items():
        if family_of(module) == "providers":
            assert not any(family_of(d) == "stores" or d in ("_bus", "runtime") for d in deps), module
        if family_of(module) == "stores":
            assert not any(family_of(d) == "providers" for d in deps), module


# --- the checker itself can fail (otherwise the tests above prove nothing) ---------------------


def test_collector_sees_the_known_edges() -> None:
    graph = import_graph()
    assert {"_bus", "_eventlog", "_model_call", "_run", "_sessions", "tools", "stores.base"} <= graph[
        "runtime"
    ]
    assert {"runtime", "_sink"} <= graph["invocation"]
    assert {"errors", "events", "messages"} <= graph["providers.openai"]
    assert "stores.base" in graph["stores.sqlite"]
    assert {"providers.base", "providers.offline", "providers.scripted"} <= graph["providers"]
    assert "messages" in graph["events"]
    assert "cli" in graph["__main__"]
    assert "events" in graph[ROOT]
    assert "providers.openai" in graph["provider_openai"]


def test_collector_reads_every_import_form() -> None:
    source = """
import os
import rxinvoke.stores.sqlite
from rxinvoke import _bus
from rxinvoke.events import TextDelta
from . import tools, __version__
from .messages import Message
from .stores.base import RunRecord
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from .runtime import AgentRuntime
def lazy():
    from .invocation import RuntimeInvocation
"""
    modules = ["stores", "stores.base", "stores.sqlite", "_bus", "events", "tools", "messages",
               "runtime", "invocation", "x"]
    assert internal_imports("x", source, modules) == {
        "stores.sqlite", "_bus", "events", "tools", ROOT, "messages", "stores.base", "runtime",
        "invocation",
    }


def test_collector_resolves_relative_imports_in_subpackages() -> None:
    modules = ["errors", "providers", "providers.base", "providers.openai", "stores.base"]
    source = "from ..errors import X\nfrom .base import Y\nfrom .. import stores\n"
    assert internal_imports("providers.openai", source, [*modules, "stores"]) == {
        "errors", "providers.base", "stores",
    }
    # in a subpackage's __init__, level 1 is the subpackage itself
    assert internal_imports("providers", "from .base import Y\nfrom . import openai\n", modules) == {
        "providers.base", "providers.openai",
    }
    with pytest.raises(AssertionError, match="beyond the package"):
        internal_imports("providers.openai", "from ...x import y\n", modules)


@pytest.mark.parametrize(
    ("importer", "dep"),
    [
        # values import nothing above them, and only the listed values among themselves
        ("events", "runtime"),
        ("events", "tools"),
        ("messages", "events"),
        ("errors", "messages"),
        ("control", "events"),
        ("policy", "request"),
        ("request", "control"),
        # providers import no store and no bus; stores import no provider
        ("providers.openai", "stores.sqlite"),
        ("providers.scripted", "stores"),
        ("providers.offline", "_bus"),
        ("providers.openai", "invocation"),
        ("providers.base", "tools"),
        ("stores.sqlite", "providers.openai"),
        ("stores.memory", "providers"),
        ("stores.sqlite", "cli"),
        ("stores.sqlite", "runtime"),
        ("stores.base", "_eventlog"),
        ("tools", "providers.base"),
        # the plumbing's own order
        ("_bus", "_eventlog"),
        ("_accumulate", "_model_call"),
        ("_execute", "_run"),
        ("_eventlog", "invocation"),
        ("_bus", ROOT),
        ("_model_call", "runtime"),
        # the runtime and the facade
        ("runtime", "invocation"),
        ("runtime", "_sink"),
        ("_sink", "invocation"),
        ("operators", "invocation"),
        ("invocation", "cli"),
        # the apps sit on top: nothing below imports them; only __main__ imports the CLI
        ("runtime", "notebook"),
        ("runtime", "transports.redis"),
        ("runtime", "spans"),
        ("spans", "notebook"),
        ("notebook", "invocation"),
        ("notebook.view", "_runstream"),
        ("notebook", "cli"),
        ("transports.redis", "cli"),
        ("cli", ROOT),
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
        ("request", "messages"),
        ("_execute", "tools"),
        ("providers.openai", "providers.base"),
        ("providers", "providers.scripted"),
        ("stores.sqlite", "stores.base"),
        ("_model_call", "providers.base"),
        ("_eventlog", "stores.base"),
        ("runtime", "_bus"),
        ("runtime", "stores.memory"),
        ("invocation", "runtime"),
        ("invocation", "_sink"),
        ("invocation", "notebook.view"),
        ("notebook.view", "spans"),
        ("notebook", "notebook.view"),
        ("notebook.view", "runtime"),
        ("transports.redis", "runtime"),
        ("cli", "invocation"),
        ("__main__", "cli"),
        ("_bus", "_compat"),
    ],
)
def test_checker_accepts_a_good_edge(importer: str, dep: str) -> None:
    assert violations({importer: {dep}}) == []


def test_a_synthetic_bad_import_in_real_source_fails_the_check() -> None:
    """Add one bad import to the real source of a module: the whole check reports it."""
    modules = package_modules()
    source = _source("providers.openai") + "\nfrom ..stores.sqlite import SqliteStore\n"
    graph = {**import_graph(), "providers.openai": frozenset(internal_imports("providers.openai", source, modules))}
    assert violations(graph) == [
        "providers.openai -> stores.sqlite: providers.openai may import its own family only"
    ]


def test_cycle_detection() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
