"""RunStream: one run as an Observable of its events, with its ids and its result.

The same shape serves ``inv.stream(request)`` (the stream owns its run: subscribing, or
awaiting ``result``, starts it; disposing the last subscription before the end cancels it)
and ``inv.runs()`` (one stream per run the runtime starts, attached from its ``run_started``;
disposing only stops delivery). Every subscriber sees the run's events from its first one,
whenever it subscribes (they are kept until the stream is dropped), and the Observable
completes after the terminal event. ``await stream.result`` gives the ``RunOutput`` or raises
the run's :class:`~rxinvoke.errors.InvocationError` (``InvocationCancelled`` once
``run_cancelled`` is stored). Nothing a stream runs ever ends with an unretrieved exception:
no "unhandled exception" at loop shutdown.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import Disposable

from ._futures import retrieve
from .control import Control, SessionContext
from .errors import InvocationCancelled, InvocationError, SubscriberError
from .events import InvocationEvent, RunStarted
from .request import RunOutput, RunRequest
from .runtime import AgentRuntime

__all__ = ("RunStream", "RunStreamLike", "SubmittedStream")

class RunStreamLike(Observable[InvocationEvent]):
    """What every run stream offers, wherever its run executes: :class:`RunStream` (this
    process) and :class:`~rxinvoke.transports.remote.RemoteRunStream` (a worker). An
    ``Observable[InvocationEvent]`` itself, so its ``pipe`` keeps reactivex's types."""

    run_id: str
    session_id: uuid.UUID
    _runtime_name: str | None = None

    @property
    def runtime(self) -> str | None:
        """The name of the runtime running it (None: unnamed, or not known yet)."""
        return self._runtime_name

    @property
    def result(self) -> Awaitable[RunOutput]:
        """An awaitable of the run's ``RunOutput`` (raises the run's ``InvocationError``)."""
        raise NotImplementedError

    @property
    def is_finished(self) -> bool:
        """True once the run's terminal event was delivered."""
        raise NotImplementedError


class SubmittedStream(RunStreamLike):
    """The stream of a run submitted to workers (``RuntimeInvocation.submit``)."""

    def onlooker(self) -> RunStreamLike:
        """The same run's events and result for someone who only watches (``inv.runs()``):
        subscribing to it, and leaving, never cancel the run."""
        raise NotImplementedError


