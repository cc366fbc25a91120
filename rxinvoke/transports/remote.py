"""RemoteRuns: submit runs to workers, observe any run live with resume, cancel it anywhere.

- :meth:`RemoteRuns.observe_run` is a cold Observable of a run's envelopes read from its
  transport stream: what is kept after ``after_seq``, then live, each seq exactly once and in
  order (segments are deduplicated by seq), completing after the terminal envelope. If the
  stream no longer holds a seq that was asked for (retention trimmed it, or a mirror dropped
  it), it ends with ``on_error(ResumeGap)`` naming the first available seq — never a silent
  jump; the durable store still has the whole log.
- :meth:`RemoteRuns.submit` queues a run and returns a :class:`RemoteRunStream`: the shape
  of ``RuntimeInvocation.stream()``'s :class:`~rxinvoke.RunStream` (an Observable of the
  run's events from its first one for every subscriber, ``run_id``, ``session_id``, ``await
  stream.result``), fed by the transport. The run is queued at once and runs whether or not
  anyone watches; as with a local stream, disposing its last subscription before the run
  ends cancels the run (remotely: the run is not wanted). A stream of a run submitted
  elsewhere (:meth:`RemoteRuns.follow`) only stops delivery.
- :meth:`RemoteRuns.cancel` reaches the worker running the run (or the one that will take it).
- :meth:`RemoteRuns.decide` approves or denies a call of a run paused on the workers: a
  worker records it on their store and continues the run there, as ``approve`` does here.
- :meth:`RemoteRuns.events` is what a run's stream holds now (``RuntimeInvocation.view`` of
  a run the store here does not have).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Generator
from typing import Any

from pydantic_core import from_json
from reactivex import Observable, abc
from reactivex.disposable import Disposable

from .._futures import retrieve
from .._runstream import RunStreamLike, SubmittedStream, _Replay
from ..control import Control
from ..errors import (
    InvalidRequest,
    InvocationCancelled,
    InvocationFailed,
    InvocationTimedOut,
    ResumeGap,
    RxInvokeError,
    SubscriberError,
    UnknownRun,
)
from ..events import (
    INVOCATION_EVENT,
    ApprovalRequested,
    CompactionFinished,
    InvocationEvent,
    ModelStarted,
    RunCompleted,
    RunFailed,
    RunStarted,
    TextDelta,
    UsageRecorded,
)
from ..messages import TokenUsage, new_id
from ..request import PendingApproval, RunOutput, RunRequest
from ..stores.base import EventEnvelope
from . import _tracing
from ._decisions import Answer, Decision
from ._wire import TERMINAL, decode, events_of
from .base import Segment, Transport, checked

__all__ = ("RemoteRunStream", "RemoteRuns")

_log = logging.getLogger("rxinvoke")

_ANSWER_WAIT = 1.0
"""Seconds a wait for a worker's answer to a decision blocks before it looks whether the
decision's job ended without one."""


def _report(error: SubscriberError) -> None:
    _log.warning("%s", error.message)


