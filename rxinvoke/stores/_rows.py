"""What the SQL stores share: decoding failures named in one line, the event segment codec."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from ..events import InvocationEvent

__all__ = ("DECODE_ERRORS", "EVENT_LIST", "TERMINAL_STATUS", "why")

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
