"""Segments on the wire: a run's consecutive envelopes as one JSON array, and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

import pydantic_core
from pydantic import TypeAdapter

from ..events import InvocationEvent
from ..stores.base import EventEnvelope
from .base import Segment

__all__ = ("TERMINAL", "decode", "segments_of")

TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})

_EVENTS: TypeAdapter[list[InvocationEvent]] = TypeAdapter(list[InvocationEvent])

MAX_SEGMENT = 500
"""Envelopes in one segment at most."""


def segments_of(envelopes: Sequence[EventEnvelope]) -> Iterator[tuple[str, Segment]]:
    """``(run_id, segment)`` for each run's consecutive envelopes, in order."""
    start = 0
    count = len(envelopes)
    while start < count:
        first = envelopes[start]
        end = start + 1
        while (
            end < count
            and end - start < MAX_SEGMENT
            and envelopes[end].run_id == first.run_id
            and envelopes[end].seq == envelopes[end - 1].seq + 1
        ):
            end += 1
        run = envelopes[start:end]
        yield first.run_id, Segment(
            first.seq,
            run[-1].seq,
            tuple(e.type for e in run),
            pydantic_core.to_json([e.event for e in run]),
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
