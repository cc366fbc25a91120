"""Short text for reprs: clipped strings, short ids, times of day (no dependencies)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

__all__ = ("clip", "clock", "field_texts", "short", "short_id")

_CONTEXT_FIELDS = frozenset({"type", "run_id", "timestamp"})


def clip(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters (``…`` where cut)."""
    flat = " ".join(text.split()) if ("\n" in text or "  " in text) else text
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)] + "…"


def short_id(value: object) -> str:
    """The first 8 characters of an id (a UUID's first group)."""
    return str(value)[:8]


def clock(moment: datetime | None) -> str:
    """A time of day, ISO 8601 to the millisecond (``18:30:20.832``)."""
    return "-" if moment is None else moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def short(value: Any, limit: int = 40, *, quote: bool = True) -> str:
    """A field value for a one-line repr (strings quoted unless ``quote=False``)."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, str):
        return repr(clip(value, limit)) if quote else clip(value, limit)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, datetime):
        return clock(value)
    brief = getattr(value, "_brief", None)
    if callable(brief):
        return str(brief())
    return clip(str(value), limit)


def field_texts(model: Any, *, limit: int = 40, quote: bool = True) -> list[str]:
    """``name=value`` for each set field of an event, but its kind, run and time (the one
    summary a repr and an HTML row both show): ids shortened, long text clipped."""
    texts = []
    for name in type(model).model_fields:
        value = getattr(model, name)
        if name in _CONTEXT_FIELDS or value is None:
            continue
        if name.endswith("_id") and isinstance(value, str):
            texts.append(f"{name}={short_id(value)}")
        else:
            texts.append(f"{name}={short(value, limit, quote=quote)}")
    return texts
