"""Futures: outcomes reported elsewhere (``retrieve``), waiting for a task without cancelling
it (``when_done``, ``shielded``), and coroutines started eagerly.

``start_eagerly(coro)`` is ``asyncio.ensure_future(coro)`` without the detour through the loop
when ``coro`` finishes without waiting (a MemoryStore call, a log write of such a store): it runs
``coro`` at once, up to its first suspension. A coroutine that completes there gives a done
future (awaiting it does not suspend, no loop iteration); one that suspends goes on in a task of
its own, exactly as with ``ensure_future``, so a write that has begun still outlives a cancelled
awaiter.

On Python 3.12+ it is an eager task (``asyncio.Task(..., eager_start=True)``): the coroutine is
that task from its first step on, so what binds itself to the current task there —
``asyncio.timeout``, and ``asyncio.wait_for``, which uses it since 3.12 (psycopg_pool's
connection wait does) — binds to it, not to the caller (whose cancellation it would otherwise
deliver, leaving the wait itself without a deadline). Before 3.12 (no eager tasks) the first
step runs in the caller's task; ``wait_for`` there is not bound to a task.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from functools import partial
from typing import Any, Generic, TypeVar, cast

__all__ = ("retrieve", "shielded", "start_eagerly", "stopped", "when_done")

_EAGER_TASKS = sys.version_info >= (3, 12)

_T = TypeVar("_T")


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done callback that retrieves the exception, so asyncio never logs
    "exception was never retrieved" for an outcome that was reported another way."""
    if not future.cancelled():
        future.exception()


async def stopped(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, whatever its outcome (retrieved, not
    raised). A cancellation of the caller while it waits is raised, not taken for the task's
    own end (what ``task.cancel(); with suppress(CancelledError): await task`` would do)."""
    task.cancel()
    if not task.done():
        await asyncio.wait((task,))
    retrieve(task)


def when_done(future: asyncio.Future[Any]) -> asyncio.Future[None]:
    """A future settled (with None) once ``future`` is done; cancelling it leaves ``future``
    alone. What ``asyncio.shield(future)`` gives its awaiter, without copying the outcome over:
    at most four objects kept alive while waiting (the waiter, its callback, the callback's
    entry and context) instead of nine (an awaiter reads ``future.result()`` itself)."""
    waiter: asyncio.Future[None] = future.get_loop().create_future()
    future.add_done_callback(partial(_wake, waiter))
    return waiter


async def shielded(future: asyncio.Future[_T]) -> _T:
    """``await asyncio.shield(future)`` for a future: its outcome, and the caller's
    cancellation does not reach it; five objects kept alive while it waits instead of nine (a
    run waiting for its store's worker waits here several times over)."""
    if not future.done():
        await when_done(future)
    return future.result()


def _wake(waiter: asyncio.Future[None], _done: asyncio.Future[Any]) -> None:
    if not waiter.done():  # else its awaiter was cancelled
        waiter.set_result(None)


def start_eagerly(coro: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
    """Run ``coro`` now, up to its first suspension; its outcome as a future.

    On Python 3.12+ an eager task; before, until that suspension ``coro`` runs in the caller's
    task and context, from there on in a new task.
    """
    loop = asyncio.get_running_loop()
    if _EAGER_TASKS:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[_T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except asyncio.CancelledError:
        done = loop.create_future()
        done.cancel()
        return done
    except Exception as exc:
        done = loop.create_future()
        done.set_exception(exc)
        return done
    return loop.create_task(_resumed(coro, yielded))


async def _resumed(coro: Coroutine[Any, Any, _T], yielded: Any) -> _T:
    return await _Resume(coro, yielded)


class _Resume(Generic[_T]):
    """Awaiting it hands ``yielded`` (what ``coro`` suspended on) to the task, then drives
    ``coro`` on: what the task sends or throws goes to ``coro``."""

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, _T], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, _T]:
        coro, yielded = self._coro, self._yielded
        while True:
            try:
                sent = yield yielded
            except BaseException as exc:  # thrown in by the task (a cancellation)
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return cast(_T, stop.value)
            else:
                try:
                    yielded = coro.send(sent)
                except StopIteration as stop:
                    return cast(_T, stop.value)