class RemoteRuns:
    """Runs on workers, through ``transport`` (see the module docstring)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = checked(transport)

    def observe_run(
        self, run_id: str, after_seq: int | None = None, *, session_id: uuid.UUID | None = None
    ) -> Observable[EventEnvelope]:
        """The run's envelopes after ``after_seq``, then live, each seq once, in order.

        Subscribe inside the running asyncio loop. Errors: ``UnknownRun`` (the transport never
        heard of the run), ``ResumeGap`` (seqs asked for are gone from the stream).
        """
        transport = self.transport
        start = max(after_seq or 0, 0)

        def subscribe(
            observer: abc.ObserverBase[EventEnvelope], scheduler: abc.SchedulerBase | None = None
        ) -> abc.DisposableBase:
            async def follow() -> None:
                try:
                    async for envelope in _envelopes(transport, run_id, start, session_id):
                        observer.on_next(envelope)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    observer.on_error(exc)
                else:
                    observer.on_completed()

            task = asyncio.get_running_loop().create_task(follow())
            task.add_done_callback(retrieve)

            def stop() -> None:
                task.cancel()

            return Disposable(stop)

        return Observable(subscribe)

    def submit(self, request: RunRequest, control: Control | None = None) -> RemoteRunStream:
        """Queue ``request`` (its ``run_id`` and ``session_id`` set) for a worker; its events
        and result arrive through the transport. The OpenTelemetry trace context current
        here goes with it (``trace_context``): the worker's spans of the run are children of
        the span current here.

        ``control`` is enforced where the run executes, as on a local run: its timeout and
        concurrency limit as they are now go with the job (``timeout``, ``concurrency_limit``),
        and ``control.cancel()`` cancels the run on its worker."""
        run_id, session_id = request.run_id, request.session_id
        if run_id is None or session_id is None:
            raise ValueError("a submitted request needs its run_id and session_id")
        update: dict[str, Any] = {}
        if request.trace_context is None and (context := _tracing.current()) is not None:
            update["trace_context"] = context
        if control is not None:
            if request.timeout is None and control.timeout is not None:
                update["timeout"] = control.timeout
            if request.concurrency_limit is None and control.concurrency_limit is not None:
                update["concurrency_limit"] = control.concurrency_limit
        if update:
            request = request.model_copy(update=update)
        stream = RemoteRunStream(self, run_id, session_id, request=request)
        if control is not None:
            stream._cancelled_by(control)
        return stream

    def follow(self, run_id: str, session_id: uuid.UUID) -> RemoteRunStream:
        """A :class:`RemoteRunStream` of a run submitted earlier (by any process)."""
        return RemoteRunStream(self, run_id, session_id)

    async def cancel(self, run_id: str) -> None:
        """Ask the worker running ``run_id`` (or the one that takes it) to cancel it; the run
        ends with ``run_cancelled`` on its stream."""
        await self.transport.request_cancel(run_id)

    async def decide(
        self,
        run_id: str,
        call_id: str,
        approved: bool,
        reason: str | None = None,
        control: Control | None = None,
    ) -> RunOutput | None:
        """Decide the call ``call_id`` of the run ``run_id`` paused on the workers, as
        :meth:`~rxinvoke.runtime.AgentRuntime.approve` / ``deny`` decide one here: a worker
        records the decision on the workers' store (decisions are queued urgent: a worker takes
        them before the runs queued ahead of them); when it was the batch's last, the run is
        continued on a worker and the continuation's output returned (None while other calls
        still wait). ``control`` is the continuation's, enforced on its worker (as
        :meth:`submit`'s); cancelling the caller cancels the continuation there.

        Raises:
            InvalidRequest: the workers refused the decision (no such run, not awaiting
                approval, no such pending call, decided the other way).
            InvocationError: as ``submit``'s ``result``, for the continuation.
        """
        stream = await self.decision(run_id, call_id, approved, reason, control)
        if stream is None:
            return None
        try:
            return await stream.result
        except asyncio.CancelledError:  # not wanted any more, as a local approve's run
            stream._ask_cancel()
            raise

    async def decision(
        self,
        run_id: str,
        call_id: str,
        approved: bool,
        reason: str | None = None,
        control: Control | None = None,
    ) -> RemoteRunStream | None:
        """:meth:`decide`, returning the continuation's stream as soon as a worker answered
        that the run goes on (a submitted run's stream: it owns the continuation), or None
        when other calls still wait. Cancelled before the answer, the decision is withdrawn
        if no worker took it yet (it is then not recorded)."""
        continuation = new_id()
        decision = Decision(
            decide=run_id,
            call_id=call_id,
            approved=approved,
            reason=reason,
            run_id=continuation,
            timeout=control.timeout if control is not None else None,
            concurrency_limit=control.concurrency_limit if control is not None else None,
            trace_context=_tracing.current(),
        )
        try:
            await self.transport.enqueue(continuation, decision.wire(), urgent=True)
            answer = await self._answer(continuation)
        except asyncio.CancelledError:
            task = asyncio.ensure_future(self.cancel(continuation))
            task.add_done_callback(retrieve)
            raise
        if answer is None:  # its job ended without an answer (a dead letter, say)
            return RemoteRunStream(self, continuation, uuid.UUID(int=0), owned=True)
        if answer.outcome == "refused":
            raise InvalidRequest(answer.error or f"the workers refused the decision on {call_id!r}")
        if answer.outcome == "waiting" or answer.session_id is None:
            return None
        stream = RemoteRunStream(self, continuation, uuid.UUID(answer.session_id), owned=True)
        if control is not None:
            stream._cancelled_by(control)
        return stream

    async def _answer(self, continuation: str) -> Answer | None:
        """The worker's answer to the decision queued as ``continuation``; None if its job
        ended (the continuation's stream has its terminal event) without one."""
        transport = self.transport
        while True:
            raw = await transport.replied(continuation, _ANSWER_WAIT)
            if raw is not None:
                return Answer.model_validate_json(raw)
            tail = await transport.tail(continuation)
            if tail is not None and not TERMINAL.isdisjoint(tail.types):
                raw = await transport.replied(continuation, 0.01)  # answered, then ended
                return Answer.model_validate_json(raw) if raw is not None else None

    async def events(self, run_id: str) -> list[InvocationEvent]:
        """The run's events its stream holds now, from its first (a live run's so far): a
        snapshot, never waiting for more.

        Raises:
            UnknownRun: the stream holds no event of the run (never heard of, expired, or
                queued and not begun yet).
            ResumeGap: retention trimmed the run's first events from the stream (the durable
                store still has them).
        """
        last = await self.transport.tail(run_id)
        if last is None:
            raise UnknownRun(run_id)
        events: list[InvocationEvent] = []
        async with contextlib.aclosing(_segments(self.transport, run_id, 0)) as segments:
            async for segment, skip in segments:
                events += events_of(segment, skip)
                if segment.last_seq >= last.last_seq:
                    break
        return events


async def _segments(transport: Transport, run_id: str, after_seq: int) -> Any:
    """The run's segments after ``after_seq`` (async generator of ``(segment, skip)``: the
    leading events of the segment already seen), deduplicated, gap-checked, ending after the
    one with the terminal event (a run's last)."""
    cursor = after_seq
    async for segment in transport.read(run_id, after_seq):
        if segment.last_seq <= cursor:
            continue  # a duplicate, or before what was asked for
        if segment.first_seq > cursor + 1:
            raise ResumeGap(run_id, cursor, segment.first_seq)
        skip = max(cursor - segment.first_seq + 1, 0)
        yield segment, skip
        cursor = segment.last_seq
        if not TERMINAL.isdisjoint(segment.types[skip:]):
            return


async def _envelopes(
    transport: Transport, run_id: str, after_seq: int, session_id: uuid.UUID | None
) -> Any:
    """The run's envelopes after ``after_seq`` (async generator), deduplicated, gap-checked,
    ending after the terminal one."""
    async for segment, skip in _segments(transport, run_id, after_seq):
        for envelope in decode(run_id, session_id, segment, segment.first_seq + skip - 1):
            yield envelope
            if envelope.type in TERMINAL:
                return


_READ = frozenset({"usage_recorded", "compaction_finished", "approval_requested", *TERMINAL})
"""The events whose fields the outcome needs besides the text (decoded one by one)."""


class _Outcome:
    """Folds a run's events into its RunOutput (the runtime's own arithmetic: the text of the
    last assistant message, the sum of the recorded usage).

    It reads the segments as sent (:meth:`fold`): the events' types, their JSON parsed to
    plain values, and only the few events it needs decoded — so a run whose events nobody
    subscribed to costs the submitter no event models."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self.usage = TokenUsage()
        self._pending: list[PendingApproval] = []
        self.terminal: InvocationEvent | None = None
        self._session = ""  # run_started's
        self.runtime: str | None = None  # run_started's: the worker's runtime

    def fold(self, segment: Segment, skip: int) -> None:
        """Add the events of ``segment`` after its first ``skip``."""
        items: list[Any] = from_json(segment.events)
        if len(items) != len(segment.types):
            raise ValueError(f"segment {segment.first_seq}: {len(items)} events, {len(segment.types)} types")
        for i in range(skip, len(items)):
            kind = segment.types[i]
            if kind == "text_delta":  # a twin sent as null: the fragment before it has its text
                item = items[i] if items[i] is not None else items[i - 1] if i else None
                if item is None:
                    raise ValueError(f"segment {segment.first_seq}: null follows no chat fragment")
                self._text.append(item["delta"])
            elif kind == "model_started":
                self._text = []
            elif kind == "run_started":
                started = items[i]
                if isinstance(started, dict) and isinstance(started.get("session_id"), str):
                    self._session = started["session_id"]
                if isinstance(started, dict) and isinstance(started.get("runtime"), str):
                    self.runtime = started["runtime"]
            elif kind in _READ:
                event = INVOCATION_EVENT.validate_python(items[i])
                self.add(event)
                if kind in TERMINAL:
                    self.terminal = event
                    return

    def add(self, event: InvocationEvent) -> None:
        if isinstance(event, ModelStarted):
            self._text = []
        elif isinstance(event, RunStarted):
            self._session = event.session_id
            self.runtime = event.runtime
        elif isinstance(event, TextDelta):
            self._text.append(event.delta)
        elif isinstance(event, UsageRecorded):
            self.usage = self.usage + event.usage
        elif isinstance(event, CompactionFinished) and event.usage is not None:
            self.usage = self.usage + event.usage  # the summarising call's cost is the run's
        elif isinstance(event, ApprovalRequested):
            self._pending.append(
                PendingApproval(
                    call_id=event.call_id,
                    tool_name=event.tool_name,
                    arguments=event.arguments,
                    expires_at=event.expires_at,
                )
            )

    def settle(self, event: InvocationEvent, run_id: str, session_id: uuid.UUID) -> RunOutput | RxInvokeError:
        if event.run_id and event.run_id != run_id:
            # the earlier run of the same client_request_id, whose events its worker sent
            # instead: its outcome, as a local emit gives it
            run_id = event.run_id
            with contextlib.suppress(ValueError):  # a run_started without a session: this one
                session_id = uuid.UUID(self._session)
        if isinstance(event, RunCompleted):
            return RunOutput(
                run_id=run_id,
                session_id=session_id,
                iterations=event.iterations,
                finish_reason=event.finish_reason,
                total_usage=self.usage,
                output_text="".join(self._text),
                pending=tuple(self._pending),
            )
        if isinstance(event, RunFailed):
            kind = InvocationTimedOut if event.error.startswith("timed out after") else InvocationFailed
            return kind(f"run {run_id} failed: {event.error}", run_id=run_id)
        return InvocationCancelled(f"run {run_id} was cancelled", run_id=run_id)


class _Lazy:
    """A run's events for a :class:`RemoteRunStream`'s subscribers (a :class:`_Replay`, every
    subscriber from the first event), decoded from the segments only once someone subscribes:
    until then the segments, and how the stream ended, are kept as sent. A segment that does
    not decode then ends the subscribers' stream with its error."""

    __slots__ = ("_end", "_held", "_replay", "_wanted")

    def __init__(self, replay: _Replay) -> None:
        self._replay = replay
        self._held: list[tuple[Segment, int]] = []
        self._end: tuple[Exception | None] | None = None  # the end, while nobody subscribed
        self._wanted = False

    def feed(self, segment: Segment, skip: int) -> None:
        if not self._wanted:
            self._held.append((segment, skip))
            return
        for event in events_of(segment, skip):
            self._replay.on_next(event)

    def subscribe(self, observer: abc.ObserverBase[InvocationEvent]) -> abc.DisposableBase:
        if not self._wanted:
            self._wanted = True
            held, self._held = self._held, []
            end, self._end = self._end, None
            try:
                for segment, skip in held:
                    self.feed(segment, skip)
            except Exception as exc:
                end = (exc,)
            if end is not None:
                self._close(end[0])
        return self._replay.subscribe(observer)

    def on_completed(self) -> None:
        self._close(None)

    def on_error(self, error: Exception) -> None:
        self._close(error)

    def _close(self, error: Exception | None) -> None:
        if not self._wanted:
            self._end = self._end or (error,)
        elif error is None:
            self._replay.on_completed()
        else:
            self._replay.on_error(error)


class RemoteRunStream(SubmittedStream):
    """A run on a worker, as a :class:`~rxinvoke.RunStream` is a run in this process: an
    Observable of its events (every subscriber from the first, completing after the terminal
    event), ``run_id``, ``session_id`` and ``await stream.result``.

    The submission and the reading start when the stream is made (inside the running loop).
    A submitted stream owns its run as a local one does: its last subscription disposed before
    the terminal event asks the run's worker to cancel it (``result`` then raises
    ``InvocationCancelled``); one made by :meth:`RemoteRuns.follow` never cancels.
    """

    def __init__(
        self,
        remote: RemoteRuns,
        run_id: str,
        session_id: uuid.UUID,
        *,
        request: RunRequest | None = None,
        owned: bool = False,
    ) -> None:
        super().__init__()
        self.run_id = run_id
        """The run's id."""
        self.session_id = session_id
        """The run's session."""
        # runtime: the worker's runtime's name (from its run_started; None until then)
        self._remote = remote
        self._events = _Lazy(_Replay(_report, run_id))
        self._loop = asyncio.get_running_loop()
        self._result: asyncio.Future[RunOutput] = self._loop.create_future()
        self._result.add_done_callback(retrieve)
        self._is_ended = False
        self._ending = False  # the terminal event is being delivered
        # submitted (or continued) here: an early last unsubscribe cancels
        self._owned = owned or request is not None
        self._subscribers = 0
        self._cancel_asked = False
        self._control_listener: abc.DisposableBase | None = None
        self._task = self._loop.create_task(self._follow(request))
        self._task.add_done_callback(retrieve)

    @property
    def result(self) -> _Result:
        """An awaitable of the run's ``RunOutput`` (raises the run's ``InvocationError``, or
        ``ResumeGap`` / ``StoreError``-like transport errors)."""
        return _Result(self._result)

    @property
    def is_started(self) -> bool:
        """True: a submitted run is queued as the stream is made."""
        return True

    @property
    def is_finished(self) -> bool:
        """True once the run's terminal event was delivered."""
        return self._is_ended

    def _subscribe_core(
        self, observer: abc.ObserverBase[InvocationEvent], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        self._subscribers += 1
        subscription = self._events.subscribe(observer)

        def dispose() -> None:
            subscription.dispose()
            self._subscribers -= 1
            if not self._subscribers and self._owned:
                self._ask_cancel()  # the last subscriber left early: the run is not wanted

        return Disposable(dispose)

    def onlooker(self) -> _Onlooker:
        """The run's events and result for someone who only watches (``inv.runs()``):
        subscribing to it, and leaving, never cancel the run."""
        return _Onlooker(self)

    def _cancelled_by(self, control: Control) -> None:
        """``control.cancel()`` (from any thread) cancels the run on its worker."""
        self._control_listener = control.add_cancel_listener(self._ask_cancel)

    def _ask_cancel(self) -> None:
        """Ask the run's worker to cancel it: once, unless it ended; from any thread."""
        if self._cancel_asked or self._ending or self._is_ended or self._loop.is_closed():
            return  # (a closed loop: nothing can be sent any more)
        self._cancel_asked = True
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # outside any loop (another thread, say)
            here = False
        if here:
            self._send_cancel()
        else:
            self._loop.call_soon_threadsafe(self._send_cancel)

    def _send_cancel(self) -> None:
        task = self._loop.create_task(self._remote.cancel(self.run_id))
        task.add_done_callback(self._cancel_sent)

    def _cancel_sent(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            _log.warning(
                "rxinvoke: run %s: asking its worker to cancel it failed: %s",
                self.run_id, task.exception(),
            )

    async def _follow(self, request: RunRequest | None) -> None:
        transport = self._remote.transport
        outcome = _Outcome()
        try:
            if request is not None:
                await transport.enqueue(self.run_id, request.model_dump_json().encode())
            async for segment, skip in _segments(transport, self.run_id, 0):
                outcome.fold(segment, skip)
                self._runtime_name = outcome.runtime
                self._ending = outcome.terminal is not None
                self._events.feed(segment, skip)
                if outcome.terminal is not None:
                    settled = outcome.settle(outcome.terminal, self.run_id, self.session_id)
                    self._is_ended = True
                    if isinstance(settled, RunOutput):
                        self._result.set_result(settled)
                    else:
                        self._result.set_exception(settled)
                    self._events.on_completed()
                    return
            raise InvocationFailed(
                f"run {self.run_id}: its stream expired before its terminal event",
                run_id=self.run_id,
            )
        except asyncio.CancelledError:
            if not self._result.done():
                self._result.cancel()
            raise
        except Exception as exc:
            self._is_ended = True
            if not self._result.done():
                self._result.set_exception(exc)
            self._events.on_error(exc)
        finally:
            if self._control_listener is not None:
                self._control_listener.dispose()
                self._control_listener = None

    def close(self) -> None:
        """Stop reading the run's stream (the run goes on)."""
        self._task.cancel()

    def __repr__(self) -> str:
        state = "finished" if self._is_ended else "running"
        return f"RemoteRunStream(run {self.run_id[:8]}, {state})"


class _Onlooker(RunStreamLike):
    """A :class:`RemoteRunStream`'s events and result, without its ownership of the run."""

    def __init__(self, stream: RemoteRunStream) -> None:
        super().__init__()
        self._stream = stream
        self.run_id = stream.run_id
        self.session_id = stream.session_id

    @property
    def runtime(self) -> str | None:
        return self._stream.runtime

    @property
    def result(self) -> _Result:
        return self._stream.result

    @property
    def is_finished(self) -> bool:
        return self._stream.is_finished

    def _subscribe_core(
        self, observer: abc.ObserverBase[InvocationEvent], scheduler: abc.SchedulerBase | None = None
    ) -> abc.DisposableBase:
        return self._stream._events.subscribe(observer)

    def __repr__(self) -> str:
        return repr(self._stream)


class _Result:
    __slots__ = ("_future",)

    def __init__(self, future: asyncio.Future[RunOutput]) -> None:
        self._future = future

    def __await__(self) -> Generator[Any, None, RunOutput]:
        return asyncio.shield(self._future).__await__()
