"""live(): a run's view updated in place in its notebook cell while it streams.

``with live(inv): await inv.emit(...)`` (or ``handle = live(inv)`` … ``handle.dispose()``)
displays one output per run started while it is active and updates it in place (IPython
display handles: they survive nbclient execution and render in saved notebooks) as the run
streams: text as it arrives, tool calls as they start and finish, the timeline growing.
Updates are throttled (default at most 10 per second, on the runtime's scheduler) and always
end on the final state, so a saved notebook shows the finished run. ``live(observable)`` works
for any Observable: events (or their envelopes: ``RemoteRuns.observe_run``) are grouped per
run; other items show the latest one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Any

from reactivex import Observable, abc

from .._clock import loop_scheduler
from ..events import EventBase, InvocationEvent
from ..stores.base import EventEnvelope
from ._html import esc
from .view import RunView

__all__ = ("LiveView", "live")

_ids = itertools.count(1)


class _Latest:
    """The latest non-event item of a pipeline, as a display object."""

    def __init__(self, item: Any) -> None:
        self.item = item

    def __repr__(self) -> str:
        return repr(self.item)

    def _repr_html_(self) -> str:
        render = getattr(self.item, "_repr_html_", None)
        if callable(render):
            html = render()
            if isinstance(html, str):
                return html
        return f"<pre>{esc(repr(self.item))}</pre>"


class _Output:
    """One displayed output: what it shows (a run's events, or a pipeline's latest item) and
    its throttle state."""

    __slots__ = ("display_id", "events", "last_update", "latest", "run_id", "timer")

    def __init__(self, run_id: str | None) -> None:
        self.display_id = f"rxinvoke-live-{next(_ids)}"
        self.run_id = run_id
        self.events: list[InvocationEvent] = []
        self.latest: Any = None
        self.last_update = 0.0
        self.timer: abc.DisposableBase | None = None

    def content(self) -> Any:
        if self.run_id is None:
            return _Latest(self.latest)
        return RunView(self.events, run_id=self.run_id)


class LiveView(abc.DisposableBase):
    """The handle :func:`live` returns: a disposable and a context manager."""

    def __init__(
        self,
        source: Observable[Any],
        *,
        interval: float,
        scheduler: abc.SchedulerBase | None,
        display: Callable[..., Any] | None,
        update: Callable[..., Any] | None,
    ) -> None:
        if display is None or update is None:
            from IPython.display import display as ipython_display
            from IPython.display import update_display as ipython_update

            display = display or ipython_display
            update = update or ipython_update
        self._display: Callable[..., Any] = display
        self._update: Callable[..., Any] = update
        self._interval = interval
        self._scheduler = loop_scheduler(scheduler)
        self._outputs: dict[str | None, _Output] = {}  # run id -> output; None: a pipeline's items
        self.updates = 0
        """Display updates made so far (the first display of each output not counted)."""
        self._subscription = source.subscribe(self._on_next)

    def _now(self) -> float:
        return self._scheduler.now.timestamp()

    def _on_next(self, item: Any) -> None:
        if type(item) is EventEnvelope:  # observe_run, the log's envelopes: its event
            item = item.event
        is_event = isinstance(item, EventBase) and item.run_id is not None
        key = item.run_id if is_event else None
        output = self._outputs.get(key)
        fresh = output is None
        if output is None:
            output = self._outputs[key] = _Output(key)
        if is_event:
            output.events.append(item)
        else:
            output.latest = item
        if fresh:
            self._display(output.content(), display_id=output.display_id)
            output.last_update = self._now()
        elif is_event and item.is_terminal:
            self._flush(output)  # the final state, at once
        else:
            self._schedule(output)

    def _schedule(self, output: _Output) -> None:
        if output.timer is not None:
            return  # an update is due already: it will show the latest state
        elapsed = self._now() - output.last_update
        if elapsed >= self._interval:
            self._flush(output)
            return

        def due(_: abc.SchedulerBase, __: Any = None) -> None:
            output.timer = None
            self._flush(output)

        output.timer = self._scheduler.schedule_relative(self._interval - elapsed, due)

    def _flush(self, output: _Output) -> None:
        if output.timer is not None:
            output.timer.dispose()
            output.timer = None
        self._update(output.content(), display_id=output.display_id)
        output.last_update = self._now()
        self.updates += 1

    def dispose(self) -> None:
        """Stop following; every output shows its latest state."""
        self._subscription.dispose()
        for output in self._outputs.values():
            if output.timer is not None:
                self._flush(output)

    def __enter__(self) -> LiveView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()


def live(
    source: Any,
    *,
    interval: float = 0.1,
    scheduler: abc.SchedulerBase | None = None,
    display: Callable[..., Any] | None = None,
    update: Callable[..., Any] | None = None,
) -> LiveView:
    """Display ``source`` live: a :class:`~rxinvoke.RuntimeInvocation` (every run it starts
    from now on) or any Observable (events, or envelopes, per run; other items: the latest).

    Args:
        interval: the least time between two updates of one output (seconds).
        scheduler: the clock of the throttle (default: the invocation's scheduler, else the
            running loop's).
        display / update: IPython's ``display`` and ``update_display`` by default.
    """
    observable = source.observe() if hasattr(source, "observe") else source
    if scheduler is None and hasattr(source, "scheduler"):
        scheduler = source.scheduler
    return LiveView(observable, interval=interval, scheduler=scheduler, display=display, update=update)
