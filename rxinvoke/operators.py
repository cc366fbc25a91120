"""Pipeable operators for event streams, and a bridge from Observable to ``async for``.

All operators are factories returning ``Callable[[Observable[A]], Observable[B]]`` for use
with ``observable.pipe(...)``. Time-based ones (``coalesce_text``, ``throttle_latest``) take
``scheduler=``; without one they use the scheduler passed to ``subscribe(scheduler=...)``, else
the ``AsyncIOScheduler`` of the loop running when they are subscribed — never a timer thread
(reactivex's own time operators default to threads: pass them ``inv.scheduler``). In tests,
pass a ``reactivex.testing.TestScheduler`` for virtual time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar, overload

import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, SerialDisposable
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject

from ._aiter import to_async_iterator
from .events import EventBase, EventKind, InvocationEvent, TextDelta

__all__ = (
    "accumulate_text",
    "coalesce_text",
    "for_run",
    "of_kind",
    "per_run",
    "text_of",
    "throttle_latest",
    "to_async_iterator",
    "until_terminal",
)

_T = TypeVar("_T")
_E = TypeVar("_E", bound=EventBase)

EventOperator = Callable[[Observable[InvocationEvent]], Observable[InvocationEvent]]


@overload
def of_kind(kind: type[_E]) -> Callable[[Observable[InvocationEvent]], Observable[_E]]: ...
@overload
def of_kind(kind: EventKind | str) -> EventOperator: ...
def of_kind(kind: EventKind | str | type[EventBase]) -> Callable[[Observable[Any]], Observable[Any]]:
    """Keep the events of ``kind`` (``ANY`` keeps all). An event class (``of_kind(TextDelta)``)
    is its kind, and types what comes out as that class.

    .. marble::
        :alt: of_kind

        ---a--b--a--|
        [ of_kind(a)]
        ---a-----a--|
    """
    member = EventKind.parse(kind)
    return ops.filter(member.matches)


def for_run(run_id: str) -> EventOperator:
    """Keep the events of one run."""
    return ops.filter(lambda event: event.run_id == run_id)


def until_terminal() -> EventOperator:
    """Complete after the first terminal event (``run_completed``/``failed``/``cancelled``), included.

    .. marble::
        :alt: until_terminal

        --s--d--d--T--x--
        [until_terminal()]
        --s--d--d--T|
    """
    return ops.take_while(lambda event: not event.is_terminal, inclusive=True)


def text_of() -> Callable[[Observable[InvocationEvent]], Observable[str]]:
    """The text fragments (``text_delta``) as strings."""

    def delta(event: InvocationEvent) -> str:
        return event.delta if isinstance(event, TextDelta) else ""

    def is_text(event: InvocationEvent) -> bool:
        return isinstance(event, TextDelta)

    def _text(source: Observable[InvocationEvent]) -> Observable[str]:
        return source.pipe(ops.filter(is_text), ops.map(delta))

    return _text


def _clock(
    scheduler: abc.SchedulerBase | None, subscribed: abc.SchedulerBase | None
) -> abc.SchedulerBase:
    """The scheduler a time-based operator uses: its own, the subscriber's, else the loop's."""
    if scheduler is not None:
        return scheduler
    if subscribed is not None:
        return subscribed
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        raise RuntimeError(
            "a time-based rxinvoke operator was subscribed outside a running asyncio loop and "
            "without scheduler=: pass scheduler= (e.g. inv.scheduler, or a TestScheduler)"
        ) from None
    return AsyncIOScheduler(loop)


def coalesce_text(
    quiet: float, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[InvocationEvent]], Observable[str]]:
    """Join text deltas into chunks, each flushed after ``quiet`` seconds without a new delta.

    .. marble::
        :alt: coalesce_text

        --He-llo------!----|
        [ coalesce_text(q) ]
        ------Hello------!-|

    Example:
        >>> inv.observe("text_delta").pipe(coalesce_text(0.05)).subscribe(print)  # doctest: +SKIP
    """

    def _coalesce(source: Observable[InvocationEvent]) -> Observable[str]:
        def subscribe(
            observer: abc.ObserverBase[str], subscribed: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clock = _clock(scheduler, subscribed)
            deltas: Observable[str] = source.pipe(text_of(), ops.share())

            def closing() -> Observable[str]:
                return deltas.pipe(ops.debounce(quiet, scheduler=clock))

            def joined(chunk: list[str]) -> str:
                return "".join(chunk)

            chunks: Observable[list[str]] = deltas.pipe(ops.buffer_when(closing))
            return chunks.pipe(ops.filter(bool), ops.map(joined)).subscribe(
                observer, scheduler=subscribed
            )

        return reactivex.create(subscribe)

    return _coalesce


def throttle_latest(
    interval: float, scheduler: abc.SchedulerBase | None = None
) -> Callable[[Observable[_T]], Observable[_T]]:
    """At most one item per ``interval`` seconds, and always the latest: for UI frames.

    The first item goes out at once and opens a window; the last item that arrived during a
    window goes out when it closes (and opens the next); on completion a waiting item goes
    out first. So the final state is never dropped, unlike ``throttle_first``, and nothing
    waits for a quiet period, unlike ``debounce``.

    .. marble::
        :alt: throttle_latest

        -a-b-c-------d--e-|
        [throttle_latest(4)]
        -a---c-------d---e|

    Example:
        >>> stream.pipe(accumulate_text(), throttle_latest(0.1)).subscribe(render)  # doctest: +SKIP
    """

    def _throttle(source: Observable[_T]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], subscribed: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            clock = _clock(scheduler, subscribed)
            timer = SerialDisposable()
            state: dict[str, Any] = {"open": False, "waiting": False, "value": None}

            def close_window(_: abc.SchedulerBase, __: Any = None) -> None:
                if state["waiting"]:
                    value, state["waiting"], state["value"] = state["value"], False, None
                    observer.on_next(value)
                    timer.disposable = clock.schedule_relative(interval, close_window)
                else:
                    state["open"] = False

            def on_next(value: _T) -> None:
                if state["open"]:
                    state["waiting"], state["value"] = True, value
                    return
                state["open"] = True
                observer.on_next(value)
                timer.disposable = clock.schedule_relative(interval, close_window)

            def on_completed() -> None:
                timer.dispose()
                if state["waiting"]:
                    state["waiting"] = False
                    observer.on_next(state["value"])
                observer.on_completed()

            def on_error(error: Exception) -> None:
                timer.dispose()
                observer.on_error(error)

            upstream = source.subscribe(on_next, on_error, on_completed, scheduler=subscribed)
            return CompositeDisposable(upstream, timer)

        return reactivex.create(subscribe)

    return _throttle


def accumulate_text() -> Callable[[Observable[InvocationEvent]], Observable[str]]:
    """The text so far of the run of each ``text_delta``: one item per fragment.

    Kept per run (a run's text is forgotten at its terminal event), so over a stream of
    several runs each item is the text of its own run; use :func:`per_run` to keep them apart.

    .. marble::
        :alt: accumulate_text

        -s--He--llo--T-|
        [accumulate_text]
        ----He--Hello--|

    Example:
        >>> inv.stream(request).pipe(accumulate_text()).subscribe(print)  # doctest: +SKIP
    """

    def _accumulate(source: Observable[InvocationEvent]) -> Observable[str]:
        def subscribe(
            observer: abc.ObserverBase[str], subscribed: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            texts: dict[str | None, list[str]] = {}

            def on_next(event: InvocationEvent) -> None:
                if isinstance(event, TextDelta):
                    parts = texts.setdefault(event.run_id, [])
                    parts.append(event.delta)
                    observer.on_next("".join(parts))
                elif event.is_terminal:
                    texts.pop(event.run_id, None)

            return source.subscribe(
                on_next, observer.on_error, observer.on_completed, scheduler=subscribed
            )

        return reactivex.create(subscribe)

    return _accumulate


def per_run(
    pipeline: Callable[[Observable[InvocationEvent]], Observable[_T]],
) -> Callable[[Observable[InvocationEvent]], Observable[_T]]:
    """Apply ``pipeline`` to each run's events separately and merge what they produce.

    Each run's events (from its first event seen to its terminal event, included) form an
    Observable that completes after the terminal event, so per-run aggregates (``reduce``,
    ``to_list``, ``count``, a throttle's last frame) finish with their run: the natural
    ``group_by`` without its traps (groups that never complete, state kept forever). The
    result completes when the source has and every run's pipeline has.

    .. marble::
        :alt: per_run

        -a1-b1-a2-T1-b2-T2-|
        [ per_run(count()) ]
        -----------2-----2-|

    Example:
        >>> inv.observe().pipe(per_run(lambda run: run.pipe(text_of(), ops.reduce(str.__add__, ""))))  # doctest: +SKIP
    """

    def _per_run(source: Observable[InvocationEvent]) -> Observable[_T]:
        def subscribe(
            observer: abc.ObserverBase[_T], subscribed: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            runs: dict[str, Subject[InvocationEvent]] = {}
            inner = CompositeDisposable()
            state = {"active": 0, "source_done": False}

            def maybe_complete() -> None:
                if state["source_done"] and not state["active"]:
                    observer.on_completed()

            def start(run_id: str) -> Subject[InvocationEvent]:
                subject: Subject[InvocationEvent] = Subject()
                runs[run_id] = subject
                state["active"] += 1
                holder = SerialDisposable()
                inner.add(holder)

                def done() -> None:
                    state["active"] -= 1
                    inner.remove(holder)
                    maybe_complete()

                holder.disposable = pipeline(subject).subscribe(
                    observer.on_next, observer.on_error, done, scheduler=subscribed
                )
                return subject

            def on_next(event: InvocationEvent) -> None:
                run_id = event.run_id
                if run_id is None:
                    return
                subject = runs.get(run_id)
                if subject is None:
                    subject = start(run_id)
                subject.on_next(event)
                if event.is_terminal:
                    runs.pop(run_id, None)
                    subject.on_completed()

            def on_completed() -> None:
                state["source_done"] = True
                for subject in list(runs.values()):
                    subject.on_completed()
                runs.clear()
                maybe_complete()

            upstream = source.subscribe(on_next, observer.on_error, on_completed, scheduler=subscribed)
            return CompositeDisposable(upstream, inner)

        return reactivex.create(subscribe)

    return _per_run