class RunStream(RunStreamLike):
    """One run's events (completing after its terminal event), its ids and its result."""

    def __init__(
        self,
        runtime: AgentRuntime,
        run_id: str,
        session_id: uuid.UUID,
        *,
        request: RunRequest | None = None,
        control: Control | None = None,
        started: RunStarted | None = None,
    ) -> None:
        super().__init__()
        self.run_id = run_id
        """The run's id (known before it starts)."""
        self.session_id = session_id
        """The run's session."""
        self._runtime_name = runtime.name  # runtime: AgentRuntime(name=...), or None
        self._runtime = runtime
        self._request = request  # set: this stream owns its run and starts it
        self._control = control
        self._events = _Replay(runtime.bus.report, run_id)
        self._result: asyncio.Future[RunOutput] = asyncio.get_running_loop().create_future()
        self._result.add_done_callback(retrieve)
        self._is_started = False
        self._is_ended = False
        self._subscribers = 0
        self._attachment: abc.DisposableBase | None = None
        if started is not None:  # attached to a run that is going (inv.runs())
            self._is_started = True
            self._attach()
            self._deliver(started, None)
            outcome = runtime.outcome_of(run_id)
            if outcome is not None:
                outcome.add_done_callback(self._copy_outcome)

    @property
    def result(self) -> _Result:
        """An awaitable of the run's ``RunOutput`` (raises the run's ``InvocationError``).

        Awaiting it starts a stream's own run if nothing has yet; cancelling the awaiting task
        cancels neither the run nor other awaiters.
        """
        return _Result(self)

    @property
    def is_started(self) -> bool:
        """True once the run was started (by a subscription or an awaited ``result``)."""
        return self._is_started

    @property
    def is_finished(self) -> bool:
        """True once the run's terminal event was delivered."""
        return self._is_ended

    def _subscribe_core(
        self, observer: abc.ObserverBase[InvocationEvent], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        self._subscribers += 1
        subscription = self._events.subscribe(observer)
        self._start()

        def dispose() -> None:
            subscription.dispose()
            self._subscribers -= 1
            if not self._subscribers and not self._is_ended and self._control is not None:
                self._control.cancel()  # the last subscriber left early: the run is not wanted

        return Disposable(dispose)

    def _start(self) -> None:
        if self._is_started or self._request is None:
            return
        self._is_started = True
        request, control = self._request, self._control or Control()
        try:
            self._runtime.validate(request)
        except InvocationError as exc:
            self._events.on_error(exc)
            self._result.set_exception(exc)
            self._is_ended = True
            return
        self._attach()
        task = asyncio.get_running_loop().create_task(self._run(request, control))
        task.add_done_callback(retrieve)

    async def _run(self, request: RunRequest, control: Control) -> None:
        try:
            output = await self._runtime.run(request, control)
        except asyncio.CancelledError:  # the loop is shutting down: the run settled cancelled
            self._settle(InvocationCancelled(f"run {self.run_id} was cancelled", run_id=self.run_id))
        except BaseException as exc:  # the outcome lives in result; nothing is left unretrieved
            self._settle(exc)
        else:
            self._settle(output)

    def _settle(self, outcome: RunOutput | BaseException) -> None:
        if self._result.done():
            return
        if isinstance(outcome, BaseException):
            self._result.set_exception(outcome)
        else:
            self._result.set_result(outcome)

    def _copy_outcome(self, outcome: asyncio.Future[RunOutput]) -> None:
        if outcome.cancelled():
            self._settle(InvocationCancelled(f"run {self.run_id} was cancelled", run_id=self.run_id))
            return
        error = outcome.exception()
        self._settle(error if error is not None else outcome.result())

    def _attach(self) -> None:
        self._attachment = self._runtime.bus.attach_run(self.run_id, self._deliver, self._end)

    def _deliver(self, event: InvocationEvent, context: SessionContext | None) -> None:
        if self._is_ended:
            return
        self._events.on_next(event)
        if event.is_terminal:
            self._end()

    def _end(self) -> None:
        if self._is_ended:
            return
        self._is_ended = True
        if self._attachment is not None:
            self._attachment.dispose()
            self._attachment = None
        self._events.on_completed()

    def __repr__(self) -> str:
        state = "finished" if self._is_ended else "running" if self._is_started else "not started"
        return f"RunStream(run {self.run_id[:8]}…, {state})"


class _Replay:
    """The run's events for any number of observers, each from the first event on: what a
    ``ReplaySubject`` does, without its scheduler hop per event and observer (~20 µs each).
    Delivery is synchronous, in order; an observer that raises is reported on the runtime's
    ``errors`` and keeps receiving."""

    def __init__(self, report: Callable[[SubscriberError], None], run_id: str) -> None:
        self._report_to = report
        self._label = f"stream({run_id[:8]})"
        self._events: list[InvocationEvent] = []
        self._observers: list[abc.ObserverBase[InvocationEvent]] = []
        self._end: tuple[Exception | None] | None = None

    def subscribe(self, observer: abc.ObserverBase[InvocationEvent]) -> abc.DisposableBase:
        index = 0
        while index < len(self._events):  # events published meanwhile are caught up too
            self._send(observer, self._events[index])
            index += 1
        if self._end is not None:
            self._finish(observer, self._end[0])
            return Disposable()
        self._observers.append(observer)

        def dispose() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return Disposable(dispose)

    def on_next(self, event: InvocationEvent) -> None:
        self._events.append(event)
        for observer in tuple(self._observers):
            self._send(observer, event)

    def on_completed(self) -> None:
        self._close(None)

    def on_error(self, error: Exception) -> None:
        self._close(error)

    def _close(self, error: Exception | None) -> None:
        if self._end is not None:
            return
        self._end = (error,)
        observers, self._observers = self._observers, []
        for observer in observers:
            self._finish(observer, error)

    def _send(self, observer: abc.ObserverBase[InvocationEvent], event: InvocationEvent) -> None:
        try:
            observer.on_next(event)
        except Exception as exc:
            self._report(exc, event)

    def _finish(self, observer: abc.ObserverBase[InvocationEvent], error: Exception | None) -> None:
        try:
            if error is None:
                observer.on_completed()
            else:
                observer.on_error(error)
        except Exception as exc:
            self._report(exc, None)

    def _report(self, exc: Exception, event: InvocationEvent | None) -> None:
        self._report_to(
            SubscriberError(
                f"{self._label} observer raised {type(exc).__name__}: {exc}",
                subscription=self._label,
                event=event,
                cause=exc,
            )
        )


class _Result:
    """``await stream.result``: shielded, so one awaiter's cancellation touches nothing else."""

    __slots__ = ("_stream",)

    def __init__(self, stream: RunStream) -> None:
        self._stream = stream

    def __await__(self) -> Generator[Any, None, RunOutput]:
        self._stream._start()
        return asyncio.shield(self._stream._result).__await__()
