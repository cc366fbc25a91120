"""RunView: one run, readable — a header, the transcript, the SVG timeline and the events.

Built from a list of events (``RunView.from_events``), from a store (``await RunView.load(store,
run_id)``, also a SQLite file another process writes) or, through
:func:`rxinvoke.notebook.view`, from an invocation. It renders through the IPython display
protocol (``_repr_mimebundle_``: text/plain, text/html, application/json), so an executed
notebook shows it on GitHub and in static HTML with nothing running. A rendering that fails
falls back to the plain text and logs why; it never raises into IPython.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .._display import clip, short_id
from ..events import (
    CHAT_TWINS,
    EventBase,
    InvocationEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    TextDelta,
    ToolCallCompleted,
    ToolExecutionFinished,
    ToolFailure,
    UsageRecorded,
)
from ..messages import TokenUsage
from ..spans import Span, spans
from ..stores.base import EventEnvelope, RunRecord, Store
from ._html import FAMILY_COLOURS, chip, esc, event_table
from ._timeline import FAILURE_COLOUR, duration_text, timeline_svg

__all__ = ("Events", "RunView")

_log = logging.getLogger("rxinvoke")

_HEAD_ROWS = _TAIL_ROWS = 60
_TRANSCRIPT_CHARS = 10_000  # of one assistant text block, in the transcript


class Events(list[InvocationEvent]):
    """A list of events that renders as a compact table in a notebook."""

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for event in self:
            kinds[event.type] = kinds.get(event.type, 0) + 1
        listed = ", ".join(f"{kind} ×{n}" if n > 1 else kind for kind, n in kinds.items())
        return clip(f"Events({len(self)}: {listed})", 300)

    def _repr_html_(self) -> str | None:
        try:
            return _elided_table(list(enumerate(self, 1)), caption=f"{len(self)} events")
        except Exception:
            _log.exception("rxinvoke: rendering Events as HTML failed; plain text shown")
            return None


def _elided_table(rows: Sequence[tuple[int | None, EventBase]], *, caption: str) -> str:
    if len(rows) <= _HEAD_ROWS + _TAIL_ROWS:
        return event_table(rows, caption=caption)
    hidden = len(rows) - _HEAD_ROWS - _TAIL_ROWS
    return (
        event_table(rows[:_HEAD_ROWS], caption=caption)
        + f'<div style="color:#6b7280;font-size:12px;padding:2px 0">… {hidden:,} more events …</div>'
        + event_table(rows[-_TAIL_ROWS:])
    )


class RunView:
    """One run's header, transcript, timeline and events.

    Args:
        events: the run's events in publication order (other runs' events are ignored).
        record: the stored record, when known (its input and timestamps complete the header).
        chat: show the chat-stream twins (``chat_text_delta``, …) in the event table.
    """

    def __init__(
        self,
        events: Iterable[InvocationEvent | EventEnvelope],
        *,
        record: RunRecord | None = None,
        chat: bool = False,
        run_id: str | None = None,
    ) -> None:
        listed: list[InvocationEvent] = [
            e.event if isinstance(e, EventEnvelope) else e for e in events  # envelopes too
        ]
        self.run_id = run_id or (record.run_id if record else None) or next(
            (e.run_id for e in listed if e.run_id), ""
        )
        self.events = Events(e for e in listed if e.run_id == self.run_id)
        """The run's events."""
        self.record = record
        self.chat = chat
        self.spans: list[Span] = spans(self.events)
        """The run's spans (run, model calls, tool executions)."""

    @classmethod
    def from_events(
        cls, events: Iterable[InvocationEvent | EventEnvelope], *, chat: bool = False
    ) -> RunView:
        """The view of the (first) run in ``events`` (or in envelopes: ``observe_run``'s)."""
        return cls(events, chat=chat)

    @classmethod
    async def load(cls, store: Store, run_id: str, *, chat: bool = False) -> RunView:
        """The view of a stored run (live or finished; any process may be writing it).

        Raises:
            UnknownRun: no such run is stored.
        """
        envelopes = await store.read_events(run_id)
        record = await store.get_run(run_id)
        return cls([e.event for e in envelopes], record=record, chat=chat, run_id=run_id)

    # --- what the header says ---------------------------------------------------------------

    @property
    def status(self) -> str:
        """``completed``, ``failed``, ``cancelled`` or ``running``."""
        last = self.events[-1] if self.events else None
        if isinstance(last, RunCompleted):
            return "completed"
        if isinstance(last, RunFailed):
            return "failed"
        if isinstance(last, RunCancelled):
            return "cancelled"
        return self.record.status if self.record is not None else "running"

    @property
    def usage(self) -> TokenUsage:
        """The run's total token usage so far."""
        total = TokenUsage()
        for event in self.events:
            if isinstance(event, UsageRecorded):
                total = total + event.usage
        return total

    @property
    def text(self) -> str:
        """The assistant text so far (every model call's fragments, in order)."""
        return "".join(e.delta for e in self.events if isinstance(e, TextDelta))

    def summary(self) -> dict[str, Any]:
        """The header as JSON-able data."""
        run = self.spans[0] if self.spans else None
        started = next((e for e in self.events if isinstance(e, RunStarted)), None)
        last = self.events[-1] if self.events else None
        usage = self.usage
        return {
            "run_id": self.run_id,
            "status": self.status,
            "finish_reason": getattr(last, "finish_reason", None) and last.finish_reason.value,  # type: ignore[union-attr]
            "iterations": sum(1 for s in self.spans if s.kind == "model_call"),
            "wall_ms": run.duration_ms if run is not None else None,
            "tokens": {"input": usage.input_tokens, "output": usage.output_tokens, "total": usage.total_tokens},
            "provider": started.provider if started else None,
            "model": started.model if started else None,
            "session_id": started.session_id if started else (str(self.record.session_id) if self.record else None),
            "error": getattr(last, "error", None),
            "input": self.record.request.input if self.record is not None else None,
            "events": len(self.events),
        }

    # --- rendering ------------------------------------------------------------------------

    def __repr__(self) -> str:
        data = self.summary()
        tokens = data["tokens"]
        wall = f"{data['wall_ms']:.0f} ms" if data["wall_ms"] is not None else "running"
        return clip(
            f"RunView(run {short_id(self.run_id)}, {data['status']}, {data['iterations']} model "
            f"call(s), {wall}, tokens {tokens['input']}/{tokens['output']}/{tokens['total']}, "
            f"{len(self.events)} events, {clip(self.text, 60)!r})",
            200,
        )

    def _repr_mimebundle_(
        self, include: Any = None, exclude: Any = None, **kwargs: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        data: dict[str, Any] = {"text/plain": repr(self)}
        try:
            data["text/html"] = self.html()
            data["application/json"] = self.to_json()
        except Exception:
            _log.exception("rxinvoke: rendering a RunView failed; plain text shown")
        return data, {"application/json": {"expanded": False}}

    def _repr_html_(self) -> str | None:
        try:
            return self.html()
        except Exception:
            _log.exception("rxinvoke: rendering a RunView failed; plain text shown")
            return None

    def html(self) -> str:
        """The whole view as an HTML fragment (escaped text, inline SVG, no script)."""
        return (
            '<div class="rxi-run-view" style="font-family:system-ui,sans-serif;font-size:13px;'
            'max-width:760px">'
            + self._header()
            + self._transcript()
            + f'<div class="rxi-timeline" style="margin:6px 0">{timeline_svg(self.spans)}</div>'
            + self._events_html()
            + "</div>"
        )

    def _header(self) -> str:
        data = self.summary()
        status = data["status"]
        colour = {"completed": FAMILY_COLOURS["store"], "failed": FAILURE_COLOUR}.get(status, "#6b7280")
        tokens = data["tokens"]
        facts = [
            ("finish", data["finish_reason"] or "-"),
            ("iterations", data["iterations"]),
            ("duration", duration_text(data["wall_ms"])),  # on the run's clock (virtual or not)
            ("tokens in/out/total", f"{tokens['input']} / {tokens['output']} / {tokens['total']}"),
            ("provider/model", f"{data['provider'] or '-'} / {data['model'] or '-'}"),
            ("session", data["session_id"] or "-"),
            ("run", self.run_id),
        ]
        cells = "".join(
            f'<td style="padding:0 12px 0 0;text-align:left;white-space:nowrap" title="{esc(v)}">'
            f'<div style="color:#6b7280;font-size:11px">{esc(k)}</div>'
            f'<div style="font-size:12px">{esc(short_id(v) if k in ("session", "run") else v)}</div></td>'
            for k, v in facts
        )
        error = (
            f'<div style="color:{FAILURE_COLOUR}">{esc(data["error"])}</div>' if data["error"] else ""
        )
        return (
            f'<div class="rxi-header">{chip(status, colour)} '
            f'<table style="border-collapse:collapse;display:inline-table"><tr>{cells}</tr></table>'
            f"{error}</div>"
        )

    def _transcript(self) -> str:
        lines: list[str] = []
        if self.record is not None:
            lines.append(_line("user", FAMILY_COLOURS["run"], esc(self.record.request.input)))
        text: list[str] = []
        calls: dict[str, ToolCallCompleted] = {}

        def flush() -> None:
            if text:
                whole = "".join(text)
                shown = whole[:_TRANSCRIPT_CHARS]
                more = len(whole) - len(shown)
                body = esc(shown) + (
                    f'<span style="color:#6b7280"> … {more:,} more characters</span>' if more else ""
                )
                lines.append(_line("assistant", FAMILY_COLOURS["model"], body))
                text.clear()

        for event in self.events:
            if isinstance(event, TextDelta):
                text.append(event.delta)
            elif isinstance(event, ToolCallCompleted):
                flush()
                calls[event.call.id] = event
            elif isinstance(event, ToolExecutionFinished):
                flush()
                call = calls.get(event.call_id)
                arguments = call.call.arguments if call is not None else ""
                failed = isinstance(event.result, ToolFailure)
                result = event.result.error if isinstance(event.result, ToolFailure) else event.result.output
                colour = FAILURE_COLOUR if failed else FAMILY_COLOURS["tool"]
                lines.append(
                    _line(
                        event.tool_name,
                        colour,
                        f"<code>{esc(clip(arguments, 300))}</code> → "
                        f'<span class="rxi-tool-{"failure" if failed else "success"}" '
                        f'style="color:{colour if failed else "inherit"}">{esc(clip(result, 500))}</span> '
                        f'<span style="color:#6b7280">({event.duration_ms:.1f} ms)</span>',
                    )
                )
        flush()
        return f'<div class="rxi-transcript" style="margin:6px 0">{"".join(lines)}</div>'

    def _events_html(self) -> str:
        rows = [
            (seq, event)
            for seq, event in enumerate(self.events, 1)
            if self.chat or event.type not in CHAT_TWINS
        ]
        hidden = len(self.events) - len(rows)
        caption = f"{len(self.events)} events" + (
            f" ({hidden} chat-stream twin{'s' if hidden != 1 else ''} hidden: RunView(..., chat=True) "
            "shows them)" if hidden else ""
        )
        return (
            f'<details class="rxi-events"><summary style="cursor:pointer">{esc(caption)}</summary>'
            f"{_elided_table(rows, caption='')}</details>"
        )

    def to_json(self) -> Mapping[str, Any]:
        """The header plus the spans, as JSON-able data."""
        return {
            **self.summary(),
            "spans": [
                {
                    "kind": s.kind,
                    "name": s.name,
                    "start": s.start.isoformat(),
                    "end": s.end.isoformat() if s.end else None,
                    "duration_ms": s.duration_ms,
                    "status": s.status,
                    "attributes": dict(s.attributes),
                }
                for s in self.spans
            ],
        }


def _line(who: str, colour: str, body_html: str) -> str:
    return (
        f'<div style="margin:2px 0">{chip(who, colour)} '
        f'<span style="white-space:pre-wrap">{body_html}</span></div>'
    )


