"""A run's event log packed for keeping (MemoryStore): cheap to build, invisible to the GC.

An event whose fields are all plain values (str, int, float, bool, datetime, None: a text
fragment, ``model_started``, ``run_started`` …) is kept as a tuple of its field values (in
field order: ``run_id``, ``timestamp``, ``type``, …); any other event (one holding a model or an
enum: ``chat_finished``, ``usage_recorded``, ``tool_execution_finished`` …) as its JSON bytes.
Python's garbage collector stops tracking a tuple of plain values after the first collection
that sees it (a tuple holding a dict or any other container, even an untracked one, stays
tracked), so a kept log costs it nothing, and building the tuples costs a fraction of encoding
every event as JSON (~0.2 µs per event against ~1.7 µs). Unpacking builds the events again,
equal to the originals. The runtime's event log keeps the events waiting for their write in
the same form (:func:`kept`).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any, Literal, Union, get_args, get_origin

from .._frozen import trusted
from ..events import INVOCATION_EVENT, ChatTextDelta, EventBase, InvocationEvent, TextDelta

__all__ = (
    "KEEPERS",
    "PLAIN_EVENTS",
    "PackedEvent",
    "PackedLog",
    "TEXT_TWIN_OF",
    "SegmentItem",
    "cut",
    "dealias",
    "kept",
    "pack_one",
    "plain_values",
    "revive",
    "twin_item",
    "unpack",
)

PackedLog = tuple[tuple[Any, ...] | bytes, ...]
"""One item per event: a tuple of plain field values (in field order) or JSON bytes."""

_PLAIN = (str, int, float, bool, datetime, type(None))


def _is_plain(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin is Literal:
        return all(isinstance(arg, (str, int, bool)) for arg in get_args(annotation))
    if origin is Union or origin is types.UnionType:
        return all(_is_plain(arg) for arg in get_args(annotation))
    return annotation in _PLAIN


def _event_classes() -> list[type[EventBase]]:
    return [arg for arg in get_args(get_args(InvocationEvent)[0])]


_TYPE_AT = 2
"""Where ``type`` is in every event's fields (after EventBase's ``run_id`` and ``timestamp``)."""

def _dict_maker(names: tuple[str, ...]) -> Callable[[tuple[Any, ...]], dict[str, Any]]:
    """``lambda t: {names[0]: t[0], …}``, compiled once per class (as ``dataclasses`` builds
    its methods): a third of ``dict(zip(names, t))``'s cost, on the path of every event a
    store or a mirror encodes or a read revives."""
    if not all(name.isidentifier() for name in names):  # pragma: no cover - pydantic's rule
        raise TypeError(f"not field names: {names!r}")
    body = ", ".join(f"{name!r}: t[{i}]" for i, name in enumerate(names))
    return eval(f"lambda t: {{{body}}}", {})  # type: ignore[no-any-return]


# type -> (class, the maker of its __dict__ from its kept tuple), and class -> getter of its
# fields from a __dict__, for the event classes whose fields are all plain values
_FLAT: dict[str, tuple[type[EventBase], Callable[[tuple[Any, ...]], dict[str, Any]]]] = {}
_GETTERS: dict[type[EventBase], itemgetter[Any]] = {}
for _cls in _event_classes():
    _names = tuple(_cls.model_fields)
    if _names[_TYPE_AT] != "type":  # pragma: no cover - a broken event contract
        raise TypeError(f"{_cls.__name__}: 'type' must be its third field")
    if all(_is_plain(field.annotation) for field in _cls.model_fields.values()):
        _FLAT[_cls.model_fields["type"].default] = (_cls, _dict_maker(_names))
        _GETTERS[_cls] = itemgetter(*_names)


PLAIN_EVENTS: frozenset[type[EventBase]] = frozenset(_GETTERS)
"""The event classes whose fields are all plain values."""

PackedEvent = tuple[Any, ...] | bytes
"""One event of a packed log."""

SegmentItem = InvocationEvent | tuple[Any, ...]
"""An event as the event log keeps it until it is written (:func:`kept`): the event, or the
tuple of field values of one whose fields are all plain values (an item of a packed log)."""

KEEPERS: dict[type[EventBase], itemgetter[Any]] = _GETTERS
"""Class -> the getter of its fields' values from an event's ``__dict__`` (:func:`kept`), for
the classes of :data:`PLAIN_EVENTS`."""


def kept(event: SegmentItem) -> SegmentItem:
    """``event`` as the event log keeps it until it is written: the tuple of its field values
    if they are all plain (it, and the log's entry tuple holding it, are invisible to the
    garbage collector once collections have seen them, the entry one after its event's: a
    run's streamed fragments waiting for their transaction cost it next to nothing), else the
    event itself."""
    getter = _GETTERS.get(type(event))  # type: ignore[arg-type]
    return event if getter is None else getter(event.__dict__)


TEXT_TWIN_OF = "chat_text_delta"
"""The type of a kept tuple whose agent twin the event log may keep as an alias (below)."""

if not (
    tuple(ChatTextDelta.model_fields) == tuple(TextDelta.model_fields) == ("run_id", "timestamp", "type", "delta")
):  # pragma: no cover - twin_item and the event log's alias check rely on it
    raise TypeError("chat_text_delta and text_delta must keep the fields run_id, timestamp, type, delta")


def twin_item(item: tuple[Any, ...]) -> tuple[Any, ...]:
    """The kept tuple of the agent twin (``text_delta``) of a ``chat_text_delta``'s.

    The event log keeps a streamed fragment's twin as *the same tuple* as the fragment before
    it (an alias: no object per twin, half of a streamed answer's events): in a run's list of
    kept items (a log's stretch, MemoryStore's log) an item that ``is`` the item before it is
    that item's twin. Whatever reads such a list one item at a time (:func:`unpack`,
    :func:`dealias`) turns the alias back into the twin's own tuple."""
    return (item[0], item[1], "text_delta", *item[3:])


def dealias(items: Sequence[Any], start: int = 0) -> list[Any]:
    """``items[start:]`` with each twin alias (see :func:`twin_item`: a kept tuple that ``is``
    the item before it; an event kept as itself, published twice, is no alias) as its own
    tuple."""
    out: list[Any] = []
    previous: Any = items[start - 1] if 0 < start <= len(items) else None
    for item in items[start:]:
        out.append(twin_item(item) if item is previous and type(item) is tuple else item)
        previous = item
    return out


def cut(items: list[Any], start: int, stop: int | None = None) -> list[Any]:
    """``items[start:stop]`` as a list of its own that does not begin with an alias (the twin of
    a fragment left behind the cut is spelled out as its own tuple; the other aliases stay)."""
    if not start:
        return items if stop is None or stop >= len(items) else items[:stop]
    part = items[start:stop]
    if part and part[0] is items[start - 1] and type(part[0]) is tuple:
        part[0] = twin_item(part[0])
    return part


def revive(item: SegmentItem) -> InvocationEvent:
    """The event of a :func:`kept` item (equal to the original; a new object for a tuple)."""
    if type(item) is tuple:
        cls, make = _FLAT[item[_TYPE_AT]]
        return trusted(cls, make(item))  # type: ignore[return-value]
    return item  # type: ignore[return-value]


def plain_values(item: tuple[Any, ...]) -> dict[str, Any]:
    """The ``__dict__`` of the event of a kept tuple (``revive(item).__dict__``, without the
    event)."""
    return _FLAT[item[_TYPE_AT]][1](item)


def pack_one(event: SegmentItem) -> PackedEvent:
    """``event`` (or a :func:`kept` item) as an item of a packed log."""
    if type(event) is tuple:
        return event
    getter = _GETTERS.get(type(event))  # type: ignore[arg-type]
    if getter is not None:
        return getter(event.__dict__)  # type: ignore[no-any-return]
    return event.__pydantic_serializer__.to_json(event)  # type: ignore[union-attr]


def unpack(packed: Sequence[PackedEvent], start: int = 0) -> list[InvocationEvent]:
    """The events of ``packed`` from index ``start`` on."""
    flat = _FLAT
    events: list[InvocationEvent] = []
    append = events.append
    for item in dealias(packed, start):
        if isinstance(item, bytes):
            append(INVOCATION_EVENT.validate_json(item))
        else:
            cls, make = flat[item[_TYPE_AT]]
            append(trusted(cls, make(item)))  # type: ignore[arg-type]
    return events
