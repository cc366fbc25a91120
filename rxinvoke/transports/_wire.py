"""Segments on the wire: a run's consecutive envelopes as one JSON array (the stores' segment
codec: an agent twin after its chat event is ``null``), and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence

from pydantic_core import from_json, to_json

from ..events import InvocationEvent
from ..stores._packed import cut
from ..stores._rows import decode_segment, encode_typed
from ..stores.base import EventEnvelope, LogEntry, Stretch, runs_in, stretches_of
from .base import Segment

__all__ = ("TERMINAL", "decode", "events_of", "segments_of", "split_end", "stretch_segments")

TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})

MAX_SEGMENT = 500
"""Envelopes in one segment at most."""


def segments_of(entries: Sequence[LogEntry]) -> Iterator[tuple[str, Segment]]:
    """``(run_id, segment)`` for each run's ``(run_id, session key, seq, event)`` entries (the
    event as the log keeps it, or the event: ``stores._packed.kept``): see
    :func:`stretch_segments`."""
    return stretch_segments(stretches_of(entries))


def stretch_segments(stretches: Iterable[Stretch]) -> Iterator[tuple[str, Segment]]:
    """``(run_id, segment)`` for the events of ``stretches`` (as the event log keeps them, twin
    aliases included): one segment per stretch of consecutive seqs of a run (at most
    ``MAX_SEGMENT`` envelopes), each run's in order. Runs interleaved (concurrent runs
    publishing at once) are grouped per run first: a segment is one stream entry, so a flush
    of a hundred interleaved runs costs a hundred appends, not one per change of run."""
    for run_id, chunks in runs_in(stretches).items():
        for first, items in chunks:
            for start in range(0, len(items), MAX_SEGMENT):
                part = cut(items, start, start + MAX_SEGMENT)
                events, types = encode_typed(part)
                yield run_id, Segment(first + start, first + start + len(part) - 1, types, events)


def split_end(segment: Segment) -> tuple[Segment | None, Segment]:
    """``segment`` cut before its last event: (the events before it, or None if it has
    none; a segment of its last event alone)."""
    items = from_json(segment.events)
    last = segment.last_seq
    end = Segment(last, last, segment.types[-1:], to_json(items[-1:]))
    if len(items) == 1:
        return None, end
    return Segment(segment.first_seq, last - 1, segment.types[:-1], to_json(items[:-1])), end


def events_of(segment: Segment, skip: int = 0) -> list[InvocationEvent]:
    """The events of ``segment`` after its first ``skip``."""
    return decode_segment(segment.events)[skip:]


def decode(
    run_id: str, session_id: uuid.UUID | None, segment: Segment, after_seq: int
) -> list[EventEnvelope]:
    """The envelopes of ``segment`` with seq after ``after_seq``."""
    if segment.last_seq <= after_seq:
        return []
    skip = max(after_seq - segment.first_seq + 1, 0)
    return [
        EventEnvelope.of(event, run_id, session_id, segment.first_seq + skip + i)
        for i, event in enumerate(events_of(segment, skip))
    ]
