"""Marble diagrams: what operators do to a run's events, drawn as SVG.

``await marbles({"deltas": obs1, "throttled": obs2}, until=2.0)`` subscribes every lane on the
loop, records each item at its time until ``until`` (seconds, or an Observable that emits),
and returns a :class:`MarbleDiagram`: one lane per Observable, a marble per item (labelled with
its event kind, or its text), ``|`` for completion and ``✕`` for an error. The same picture
comes from a ``reactivex.testing.TestScheduler`` run: ``MarbleDiagram.from_messages({"out":
results.messages})`` (virtual time).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import reactivex
from reactivex import Observable, abc

from .._clock import loop_scheduler
from .._display import clip
from ..events import EventBase
from ._html import FAMILY_COLOURS, esc, family_of

__all__ = ("Mark", "MarbleDiagram", "marbles")

_log = logging.getLogger("rxinvoke")


@dataclass(frozen=True)
class Mark:
    """One thing a lane did: an item (``"N"``), its completion (``"C"``) or an error (``"E"``)."""

    time: float
    """Seconds from the start of the recording."""
    kind: str
    label: str
    colour: str


def _mark(time: float, kind: str, value: Any) -> Mark:
    if kind == "C":
        return Mark(time, "C", "completed", "#111827")
    if kind == "E":
        return Mark(time, "E", clip(str(value), 60), "#dc2626")
    if isinstance(value, EventBase):
        label = str(getattr(value, "type", type(value).__name__))
        return Mark(time, "N", label, FAMILY_COLOURS[family_of(label)])
    return Mark(time, "N", clip(str(value), 40), "#2563eb")


class MarbleDiagram:
    """Recorded lanes, rendered as an SVG marble diagram (``_repr_html_``)."""

    def __init__(self, lanes: Mapping[str, Sequence[Mark]], *, duration: float | None = None) -> None:
        self.lanes = {name: list(marks) for name, marks in lanes.items()}
        times = [m.time for marks in self.lanes.values() for m in marks]
        self.duration = duration if duration is not None else max(times, default=0.0)

    @classmethod
    def from_messages(cls, lanes: Mapping[str, Sequence[Any]], *, start: float = 0.0) -> MarbleDiagram:
        """A diagram of a TestScheduler's recorded messages (``results.messages``), in its
        virtual seconds from ``start``."""
        return cls(
            {
                name: [_mark(m.time - start, m.value.kind, getattr(m.value, "value", getattr(m.value, "exception", None))) for m in messages]
                for name, messages in lanes.items()
            }
        )

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}: {sum(m.kind == 'N' for m in marks)}" for name, marks in self.lanes.items())
        return f"MarbleDiagram({counts}; {self.duration:.3g} s)"

    def _repr_html_(self) -> str | None:
        try:
            return self.svg()
        except Exception:
            _log.exception("rxinvoke: rendering a MarbleDiagram failed; plain text shown")
            return None

    def svg(self) -> str:
        """The diagram as inline SVG (escaped labels in ``<title>`` tooltips)."""
        label_width, width, row = 110, 720, 34
        height = row * len(self.lanes) + 16
        span = max(self.duration, 1e-9)
        scale = (width - label_width - 20) / span
        parts = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="monospace" font-size="11" '
            'role="img" aria-label="marble diagram">'
        ]
        for index, (name, marks) in enumerate(self.lanes.items()):
            y = index * row + row / 2
            parts.append(f'<text x="4" y="{y + 4:.1f}" fill="#374151">{esc(clip(name, 14))}</text>')
            parts.append(
                f'<line x1="{label_width}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#9ca3af"/>'
            )
            for mark in marks:
                x = label_width + mark.time * scale
                tip = f"<title>{esc(mark.label)} at {mark.time:.3f} s</title>"
                if mark.kind == "N":
                    parts.append(
                        f'<g class="rxi-marble">{tip}<circle cx="{x:.1f}" cy="{y:.1f}" r="7" '
                        f'fill="{mark.colour}" stroke="#111827" stroke-width="0.5"/></g>'
                    )
                elif mark.kind == "C":
                    parts.append(
                        f'<g class="rxi-completed">{tip}<line x1="{x:.1f}" y1="{y - 9:.1f}" '
                        f'x2="{x:.1f}" y2="{y + 9:.1f}" stroke="#111827" stroke-width="2"/></g>'
                    )
                else:
                    parts.append(
                        f'<g class="rxi-error">{tip}<text x="{x - 5:.1f}" y="{y + 5:.1f}" '
                        f'fill="{mark.colour}" font-size="16">✕</text></g>'
                    )
        parts.append(
            f'<text x="{label_width}" y="{height - 2}" fill="#6b7280">0</text>'
            f'<text x="{width - 10}" y="{height - 2}" fill="#6b7280" text-anchor="end">{self.duration:.3g} s</text>'
        )
        parts.append("</svg>")
        return "".join(parts)


async def marbles(
    lanes: Mapping[str, Observable[Any]],
    *,
    until: float | Observable[Any],
    scheduler: abc.SchedulerBase | None = None,
) -> MarbleDiagram:
    """Record ``lanes`` on the loop until ``until`` (seconds, or an Observable's first item)
    and return their marble diagram. Subscribe the lanes' sources (e.g. start the run) after
    calling this, or pass cold Observables."""
    clock = loop_scheduler(scheduler)
    begin = clock.now
    recorded: dict[str, list[Mark]] = {name: [] for name in lanes}
    done = asyncio.get_running_loop().create_future()

    def at() -> float:
        return (clock.now - begin).total_seconds()

    def recorder(marks: list[Mark]) -> abc.ObserverBase[Any]:
        return reactivex.Observer(
            lambda value: marks.append(_mark(at(), "N", value)),
            lambda error: marks.append(_mark(at(), "E", error)),
            lambda: marks.append(_mark(at(), "C", None)),
        )

    subscriptions = [
        observable.subscribe(recorder(recorded[name]), scheduler=clock)
        for name, observable in lanes.items()
    ]
    stopper = until if not isinstance(until, (int, float)) else reactivex.timer(float(until), scheduler=clock)

    def stop(_: Any = None) -> None:
        if not done.done():
            done.set_result(None)

    stop_subscription = stopper.subscribe(stop, lambda e: stop(), stop, scheduler=clock)
    try:
        await done
    finally:
        stop_subscription.dispose()
        for subscription in subscriptions:
            subscription.dispose()
    return MarbleDiagram(recorded, duration=at())
