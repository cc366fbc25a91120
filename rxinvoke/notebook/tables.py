"""Events as flat records (one column per common field) and as a pandas DataFrame."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..events import CHAT_TWINS, InvocationEvent
from ..stores.base import EventEnvelope

__all__ = ("to_dataframe", "to_records")

COLUMNS = (
    "seq", "timestamp", "run_id", "type", "text", "tool_name", "call_id", "iteration", "provider",
    "model", "status", "error", "duration_ms", "input_tokens", "output_tokens", "total_tokens",
    "finish_reason",
)
"""The columns of :func:`to_records`, in order (every record has every column)."""


def to_records(
    events: Iterable[InvocationEvent | EventEnvelope], *, chat: bool = False
) -> list[dict[str, Any]]:
    """One flat dict per event: the common fields as columns (None where an event has none),
    timestamps as ISO text; the chat-stream twins left out unless ``chat=True`` (each
    fragment appears once). Envelopes keep their ``seq``."""
    records: list[dict[str, Any]] = []
    for item in events:
        seq = item.seq if isinstance(item, EventEnvelope) else None
        event = item.event if isinstance(item, EventEnvelope) else item
        if not chat and event.type in CHAT_TWINS:
            continue
        row: dict[str, Any] = dict.fromkeys(COLUMNS)
        row.update(seq=seq, timestamp=event.timestamp.isoformat(), run_id=event.run_id, type=event.type)
        data = event.model_dump(mode="json")
        row["text"] = data.get("delta") or data.get("description")
        row["tool_name"] = data.get("tool_name") or data.get("name")
        row["call_id"] = data.get("call_id") or data.get("id")
        call = data.get("call")
        if isinstance(call, dict):
            row["tool_name"], row["call_id"], row["text"] = call["name"], call["id"], call["arguments"]
        for key in ("iteration", "provider", "model", "error", "duration_ms", "finish_reason"):
            if data.get(key) is not None:
                row[key] = data[key]
        result = data.get("result")
        if isinstance(result, dict):
            row["status"] = result["status"]
            row["text"] = result.get("output")
            row["error"] = result.get("error")
        usage = data.get("usage")
        if isinstance(usage, dict):
            row.update(
                input_tokens=usage["input_tokens"],
                output_tokens=usage["output_tokens"],
                total_tokens=usage["total_tokens"],
            )
        records.append(row)
    return records


def to_dataframe(events: Iterable[InvocationEvent | EventEnvelope], *, chat: bool = False) -> Any:
    """:func:`to_records` as a ``pandas.DataFrame`` (timestamps parsed).

    Raises:
        ImportError: pandas is not installed (``pip install 'rxinvoke[notebook]'``).
    """
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            "to_dataframe needs pandas: pip install 'rxinvoke[notebook]' (or pandas)"
        ) from exc
    frame = pd.DataFrame(to_records(events, chat=chat), columns=list(COLUMNS))
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame
