"""EventBus: the runtime's hot Subject, kind-indexed, with fault-isolated subscribers.

The bus owns the runtime's hot reactivex ``Subject`` (:attr:`EventBus.subject`, every event)
and a kind index beside it: publishing an event costs one dict lookup by its ``type`` plus the work
of the subscribers of that kind and of ``ANY``; subscribers of other kinds cost nothing per
event (a per-subscription ``filter`` would evaluate every predicate for every event).

Fault isolation: a reactivex Subject re-raises an observer's exception into the publisher and
skips every later observer, so everything the bus hands out (:meth:`EventBus.observe`,
:meth:`EventBus.attach`) is wrapped: an exception is caught, reported on
:attr:`EventBus.errors` as a :class:`~rxinvoke.errors.SubscriberError`, and delivery to
everyone else goes on. Nothing is ever sent as ``on_error``: an errored Subject is dead.

:class:`HandlerSink` is the delivery end of an ``on(kind, handler)`` subscription: a bounded
buffer drained on the asyncio loop by worker tasks that exist only while there is work (one
loop hand-off per burst, not one per event), with handler calls bounded by the control's
concurrency limit and timeout. Publishing never awaits a handler.
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
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject

from ._compat import uncancel
from .control import Control, SessionContext
from .errors import SubscriberError, SubscriberOverflow
from .events import EventKind, InvocationEvent

__all__ = ("EventBus", "HandlerSink", "Overflow", "SubscriptionStats")

_log = logging.getLogger("rxinvoke")

Overflow = Literal["drop_oldest", "error"]
"""What a full subscription buffer does with one more event."""

Deliver = Callable[[InvocationEvent, SessionContext], None]
"""A kind-index callback: ``deliver(event, context)``; it must not raise."""


def _bare_context(run_id: str | None) -> SessionContext:
    return SessionContext.model_construct(session_id=None, run_id=run_id)


class _Detach(abc.DisposableBase):
    """Removes one callback from the kind index (a lean disposable: no lock, no closure)."""

    __slots__ = ("_bus", "_deliver", "_key", "on_completed")

    def __init__(
        self,
        bus: EventBus,
        key: str,
        deliver: Deliver,
        on_completed: Callable[[], None] | None = None,
    ) -> None:
        self._bus, self._key, self._deliver = bus, key, deliver
        self.on_completed = on_completed

    def dispose(self) -> None:
        self._bus._detach(self)


class EventBus:
    """The hot, kind-indexed event stream every runtime event is published on, plus ``errors``."""

    def __init__(self, context_for: Callable[[str | None], SessionContext] | None = None) -> None:
        self._context_for = context_for or _bare_context
        self.subject: Subject[InvocationEvent] = Subject()
        """The raw hot Subject (every event). Its observers are not fault-isolated: prefer
        :meth:`observe`, whose observers are."""
        # kind value -> callbacks; tuples replaced on change (copy-on-write), never mutated,
        # so publish iterates them without a lock or a copy.
        self._routes: dict[str, tuple[Deliver, ...]] = {}
        self._any: tuple[Deliver, ...] = ()
        self._route_lock = threading.Lock()
        self._completers: set[_Detach] = set()  # observe() subscriptions, for complete()
        self._is_completed = False
        self._errors: Subject[SubscriberError] = Subject()

    def publish(self, event: InvocationEvent) -> None:
        """Deliver ``event`` synchronously to its kind's subscribers, ``ANY``'s, and observers."""
        routes = self._routes.get(event.type)
        every = self._any
        if routes or every:
            context = self._context_for(event.run_id)  # once per event, not per subscriber
            if routes:
                for deliver in routes:
                    deliver(event, context)
            for deliver in every:
                deliver(event, context)
        subject = self.subject
        if subject.observers:
            try:
                subject.on_next(event)
            except Exception as exc:  # a raw Subject observer raised
                self.report(
                    SubscriberError(
                        f"a Subject observer raised {type(exc).__name__}: {exc}",
                        subscription="subject",
                        event=event,
                        cause=exc,
                    )
                )

    def attach(
        self,
        kind: EventKind | str,
        deliver: Deliver,
        on_completed: Callable[[], None] | None = None,
    ) -> abc.DisposableBase:
        """Call ``deliver(event, context)`` for each event of ``kind``; it must not raise.

        ``on_completed`` is called by :meth:`complete`. Dispose the result to detach.
        """
        key = EventKind.parse(kind).value
        token = _Detach(self, key, deliver, on_completed)
        with self._route_lock:
            if self._is_completed:
                token.on_completed = None
                if on_completed is not None:
                    on_completed()
                return token
            if key == "any":
                self._any = (*self._any, deliver)
            else:
                self._routes[key] = (*self._routes.get(key, ()), deliver)
            if on_completed is not None:
                self._completers.add(token)
        return token

    def complete(self) -> None:
        """End the stream: complete every observer and ``errors``; later publishes are dropped."""
        with self._route_lock:
            self._is_completed = True
            completers, self._completers = list(self._completers), set()
            self._routes, self._any = {}, ()
        for token in completers:
            if token.on_completed is not None:
                token.on_completed()
        self.subject.on_completed()
        self._errors.on_completed()

    def _detach(self, token: _Detach) -> None:
        key, deliver = token._key, token._deliver
        with self._route_lock:
            self._completers.discard(token)
            current = self._any if key == "any" else self._routes.get(key, ())
            if deliver not in current:
                return
            index = current.index(deliver)
            remaining = current[:index] + current[index + 1 :]
            if key == "any":
                self._any = remaining
            elif remaining:
                self._routes[key] = remaining
            else:
                del self._routes[key]

    def observe(self, kind: EventKind | str = EventKind.ANY) -> Observable[InvocationEvent]:
        """A hot Observable of the events of ``kind``; its observers are fault-isolated."""
        member = EventKind.parse(kind)
        label = f"observe({member.value})"

        def subscribe(
            observer: abc.ObserverBase[InvocationEvent],
            scheduler: abc.SchedulerBase | None = None,
        ) -> abc.DisposableBase:
            def deliver(event: InvocationEvent, context: SessionContext) -> None:
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

            return self.attach(member, deliver, observer.on_completed)

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
        except Exception:
            _log.exception("an observer of rxinvoke errors raised")


@dataclass(frozen=True)
class SubscriptionStats:
    """A snapshot of the counters of one ``on`` subscription."""

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


HandlerCall = Callable[[InvocationEvent, SessionContext, Control], Awaitable[Any] | None]
_Item = tuple[InvocationEvent, SessionContext]


class HandlerSink:
    """Delivers events to one handler on the asyncio loop: buffered, ordered, bounded.

    ``push`` may be called from any thread; delivery always happens on ``loop``. Worker tasks
    (at most the control's concurrency limit, default 1) pop events in publication order and
    await the handler; they exist only while the buffer has work. With the limit at 1 the
    handler sees events strictly one after another.
    """

    __slots__ = (
        "name", "_attached", "_buffer", "_call", "_closed", "_control", "_delivered",
        "_dropped", "_failures", "_idle", "_in_flight", "_listener", "_loop", "_overflow",
        "_queue", "_report", "_scheduler", "_thread", "_unreported_drops", "_workers",
    )

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
        scheduler: abc.SchedulerBase | None = None,
    ) -> None:
        if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
            raise ValueError(f"buffer must be an integer >= 1, got {buffer!r}")
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
        self._scheduler = scheduler  # clock of handler timeouts; an AsyncIOScheduler when None
        self._queue: deque[_Item] | None = None  # created on first event (idle subscriptions stay small)
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._unreported_drops = 0
        self._idle: asyncio.Event | None = None
        self._delivered = self._dropped = self._failures = self._in_flight = 0
        self._attached: abc.DisposableBase | None = None
        self._listener: abc.DisposableBase | None = None

    def connect(self, bus: EventBus, kind: EventKind) -> None:
        """Start receiving ``kind`` from ``bus`` until closed or the control is cancelled.

        The control's cancellation works as ``take_until(control.cancelled)``.
        """
        self._attached = bus.attach(kind, self.push)
        self._listener = self._control.add_cancel_listener(self._on_cancel)
        if self._closed:  # cancelled already
            self._disconnect()

    def _on_cancel(self) -> None:
        self.close(cancel_running=False)

    def _disconnect(self) -> None:
        for disposable in (self._attached, self._listener):
            if disposable is not None:
                disposable.dispose()
        self._attached = self._listener = None

    @property
    def stats(self) -> SubscriptionStats:
        """A snapshot of the counters."""
        return SubscriptionStats(
            delivered=self._delivered,
            dropped=self._dropped,
            failed=self._failures,
            in_flight=self._in_flight,
            queued=len(self._queue) if self._queue else 0,
        )

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
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._buffer:
            if self._overflow == "error":
                self._overflowed(event, len(queue) + 1)
                return
            queue.popleft()
            self._dropped += 1
            self._unreported_drops += 1
        queue.append((event, context))
        workers = len(self._workers)
        limit = self._control.concurrency_limit or 1
        if workers < limit and workers < len(queue) + self._in_flight:
            self._workers.append(self._loop.create_task(self._work()))

    def close(self, *, cancel_running: bool) -> None:
        """Stop accepting and drop queued events; optionally cancel running handler calls."""
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(lambda: self.close(cancel_running=cancel_running))
            return
        self._closed = True
        if self._queue:
            self._queue.clear()
        self._disconnect()
        if cancel_running:
            for worker in self._workers:
                worker.cancel()
        self._check_idle()

    async def wait_idle(self) -> None:
        """Wait until the buffer is empty and no handler call is running."""
        while self._queue or self._workers:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()

    async def _work(self) -> None:
        queue = self._queue
        call = self._call
        control = self._control
        try:
            while queue and not self._closed:
                if self._unreported_drops:
                    self._report_drops()
                event, context = queue.popleft()
                self._in_flight += 1
                try:
                    result = call(event, context, control)
                    if result is not None and (
                        inspect.iscoroutine(result) or inspect.isawaitable(result)
                    ):
                        timeout = control.timeout
                        if timeout is None:
                            await result
                        elif await self._timed_out(result, timeout):
                            self._failed(
                                event,
                                TimeoutError(f"handler timed out after {timeout:g}s"),
                                f"timed out after {timeout:g}s",
                            )
                            continue
                    self._delivered += 1
                except asyncio.CancelledError:
                    if self._closed:  # abort(): end quietly
                        return
                    raise
                except Exception as exc:
                    self._failed(event, exc)
                finally:
                    self._in_flight -= 1
        finally:
            task = asyncio.current_task()
            if task in self._workers:
                self._workers.remove(task)
            self._check_idle()

    async def _timed_out(self, awaitable: Awaitable[Any], timeout: float) -> bool:
        """Await ``awaitable``; cancel it after ``timeout`` seconds on the scheduler's clock."""
        task = asyncio.current_task()
        assert task is not None
        expired = False

        def expire(_: abc.SchedulerBase, __: Any = None) -> None:
            nonlocal expired
            expired = True
            task.cancel()

        scheduler = self._scheduler
        if scheduler is None:
            scheduler = self._scheduler = AsyncIOScheduler(self._loop)
        timer = scheduler.schedule_relative(timeout, expire)
        try:
            await awaitable
        except asyncio.CancelledError:
            if not expired or self._closed:
                raise
            uncancel(task)
            return True
        finally:
            timer.dispose()
        return False

    def _overflowed(self, event: InvocationEvent, dropped: int) -> None:
        self._dropped += dropped
        self._report(
            SubscriberOverflow(
                f"{self.name}: buffer of {self._buffer} events overflowed; "
                "subscription ended (overflow='error')",
                subscription=self.name,
                dropped=dropped,
                event=event,
            )
        )
        self.close(cancel_running=False)

    def _report_drops(self) -> None:
        dropped, self._unreported_drops = self._unreported_drops, 0
        self._report(
            SubscriberOverflow(
                f"{self.name}: buffer of {self._buffer} events full; "
                f"dropped the {dropped} oldest (overflow='drop_oldest')",
                subscription=self.name,
                dropped=dropped,
            )
        )

    def _failed(self, event: InvocationEvent, exc: BaseException, what: str | None = None) -> None:
        self._failures += 1
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
        if self._idle is not None and not (self._queue or self._workers):
            self._idle.set()
            self._idle = None
