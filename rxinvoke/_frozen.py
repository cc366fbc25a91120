"""The one base of rxinvoke's frozen value models."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

__all__ = ("Frozen", "trusted")

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


_ALL_FIELDS: dict[type[BaseModel], set[str]] = {}

