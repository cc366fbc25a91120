"""RuntimeInvocation: ``emit`` runs, ``on(kind, handler)`` subscribes, ``observe``/``stream`` compose.

``on(kind, handler)`` has the semantics of the chain ``filter(kind) →
take_until(control.cancelled) → observe_on(asyncio loop)``, built lean: the filter is the bus's
kind index, take_until is a cancel listener on the control, and the loop hand-off is a
``HandlerSink`` (``_sink``) that drains a bounded buffer with one loop hand-off per burst.
Handlers of one subscription run in event order (at most ``control.concurrency_limit`` in
flight, default 1), each bounded by ``control.timeout``. A handler that raises or times out
is reported on :attr:`RuntimeInvocation.errors` and never affects the run or other subscribers.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol, TypeVar, overload

import pydantic
import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.subject import Subject

from ._runstream import RunStream, RunStreamLike, SubmittedStream
from ._sink import Handler, HandlerSink, Overflow, SubscriptionStats
from .control import Control, SessionContext, session_context
from .errors import InvalidRequest, InvocationCancelled, SubscriberError, UnknownRun, UserError
from .events import EventBase, EventKind, InvocationEvent, RunStarted
from .messages import new_id
from .notebook.view import RunView
from .request import EmitRequest, RunOutput, RunRequest
from .runtime import AgentRuntime
from .stores.base import EventEnvelope

__all__ = ("Build", "Handler", "InvocationHandle", "Remote", "RuntimeInvocation")

Build = Callable[[SessionContext, Control], EmitRequest | Awaitable[EmitRequest]]
"""``build(ctx, control)`` returns (or resolves to) the EmitRequest to run."""

_ids = itertools.count(1)
_E = TypeVar("_E", bound=EventBase)


def _check_arity(handler: Callable[..., Any]) -> None:
    """Refuse a handler that cannot be called as ``handler(event, ctx, control)`` now, not at
    every event (a signature that cannot be read is taken on trust)."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None, None)
    except TypeError as exc:
        name = getattr(handler, "__qualname__", type(handler).__name__)
        raise UserError(
            f"handler {name} must take (event, ctx, control): {exc} "
            "(a handler of the event alone: lambda event, ctx, control: handle(event))"
        ) from None


class InvocationHandle(abc.DisposableBase):
    """One ``on`` subscription: a reactivex disposable and a context manager."""

    __slots__ = ("_sink", "control")

    def __init__(self, sink: HandlerSink, control: Control) -> None:
        self._sink = sink
        self.control = control
        """The subscription's control (cancel it to end the subscription)."""

    @property
    def name(self) -> str:
        """A label naming the subscription in error reports."""
        return self._sink.name

    @property
    def is_finished(self) -> bool:
        """True once the subscription delivers no more events."""
        return self._sink.is_closed

    @property
    def stats(self) -> SubscriptionStats:
        """Delivered, dropped, failed, in-flight and queued counts."""
        return self._sink.stats

    def dispose(self) -> None:
        """Stop delivery at once; handler calls already running finish."""
        self._sink.close(cancel_running=False)

    def abort(self) -> None:
        """Stop delivery at once and cancel handler calls that are running."""
        self._sink.close(cancel_running=True)

    async def wait_idle(self) -> None:
        """Wait until every event published so far has been handled."""
        await asyncio.sleep(0)
        await self._sink.wait_idle()

    def __enter__(self) -> InvocationHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"InvocationHandle({self.name!r}, finished={self.is_finished}, stats={self.stats})"


class Remote(Protocol):
    """Where ``submit`` sends runs and ``cancel`` reaches them: workers behind a transport
    (:class:`~rxinvoke.transports.remote.RemoteRuns`)."""

    def submit(self, request: RunRequest, control: Control | None = None) -> SubmittedStream: ...

    async def cancel(self, run_id: str) -> None: ...

    async def events(self, run_id: str) -> list[InvocationEvent]: ...

    async def decide(
        self,
        run_id: str,
        call_id: str,
        approved: bool,
        reason: str | None = None,
        control: Control | None = None,
    ) -> RunOutput | None: ...


