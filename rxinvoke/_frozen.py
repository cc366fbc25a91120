"""The one base of rxinvoke's frozen value models."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = ("Frozen", "fill_trusted", "trusted", "trusted_builder")

_M = TypeVar("_M", bound=BaseModel)


class Frozen(BaseModel):
    """An immutable pydantic model that refuses unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# BaseModel's four slots, set through their descriptors (a quarter fewer instructions
# than object.__setattr__ by name)
_SLOTS = BaseModel.__dict__
_set_dict = _SLOTS["__dict__"].__set__
_set_fields_set = _SLOTS["__pydantic_fields_set__"].__set__
_set_extra = _SLOTS["__pydantic_extra__"].__set__
_set_private = _SLOTS["__pydantic_private__"].__set__
_new = object.__new__


def trusted(cls: type[_M], values: dict[str, Any]) -> _M:
    """A model built from values rxinvoke itself produced (every field given, known good, in
    field order), without validation: on the publish path of every streamed fragment (and for
    sums of token usage), where pydantic's validation and ``model_copy`` would cost several µs
    each."""
    model: _M = _new(cls)
    _set_dict(model, values)
    fields = _ALL_FIELDS.get(cls)
    if fields is None:
        fields = _ALL_FIELDS[cls] = set(cls.model_fields)
    # one set per class, shared: frozen models never change theirs (model_copy copies it
    # first), and a run's events make one tracked object each fewer for the collector
    _set_fields_set(model, fields if len(values) == len(fields) else set(values))
    _set_extra(model, None)
    _set_private(model, None)
    return model


def fill_trusted(model: BaseModel, values: dict[str, Any], fields_set: set[str]) -> None:
    """Give the new ``model`` (in its ``__init__``) ``values`` — every field, known good, in
    field order — and ``fields_set`` (shared: frozen models never change theirs) as
    validation would: the fast path of a constructor whose common arguments need no
    validator."""
    _set_dict(model, values)
    _set_fields_set(model, fields_set)
    _set_extra(model, None)
    _set_private(model, None)


_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}



def trusted_builder(
    cls: type[_M], *, computed: Mapping[str, Callable[[], Any]] | None = None, **constants: Any
) -> Callable[..., _M]:
    """A function that builds :func:`trusted` ``cls`` models from its fields' values given
    positionally, in field order, but for the fields of ``constants`` (the ``type`` tag, say),
    which every model it builds shares, and those of ``computed``, each the result of its
    function at every build (a timestamp: ``{"timestamp": stamp}``): compiled once (as
    ``dataclasses`` builds its methods), for the models the runtime builds on every run and
    every streamed fragment, whose generic :func:`trusted` call (a second frame, a class
    lookup, a size check) would cost a quarter more."""
    computed = dict(computed or {})
    names = tuple(cls.model_fields)
    unknown = (set(constants) | set(computed)) - set(names)
    if unknown or not all(name.isidentifier() for name in names):
        raise TypeError(f"{cls.__name__}: not its field names: {sorted(unknown) or names!r}")

    def value(name: str) -> str:
        if name in constants:
            return f"_c_{name}"
        return f"_f_{name}()" if name in computed else name

    params = [name for name in names if name not in constants and name not in computed]
    values = ", ".join(f"{name!r}: {value(name)}" for name in names)
    source = (
        f"def build({', '.join(params)}):\n"
        # the model's local name starts with "_", as no field's may (a field named "model")
        "    _m = _new(_cls)\n"
        f"    _set_dict(_m, {{{values}}})\n"
        "    _set_fields_set(_m, _fields)\n"
        "    _set_extra(_m, None)\n"
        "    _set_private(_m, None)\n"
        "    return _m\n"
    )
    scope: dict[str, Any] = {
        "_new": _new, "_cls": cls, "_set_dict": _set_dict, "_set_fields_set": _set_fields_set,
        "_set_extra": _set_extra, "_set_private": _set_private,
        "_fields": _ALL_FIELDS.setdefault(cls, set(names)),
        **{f"_c_{name}": fixed for name, fixed in constants.items()},
        **{f"_f_{name}": make for name, make in computed.items()},
    }
    exec(source, scope)
    build: Callable[..., _M] = scope["build"]
    build.__qualname__ = build.__name__ = f"build_{cls.__name__}"
    return build
