"""Run: one run's state, and the plumbing that stops it (cancel, deadline).

The run executes in its own task. ``Control.cancel()`` (from any thread) and the control's
deadline stop that task with a reason (``"cancelled"`` or ``"timeout"``); the runtime turns the
reason into the terminal event and the error ``run()`` raises. A task stopped before it began
never runs its loop: the runtime checks :attr:`Run.reason` first, and again before it
publishes ``run_completed`` (a stop requested from inside the run, by a subscriber of its last
events, wins over completion).

The deadline is timed on the runtime's scheduler (an ``AsyncIOScheduler`` of the loop, or a
``reactivex.testing.TestScheduler`` for virtual time) from the run's start; a
``Control.set_timeout`` during the run moves it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Coroutine
from datetime import datetime
from typing import Any, Literal

from reactivex import abc

from ._futures import retrieve
from .control import Control, session_context
from .providers.base import ChatProvider
from .request import RunOutput, RunRequest

__all__ = ("Run", "StopReason")

StopReason = Literal["cancelled", "timeout"]


class Run:
    """What the runtime's parts share about one run (instead of long parameter lists)."""

    __slots__ = (
        "_closed", "_ended", "_listener", "_loop", "_outcome", "_scheduler", "_started_at",
        "_thread", "_timeout_listener", "_timer", "context", "control", "provider", "reason",
        "request", "run_id", "session_id", "started", "task",
    )

    def __init__(
        self,
        request: RunRequest,
        provider: ChatProvider,
        control: Control,
        *,
        run_id: str,
        session_id: uuid.UUID,
        runtime: str | None = None,
    ) -> None:
        self.request = request
        self.provider = provider
        self.control = control
        self.run_id = run_id
        self.session_id = session_id
        self.context = session_context(session_id, run_id, runtime)
        self.reason: StopReason | None = None
        """Why the run is being stopped, once it is."""
        self.started = False
        """The run's task began: cancelling it now lands inside the loop."""
        self.task: asyncio.Task[RunOutput] | None = None
        self._closed = False
        self._ended: asyncio.Event | None = None  # made when someone waits for it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._listener: abc.DisposableBase | None = None
        self._timeout_listener: abc.DisposableBase | None = None
        self._timer: abc.DisposableBase | None = None
        self._scheduler: abc.SchedulerBase | None = None
        self._started_at: datetime | None = None
        self._outcome: asyncio.Future[RunOutput] | None = None

    @property
    def ended(self) -> asyncio.Event:
        """Set when ``run()`` returns (idempotent emits of this process wait on it)."""
        if self._ended is None:
            self._ended = asyncio.Event()
            if self._closed:
                self._ended.set()
        return self._ended

    @property
    def outcome(self) -> asyncio.Future[RunOutput]:
        """What ``run()`` returns or raises, once it does (never left unretrieved)."""
        if self._outcome is None:
            self._outcome = asyncio.get_running_loop().create_future()
            self._outcome.add_done_callback(retrieve)
        return self._outcome

    def settled(self, result: RunOutput | BaseException) -> None:
        """Record the outcome ``run()`` returns (an output) or raises (an error)."""
        future = self.outcome
        if future.done():
            return
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)

    def start(
        self, drive: Coroutine[Any, Any, RunOutput], scheduler: abc.SchedulerBase
    ) -> asyncio.Task[RunOutput]:
        """Run ``drive`` in its own task, stopped by the control's cancel and deadline (timed
        on ``scheduler``)."""
        loop = self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._scheduler = scheduler
        self._started_at = scheduler.now
        task = self.task = loop.create_task(drive)
        self._listener = self.control.add_cancel_listener(self._on_cancel)
        self._timeout_listener = self.control.add_timeout_listener(self._on_timeout_change)
        self._arm(self.control.timeout)
        return task

    def _on_cancel(self) -> None:
        self.stop("cancelled")

    def _on_timeout_change(self, timeout: float | None) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() != self._thread:
            loop.call_soon_threadsafe(self._arm, timeout)
        else:
            self._arm(timeout)

    def _arm(self, timeout: float | None) -> None:
        """(Re)set the deadline: ``timeout`` seconds after the run's start."""
        if self._timer is not None:
            self._timer.dispose()
            self._timer = None
        scheduler, started = self._scheduler, self._started_at
        if timeout is None or scheduler is None or started is None or self._closed:
            return
        remaining = timeout - (scheduler.now - started).total_seconds()
        if remaining <= 0:
            self.stop("timeout")  # the new deadline is past already
            return
        self._timer = scheduler.schedule_relative(remaining, self._expire)

    def _expire(self, _scheduler: abc.SchedulerBase, _state: Any = None) -> None:
        self.stop("timeout")

    def stop(self, reason: StopReason) -> None:
        """Stop the run's task (any thread); the first reason wins."""
        task, loop = self.task, self._loop
        if self.reason is not None or task is None or loop is None or task.done():
            return
        cancel = task.cancel
        self.reason = reason
        if not self.started:
            return  # a task cancelled before it starts never runs: the runtime checks reason
        if threading.get_ident() != self._thread:
            loop.call_soon_threadsafe(cancel)
        elif asyncio.current_task(loop) is task:
            # From inside the run (an observer): land at its next await; a run that
            # completes first returns its output, consistent with its run_completed.
            loop.call_soon(cancel)
        else:
            cancel()

    def close(self) -> None:
        """Detach from the control and the clock (the run returned)."""
        for disposable in (self._listener, self._timeout_listener, self._timer):
            if disposable is not None:
                disposable.dispose()
        self._listener = self._timeout_listener = self._timer = None
        self._closed = True
        if self._ended is not None:
            self._ended.set()
