"""What the SQL stores share: decoding failures named in one line, the event segment codec."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import TypeAdapter, ValidationError

from ..events import InvocationEvent
from .base import EventEnvelope

__all__ = ("DECODE_ERRORS", "EVENT_LIST", "TERMINAL_STATUS", "continuing", "why")

DECODE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError)
"""What decoding stored data this version cannot read raises."""

EVENT_LIST: TypeAdapter[list[InvocationEvent]] = TypeAdapter(list[InvocationEvent])
"""Decodes a stored segment (one JSON array of a run's events)."""

TERMINAL_STATUS = {"run_completed": "completed", "run_failed": "failed", "run_cancelled": "cancelled"}
"""A terminal event's type → the run status it records."""


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
