"""Segments on the wire: a run's consecutive envelopes as one JSON array, and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pydantic_core
from pydantic import TypeAdapter

from ..events import InvocationEvent
from ..stores.base import EventEnvelope, LogEntry
from .base import Segment

__all__ = ("TERMINAL", "decode", "segments_of")

TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})

_EVENTS: TypeAdapter[list[InvocationEvent]] = TypeAdapter(list[InvocationEvent])

MAX_SEGMENT = 500
"""Envelopes in one segment at most."""


def segments_of(entries: Sequence[LogEntry]) -> Iterator[tuple[str, Segment]]:
    """``(run_id, segment)`` for each run's consecutive ``(run_id, session_id, seq, event)``
    entries, in order."""
    start = 0
    count = len(entries)
    while start < count:
        run_id, _session, first, _event = entries[start]
        end = start + 1
        seq = first
        while end < count and end - start < MAX_SEGMENT:
            entry = entries[end]
            if entry[0] != run_id or entry[2] != seq + 1:
                break
            seq += 1
            end += 1
        events = [entry[3] for entry in entries[start:end]]
        yield run_id, Segment(
            first, seq, tuple(e.type for e in events), pydantic_core.to_json(events)
        )
        start = end


def decode(
    run_id: str, session_id: uuid.UUID | None, segment: Segment, after_seq: int
) -> list[EventEnvelope]:
    """The envelopes of ``segment`` with seq after ``after_seq``."""
    if segment.last_seq <= after_seq:
        return []
    events = _EVENTS.validate_json(segment.events)
    skip = max(after_seq - segment.first_seq + 1, 0)
    return [
        EventEnvelope.of(event, run_id, session_id, segment.first_seq + skip + i)
        for i, event in enumerate(events[skip:])
    ]
