"""Time on the runtime's scheduler: every duration the runtime waits for or bounds (run
deadline, provider timeout, tool timeout, retry backoff, scripted delays) goes through here,
so a ``reactivex.testing.TestScheduler`` drives a whole run in virtual time. With the loop's
``AsyncIOScheduler`` these are plain loop timers.

Events are stamped here too (:func:`stamp`): on the wall clock, except inside a run of a
runtime on a virtual-time scheduler (a ``TestScheduler``, a ``HistoricalScheduler``), whose
events carry its virtual time (:func:`on_clock`), so their timestamps agree with what it timed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar, Token
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from reactivex import abc
from reactivex.scheduler import VirtualTimeScheduler
from reactivex.scheduler.eventloop import AsyncIOScheduler

from ._compat import DeadlineExceeded, uncancel

__all__ = ("Deadline", "deadline", "loop_scheduler", "off_clock", "on_clock", "sleep", "stamp", "virtual_of")


_RUN_CLOCK: ContextVar[VirtualTimeScheduler | None] = ContextVar("rxinvoke_run_clock", default=None)


def _stamper() -> Callable[[], datetime]:
    get, now, utc = _RUN_CLOCK.get, datetime.now, timezone.utc

    def stamp() -> datetime:
        """Now, for an event's timestamp: timezone-aware UTC on the wall clock, or the virtual
        time of the run being driven (see :func:`on_clock`)."""
        clock = get()
        if clock is None:
            return now(utc)
        at = clock.now
        return at if at.tzinfo is not None else at.replace(tzinfo=utc)

    return stamp


stamp = _stamper()


def virtual_of(scheduler: abc.SchedulerBase | None) -> VirtualTimeScheduler | None:
    """``scheduler`` when it keeps virtual time (what :func:`on_clock` takes), else None."""
    return scheduler if isinstance(scheduler, VirtualTimeScheduler) else None


def on_clock(scheduler: VirtualTimeScheduler | None) -> Token[VirtualTimeScheduler | None] | None:
    """Stamp the events made from here on, in this task and the tasks it starts, with
    ``scheduler``'s virtual time (``scheduler`` None: the wall clock, nothing to do). The
    token undoes it: :func:`off_clock`, in the same task."""
    return None if scheduler is None else _RUN_CLOCK.set(scheduler)


def off_clock(token: Token[VirtualTimeScheduler | None] | None) -> None:
    """Undo :func:`on_clock`."""
    if token is not None:
        _RUN_CLOCK.reset(token)


def loop_scheduler(scheduler: abc.SchedulerBase | None) -> abc.SchedulerBase:
    """``scheduler``, else an ``AsyncIOScheduler`` of the running loop."""
    return scheduler if scheduler is not None else AsyncIOScheduler(asyncio.get_running_loop())


async def sleep(scheduler: abc.SchedulerBase | None, seconds: float) -> None:
    """Wait ``seconds`` on ``scheduler`` (None or an AsyncIOScheduler: the loop's clock)."""
    if scheduler is None or isinstance(scheduler, AsyncIOScheduler):
        await asyncio.sleep(seconds)
        return
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: abc.SchedulerBase, __: Any = None) -> None:
        if not woken.done():
            woken.set_result(None)

    timer = scheduler.schedule_relative(max(seconds, 0.0), wake)
    try:
        await woken
    finally:
        timer.dispose()


def deadline(scheduler: abc.SchedulerBase | None, timeout: float | None) -> Deadline:
    """Bound an ``async with`` block to ``timeout`` seconds on ``scheduler``: past it the
    block is cancelled and :class:`~rxinvoke._compat.DeadlineExceeded` raised. A TimeoutError
    the block raises itself propagates as it is; None: no bound."""
    return Deadline(scheduler, timeout)


class Deadline:
    """What :func:`deadline` returns (a class, not a generator-based context manager: each
    model call makes one, and a call waiting on its model keeps it alive)."""

    __slots__ = ("_expired", "_scheduler", "_task", "_timeout", "_timer")

    def __init__(self, scheduler: abc.SchedulerBase | None, timeout: float | None) -> None:
        self._scheduler, self._timeout = scheduler, timeout
        self._expired = False
        self._timer: asyncio.TimerHandle | abc.DisposableBase | None = None
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        timeout = self._timeout
        if timeout is None:
            return
        task = self._task = asyncio.current_task()
        assert task is not None
        clock = loop_scheduler(self._scheduler)
        # Single-threaded schedulers run _expire only while the block is suspended at an
        # await, so the cancel lands inside the block, never after it. On the loop's own
        # clock, a plain loop timer (what AsyncIOScheduler.schedule_relative makes, without
        # its disposables).
        if isinstance(clock, AsyncIOScheduler):
            self._timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        else:
            self._timer = clock.schedule_relative(timeout, self._expire)

    def _expire(self, _scheduler: abc.SchedulerBase | None = None, _state: Any = None) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        timer = self._timer
        if timer is None:
            return
        if isinstance(timer, asyncio.TimerHandle):
            timer.cancel()
        else:
            timer.dispose()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self._expired:
            assert self._task is not None
            uncancel(self._task)
            raise DeadlineExceeded from None
