"""EventBus: the runtime's hot subjects, kind-indexed, with fault-isolated subscribers.

Publishing an event costs one dict lookup by its ``type`` plus the work of the observers of
that kind and of ``ANY``: there is one reactivex ``Subject`` per kind that has subscribers and
one for every event. Observers of other kinds cost nothing per event.

Fault isolation: a reactivex Subject re-raises an observer's exception into the publisher and
skips every later observer, so every observer the bus hands out is wrapped: an exception is
caught and reported on :attr:`EventBus.errors` as a :class:`~rxinvoke.errors.SubscriberError`,
and delivery to everyone else goes on. Nothing is ever sent as ``on_error`` on the subjects.

:class:`HandlerSink` is the delivery end of an ``on(kind, handler)`` subscription: a bounded
buffer drained on the asyncio loop in one callback per burst (not one per event), handler calls
bounded by the control's concurrency limit and timeout. Publishing never awaits a handler.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import reactivex
from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from .control import Control, SessionContext
from .errors import SubscriberError, SubscriberOverflow
from .events import EventKind, InvocationEvent

__all__ = ("EventBus", "HandlerSink", "Overflow", "SubscriptionStats")

_log = logging.getLogger("rxinvoke")

Overflow = Literal["drop_oldest", "error"]
"""What a full subscription buffer does with one more event."""


class EventBus:
    """Hot, kind-indexed event subjects plus the ``errors`` stream."""

    def __init__(self) -> None:
        self._all: Subject[InvocationEvent] = Subject()
        self._by_type: dict[str, Subject[InvocationEvent]] = {}
        self._errors: Subject[SubscriberError] = Subject()
        self._lock = threading.Lock()

    def publish(self, event: InvocationEvent) -> None:
        """Deliver ``event`` synchronously to the observers of its kind and of ``ANY``."""
        subject = self._by_type.get(event.type)
        if subject is not None:
            subject.on_next(event)
        self._all.on_next(event)

    def observe(self, kind: EventKind | str = EventKind.ANY) -> Observable[InvocationEvent]:
        """A hot Observable of the events of ``kind``; observers are fault-isolated."""
        member = EventKind.parse(kind)
        subject = self._all if member is EventKind.ANY else self._subject_for(member.value)
        label = f"observe({member.value})"

        def subscribe(
            observer: abc.ObserverBase[InvocationEvent],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            def on_next(event: InvocationEvent) -> None:
                try:
                    observer.on_next(event)
                except Exception as exc:
                    self.report(
                        SubscriberError(
                            f"{label} observer raised {type(exc).__name__}: {exc}",
                            subscription=label,
                            event=event,
                            cause=exc,
                        )
                    )

            return subject.subscribe(on_next, observer.on_error, observer.on_completed)

        return reactivex.create(subscribe)

    @property
    def errors(self) -> Observable[SubscriberError]:
        """Subscriber failures: raising or timed-out handlers, buffer overflows."""
        return self._errors

    def report(self, error: SubscriberError) -> None:
        """Log ``error`` and publish it on :attr:`errors` (an observer of errors cannot break it)."""
        _log.warning("%s", error.message)
        try:
            self._errors.on_next(error)
        except Exception:  # an errors observer raised: log, never propagate into a run
            _log.exception("an observer of rxinvoke errors raised")

    def complete(self) -> None:
        """Complete every subject (the runtime is closing)."""
        for subject in [*self._by_type.values(), self._all]:
            subject.on_completed()
        self._errors.on_completed()

    def _subject_for(self, event_type: str) -> Subject[InvocationEvent]:
        subject = self._by_type.get(event_type)
        if subject is None:
            with self._lock:
                subject = self._by_type.setdefault(event_type, Subject())
        return subject


@dataclass
class SubscriptionStats:
    """Counters of one ``on`` subscription."""

    delivered: int = 0
    """Handler calls that returned normally."""
    dropped: int = 0
    """Events dropped by the overflow policy."""
    failed: int = 0
    """Handler calls that raised or timed out."""
    in_flight: int = 0
    """Handler calls running now."""
    queued: int = 0
    """Events waiting in the buffer."""


HandlerCall = Callable[[InvocationEvent, SessionContext], Awaitable[Any] | None]


class HandlerSink:
    """Delivers events to one handler on the asyncio loop: buffered, ordered, bounded.

    ``push`` may be called from any thread; delivery always happens on ``loop``. With the
    default concurrency limit of 1 the handler sees events strictly one after another, in
    publication order; with ``n`` it starts them in order with at most ``n`` in flight.
    """

    def __init__(
        self,
        *,
        name: str,
        call: HandlerCall,
        control: Control,
        loop: asyncio.AbstractEventLoop,
        report: Callable[[SubscriberError], None],
        buffer: int = 10_000,
        overflow: Overflow = "drop_oldest",
    ) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        if overflow not in ("drop_oldest", "error"):
            raise ValueError(f"overflow must be 'drop_oldest' or 'error', got {overflow!r}")
        self.name = name
        self._call = call
        self._control = control
        self._loop = loop
        self._thread = threading.get_ident()
        self._report = report
        self._buffer = buffer
        self._overflow = overflow
        self._queue: deque[tuple[InvocationEvent, SessionContext]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False
        self._closed = False
        self._unreported_drops = 0
        self._idle: asyncio.Event | None = None
        self.stats = SubscriptionStats()
        self.upstream: abc.DisposableBase = Disposable()

    @property
    def is_closed(self) -> bool:
        """True once no more events will be accepted."""
        return self._closed

    def push(self, event: InvocationEvent, context: SessionContext) -> None:
        """Queue ``event`` for the handler (any thread); never blocks, never raises."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(self.push, event, context)
            return
        if self._closed:
            return
        queue = self._queue
        if len(queue) >= self._buffer:
            if self._overflow == "error":
                self._report(
                    SubscriberOverflow(
                        f"{self.name}: buffer of {self._buffer} events overflowed; "
                        "subscription ended (overflow='error')",
                        subscription=self.name,
                        dropped=len(queue) + 1,
                        event=event,
                    )
                )
                self.stats.dropped += len(queue) + 1
                self.close(cancel_running=False)
                return
            queue.popleft()
            self.stats.dropped += 1
            self._unreported_drops += 1
        queue.append((event, context))
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def close(self, *, cancel_running: bool) -> None:
        """Stop accepting and drop queued events; optionally cancel running handler calls."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(lambda: self.close(cancel_running=cancel_running))
            return
        self._closed = True
        self._queue.clear()
        self.upstream.dispose()
        if cancel_running:
            for task in list(self._tasks):
                task.cancel()
        self._check_idle()

    async def wait_idle(self) -> None:
        """Wait until the buffer is empty and no handler call is running."""
        while self._queue or self._tasks or self._scheduled:
            self._idle = asyncio.Event()
            await self._idle.wait()

    def _drain(self) -> None:
        self._scheduled = False
        if self._unreported_drops:
            dropped, self._unreported_drops = self._unreported_drops, 0
            self._report(
                SubscriberOverflow(
                    f"{self.name}: buffer of {self._buffer} events full; "
                    f"dropped the {dropped} oldest (overflow='drop_oldest')",
                    subscription=self.name,
                    dropped=dropped,
                )
            )
        limit = self._control.concurrency_limit or 1
        queue = self._queue
        while queue and len(self._tasks) < limit and not self._closed:
            event, context = queue.popleft()
            self._start(event, context)
        self.stats.queued = len(queue)
        self.stats.in_flight = len(self._tasks)
        self._check_idle()

    def _start(self, event: InvocationEvent, context: SessionContext) -> None:
        try:
            result = self._call(event, context)
        except Exception as exc:
            self._failed(event, exc)
            return
        if result is None or not inspect.isawaitable(result):
            self.stats.delivered += 1
            return
        task = self._loop.create_task(self._guard(result, event))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    async def _guard(self, awaitable: Awaitable[Any], event: InvocationEvent) -> None:
        timeout = self._control.timeout
        try:
            if timeout is None:
                await awaitable
            else:
                await asyncio.wait_for(awaitable, timeout)
        except asyncio.TimeoutError as exc:
            self._failed(event, exc, f"timed out after {timeout:g}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(event, exc)
        else:
            self.stats.delivered += 1

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.stats.in_flight = len(self._tasks)
        if self._queue and not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._drain)
        self._check_idle()

    def _failed(self, event: InvocationEvent, exc: BaseException, what: str | None = None) -> None:
        self.stats.failed += 1
        detail = what or f"raised {type(exc).__name__}: {exc}"
        self._report(
            SubscriberError(
                f"{self.name}: handler {detail} (event {event.type})",
                subscription=self.name,
                event=event,
                cause=exc,
            )
        )

    def _check_idle(self) -> None:
        if self._idle is not None and not (self._queue or self._tasks or self._scheduled):
            self._idle.set()
            self._idle = None
