"""The public surface: ``rxinvoke.__all__`` is explicit, sorted and complete (STYLE.md 5.4)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
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


def _submodules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.iter_modules(rxinvoke.__path__) if info.name != "__main__"
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
