"""live(): a run's view updated in place in its notebook cell while it streams.

``with live(inv): await inv.emit(...)`` (or ``handle = live(inv)`` … ``handle.dispose()``)
displays one output per run started while it is active and updates it in place (IPython
display handles: they survive nbclient execution and render in saved notebooks) as the run
streams: text as it arrives, tool calls as they start and finish, the timeline growing.
Updates are throttled (default at most 10 per second, on the runtime's scheduler) and always
end on the final state, so a saved notebook shows the finished run. ``live(observable)`` works
for any Observable: events are grouped per run; other items show the latest one.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import TracebackType
from typing import Any

from reactivex import Observable, abc

from .._clock import loop_scheduler
from ..events import EventBase, InvocationEvent
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
    """One displayed output: its display id, what it shows, and its throttle state."""

    __slots__ = ("display_id", "events", "finished", "last_update", "pending", "timer")

    def __init__(self, display_id: str) -> None:
        self.display_id = display_id
        self.events: list[InvocationEvent] = []
        self.finished = False
        self.last_update: float | None = None
        self.pending: Any = None
        self.timer: abc.DisposableBase | None = None


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
        self._outputs: dict[str, _Output] = {}
        self.updates = 0
        """Display updates made so far (the first display of each output not counted)."""
        self._subscription = source.subscribe(self._on_next)

    def _now(self) -> float:
        return self._scheduler.now.timestamp()

    def _output(self, key: str, first: Any) -> _Output:
        output = self._outputs.get(key)
        if output is None:
            output = self._outputs[key] = _Output(f"rxinvoke-live-{next(_ids)}")
            self._display(first, display_id=output.display_id)
            output.last_update = self._now()
        return output

    def _on_next(self, item: Any) -> None:
        if isinstance(item, EventBase) and item.run_id is not None:
            key = item.run_id
            output = self._outputs.get(key)
            if output is None:
                output = _Output(f"rxinvoke-live-{next(_ids)}")
                self._outputs[key] = output
                output.events.append(item)  # type: ignore[arg-type]
                self._display(RunView(output.events, run_id=key), display_id=output.display_id)
                output.last_update = self._now()
                return
            output.events.append(item)  # type: ignore[arg-type]
            if item.is_terminal:
                output.finished = True
                self._flush(output)  # the final state, at once
                return
            self._schedule(output, None)
        else:
            output = self._outputs.get("_latest")
            if output is None:
                self._output("_latest", _Latest(item))
                return
            self._schedule(output, _Latest(item))

    def _content(self, output: _Output) -> Any:
        if output.pending is not None:
            return output.pending
        key = next(k for k, v in self._outputs.items() if v is output)
        return RunView(output.events, run_id=key)

    def _schedule(self, output: _Output, content: Any) -> None:
        output.pending = content if content is not None else output.pending
        if output.timer is not None:
            return  # an update is due already: it will show the latest state
        elapsed = self._now() - (output.last_update or 0.0)
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
        self._update(self._content(output), display_id=output.display_id)
        output.pending = None
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
    from now on) or any Observable (events per run; other items: the latest).

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
