"""The public surface: ``rxinvoke.__all__`` is explicit, sorted and complete (STYLE.md 5.4)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
import warnings
from collections import Counter

import pytest

import rxinvoke


def _public_names() -> set[str]:
    return {
        name
        for name, value in vars(rxinvoke).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }


def test_all_is_a_tuple() -> None:
    assert isinstance(rxinvoke.__all__, tuple)
    assert all(isinstance(name, str) for name in rxinvoke.__all__)


def test_all_is_sorted_case_insensitively() -> None:
    assert list(rxinvoke.__all__) == sorted(rxinvoke.__all__, key=str.casefold)


def test_all_has_no_duplicates() -> None:
    duplicates = [name for name, count in Counter(rxinvoke.__all__).items() if count > 1]
    assert duplicates == []


def test_all_equals_the_public_names() -> None:
    exported = set(rxinvoke.__all__)
    public = _public_names()
    assert exported - public == set(), "in __all__ but not defined in rxinvoke"
    assert public - exported == set(), "public in rxinvoke but missing from __all__"
    assert "__version__" not in exported


@pytest.mark.parametrize("name", rxinvoke.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    assert getattr(rxinvoke, name) is not None


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from rxinvoke import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(rxinvoke.__all__)


def test_version_is_a_non_empty_string() -> None:
    assert isinstance(rxinvoke.__version__, str)
    assert rxinvoke.__version__.strip()


DEPRECATED_MODULES = {"provider_openai"}


def _submodules() -> list[str]:
    """Every module of the package, subpackages included (``providers.openai``)."""
    return sorted(
        info.name.removeprefix("rxinvoke.")
        for info in pkgutil.walk_packages(rxinvoke.__path__, prefix="rxinvoke.")
        if info.name != "rxinvoke.__main__"
        and info.name.removeprefix("rxinvoke.") not in DEPRECATED_MODULES
    )


@pytest.mark.parametrize("module_name", _submodules())
def test_submodule_all_names_resolve(module_name: str) -> None:
    module = importlib.import_module(f"rxinvoke.{module_name}")
    names = getattr(module, "__all__", ())
    assert len(names) == len(set(names)), f"duplicates in rxinvoke.{module_name}.__all__"
    for name in names:
        assert hasattr(module, name), f"rxinvoke.{module_name}.__all__ names missing {name!r}"


def test_top_level_reexports_are_the_submodule_objects() -> None:
    """A name exported at the top is the same object as in its defining module."""
    by_name: dict[str, object] = {}
    for module_name in _submodules():
        module = importlib.import_module(f"rxinvoke.{module_name}")
        for name in getattr(module, "__all__", ()):
            by_name.setdefault(name, getattr(module, name))
    for name in rxinvoke.__all__:
        assert name in by_name, f"{name!r} is exported but no submodule's __all__ lists it"
        assert getattr(rxinvoke, name) is by_name[name]


# --- the user API only; plumbing moved out with deprecation aliases ---------------------------

PLUMBING = (
    "AGENT_EVENT",
    "CHAT_STREAM_EVENT",
    "EventBus",
    "EventEnvelope",
    "EventLog",
    "ModelName",
    "ProviderId",
    "ProviderRegistry",
    "ToolRegistry",
)


def test_submodules_include_the_families() -> None:
    assert {"providers", "providers.openai", "providers.scripted", "stores", "stores.sqlite"} <= set(
        _submodules()
    )


@pytest.mark.parametrize("name", PLUMBING)
def test_plumbing_left_the_top_level_with_a_deprecation_alias(name: str) -> None:
    assert name not in rxinvoke.__all__
    assert name not in vars(rxinvoke)
    with pytest.warns(DeprecationWarning, match=f"rxinvoke.{name} is deprecated: import it from"):
        value = getattr(rxinvoke, name)
    module = importlib.import_module(rxinvoke._MOVED[name])
    assert value is getattr(module, name)


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        rxinvoke.Nope  # noqa: B018


def test_openai_provider_is_lazy_at_the_top_level() -> None:
    from rxinvoke.providers.openai import OpenAIProvider

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not deprecated: a lazy name
        assert rxinvoke.OpenAIProvider is OpenAIProvider
        assert rxinvoke.providers.OpenAIProvider is OpenAIProvider
    assert "OpenAIProvider" in dir(rxinvoke)
    assert "OpenAIProvider" in dir(rxinvoke.providers)


def test_importing_rxinvoke_does_not_import_httpx() -> None:
    code = (
        "import sys, rxinvoke, rxinvoke.providers, rxinvoke.stores, rxinvoke.cli; "
        "assert 'httpx' not in sys.modules, 'httpx imported'; "
        "rxinvoke.OpenAIProvider; assert 'httpx' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_old_provider_openai_module_is_a_deprecated_alias() -> None:
    sys.modules.pop("rxinvoke.provider_openai", None)
    with pytest.warns(DeprecationWarning, match="rxinvoke.provider_openai is deprecated"):
        old = importlib.import_module("rxinvoke.provider_openai")
    from rxinvoke.providers.openai import DEFAULT_BASE_URL, OpenAIProvider

    assert old.OpenAIProvider is OpenAIProvider
    assert old.DEFAULT_BASE_URL == DEFAULT_BASE_URL


def test_the_readme_package_map_matches_the_tree() -> None:
    """Every module and subpackage of the tree is on the README's map, and nothing else."""
    from pathlib import Path

    root = Path(rxinvoke.__file__).parent
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The package", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    for line in section.splitlines()[2:]:  # after "rxinvoke/"
        words = line.split()
        for word in words:
            if word.endswith(".py") or word.endswith("/"):
                listed.add(word)
            else:
                break
    tree = {p.name for p in root.glob("*.py") if p.name not in {"__init__.py", "_version.py",
            "_compat.py", "_frozen.py", "provider_openai.py"}}
    tree |= {f"{p.name}/" for p in root.iterdir() if (p / "__init__.py").exists()}
    assert listed == tree
