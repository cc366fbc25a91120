"""HandlerSink: the delivery end of one ``on(kind, handler)`` subscription.

A bounded buffer drained on the asyncio loop by worker tasks that exist only while there is
work (one loop hand-off per burst, not one per event), with handler calls bounded by the
control's concurrency limit and timeout. Publishing never awaits a handler. Overflow policy:
``"drop_oldest"`` (counted and reported) or ``"error"`` (the subscription ends, reported).
A handler that raises (``CancelledError`` of its own included) or times out is reported,
never raised into the publisher.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from reactivex import abc
from reactivex.scheduler.eventloop import AsyncIOScheduler

from ._bus import EventBus, SubscriptionStats
from ._compat import cancel_requested, uncancel
from .control import Control, SessionContext
from .errors import SubscriberError, SubscriberOverflow
from .events import EventKind, InvocationEvent

__all__ = ("Handler", "HandlerSink", "Overflow", "SubscriptionStats")

Overflow = Literal["drop_oldest", "error"]
"""What a full subscription buffer does with one more event."""

Handler = Callable[[InvocationEvent, SessionContext, Control], Awaitable[Any] | None]
"""``handler(event, ctx, control)``; sync or async."""


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
        call: Handler,
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
                except asyncio.CancelledError as exc:
                    if self._closed:  # abort(): end quietly
                        return
                    worker = asyncio.current_task()
                    if worker is not None and cancel_requested(worker):
                        raise  # the worker itself is cancelled (loop shutdown)
                    # The handler raised CancelledError of its own: a handler failure. (On
                    # 3.10 a cancellation of the worker landing in a handler looks the same;
                    # the worker then drains its buffer and ends.)
                    self._failed(event, exc)
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
