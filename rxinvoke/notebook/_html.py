"""HTML building blocks: escaping, event families and their colours, chips and field tables.

Pure functions of values (rich's and IPython's convention): they never reach into a runtime,
so they can be tested by parsing what they return. Every piece of model, tool or user text
goes through :func:`esc`; no renderer emits ``<script>``. Styles are inline (they survive
GitHub's and nbconvert's sanitising).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping
from typing import Any

from .._display import clock, field_texts
from ..events import EventBase

__all__ = ("FAMILY_COLOURS", "chip", "esc", "event_row", "family_of", "field_table", "json_text")

FAMILY_COLOURS: Mapping[str, str] = {
    "run": "#2563eb",
    "model": "#7c3aed",
    "text": "#6b7280",
    "tool": "#ea580c",
    "store": "#059669",
    "safety": "#dc2626",
}
"""The colour of each event family (run, model, text, tool, store, safety)."""

_FAMILY: Mapping[str, str] = {
    "run_started": "run", "context_built": "run", "run_completed": "run", "run_failed": "run",
    "run_cancelled": "run", "model_started": "model", "model_retried": "model",
    "chat_started": "model",
    "chat_finished": "model", "usage_recorded": "model", "text_delta": "text",
    "chat_text_delta": "text", "assistant_message_committed": "store",
    "tool_message_committed": "store", "doom_loop_detected": "safety",
    "compaction_started": "safety", "compaction_finished": "safety",
    "approval_requested": "safety", "approval_decided": "safety",
    "compaction_circuit_opened": "safety",
}


def family_of(kind: str) -> str:
    """The family of an event kind: run, model, text, tool, store or safety."""
    return _FAMILY.get(kind, "tool" if "tool" in kind else "run")


def esc(value: Any) -> str:
    """``value`` as HTML-escaped text (quotes included)."""
    return html.escape(str(value), quote=True)


def chip(label: str, colour: str) -> str:
    """A small coloured label."""
    return (
        f'<span style="display:inline-block;padding:0 6px;border-radius:8px;'
        f'background:{colour};color:#fff;font-size:11px;font-family:monospace">{esc(label)}</span>'
    )


def json_text(value: Any) -> str:
    """A JSON-able value as indented JSON text (escape it before putting it in HTML)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def field_table(fields: Mapping[str, Any]) -> str:
    """A two-column table of fields, values as escaped text (JSON for structures)."""
    rows = "".join(
        f'<tr><th style="text-align:left;padding:1px 8px 1px 0;vertical-align:top">{esc(name)}</th>'
        f'<td style="text-align:left;font-family:monospace;white-space:pre-wrap">'
        f"{esc(value if isinstance(value, str) else json_text(value))}</td></tr>"
        for name, value in fields.items()
    )
    return f'<table style="border-collapse:collapse;font-size:12px">{rows}</table>'


def pending_table(pending: Iterable[Any]) -> str:
    """The calls of a paused run waiting for a person: tool, arguments, call id, decision."""
    rows = "".join(
        "<tr>"
        f'<td style="padding:1px 8px 1px 0">{chip(p.tool_name, FAMILY_COLOURS["safety"])}</td>'
        f'<td style="text-align:left;font-family:monospace;white-space:pre-wrap">{esc(_pretty(p.arguments))}</td>'
        f'<td style="font-family:monospace;color:#6b7280">{esc(p.call_id)}</td>'
        f"<td>{esc(_decision(p))}</td>"
        "</tr>"
        for p in pending
    )
    head = (
        "<tr><th style='text-align:left'>tool</th><th style='text-align:left'>arguments</th>"
        "<th style='text-align:left'>call</th><th style='text-align:left'>decision</th></tr>"
    )
    return f'<table style="border-collapse:collapse;font-size:12px">{head}{rows}</table>'


def _pretty(arguments: str) -> str:
    try:
        return json_text(json.loads(arguments))
    except ValueError:
        return arguments


def _decision(pending: Any) -> str:
    if pending.approved is None:
        expires = f" (expires {clock(pending.expires_at)})" if pending.expires_at else ""
        return "waiting" + expires
    return "approved" if pending.approved else f"denied: {pending.reason or 'no reason given'}"


def _summary(event: EventBase) -> str:
    return " · ".join(field_texts(event, limit=60, quote=False))


def event_row(event: EventBase, *, seq: int | None = None) -> str:
    """One event as a table row: seq, time, kind chip, summary, all fields on click."""
    kind = str(getattr(event, "type", type(event).__name__))
    colour = FAMILY_COLOURS[family_of(kind)]
    fields = event.model_dump(mode="json")
    return (
        "<tr>"
        f'<td style="color:#6b7280;text-align:right">{"" if seq is None else seq}</td>'
        f'<td style="font-family:monospace;color:#6b7280">{esc(clock(event.timestamp))}</td>'
        f"<td>{chip(kind, colour)}</td>"
        f'<td style="text-align:left"><details><summary style="cursor:pointer">'
        f"{esc(_summary(event))}</summary>{field_table(fields)}</details></td>"
        "</tr>"
    )


def event_table(events: Iterable[tuple[int | None, EventBase]], *, caption: str = "") -> str:
    """Events as a compact table (``(seq, event)`` pairs)."""
    rows = "".join(event_row(event, seq=seq) for seq, event in events)
    head = f"<caption style='text-align:left'>{esc(caption)}</caption>" if caption else ""
    return f'<table style="border-collapse:collapse;font-size:12px">{head}{rows}</table>'


def card(title: str, colour: str, summary: str, fields: Mapping[str, Any]) -> str:
    """A value (record, output, message) as a chip, a one-line summary and its fields."""
    return (
        f'<div style="font-size:12px">{chip(title, colour)} {esc(summary)}'
        f"<details><summary style='cursor:pointer'>fields</summary>{field_table(fields)}</details></div>"
    )
