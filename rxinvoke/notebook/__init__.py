"""The Jupyter layer: readable objects, run views with a timeline, tables.

- every event, ``RunOutput``, ``RunRecord``, ``EventEnvelope``, ``Message`` and ``TokenUsage``
  renders as HTML in a notebook (a colour-coded chip per event family — run, model, text,
  tool, store, safety — with every field one click away); registered with IPython when
  rxinvoke is imported inside it (or ``%load_ext rxinvoke.notebook``);
- :class:`RunView` — a run's header, transcript, SVG waterfall timeline and events:
  ``await inv.view(run_id)``, ``await RunView.load(store, run_id)``, ``RunView.from_events(...)``;
- :func:`to_records` / :func:`to_dataframe` — events as a flat table (pandas optional).

- :func:`live` — a run's view updated in place while it streams (throttled, ends on the
  final state); :func:`marbles` — an SVG marble diagram of Observables (or of a
  TestScheduler's recorded messages: ``MarbleDiagram.from_messages``).

Renderings are pure functions of values; the runtime never imports this package.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .._bus import SubscriptionStats
from .._display import clock, short_id
from ..events import EventBase
from ..messages import Message, TokenUsage
from ..request import RunOutput
from ..stores.base import EventEnvelope, RunRecord
from ._html import FAMILY_COLOURS, card, esc, event_table, pending_table
from .live import LiveView, live
from .marbles import MarbleDiagram, marbles
from .tables import to_dataframe, to_records
from .view import Events, RunView

__all__ = (
    "Events",
    "LiveView",
    "MarbleDiagram",
    "RunView",
    "install",
    "live",
    "load_ipython_extension",
    "marbles",
    "to_dataframe",
    "to_html",
    "to_records",
)

_log = logging.getLogger("rxinvoke")


def to_html(value: Any) -> str:
    """The HTML rendering of an rxinvoke value (an event, output, record, envelope, message,
    usage, a RunView or Events)."""
    if isinstance(value, (RunView, Events)):
        return value._repr_html_() or esc(repr(value))
    if isinstance(value, EventBase):
        return event_table([(None, value)])
    if isinstance(value, EventEnvelope):
        return event_table([(value.seq, value.event)])
    if isinstance(value, RunOutput):
        if value.pending:
            waiting = sum(p.approved is None for p in value.pending)
            summary = f"awaiting approval · {waiting} of {len(value.pending)} call(s) waiting · run {short_id(value.run_id)}"
            return card("run paused", FAMILY_COLOURS["safety"], summary, value.model_dump(mode="json")).replace(
                "<details>", pending_table(value.pending) + "<details>", 1
            )
        return card("run output", FAMILY_COLOURS["run"], f"{value.finish_reason.value} · {value.output_text}", value.model_dump(mode="json"))
    if isinstance(value, RunRecord):
        return card(f"run {value.status}", FAMILY_COLOURS["run"], f"{short_id(value.run_id)} · {value.request.input} · started {clock(value.started_at)}", value.model_dump(mode="json"))
    if isinstance(value, Message):
        return card(value.role, FAMILY_COLOURS["store"], value.content or f"{len(value.tool_calls)} tool call(s)", value.model_dump(mode="json"))
    if isinstance(value, SubscriptionStats):
        fields = {k: getattr(value, k) for k in ("delivered", "dropped", "failed", "in_flight", "queued")}
        return card("subscription", FAMILY_COLOURS["tool"], " · ".join(f"{k} {v}" for k, v in fields.items()), fields)
    if isinstance(value, TokenUsage):
        return card("tokens", FAMILY_COLOURS["model"], f"in {value.input_tokens} · out {value.output_tokens} · total {value.total_tokens}", value.model_dump(mode="json"))
    raise TypeError(f"no HTML rendering for {type(value).__name__}")


def _safe(render: Callable[[Any], str]) -> Callable[[Any], str | None]:
    def formatter(value: Any) -> str | None:
        try:
            return render(value)
        except Exception:
            _log.exception("rxinvoke: HTML rendering of %s failed; plain text shown", type(value).__name__)
            return None  # IPython shows text/plain instead

    return formatter


def install(ipython: Any = None) -> bool:
    """Register the HTML renderings with IPython (the running one by default); False when
    there is none. Idempotent."""
    if ipython is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        ipython = get_ipython()
    if ipython is None:
        return False
    html = ipython.display_formatter.formatters["text/html"]
    for kind in (EventBase, EventEnvelope, RunOutput, RunRecord, Message, TokenUsage, SubscriptionStats):
        html.for_type(kind, _safe(to_html))
    return True


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext rxinvoke.notebook``."""
    install(ipython)
