"""The SVG waterfall of a run's spans: the run, its model calls, its tool executions (one row
per lane, so overlapping executions are visible), durations as labels, details in ``<title>``
tooltips. Plain inline SVG: no script, no CSS file, renders on GitHub and in static HTML."""

from __future__ import annotations

from collections.abc import Sequence

from ..spans import Span
from ._html import FAMILY_COLOURS, esc

__all__ = ("FAILURE_COLOUR", "duration_text", "timeline_svg")

FAILURE_COLOUR = "#dc2626"
RUNNING_COLOUR = "#9ca3af"
_LABEL_WIDTH = 90
_WIDTH = 720
_ROW = 22
_BAR = 14


def duration_text(ms: float | None) -> str:
    """A span's duration as the timeline labels it (``running`` while it lasts)."""
    if ms is None:
        return "running"
    return f"{ms:.1f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def _title(span: Span) -> str:
    parts = [span.name, duration_text(span.duration_ms), span.status]
    attributes = span.attributes
    for key in ("first_fragment_ms", "streaming_ms"):
        if key in attributes:
            parts.append(f"{key.removesuffix('_ms').replace('_', ' ')} {attributes[key]:.1f} ms")
    if "total_tokens" in attributes:
        parts.append(
            f"tokens {attributes['input_tokens']}/{attributes['output_tokens']}/{attributes['total_tokens']}"
        )
    if "retries" in attributes:
        parts.append(f"retried {attributes['retries']}× (last: {attributes['retry_error']})")
    if "error" in attributes:
        parts.append(f"error: {attributes['error']}")
    return " · ".join(str(p) for p in parts)


def timeline_svg(spans: Sequence[Span]) -> str:
    """The waterfall of one run's spans (the run span first, as :func:`rxinvoke.spans` gives)."""
    if not spans:
        return ""
    run = spans[0]
    ends = [s.end for s in spans if s.end is not None]
    start = run.start
    finish = max([run.end or start, *ends])
    total_ms = max((finish - start).total_seconds() * 1000.0, 0.001)
    scale = (_WIDTH - _LABEL_WIDTH - 10) / total_ms
    tools = [s for s in spans if s.kind == "tool_execution"]
    lanes = max((int(s.attributes.get("lane", 0)) for s in tools), default=-1) + 1
    rows = ["run", "model", *(f"tools {lane + 1}" for lane in range(lanes))]
    height = _ROW * len(rows) + 18

    def row_of(span: Span) -> int:
        if span.kind == "run":
            return 0
        if span.kind == "model_call":
            return 1
        return 2 + int(span.attributes.get("lane", 0))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" font-family="monospace" font-size="11" '
        'role="img" aria-label="run timeline">'
    ]
    for index, label in enumerate(rows):
        y = index * _ROW + _ROW / 2 + 4
        parts.append(f'<text x="4" y="{y:.1f}" fill="#374151">{esc(label)}</text>')
    for span in spans:
        offset = ((span.start - start).total_seconds() * 1000.0) * scale
        end = span.end or finish
        width = max(((end - span.start).total_seconds() * 1000.0) * scale, 2.0)
        x = _LABEL_WIDTH + offset
        y = row_of(span) * _ROW + (_ROW - _BAR) / 2
        if span.status == "running":
            colour = RUNNING_COLOUR
        elif span.status == "error" and span.kind != "run":
            colour = FAILURE_COLOUR
        else:
            family = {"run": "run", "model_call": "model", "tool_execution": "tool"}[span.kind]
            colour = FAMILY_COLOURS[family]
        klass = f"rxi-{span.kind.replace('_', '-')} rxi-{span.status}"
        parts.append(
            f'<g class="{klass}"><title>{esc(_title(span))}</title>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{_BAR}" rx="3" '
            f'fill="{colour}" opacity="{0.55 if span.kind == "run" else 0.9}"/>'
        )
        first = span.attributes.get("first_fragment_ms")
        if span.kind == "model_call" and isinstance(first, (int, float)):
            parts.append(  # waiting for the first fragment: the lighter head of the bar
                f'<rect class="rxi-first-fragment" x="{x:.1f}" y="{y:.1f}" '
                f'width="{max(first * scale, 0.5):.1f}" height="{_BAR}" rx="3" fill="#ffffff" opacity="0.35"/>'
            )
        label = duration_text(span.duration_ms)
        if width > 7 * len(label):
            parts.append(
                f'<text x="{x + 4:.1f}" y="{y + _BAR - 3:.1f}" fill="#ffffff">{esc(label)}</text>'
            )
        parts.append("</g>")
    axis_y = height - 4
    parts.append(
        f'<text x="{_LABEL_WIDTH}" y="{axis_y}" fill="#6b7280">0</text>'
        f'<text x="{_WIDTH - 10}" y="{axis_y}" fill="#6b7280" text-anchor="end">'
        f"{esc(duration_text(total_ms))}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)
