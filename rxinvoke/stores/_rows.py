"""What the stores share: decoding failures named in one line, the event segment codec, the
rule of approval decisions."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError

from ..errors import StoreError
from ..events import InvocationEvent
from ..messages import Compaction, Message, ToolCall
from ..request import RunOutput
from .base import EventEnvelope, RunRecord

__all__ = (
    "DECODE_ERRORS",
    "EVENT_LIST",
    "TERMINAL_STATUS",
    "continuing",
    "decided",
    "envelopes_of",
    "message_of",
    "why",
)

DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)
"""What decoding stored data this version cannot read raises."""

EVENT_LIST: TypeAdapter[list[InvocationEvent]] = TypeAdapter(list[InvocationEvent])
"""Decodes a stored segment (one JSON array of a run's events)."""

TERMINAL_STATUS = {"run_completed": "completed", "run_failed": "failed", "run_cancelled": "cancelled"}
"""A terminal event's type → the run status it records."""


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
            events = EVENT_LIST.validate_json(text)
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
