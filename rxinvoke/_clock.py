"""Time on the runtime's scheduler: every duration the runtime waits for or bounds (run
deadline, provider timeout, tool timeout, retry backoff, scripted delays) goes through here,
so a ``reactivex.testing.TestScheduler`` drives a whole run in virtual time. With the loop's
``AsyncIOScheduler`` these are plain loop timers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from reactivex import abc
from reactivex.scheduler.eventloop import AsyncIOScheduler

from ._compat import DeadlineExceeded, uncancel

__all__ = ("deadline", "loop_scheduler", "sleep")


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


@asynccontextmanager
async def deadline(scheduler: abc.SchedulerBase | None, timeout: float | None) -> AsyncIterator[None]:
    """Bound the block to ``timeout`` seconds on ``scheduler``: past it the block is
    cancelled and :class:`~rxinvoke._compat.DeadlineExceeded` raised. A TimeoutError the block
    raises itself propagates as it is; None: no bound."""
    if timeout is None:
        yield
        return
    task = asyncio.current_task()
    assert task is not None
    clock = loop_scheduler(scheduler)
    expired = False

    def expire(_: abc.SchedulerBase, __: Any = None) -> None:
        nonlocal expired
        expired = True
        task.cancel()

    # Single-threaded schedulers run expire only while the block is suspended at an await,
    # so the cancel lands inside the block, never after it. On the loop's own clock, a plain
    # loop timer (what AsyncIOScheduler.schedule_relative makes, without its disposables).
    if isinstance(clock, AsyncIOScheduler):
        stop = asyncio.get_running_loop().call_later(timeout, expire, clock).cancel
    else:
        stop = clock.schedule_relative(timeout, expire).dispose
    try:
        yield
    except asyncio.CancelledError:
        if not expired:
            raise
        uncancel(task)
        raise DeadlineExceeded from None
    finally:
        stop()
