"""GroupWorker: one thread that runs a store's calls in call order, consecutive writes as a group.

A store whose connection must stay on one thread (``sqlite3``) hands each call to the worker
(:meth:`GroupWorker.submit`) and awaits the returned future. The worker takes every call
waiting at that moment (up to ``max_batch``): consecutive writes run as one group (the store's
``run_group``: one transaction for all of them, each isolated by a savepoint), every other call
alone (``run_one``), in submission order. The outcomes of a batch are handed back to each
caller's loop in one call, so a batch of a thousand writes costs one transaction and one
wake-up of the loop, not a thousand of each (group commit). Under no load a batch is one call,
exactly as before.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

__all__ = ("GroupWorker", "Outcome")

_C = TypeVar("_C")
Outcome = tuple[bool, Any]
"""``(True, value)`` or ``(False, exception)``."""


class _Call(Generic[_C]):
    __slots__ = ("final", "fn", "future", "loop", "write")

    def __init__(
        self,
        fn: _C | None,
        write: bool,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        final: Callable[[], None] | None = None,
    ) -> None:
        self.fn = fn
        self.write = write
        self.loop = loop
        self.future = future
        self.final = final  # the last call: run as it is, then the thread ends


class GroupWorker(Generic[_C]):
    """Runs calls (of type ``_C``, whatever the store's callables are) on its own thread.

    Args:
        run_one: runs one call and returns its value (or raises).
        run_group: runs two or more writes together; one outcome per write, in order.
        name: the thread's name.
        max_batch: at most this many calls are taken at once.
    """

    def __init__(
        self,
        run_one: Callable[[_C], Any],
        run_group: Callable[[Sequence[_C]], list[Outcome]],
        *,
        name: str,
        max_batch: int = 1024,
    ) -> None:
        self._run_one = run_one
        self._run_group = run_group
        self._name = name
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Call[_C]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, fn: _C, *, write: bool) -> asyncio.Future[Any]:
        """Queue ``fn``; the future (of the running loop) gets its value or exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._start()
        self._queue.put(_Call(fn, write, loop, future))
        return future

    def close(self, final: Callable[[], None]) -> asyncio.Future[None]:
        """Run ``final()`` after the calls queued so far, then end the thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._start()
        self._queue.put(_Call(None, False, loop, future, final))
        return future

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None:
                # the thread holds the worker weakly: a store dropped without close() is
                # collected as before (its connection with it) and the thread then ends
                thread = threading.Thread(
                    target=_serve, args=(weakref.ref(self), self._queue), name=self._name,
                    daemon=True,
                )
                thread.start()
                self._thread = thread

    def _drain(self, first: _Call[_C]) -> list[_Call[_C]]:
        batch = [first]
        while len(batch) < self._max_batch and batch[-1].final is None:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _execute(self, batch: list[_Call[_C]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        index = 0
        while index < len(batch):
            end = index
            while end < len(batch) and batch[end].write:
                end += 1
            if end - index >= 2:  # consecutive writes: one group
                group = [call.fn for call in batch[index:end] if call.fn is not None]
                try:
                    outcomes.extend(self._run_group(group))
                except BaseException as exc:  # the group as a whole failed
                    outcomes.extend((False, exc) for _ in group)
                index = end
                continue
            call = batch[index]
            try:
                if call.final is not None:
                    outcomes.append((True, call.final()))
                else:
                    outcomes.append((True, self._run_one(call.fn)))  # type: ignore[arg-type]
            except BaseException as exc:
                outcomes.append((False, exc))
            index += 1
        return outcomes

    @staticmethod
    def _hand_back(batch: list[_Call[_C]], outcomes: list[Outcome]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Outcome]]] = {}
        for call, outcome in zip(batch, outcomes, strict=True):
            by_loop.setdefault(call.loop, []).append((call.future, outcome))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, results)
            except RuntimeError:  # that loop is closed: nobody awaits these any more
                pass


_IDLE_CHECK = 1.0
"""Seconds between checks, while idle, that the worker still exists."""


def _serve(ref: weakref.ref[GroupWorker[Any]], calls: queue.SimpleQueue[_Call[Any]]) -> None:
    """The worker thread: run batches until the final call, or until the worker is gone."""
    while True:
        try:
            first = calls.get(timeout=_IDLE_CHECK)
        except queue.Empty:
            if ref() is None:
                return
            continue
        worker = ref()
        if worker is None:  # pragma: no cover - a queued call keeps its store alive
            return
        batch = worker._drain(first)
        outcomes = worker._execute(batch)
        final = batch[-1].final is not None
        # let go of the store (the worker, the calls' closures) before any caller learns its
        # outcome: a caller that then drops the store sees it collected
        del worker
        for call in batch:
            call.fn = call.final = None
        GroupWorker._hand_back(batch, outcomes)
        del batch, first, outcomes
        if final:
            return


def _resolve(results: list[tuple[asyncio.Future[Any], Outcome]]) -> None:
    for future, (ok, value) in results:
        if future.done():  # its caller was cancelled
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