class RuntimeInvocation:
    """The invocation facade over an :class:`~rxinvoke.runtime.AgentRuntime`.

    Args:
        runtime: runs ``emit`` and ``stream`` here and publishes their events.
        remote: workers elsewhere (:class:`~rxinvoke.transports.remote.RemoteRuns`), for
            ``submit`` and for ``cancel`` of runs that do not run here.
    """

    def __init__(self, runtime: AgentRuntime, *, remote: Remote | None = None) -> None:
        self.runtime = runtime
        self.remote = remote
        self._submitted: Subject[RunStreamLike] = Subject()  # for runs()

    @property
    def errors(self) -> Observable[SubscriberError]:
        """Failures of handlers and observers (with the subscription and event)."""
        return self.runtime.errors

    @property
    def scheduler(self) -> abc.SchedulerBase:
        """The runtime's clock (``AgentRuntime.scheduler``): the ``AsyncIOScheduler`` of the
        running loop unless the runtime was given one. Pass it to reactivex's time-based
        operators (``debounce``, ``buffer_with_time``, …): without ``scheduler=`` they run on
        timer threads, off the loop."""
        return self.runtime.scheduler

    async def emit(
        self, build: Build | EmitRequest, control: Control | None = None
    ) -> RunOutput:
        """Run a request to its end: an ``EmitRequest``, or ``build(ctx, control)`` returning one.

        Idempotent by ``client_request_id``: if the store already has a run with the request's
        key, nothing new starts and that run's outcome is returned (its ``RunOutput``, or the
        error its emit raised), waiting for it while it is still running: through the runtime
        when it runs in this process, by polling the store when another process runs it.

        Raises:
            InvalidRequest: the build failed validation, or the request is invalid
                (unknown provider/model, empty input); no event was published.
            InvocationCancelled: ``control`` was cancelled before or during the run.
            InvocationTimedOut: the control's timeout expired during the run.
            InvocationFailed: the run failed (``run_id`` and ``cause`` set).
        """
        control = control or Control()
        context = session_context(uuid.uuid4(), new_id())
        if control.is_cancelled:
            raise InvocationCancelled("cancelled before the run started")
        request = build if isinstance(build, EmitRequest) else await self._build(build, context, control)
        if control.is_cancelled:
            raise InvocationCancelled("cancelled before the run started")
        run_request = request.into_run_request(
            run_id=context.run_id, session_id=request.session_id or context.session_id
        )
        del context, request  # not kept alive for the whole run
        return await self.runtime.run(run_request, control)

    @overload
    async def on(
        self,
        kind: type[_E],
        handler: Callable[[_E, SessionContext, Control], Awaitable[Any] | None],
        control: Control | None = None,
        *,
        buffer: int = 10_000,
        overflow: Overflow = "drop_oldest",
        scheduler: abc.SchedulerBase | None = None,
    ) -> InvocationHandle: ...
    @overload
    async def on(
        self,
        kind: EventKind | str,
        handler: Handler,
        control: Control | None = None,
        *,
        buffer: int = 10_000,
        overflow: Overflow = "drop_oldest",
        scheduler: abc.SchedulerBase | None = None,
    ) -> InvocationHandle: ...
    async def on(
        self,
        kind: EventKind | str | type[EventBase],
        handler: Callable[..., Awaitable[Any] | None],
        control: Control | None = None,
        *,
        buffer: int = 10_000,
        overflow: Overflow = "drop_oldest",
        scheduler: abc.SchedulerBase | None = None,
    ) -> InvocationHandle:
        """Call ``handler(event, ctx, control)`` for every event of ``kind`` until disposed.

        Args:
            kind: an :class:`EventKind` or its string value (``"text_delta"``); ``ANY`` for all;
                or an event class (``ToolExecutionFinished``: its kind, and the handler's
                event typed as that class).
            handler: sync or async; its exceptions and timeouts go to :attr:`errors`.
            control: cancel it to end the subscription; its timeout bounds each handler call,
                its concurrency limit the calls in flight (default 1: strictly in order).
            buffer: events queued for this subscription at most.
            overflow: ``"drop_oldest"`` (counted and reported) or ``"error"`` (the
                subscription ends with a SubscriberOverflow report).
            scheduler: the clock of handler timeouts (default: the runtime's scheduler, the
                asyncio loop unless it was given one); pass a
                ``reactivex.testing.TestScheduler`` to test timeouts in virtual time.
        """
        member = EventKind.parse(kind)
        if not callable(handler):
            raise UserError(f"handler must be callable, got {handler!r}")
        _check_arity(handler)
        control = control or Control()
        runtime = self.runtime
        name = f"on({member.value})#{next(_ids)}"

        sink = HandlerSink(
            name=name,
            call=handler,
            control=control,
            loop=asyncio.get_running_loop(),
            report=runtime.bus.report,
            buffer=buffer,
            overflow=overflow,
            scheduler=scheduler if scheduler is not None else runtime.scheduler,
        )
        sink.connect(runtime.bus, member)
        return InvocationHandle(sink, control)

    @overload
    def observe(self, kind: type[_E]) -> Observable[_E]: ...
    @overload
    def observe(self, kind: EventKind | str = EventKind.ANY) -> Observable[InvocationEvent]: ...
    def observe(self, kind: EventKind | str | type[EventBase] = EventKind.ANY) -> Observable[Any]:
        """The hot Observable of events of ``kind``, to compose with ``pipe(...)``: an
        :class:`EventKind`, its value, or an event class (``observe(TextDelta)``, typed as an
        Observable of that class)."""
        return self.runtime.bus.observe(EventKind.parse(kind))

    def replay(self, run_id: str, after_seq: int | None = None) -> Observable[EventEnvelope]:
        """A cold Observable of the stored envelopes of ``run_id`` after ``after_seq``.

        It completes after the last stored envelope; an unknown run id arrives as
        ``on_error(UnknownRun)``. Subscribe inside the running asyncio loop.
        """
        return self.runtime.log.replay(run_id, after_seq)

    def subscribe_run(
        self, run_id: str, after_seq: int | None = None
    ) -> Observable[EventEnvelope]:
        """Replay what is stored of ``run_id`` after ``after_seq``, then continue live.

        Every seq is delivered once, in order, with no gap, even while the run publishes
        during the replay; it completes after the run's terminal envelope. A run executing in
        another process is followed by polling the store. An unknown run id arrives as
        ``on_error(UnknownRun)``. Subscribe inside the running asyncio loop.
        """
        return self.runtime.log.subscribe_run(run_id, after_seq)

    def stream(self, request: EmitRequest, control: Control | None = None) -> RunStream:
        """One run as a :class:`RunStream`: its events (completing after its terminal event),
        ``run_id``, ``session_id`` and ``result``.

        Subscribing (or awaiting ``result``) starts the run; every subscriber sees its events
        from the first. An invalid request arrives as ``on_error(InvalidRequest)`` (and
        ``result`` raises it). Disposing the last subscription before the end cancels the run;
        ``await stream.result`` then raises ``InvocationCancelled`` once ``run_cancelled`` is
        stored.
        """
        session_id = request.session_id or uuid.uuid4()
        run_request = request.into_run_request(run_id=new_id(), session_id=session_id)
        return RunStream(
            self.runtime,
            run_request.run_id or "",
            session_id,
            request=run_request,
            control=control.copy() if control is not None else Control(),
        )

    def submit(self, request: EmitRequest, control: Control | None = None) -> RunStreamLike:
        """Queue one run for a worker (``remote``) and return its stream: the shape of
        :meth:`stream`'s (events from the first for every subscriber, ``run_id``,
        ``session_id``, ``await result``), fed from the transport.

        Unlike :meth:`stream`, the run is queued at once and goes on whether or not anyone
        watches; as with :meth:`stream`, the stream's last subscription disposed before the
        run ends cancels it (on its worker). Cancel it any time with :meth:`cancel`. A
        ``control`` is enforced on the worker as on a local run: ``cancel()`` cancels it there;
        its timeout and concurrency limit, as they are when submitted, go with the job.

        Raises:
            UserError: this invocation has no ``remote``.
        """
        if self.remote is None:
            raise UserError(
                "submit needs workers: RuntimeInvocation(runtime, remote=RemoteRuns(transport))"
            )
        session_id = request.session_id or uuid.uuid4()
        run_request = request.into_run_request(run_id=new_id(), session_id=session_id)
        stream = self.remote.submit(run_request, control)
        self._submitted.on_next(stream.onlooker())
        return stream

    async def cancel(self, run_id: str) -> bool:
        """Cancel the run ``run_id``: at once if it runs here (as its ``Control.cancel()``),
        else by a request to the workers (``remote``), which cancel it where it runs.

        Returns False if it does not run here and there is no ``remote`` to ask.
        """
        if self.runtime.cancel(run_id):
            return True
        if self.remote is None:
            return False
        await self.remote.cancel(run_id)
        return True

    async def approve(
        self, run_id: str, call_id: str, control: Control | None = None
    ) -> RunOutput | None:
        """Approve a call of a run paused for approval (``finish_reason=awaiting_approval``);
        the last decision continues the run and returns its output (None while other calls
        still wait). See :meth:`AgentRuntime.approve`. A run paused on the workers (``remote``;
        this store does not have it) is decided and continued there
        (:meth:`~rxinvoke.transports.remote.RemoteRuns.decide`)."""
        if await self._theirs(run_id):
            assert self.remote is not None
            return await self.remote.decide(run_id, call_id, True, None, control)
        return await self.runtime.approve(run_id, call_id, control)

    async def deny(
        self, run_id: str, call_id: str, reason: str | None = None, control: Control | None = None
    ) -> RunOutput | None:
        """Deny a paused call: the model is told (with ``reason``); as :meth:`approve`."""
        if await self._theirs(run_id):
            assert self.remote is not None
            return await self.remote.decide(run_id, call_id, False, reason, control)
        return await self.runtime.deny(run_id, call_id, reason, control)

    async def _theirs(self, run_id: str) -> bool:
        """Whether the run is the workers': there are workers, and this store does not have
        it."""
        return self.remote is not None and await self.runtime.store.get_run(run_id) is None

    async def view(self, run_id: str, *, chat: bool = False) -> RunView:
        """The :class:`~rxinvoke.notebook.RunView` of a run (live or finished) from the
        runtime's store: in a notebook, its header, transcript, timeline and events. A run
        this store does not have (one submitted to workers with a store of their own) is
        shown from its stream (``remote``): what the stream holds now.

        Raises:
            UnknownRun: no such run is stored (nor on the workers' transport).
            ResumeGap: only on the transport, and its first events are trimmed from it.
        """
        try:
            return await RunView.load(self.runtime.store, run_id, chat=chat)
        except UnknownRun:
            if self.remote is None:
                raise
        return RunView(await self.remote.events(run_id), chat=chat, run_id=run_id)

    def runs(self) -> Observable[RunStreamLike]:
        """A hot Observable of the :class:`RunStream` of every run the runtime starts (by
        ``emit``, ``stream`` or ``runtime.run``), from its ``run_started``, and of every run
        this invocation submits to workers (``submit``; its events from the first): the
        natural ``group_by`` run, whose groups complete with their run. Disposing a
        subscription to one of them only stops delivery; the run goes on."""
        runtime = self.runtime

        def stream_of(event: InvocationEvent) -> RunStreamLike:
            assert isinstance(event, RunStarted)
            return RunStream(
                runtime, event.run_id, uuid.UUID(event.session_id), started=event
            )

        started = runtime.bus.observe(EventKind.RUN_STARTED).pipe(ops.map(stream_of))
        return reactivex.merge(started, self._submitted)

    async def _build(
        self, build: Build, context: SessionContext, control: Control
    ) -> EmitRequest:
        try:
            built = build(context, control)
            request = await built if inspect.isawaitable(built) else built
        except pydantic.ValidationError as exc:
            raise InvalidRequest(f"invalid emit request: {exc}") from exc
        if not isinstance(request, EmitRequest):
            raise InvalidRequest(
                f"build must return an EmitRequest, got {type(request).__name__}"
            )
        return request
