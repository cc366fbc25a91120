"""Segments on the wire: a run's consecutive envelopes as one JSON array (the stores' segment
codec: an agent twin after its chat event is ``null``), and back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from itertools import groupby
from operator import itemgetter

from ..stores._rows import decode_segment, encode_typed
from ..stores.base import EventEnvelope, LogEntry
from .base import Segment

__all__ = ("TERMINAL", "decode", "segments_of")

TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})

MAX_SEGMENT = 500
"""Envelopes in one segment at most."""


def segments_of(entries: Sequence[LogEntry]) -> Iterator[tuple[str, Segment]]:
    """``(run_id, segment)`` for each run's ``(run_id, session key, seq, event)`` entries (the
    event as the log keeps it, or the event: ``stores._packed.kept``): one segment per
    stretch of consecutive seqs of a run (at most ``MAX_SEGMENT`` envelopes), each run's in
    order. Runs interleaved in ``entries`` (concurrent runs publishing at once) are grouped
    per run first: a segment is one stream entry, so a flush of a hundred interleaved runs
    costs a hundred appends, not one per change of run."""
    by_run: dict[str, list[LogEntry]] = {}
    for run_id, stretch in groupby(entries, _RUN):  # sequential runs: one stretch each
        found = by_run.get(run_id)
        if found is None:
            by_run[run_id] = list(stretch)
        else:
            found.extend(stretch)
    for run_id, mine in by_run.items():
        start = 0
        count = len(mine)
        while start < count:
            first = mine[start][2]
            end = min(start + MAX_SEGMENT, count)
            if mine[end - 1][2] - first != end - 1 - start:  # a gap (seqs only grow): find it
                end = start + 1
                while end < count and end - start < MAX_SEGMENT and mine[end][2] == first + end - start:
                    end += 1
            events, types = encode_typed([entry[3] for entry in mine[start:end]])
            yield run_id, Segment(first, mine[end - 1][2], types, events)
            start = end


_RUN = itemgetter(0)


def decode(
    run_id: str, session_id: uuid.UUID | None, segment: Segment, after_seq: int
) -> list[EventEnvelope]:
    """The envelopes of ``segment`` with seq after ``after_seq``."""
    if segment.last_seq <= after_seq:
        return []
    events = decode_segment(segment.events)
    skip = max(after_seq - segment.first_seq + 1, 0)
    return [
        EventEnvelope.of(event, run_id, session_id, segment.first_seq + skip + i)
        for i, event in enumerate(events[skip:])
    ]
