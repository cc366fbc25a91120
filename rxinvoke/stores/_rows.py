"""What the stores share: decoding failures named in one line, the event segment codec, the
rule of approval decisions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from ..errors import StoreError
from ..events import (
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
    EventBase,
    InvocationEvent,
    TextDelta,
    ToolCallCompleted,
    ToolCallDelta,
    ToolCallStarted,
    UsageRecorded,
)
from ..messages import Compaction, Message, ToolCall
from ..request import RunOutput
from ._packed import _TYPE_AT, PLAIN_EVENTS, TEXT_TWIN_OF, SegmentItem, plain_values, twin_item
from .base import EventEnvelope, RunRecord, log_stretches, runs_in

__all__ = (
    "DECODE_ERRORS",
    "TERMINAL_STATUS",
    "continuing",
    "decided",
    "decode_segment",
    "SegmentItem",
    "encode_segment",
    "encode_typed",
    "runs_of",
    "envelopes_of",
    "message_of",
    "why",
)

DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)
"""What decoding stored data this version cannot read raises."""

_SEGMENT: TypeAdapter[list[InvocationEvent | None]] = TypeAdapter(list[InvocationEvent | None])

# chat event class -> (its agent twin's class, the twin's fields taken from the chat event's:
# (twin field, chat field)); what each ``as_agent`` builds (a test holds them to it)
TWINS: dict[type[EventBase], tuple[type[EventBase], tuple[tuple[str, str], ...]]] = {
    ChatTextDelta: (TextDelta, (("delta", "delta"),)),
    ChatToolCallStarted: (ToolCallStarted, (("call_id", "id"), ("tool_name", "name"))),
    ChatToolCallArgumentsDelta: (ToolCallDelta, (("call_id", "id"), ("delta", "delta"))),
    ChatToolCallCompleted: (ToolCallCompleted, (("call", "call"),)),
}


# chat event type -> (its twin's type, the twin's values to compare, the chat event's they
# must equal: run and fields, read by itemgetters from the events' __dict__; the twin's
# values read from its kept tuple, by position)
_TWIN_CHECK: dict[str, tuple[str, itemgetter[Any], itemgetter[Any], itemgetter[Any]]] = {
    chat.model_fields["type"].default: (
        twin.model_fields["type"].default,
        itemgetter("run_id", *(field for field, _ in fields)),
        itemgetter("run_id", *(source for _, source in fields)),
        itemgetter(*(list(twin.model_fields).index(name) for name in ("run_id", *(f for f, _ in fields)))),
    )
    for chat, (twin, fields) in TWINS.items()
}


_TEXT_TWIN = _TWIN_CHECK[TEXT_TWIN_OF][0]  # "text_delta"


def encode_segment(events: Sequence[SegmentItem]) -> bytes:
    """See :func:`encode_typed` (this without the types)."""
    return encode_typed(events)[0]


def encode_typed(events: Sequence[SegmentItem]) -> tuple[bytes, tuple[str, ...]]:
    """A run's consecutive events as one JSON array, each agent twin that follows its chat
    event (``text_delta`` after ``chat_text_delta``, ``tool_call_*`` after
    ``chat_tool_call_*``) as ``null``: the twin is rebuilt from the event before it on decoding
    (:func:`decode_segment`), so a streamed answer is encoded once, not twice (a W1 run: 126
    events, 55 of them twins; 40% fewer bytes, a third less encoding).

    ``events`` may be a :data:`~rxinvoke.stores.base.Stretch`'s items as the event log keeps
    them: a ``text_delta`` twin kept as an alias of its fragment's tuple (the same object as
    the item before it, ``stores._packed.twin_item``) is a twin found by identity alone.

    An event whose fields are all plain values (a text fragment, ``model_started`` …) is
    encoded from its ``__dict__``, or from the log's tuple of its values (the same JSON, a
    quarter cheaper than its model's serializer); any other by its own model's serializer (the
    same JSON as the union's TypeAdapter, ~40% faster: no union dispatch per event). Returns
    the JSON and the events' types."""
    items: list[Any] = []
    append = items.append
    types: list[str] = []
    typed = types.append
    plain = PLAIN_EVENTS
    checks = _TWIN_CHECK
    expected: str | None = None  # the type of the previous event's twin
    moment: Any = None
    twin_values: itemgetter[Any] | None = None
    twin_at: itemgetter[Any] | None = None
    chat_values: Any = None
    previous: Any = None  # the item before, for an alias
    item: Any
    for event in events:
        # a twin is exactly chat.as_agent(): the twin's type, the same moment, the same values
        if type(event) is tuple:  # a kept event (stores._packed.kept): a twin needs no dict
            if event is previous:  # an alias: the text_delta twin of the fragment before it
                if expected == _TEXT_TWIN:
                    typed(_TEXT_TWIN)
                    append(None)
                    expected = None
                    continue
                event = twin_item(event)  # an alias after a twin (published by hand): spelled out
            else:
                previous = event
            kind = event[_TYPE_AT]
            twin = kind == expected and event[1] is moment and twin_at(event) == chat_values  # type: ignore[misc]
            values = None
        else:
            previous = None
            values = event.__dict__
            kind = values["type"]
            twin = kind == expected and values["timestamp"] is moment and twin_values(values) == chat_values  # type: ignore[misc]
        typed(kind)
        if twin:
            append(None)
            expected = None  # a twin has no twin
            continue
        if values is None:
            values = item = plain_values(event)  # type: ignore[arg-type]
        else:
            item = values if type(event) in plain else event
        append(item)
        check = checks.get(kind)
        if check is None:
            expected = None
        else:
            expected, twin_values, chat_of, twin_at = check
            moment, chat_values = values["timestamp"], chat_of(values)
    return pydantic_core.to_json(items), tuple(types)


UsageRow = tuple[str, int, int, int, int]
"""``(run_id, seq, input_tokens, output_tokens, total_tokens)`` of a ``usage_recorded``."""


def runs_of(events: Sequence[EventEnvelope]) -> tuple[dict[str, tuple[int, int, list[SegmentItem]]], list[UsageRow]]:
    """A write's envelopes per run, read from its stretches (no envelope, no entry per event):
    run id -> (first seq, last seq, the events as the log keeps them, twin aliases included:
    what :func:`encode_typed` takes), in order, and the usage rows of its ``usage_recorded``
    events.

    Raises:
        StoreError: a run's envelopes skip a seq.
    """
    runs: dict[str, tuple[int, int, list[SegmentItem]]] = {}
    usage: list[UsageRow] = []
    for run_id, chunks in runs_in(log_stretches(events)).items():
        first, items = chunks[0]
        if len(chunks) > 1:
            raise StoreError(
                f"run {run_id!r}: event seq {chunks[1][0]} does not follow {first + len(items) - 1}"
            )
        runs[run_id] = (first, first + len(items) - 1, items)
        for i, item in enumerate(items):
            if type(item) is UsageRecorded:
                u = item.usage
                usage.append((run_id, first + i, u.input_tokens, u.output_tokens, u.total_tokens))
    return runs, usage


def decode_segment(text: str | bytes) -> list[InvocationEvent]:
    """The events of a segment written by :func:`encode_segment` (or, before it, with every
    twin spelled out: both read alike).

    Raises:
        ValueError: not a segment (a ``pydantic.ValidationError`` for a malformed event, or a
            ``null`` that follows no chat event).
    """
    items = _SEGMENT.validate_json(text)
    for i, item in enumerate(items):
        if item is None:
            chat = items[i - 1] if i else None
            twin = chat.as_agent() if type(chat) in TWINS else None  # type: ignore[union-attr]
            if twin is None:
                raise ValueError(f"item {i}: null follows no chat fragment")
            items[i] = twin
    return items  # type: ignore[return-value]

TERMINAL_STATUS = {"run_completed": "completed", "run_failed": "failed", "run_cancelled": "cancelled"}
"""A terminal event's type → the run status it records."""


def lagging_error(status: str, error: object) -> str | None:
    """The error a run records whose log ended with its terminal event before its status
    did (a recovery settles it): none once completed, ``cancelled``, or the ``run_failed``
    event's own error (``interrupted`` without one)."""
    if status == "completed":
        return None
    if status == "cancelled":
        return "cancelled"
    return error if isinstance(error, str) and error else "interrupted"


def decided(
    record: RunRecord, call_id: str, approved: bool, reason: str | None
) -> tuple[RunOutput, bool, bool]:
    """The paused run's output with a decision on ``call_id``: (output, changed, ready — every
    pending call decided). The rule every store applies inside its transaction.

    Raises:
        StoreError: the run is not awaiting approval, has no such pending call, or the call
            was decided the other way.
    """
    output = record.output
    if record.status != "awaiting_approval" or output is None:
        raise StoreError(f"run {record.run_id!r} is {record.status}, not awaiting approval")
    pending = list(output.pending)
    index = next((i for i, p in enumerate(pending) if p.call_id == call_id), None)
    if index is None:
        known = ", ".join(p.call_id for p in pending) or "none"
        raise StoreError(
            f"run {record.run_id!r} has no call {call_id!r} awaiting approval (pending: {known})"
        )
    current = pending[index]
    if current.approved is not None:
        if current.approved != approved:
            was = "approved" if current.approved else "denied"
            raise StoreError(f"run {record.run_id!r}: call {call_id!r} was already {was}")
        return output, False, all(p.approved is not None for p in pending)
    pending[index] = current.model_copy(update={"approved": approved, "reason": reason})
    ready = all(p.approved is not None for p in pending)
    return output.model_copy(update={"pending": tuple(pending)}), True, ready


def why(exc: Exception) -> str:
    """A one-line reason for a decoding failure."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "value"
        return f"{where}: {first['msg']}"[:160]
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:160]


def continuing(envelopes: Sequence[EventEnvelope], last_seq: int) -> list[EventEnvelope]:
    """The envelopes of ``envelopes`` that continue a log ending at ``last_seq`` (``last_seq +
    1``, ``+ 2``, … without a gap; earlier ones skipped, anything after a gap dropped)."""
    kept: list[EventEnvelope] = []
    expected = last_seq + 1
    for envelope in envelopes:
        if envelope.seq < expected:
            continue
        if envelope.seq != expected:
            break
        kept.append(envelope)
        expected += 1
    return kept


def message_of(
    row: Sequence[Any], session_id: uuid.UUID, moment: Callable[[Any], datetime]
) -> Message:
    """A stored message row ``(id, run_id, role, content, tool_calls JSON, tool_call_id,
    created_at, compaction JSON or None)``, its time read by ``moment``.

    Raises:
        StoreError: the row does not decode (naming the session, the message and its run).
    """
    try:
        return Message(
            id=row[0],
            run_id=row[1],
            role=row[2],
            content=row[3],
            tool_calls=tuple(ToolCall.model_validate(c) for c in pydantic_core.from_json(row[4])),
            tool_call_id=row[5],
            created_at=moment(row[6]),
            compaction=None if row[7] is None else Compaction.model_validate_json(row[7]),
        )
    except DECODE_ERRORS as exc:
        raise StoreError(
            f"session {session_id}: stored message {row[0]!r} (run {row[1]!r}) is "
            f"corrupted ({why(exc)})"
        ) from exc


def envelopes_of(
    run_id: str,
    session_id: uuid.UUID,
    segments: Iterable[tuple[int, str | bytes]],
    after_seq: int,
) -> list[EventEnvelope]:
    """The envelopes after ``after_seq`` of stored segments ``(first_seq, events JSON)``, in
    order (the first segment may start before ``after_seq``).

    Raises:
        StoreError: a segment does not decode (naming the run and the segment).
    """
    of = EventEnvelope.of
    envelopes: list[EventEnvelope] = []
    for first, text in segments:
        try:
            events = decode_segment(text)
        except DECODE_ERRORS as exc:
            raise StoreError(
                f"run {run_id!r}: its stored event segment from seq {first} is "
                f"corrupted ({why(exc)})"
            ) from exc
        skip = after_seq - first + 1 if after_seq >= first else 0
        seq = first + skip
        for event in events[skip:] if skip else events:
            envelopes.append(of(event, run_id, session_id, seq))
            seq += 1
    return envelopes
