"""AgentRuntime: the agent loop, publishing every step on the runtime's hot subject.

The runtime composes its parts: the session gate (``_sessions``), the run state and its stop
plumbing (``_run``), the model call with its retries (``_model_call``), tool execution
(``_execute``), the bus (``_bus``), the durable event log (``_eventlog``), and the safety
parts: doom-loop detection (``_doom``, before a batch runs), context compaction
(``_compaction``, before each model call and after a refused context) and approvals
(``_approval``: a batch with a call that waits pauses the run; a continuation answers it).

One run: (wait for the session) → claim the run, load the history and commit the user message
in one store call (``Store.begin_run``) → ``run_started`` → ``context_built`` → per iteration
``model_started``, the provider stream (chat events republished with the run id,
``text_delta``/``tool_call_*`` derived from them), the assistant message committed,
``usage_recorded``, tool calls executed and their messages committed → until the model stops
or ``max_iterations`` → exactly one terminal event.

Cancellation policy: the run executes in its own task. ``Control.cancel()`` and the control's
deadline cancel that task; the run publishes ``run_cancelled`` (or ``run_failed`` "timed out")
and ``run`` raises :class:`~rxinvoke.errors.InvocationCancelled` (or
:class:`~rxinvoke.errors.InvocationTimedOut`). If the caller's own task is cancelled, the run
is cancelled too, publishes ``run_cancelled`` and ``asyncio.CancelledError`` propagates. A run
stopped while it waits for its session (before its claim) publishes and stores nothing.
Failures are published as ``run_failed`` events, never as ``on_error``.

Lifetime: ``await runtime.aclose()`` (or ``async with AgentRuntime(...)``) cancels the runs
still going (each ends with ``run_cancelled``), completes the event stream and closes the store
the runtime made itself; stores and providers passed in belong to the caller.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

from reactivex import Observable, abc
from reactivex.scheduler.eventloop import AsyncIOScheduler

from ._approval import (
    APPROVAL_TIMED_OUT,
    NO_RESULT,
    denied_reply,
    needs_approval,
    pending_of,
    reply_of,
    stored_results,
)
from ._bus import EventBus
from ._claim import claim as claim_run
from ._clock import off_clock, on_clock, virtual_of
from ._compaction import Compactor, is_context_overflow
from ._compat import cancel_requested, uncancel
from ._context import build_context
from ._doom import DoomLoopDetector
from ._eventlog import EventLog
from ._execute import ToolExecutor
from ._futures import shielded, start_eagerly, when_done
from ._model_call import call_model
from ._resume import Resumption, resumption_of
from ._run import Run
from ._sessions import SessionGate
from .control import Control, SessionContext
from .errors import (
    InvalidRequest,
    InvocationCancelled,
    InvocationError,
    InvocationFailed,
    InvocationTimedOut,
    ProviderError,
    SessionBusy,
    StoreError,
    SubscriberError,
    UnknownRun,
    UserError,
)
from .events import (
    ApprovalDecided,
    ApprovalRequested,
    DoomLoopDetected,
    EventKind,
    InvocationEvent,
    RunCancelled,
    RunFailed,
    RunResumed,
    ToolFailure,
    ToolResult,
    assistant_committed,
    context_built,
    model_started,
    run_completed,
    run_started,
    tool_message_committed,
    usage_recorded,
)
from .messages import (
    NO_USAGE,
    FinishReason,
    Message,
    ToolCall,
    chat_request,
    new_id,
    new_message,
)
from .policy import RuntimePolicy
from .providers.base import ChatProvider, ProviderRegistry
from .request import PendingApproval, RunOutput, RunRequest
from .stores._rows import decided
from .stores.base import EventEnvelope, RunOutcome, RunRecord, Store
from .stores.memory import MemoryStore
from .tools import Tool, ToolRegistry

__all__ = ("AgentRuntime",)

_log = logging.getLogger("rxinvoke")


class _NotResumable(Exception):
    """The run to take over is finished, or its owner lives (resume_interrupted: None)."""


_SETTLE_ATTEMPTS = 3
"""Writes of a run's end before the store failure is the run's error."""
_SETTLE_BACKOFF = 0.05


async def _wait_done(task: asyncio.Future[Any]) -> None:
    """Wait until ``task`` is done, whatever cancellations arrive meanwhile."""
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            continue


async def _sleep_absorbing_cancel(delay: float) -> None:
    sleeper = asyncio.ensure_future(asyncio.sleep(delay))
    await _wait_done(sleeper)


class AgentRuntime:
    """Runs agent loops over registered providers and tools; owns the event bus.

    Args:
        providers: chat providers, looked up by ``RunRequest.provider``.
        tools: :class:`~rxinvoke.tools.Tool` objects or plain typed functions.
        policy: limits enforced on every run.
        store: where session history lives (default: a new
            :class:`~rxinvoke.stores.MemoryStore`, closed by :meth:`aclose`).
        scheduler: the clock of run deadlines (``Control.set_timeout``); default the
            ``AsyncIOScheduler`` of the running loop. Pass a
            ``reactivex.testing.TestScheduler`` to drive deadlines in virtual time; the
            events of a run on a virtual-time scheduler are stamped with its time.
        name: a name for this runtime, carried by ``run_started`` and every event's
            ``SessionContext`` (``runtime``), so merged streams say where a run came from.
        default_provider: the provider of requests that name none (default: the only
            registered provider, when there is one).
        default_model: the model of requests that name none (default: the provider's only
            model, when it lists exactly one).
    """

    def __init__(
        self,
        providers: Iterable[ChatProvider] = (),
        tools: Iterable[Tool | Callable[..., Any]] = (),
        policy: RuntimePolicy | None = None,
        store: Store | None = None,
        scheduler: abc.SchedulerBase | None = None,
        name: str | None = None,
        default_provider: str | None = None,
        default_model: str | None = None,
    ) -> None:
        if name is not None and not isinstance(name, str):  # the events carry it unvalidated
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        self.name = name
        """This runtime's name (``run_started.runtime``, ``SessionContext.runtime``)."""
        self.default_provider = default_provider
        self.default_model = default_model
        self.providers = ProviderRegistry(providers)
        self.tools = ToolRegistry(tools)
        self.policy = policy or RuntimePolicy()
        self._owns_store = store is None
        self.store: Store = store if store is not None else MemoryStore()
        self._runs: dict[str, Run] = {}  # the runs of this runtime, until run() returns
        self._stray_context = SessionContext()
        self.bus = EventBus(context_for=self.context_for)
        self.log = EventLog(self.store, self.bus)
        """The durable event log of this runtime's runs (``replay``, ``subscribe_run``)."""
        self._publish = self.bus.publish  # one bound method, not one per run's frame
        self._executor = ToolExecutor(
            self.tools, self.policy, self.bus.publish, clock=lambda: self.scheduler
        )
        self._compactor = Compactor(
            self.policy,
            self.providers,
            self.bus.publish,
            self.log.commit_messages,
            clock=lambda: self.scheduler,
        )
        self._gate = SessionGate()
        self._timers: dict[str, abc.DisposableBase] = {}  # approval deadlines of paused runs
        self.continuations: Callable[[RunRequest], Awaitable[None]] | None = None
        """Where a continuation the runtime starts by itself goes (a paused run whose
        approval timed out): None runs it here; a
        :class:`~rxinvoke.transports.worker.Worker` queues it as a job, so that it runs under
        a lease, cancellable and recovered, as every run of the workers does."""
        self._expiring: set[asyncio.Future[None]] = set()
        self._is_closed = False
        self._scheduler = scheduler
        self._virtual = virtual_of(scheduler)  # its runs' events are stamped on its time
        self._loop_scheduler: tuple[asyncio.AbstractEventLoop, AsyncIOScheduler] | None = None

    @property
    def scheduler(self) -> abc.SchedulerBase:
        """The clock of this runtime: the scheduler passed in, else the ``AsyncIOScheduler``
        of the running loop (call it inside the loop)."""
        if self._scheduler is not None:
            return self._scheduler
        loop = asyncio.get_running_loop()
        if self._loop_scheduler is None or self._loop_scheduler[0] is not loop:
            self._loop_scheduler = (loop, AsyncIOScheduler(loop))
        return self._loop_scheduler[1]

    @property
    def events(self) -> Observable[InvocationEvent]:
        """The hot stream of every event of every run."""
        return self.bus.observe(EventKind.ANY)

    @property
    def errors(self) -> Observable[SubscriberError]:
        """Subscriber failures (raising handlers, overflows); never run failures."""
        return self.bus.errors

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` was called."""
        return self._is_closed

    async def history(self, session_id: uuid.UUID) -> list[Message]:
        """The stored messages of ``session_id`` in commit order (empty for an unknown one)."""
        return await self.store.load_history(session_id)

    async def aclose(self) -> None:
        """Cancel the runs still going, complete the event stream, close an owned store.

        Each cancelled run ends with ``run_cancelled`` (stored) before this returns; a later
        ``run()`` raises :class:`~rxinvoke.errors.UserError`. Idempotent.
        """
        if self._is_closed:
            return
        for timer in self._timers.values():
            timer.dispose()
        self._timers.clear()
        if self._expiring:  # continuations an approval timeout started: let them end
            await asyncio.gather(*self._expiring, return_exceptions=True)
        self._is_closed = True
        runs = list(self._runs.values())
        for run in runs:
            run.stop("cancelled")
        ends = [run.ended.wait() for run in runs]
        if ends:
            await asyncio.gather(*ends)
        self.bus.complete()
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> AgentRuntime:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def cancel(self, run_id: str) -> bool:
        """Cancel the run ``run_id`` if this runtime runs it (as its ``Control.cancel()``
        would); False if it does not (not started here, or already ended)."""
        run = self._runs.get(run_id)
        if run is None:
            return False
        run.control.cancel()
        return True

    # --- approvals ------------------------------------------------------------------------

    async def approve(
        self, run_id: str, call_id: str, control: Control | None = None
    ) -> RunOutput | None:
        """Approve the paused call ``call_id`` of run ``run_id`` (this process's or another's,
        in the same store). When it was the last undecided call, the run is continued here and
        its continuation's output returned (it may pause again); None while other calls of the
        batch still wait.

        Raises:
            InvalidRequest: no such run, the run is not awaiting approval, or the call is not
                one of its pending calls (or was denied).
            InvocationError: as ``run`` does, for the continuation.
        """
        return await self._decide(run_id, call_id, True, None, control)

    async def deny(
        self,
        run_id: str,
        call_id: str,
        reason: str | None = None,
        control: Control | None = None,
    ) -> RunOutput | None:
        """Deny the paused call ``call_id``: the model is told (with ``reason``) instead of the
        call running. Otherwise as :meth:`approve`."""
        return await self._decide(run_id, call_id, False, reason, control)

    async def resume(self, run_id: str, control: Control | None = None) -> RunOutput:
        """Continue the paused run ``run_id`` whose every call is decided (what the last
        ``approve``/``deny`` does; call it yourself after a process died between the two).

        Raises:
            InvalidRequest: no such run, not awaiting approval, or calls still undecided.
        """
        return await self.run(await self.continuation_of(run_id), control)

    async def continuation_of(self, run_id: str, continuation_id: str | None = None) -> RunRequest:
        """The request of the run that continues the paused run ``run_id`` whose every call is
        decided (what :meth:`resume` runs): its request again, as run ``continuation_id`` (a
        new id unless given) with ``resumes=run_id``. A worker runs it for a submitter that
        follows the continuation by the id it chose.

        Raises:
            InvalidRequest: no such run, not awaiting approval, or calls still undecided.
        """
        record = await self.store.get_run(run_id)
        if record is None:
            raise InvalidRequest(f"unknown run {run_id!r}")
        if record.status != "awaiting_approval" or record.output is None:
            raise InvalidRequest(f"run {run_id!r} is {record.status}, not awaiting approval")
        waiting = [p.call_id for p in record.output.pending if not p.is_decided]
        if waiting:
            raise InvalidRequest(f"run {run_id!r} still waits for a decision on {', '.join(waiting)}")
        return record.request.model_copy(
            update={"run_id": continuation_id or new_id(), "resumes": run_id, "client_request_id": None}
        )

    async def decide(
        self, run_id: str, call_id: str, approved: bool, reason: str | None = None
    ) -> bool:
        """Record a decision on the paused call ``call_id`` without continuing the run (what
        :meth:`approve` and :meth:`deny` do first): True when it decided the batch's last
        undecided call — then :meth:`resume` continues the run, here or in another process on
        the same store. A call past its approval timeout is denied instead. Deciding a call
        again the same way changes nothing (it answers whether every call is decided now).

        Raises:
            InvalidRequest: no such run, the run is not awaiting approval, or the call is not
                one of its pending calls (or was decided the other way).
        """
        record = await self.store.get_run(run_id)
        if record is None:
            raise InvalidRequest(f"unknown run {run_id!r}")
        item = next(
            (p for p in (record.output.pending if record.output else ()) if p.call_id == call_id),
            None,
        )
        if item is not None and item.expires_at is not None and not item.is_decided:
            if self.scheduler.now >= item.expires_at:
                _log.warning("run %s: call %s was decided after its approval expired", run_id, call_id)
                approved, reason = False, APPROVAL_TIMED_OUT
        try:
            decided(record, call_id, approved, reason)  # the store's rule, checked up front
        except StoreError as exc:
            raise InvalidRequest(exc.message) from None
        _, ready = await self.store.decide(run_id, call_id, approved=approved, reason=reason)
        return ready

    async def _decide(
        self,
        run_id: str,
        call_id: str,
        approved: bool,
        reason: str | None,
        control: Control | None,
    ) -> RunOutput | None:
        ready = await self.decide(run_id, call_id, approved, reason)
        return await self.resume(run_id, control) if ready else None

    def _arm_approval_timeout(self, output: RunOutput) -> None:
        """Apply the approval timeout to a run this runtime paused, while it lives."""
        expiry = min((p.expires_at for p in output.pending if p.expires_at), default=None)
        if expiry is None:
            return
        run_id = output.run_id
        delay = max((expiry - self.scheduler.now).total_seconds(), 0.0)

        def expire(_scheduler: abc.SchedulerBase, _state: Any = None) -> None:
            self._timers.pop(run_id, None)
            if not self._is_closed:
                task = asyncio.ensure_future(self._expire_approvals(run_id))
                self._expiring.add(task)
                task.add_done_callback(self._expiring.discard)

        self._timers[run_id] = self.scheduler.schedule_relative(delay, expire)

    async def _expire_approvals(self, run_id: str) -> None:
        """Deny the calls still undecided at their deadline; continue the run if that
        decided the batch (its outcome is in its events; a failure here is logged)."""
        try:
            record = await self.store.get_run(run_id)
            if record is None or record.status != "awaiting_approval" or record.output is None:
                return
            ready = False
            for item in record.output.pending:
                if not item.is_decided:
                    _, ready = await self.store.decide(
                        run_id, item.call_id, approved=False, reason=APPROVAL_TIMED_OUT
                    )
            if ready:
                if self.continuations is not None:
                    await self.continuations(await self.continuation_of(run_id))
                else:
                    await self.resume(run_id)
        except (InvocationError, StoreError) as exc:
            _log.warning("run %s: applying the approval timeout failed: %s", run_id, exc)

    def context_for(self, run_id: str | None) -> SessionContext:
        """The session and run of an active run's event (empty context for unknown runs)."""
        if run_id is not None:
            run = self._runs.get(run_id)
            if run is not None:
                return run.context
        stray = self._stray_context  # events published for runs this runtime does not run
        if stray.run_id != run_id:
            stray = self._stray_context = SessionContext.model_construct(
                session_id=None, run_id=run_id
            )
        return stray

    def validate(self, request: RunRequest) -> ChatProvider:
        """The request's provider; InvalidRequest for an unknown provider/model or empty input."""
        return self.resolve(request)[0]

    def resolve(self, request: RunRequest) -> tuple[ChatProvider, RunRequest]:
        """The request's provider and the request with its provider and model filled in from
        the runtime's defaults; InvalidRequest for an unknown or missing provider/model, or
        empty input (before any event is published)."""
        provider_id = request.provider or self.default_provider
        ids = self.providers.ids
        if provider_id is None:
            if len(ids) != 1:
                raise InvalidRequest(
                    f"the request names no provider and {len(ids)} are registered "
                    f"({', '.join(ids) or 'none'}): pass provider=, or "
                    "AgentRuntime(default_provider=...)"
                )
            provider_id = ids[0]
        provider = self.providers.get(provider_id)
        if provider is None:
            known = ", ".join(ids) or "none"
            raise InvalidRequest(f"unknown provider {provider_id!r}; registered: {known}")
        models = tuple(provider.models)
        model = request.model or self.default_model
        if model is None:
            if len(models) != 1:
                raise InvalidRequest(
                    f"the request names no model and provider {provider_id!r} serves "
                    f"{'any model' if not models else ', '.join(models)}: pass model=, or "
                    "AgentRuntime(default_model=...)"
                )
            model = models[0]
        if models and model not in models:
            raise InvalidRequest(
                f"unknown model {model!r} for provider {provider_id!r}; "
                f"available: {', '.join(models)}"
            )
        if not request.input.strip():
            raise InvalidRequest("input must not be empty")
        if request.tool_choice.mode == "tool" and self.tools.get(request.tool_choice.name or "") is None:
            raise InvalidRequest(f"tool_choice names unknown tool {request.tool_choice.name!r}")
        if request.run_id is not None and request.run_id in self._runs:
            raise InvalidRequest(f"run id {request.run_id!r} is already running")
        if (request.provider, request.model) != (provider_id, model):
            request = request.model_copy(update={"provider": provider_id, "model": model})
        return provider, request

    async def run(self, request: RunRequest, control: Control | None = None) -> RunOutput:
        """Run ``request`` to its end and return its output.

        If the task awaiting ``run`` is cancelled, the run is cancelled too: it ends with
        ``run_cancelled`` (stored), then ``asyncio.CancelledError`` propagates, always, even
        when the run was already settling.

        Raises:
            UserError: the runtime is closed.
            InvalidRequest: before any event is published.
            InvocationCancelled: ``control`` was cancelled (before or during the run; a cancel
                that returns before the terminal event is published wins).
            InvocationTimedOut: the control's deadline expired.
            InvocationFailed: the run failed; ``cause`` holds the underlying error. A store
                failure is never raised bare: it is an InvocationFailed whose ``cause`` is the
                StoreError, whether it happened claiming the run (nothing was published), during
                the run (``run_failed``), or recording its end after retries (the terminal event
                was published). A claim the store committed but whose reply was lost (the
                connection dropped at the commit) is found stored, and the run goes on.
        """
        if self._is_closed:
            raise UserError("the runtime is closed (aclose() was called)")
        control = control or Control()
        provider, request = self.resolve(request)
        if control.is_cancelled:
            raise InvocationCancelled("cancelled before the run started", run_id=request.run_id)
        run_id = request.run_id or new_id()
        session_id = request.session_id or uuid.uuid4()
        if (request.run_id, request.session_id) != (run_id, session_id):
            request = request.model_copy(update={"run_id": run_id, "session_id": session_id})
        run = Run(
            request, provider, control, run_id=run_id, session_id=session_id, runtime=self.name
        )
        return await self._execute(run, self._drive(run))

    async def resume_interrupted(
        self,
        run_id: str,
        *,
        salvage: Sequence[EventEnvelope] = (),
        control: Control | None = None,
    ) -> RunOutput | None:
        """Go on with the run ``run_id`` whose process died mid-run, to its one terminal event
        (what ``Worker(on_worker_loss="retry")`` does with a dead worker's run).

        The store, shared with the dead process, takes the run over (``resume_run``): it
        appends ``salvage`` — envelopes of the run seen elsewhere (its run stream) beyond its
        stored log — and makes this process its owner. Then ``run_resumed`` is published
        (numbered after the stored log) and the loop goes on from the session's last committed
        step: a model call cut short is made again, tool calls whose replies were not
        committed run again. The output's usage and iterations include the earlier attempts'.

        Returns None, publishing nothing, when the run cannot be taken over: it is finished
        (a log that ends with its terminal event gets its status settled), or its owner lives.

        Raises:
            UserError: the runtime is closed, or its store cannot resume runs (it is not
                shared between processes: no ``resume_run``).
            UnknownRun: no run ``run_id`` is stored.
            InvalidRequest: the run's request names a provider or model this runtime lacks.
            InvocationError: as :meth:`run` raises.
        """
        if self._is_closed:
            raise UserError("the runtime is closed (aclose() was called)")
        if getattr(self.store, "resume_run", None) is None:
            raise UserError(
                f"{type(self.store).__name__} cannot resume a run of another process "
                "(a store shared between processes has resume_run)"
            )
        record = await self.store.get_run(run_id)
        if record is None:
            raise UnknownRun(run_id)
        if record.is_finished:
            return None
        provider, request = self.resolve(record.request)
        run = Run(
            request,
            provider,
            control or Control(),
            run_id=run_id,
            session_id=record.session_id,
            runtime=self.name,
        )
        try:
            return await self._execute(run, self._drive_resumed(run, tuple(salvage)))
        except _NotResumable:
            return None

    async def _execute(self, run: Run, drive: Coroutine[Any, Any, RunOutput]) -> RunOutput:
        """Run ``drive`` (the run's task) to the run's outcome, as :meth:`run` describes."""
        run_id = run.run_id
        self._runs[run_id] = run
        clock = on_clock(self._virtual)  # the run's task and this side of it
        task = run.start(drive, self.scheduler)
        try:
            output = await self._outcome(run, task)
        except asyncio.CancelledError:
            run.settled(InvocationCancelled(f"run {run_id} was cancelled", run_id=run_id))
            raise
        except BaseException as exc:
            run.settled(exc)
            raise
        else:
            run.settled(output)
            return output
        finally:
            del self._runs[run_id]
            self.log.end(run_id)
            run.close()
            off_clock(clock)

    def outcome_of(self, run_id: str) -> asyncio.Future[RunOutput] | None:
        """A future of the outcome of run ``run_id`` while this runtime runs it: its
        ``RunOutput``, or the ``InvocationError`` its ``run()`` raises (a run whose caller was
        cancelled: ``InvocationCancelled``). None for a run this runtime does not run."""
        run = self._runs.get(run_id)
        return run.outcome if run is not None else None

    async def _outcome(self, run: Run, task: asyncio.Task[RunOutput]) -> RunOutput:
        run_id, control = run.run_id, run.control
        try:
            if not task.done():  # shielded(task), inline: the caller's cancellation stays here
                await when_done(task)
            return task.result()
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if not task.done() or (caller is not None and cancel_requested(caller)):
                # The caller was cancelled: so is the run; it settles (run_cancelled is
                # stored), then the caller's cancellation propagates, whatever the outcome.
                run.stop("cancelled")
                await _wait_done(task)
                raise
            if run.reason == "timeout":
                raise InvocationTimedOut(
                    f"run {run_id} timed out after {control.timeout:g}s", run_id=run_id
                ) from None
            if run.reason == "cancelled":
                raise InvocationCancelled(f"run {run_id} was cancelled", run_id=run_id) from None
            raise
        except StoreError as exc:  # before the run began (its claim) or while rejoining one
            raise InvocationFailed(
                f"run {run_id}: the store failed: {exc.message}", run_id=run_id, cause=exc
            ) from exc

    # --- the loop ------------------------------------------------------------------------

    async def _drive(self, run: Run) -> RunOutput:
        run.started = True
        if run.reason is not None:  # stopped before its task began: nothing published or stored
            raise asyncio.CancelledError
        request = run.request
        record = RunRecord.begun(run.run_id, run.session_id, request)
        preamble = (
            (new_message("system", request.system_prompt, run.run_id),)
            if request.system_prompt and request.resumes is None
            else ()
        )
        # a continuation answers the paused calls instead of adding a user message
        opening = (
            [new_message("user", request.input, run.run_id)]
            if request.resumes is None
            else []
        )
        # Wait for the session first: a run stopped while it waits has published and stored
        # nothing (run() raises InvocationCancelled / InvocationTimedOut). Then one store call
        # claims the run (the idempotency check), reads the history and commits the opening;
        # a claim that is cancelled still completes, so a stored run always gets its terminal
        # event (_begun). The gate is held until the run is settled: its last messages are
        # written with its terminal status (EventLog.defer_messages), before the next run of
        # the session reads the history.
        # A store shared between processes refuses the claim while another process runs the
        # session (SessionBusy, nothing written): wait for it (cancellable) and claim again.
        # A claim committed whose reply was lost (the connection dropped at the commit) is
        # found stored and goes on (_claim).
        async with self._gate.hold(run.session_id):
            while True:
                claim = start_eagerly(claim_run(self.store, record, opening, preamble))
                interrupted = False
                try:
                    stored, history = await shielded(claim)
                except SessionBusy:
                    await self._wait_session(run.session_id)
                    continue
                except asyncio.CancelledError:
                    try:
                        (stored, history), interrupted = await claim, True
                    except SessionBusy:
                        raise asyncio.CancelledError from None
                break
            if stored.run_id == run.run_id:
                return await self._begun(run, history, interrupted=interrupted)
        # an earlier emit with the same client_request_id: its outcome, outside the gate
        if interrupted:
            raise asyncio.CancelledError
        return await self._rejoin(stored)

    async def _drive_resumed(self, run: Run, salvage: tuple[EventEnvelope, ...]) -> RunOutput:
        run.started = True
        if run.reason is not None:  # stopped before its task began: nothing written
            raise asyncio.CancelledError
        store = self.store

        async def take_over() -> tuple[list[Message], Resumption] | None:
            taken = await store.resume_run(run.run_id, salvage)  # type: ignore[attr-defined]
            if taken is None:
                return None
            _record, history, _last_seq = taken
            stored = await store.read_events(run.run_id)
            return history, resumption_of(run.run_id, run.request.resumes, history, stored)

        # as a claim: under the session's gate; a take-over that is cancelled still completes,
        # so that the run it took gets its terminal event
        async with self._gate.hold(run.session_id):
            claim = start_eagerly(take_over())
            interrupted = False
            try:
                taken = await shielded(claim)
            except asyncio.CancelledError:
                taken, interrupted = await claim, True
            if taken is None:
                if interrupted:
                    raise asyncio.CancelledError
                raise _NotResumable
            history, resumption = taken
            return await self._begun(run, history, interrupted=interrupted, resumption=resumption)

    async def _wait_session(self, session_id: uuid.UUID) -> None:
        wait = getattr(self.store, "wait_session", None)
        if wait is not None:
            await wait(session_id)
        else:
            await asyncio.sleep(0.1)

    async def _begun(
        self,
        run: Run,
        history: list[Message],
        *,
        interrupted: bool,
        resumption: Resumption | None = None,
    ) -> RunOutput:
        """The claimed run, from ``run_started`` (``run_resumed``: a run taken over) to its
        settled terminal event."""
        publish = self._publish
        run_id = run.run_id
        after_seq = resumption.after_seq if resumption is not None else 0
        self.log.begin(run_id, run.session_id, last_seq=after_seq)
        if after_seq == 0:  # a new run, or a run taken over that died before writing an event
            publish(
                run_started(
                    run_id,
                    str(run.session_id),
                    run.request.provider or "",
                    run.request.model or "",
                    self.name,
                    run.request.resumes,
                )
            )
        if resumption is not None:
            publish(
                RunResumed(
                    run_id=run_id,
                    session_id=str(run.session_id),
                    after_seq=after_seq,
                    attempt=resumption.attempt,
                    runtime=self.name,
                )
            )
        try:
            if interrupted or run.reason is not None:
                raise asyncio.CancelledError  # stopped before the run began
            output = await self._loop(run, history, resumption)
            if run.reason is not None:
                # a stop requested with no await point left (e.g. by a subscriber of the run's
                # last events) still wins: the terminal event is not published yet
                raise asyncio.CancelledError
        except asyncio.CancelledError:
            if run.reason == "timeout":
                error = f"timed out after {run.control.timeout:g}s"
                publish(RunFailed(run_id=run_id, error=error))
                await self._settle(run_id, RunOutcome.failed(error))
            else:
                publish(RunCancelled(run_id=run_id))
                await self._settle(run_id, RunOutcome.cancelled())
            raise
        except InvocationError as exc:
            publish(RunFailed(run_id=run_id, error=exc.message))
            await self._settle(run_id, RunOutcome.failed(exc.message))
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, ProviderError):
                message = f"{type(exc).__name__}: {message}"
            publish(RunFailed(run_id=run_id, error=message))
            await self._settle(run_id, RunOutcome.failed(message))
            raise InvocationFailed(message, run_id=run_id, cause=exc) from exc
        publish(run_completed(run_id, output.finish_reason, output.iterations))
        if output.pending:
            await self._settle(run_id, RunOutcome.paused(output))
            self._arm_approval_timeout(output)
        else:
            await self._settle(run_id, RunOutcome.completed(output))
        return output

    async def _settle(self, run_id: str, outcome: RunOutcome) -> None:
        # The terminal event and status are stored before run() returns. The terminal event
        # is published already, so the outcome is decided: a cancel arriving now is absorbed
        # (like one arriving after the run returned) while the write completes. A failed write
        # keeps its envelopes queued (EventLog) and is retried; a store that keeps failing
        # ends the run with InvocationFailed naming the StoreError.
        attempt = 0
        while True:
            write = self.log.finishing(run_id, outcome)
            while not write.done():
                try:
                    await shielded(write)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None:
                        uncancel(task)
                except Exception:
                    pass  # the write's own error: read below
            error = write.exception()
            if error is None:
                return
            attempt += 1
            if not isinstance(error, StoreError) or attempt >= _SETTLE_ATTEMPTS:
                raise InvocationFailed(
                    f"run {run_id} ended ({outcome.status}) but the store could not record "
                    f"it: {error}",
                    run_id=run_id,
                    cause=error,
                ) from error
            _log.warning("run %s: recording its end failed (%s); retry %d", run_id, error, attempt)
            await _sleep_absorbing_cancel(_SETTLE_BACKOFF * attempt)

    async def _rejoin(self, record: RunRecord) -> RunOutput:
        """The outcome of the stored run ``record`` (an earlier emit with the same
        ``client_request_id``), waiting for it to end if it is still running.

        A run of this runtime is awaited through its end event; a run of another process is
        polled in the store (recovering it if that process died).
        """
        delay = 0.02
        while not record.is_finished:
            running = self._runs.get(record.run_id)
            if running is not None:
                await running.ended.wait()
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                await self.store.recover_interrupted()
            latest = await self.store.get_run(record.run_id)
            if latest is None:
                raise StoreError(f"run {record.run_id!r} disappeared from the store")
            record = latest
        key = record.client_request_id
        if record.status in ("completed", "awaiting_approval") and record.output is not None:
            return record.output
        if record.status == "cancelled":
            raise InvocationCancelled(
                f"run {record.run_id} (client_request_id {key!r}) was cancelled",
                run_id=record.run_id,
            )
        raise InvocationFailed(
            f"run {record.run_id} (client_request_id {key!r}) failed: {record.error}",
            run_id=record.run_id,
        )

    def _awaiting_approval(self, calls: Sequence[ToolCall]) -> list[ToolCall]:
        # a method, not a comprehension in _loop: before Python 3.12 that makes two closure
        # cells in every run's _loop frame
        tools, rule = self.tools, self.policy.approval
        return [call for call in calls if needs_approval(tools, rule, call)]

    async def _loop(
        self, run: Run, history: list[Message], resumption: Resumption | None = None
    ) -> RunOutput:
        publish = self._publish
        policy = self.policy
        request, run_id = run.request, run.run_id
        # the stored history, ending with this run's opening (committed by begin_run; a run
        # taken over: its last committed step); the events published so far are written with
        # the run's next write
        if resumption is not None and resumption.dangling:
            calls = resumption.dangling
            waiting = self._awaiting_approval(calls)
            if waiting:  # the dead attempt had not paused for them yet: the run pauses now
                return RunOutput(
                    run_id=run_id,
                    session_id=run.session_id,
                    iterations=resumption.iterations,
                    finish_reason=FinishReason.AWAITING_APPROVAL,
                    total_usage=resumption.usage,
                    output_text="",
                    pending=await self._pause(run, calls, waiting),
                )
            await self._run_tools(run, calls, history)
        elif request.resumes is not None and (resumption is None or resumption.paused_unanswered):
            history = await self._answer_paused(run, history)
        messages = build_context(history)
        publish(context_built(run_id, len(messages)))

        specs = self.tools.specs()
        provider_id, model = request.provider, request.model
        if provider_id is None or model is None:  # pragma: no cover - resolve() sets both
            raise RuntimeError(f"run {run_id}: its request names no provider or model")
        total = resumption.usage if resumption is not None else NO_USAGE
        doom = DoomLoopDetector(policy.doom_loop)
        pending: tuple[PendingApproval, ...] = ()
        text = ""
        finish = FinishReason.MAX_ITERATIONS
        iteration = done = resumption.iterations if resumption is not None else 0
        for iteration in range(done + 1, policy.max_iterations + 1):
            context, spent = await self._compactor.prepare(run, messages, specs)
            if spent is not None:
                total = total + spent
            publish(model_started(run_id, provider_id, model, iteration))
            rescued = False
            while True:
                chat = chat_request(provider_id, model, tuple(context), specs, request.tool_choice, run_id)
                try:
                    accumulated = await call_model(
                        run.provider, chat, run_id=run_id, policy=policy, publish=publish,
                        scheduler=self.scheduler,
                    )
                except ProviderError as exc:
                    # the context is too long for the model: compact once and call again
                    if rescued or not is_context_overflow(exc):
                        raise
                    rescued = True
                    compacted, spent = await self._compactor.rescue(run, messages, specs)
                    if spent is not None:
                        total = total + spent
                    if not compacted:
                        raise
                    context = self._compactor.view(messages)
                    continue
                break
            assistant = accumulated.message(run_id)
            if assistant.tool_calls:
                await self.log.commit_messages(run.session_id, [assistant])
            else:
                # the final answer: this last step is written with the terminal event and
                # status (EventLog.finish, under the session gate): one transaction fewer
                self.log.defer_messages(run_id, [assistant])
            messages.append(assistant)
            publish(assistant_committed(run_id, assistant.id))
            usage = accumulated.usage or NO_USAGE
            total = total + usage
            publish(usage_recorded(run_id, usage))
            text = assistant.content

            calls = assistant.tool_calls
            if not calls:
                finish = accumulated.finish_reason or FinishReason.STOP
                break
            trip = doom.check(calls)
            if trip is None:
                waiting = self._awaiting_approval(calls)
                if waiting:
                    pending = await self._pause(run, calls, waiting)
                    finish = FinishReason.AWAITING_APPROVAL
                    break
                await self._run_tools(run, calls, messages)
                continue
            action = policy.doom_loop.action
            publish(
                DoomLoopDetected(
                    run_id=run_id,
                    description=trip.description,
                    pattern=trip.pattern,
                    count=trip.count,
                    action=action,
                )
            )
            if action == "warn":
                await self._run_tools(run, calls, messages, warn=(trip.at, trip.warning))
                continue
            # none of the batch runs; its calls are answered (with the terminal event) so the
            # session's history stays a valid chat context
            refused = f"Error: not run: {trip.description} (doom loop); the run was stopped"
            replies = self._answer(run, calls, [refused] * len(calls))
            self.log.defer_messages(run_id, replies)
            self._committed(run, replies, messages)
            finish = FinishReason.DOOM_LOOP
            break
        return RunOutput.checked(run_id, run.session_id, iteration, finish, total, text, pending)

    async def _pause(
        self, run: Run, calls: tuple[ToolCall, ...], waiting: list[ToolCall]
    ) -> tuple[PendingApproval, ...]:
        """The batch ``calls`` waits for approval of ``waiting``: the other calls run now
        (their results stay in the event log until the continuation answers the batch), then
        ``approval_requested`` for each waiting call."""
        others = [c for c in calls if c not in waiting]
        if others:
            results = await self._executor.execute(others, run_id=run.run_id, limit=self._limit(run))
            self._fail_on_tool_failure(run, others, results)
        pending = pending_of(waiting, self.policy.approval, self.scheduler.now)
        for item in pending:
            self.bus.publish(
                ApprovalRequested(
                    run_id=run.run_id,
                    call_id=item.call_id,
                    tool_name=item.tool_name,
                    arguments=item.arguments,
                    expires_at=item.expires_at,
                )
            )
        return pending

    async def _answer_paused(self, run: Run, history: list[Message]) -> list[Message]:
        """The continuation's first step: the paused batch answered in call order (approved
        calls executed now, denied ones told so, the others' earlier results), committed."""
        paused_id = run.request.resumes or ""
        record = await self.store.get_run(paused_id)
        if record is None or record.output is None or not record.output.pending:
            raise InvocationFailed(f"run {paused_id!r} has no paused calls to answer", run_id=run.run_id)
        pending = {p.call_id: p for p in record.output.pending}
        batch = next(
            (
                m
                for m in reversed(history)
                if m.role == "assistant" and any(c.id in pending for c in m.tool_calls)
            ),
            None,
        )
        if batch is None:
            raise InvocationFailed(
                f"the paused calls of run {paused_id!r} are not in the session's history",
                run_id=run.run_id,
            )
        calls = batch.tool_calls
        for call in calls:
            item = pending.get(call.id)
            if item is not None:
                self.bus.publish(
                    ApprovalDecided(
                        run_id=run.run_id,
                        call_id=call.id,
                        tool_name=call.name,
                        approved=bool(item.approved),
                        reason=item.reason,
                    )
                )
        approved = [c for c in calls if c.id in pending and pending[c.id].approved]
        ran: dict[str, str] = stored_results(await self.store.read_events(paused_id))
        if approved:
            results = await self._executor.execute(approved, run_id=run.run_id, limit=self._limit(run))
            ran.update((c.id, reply_of(r)) for c, r in zip(approved, results, strict=True))
        contents = [
            denied_reply(pending[c.id])
            if c.id in pending and not pending[c.id].approved
            else ran.get(c.id, NO_RESULT)
            for c in calls
        ]
        replies = self._answer(run, calls, contents)
        await self.log.commit_messages(run.session_id, replies)
        answered = list(history)
        self._committed(run, replies, answered)
        expired = [p.tool_name for p in pending.values() if p.reason == APPROVAL_TIMED_OUT]
        if expired and self.policy.approval.on_timeout == "fail":
            raise InvocationFailed(
                f"the approval of {', '.join(expired)} timed out (on_timeout='fail')",
                run_id=run.run_id,
            )
        return answered

    def _limit(self, run: Run) -> int:
        limit = self.policy.max_tool_concurrency
        if run.control.concurrency_limit is not None:
            limit = min(limit, run.control.concurrency_limit)
        return limit

    def _fail_on_tool_failure(
        self, run: Run, calls: Sequence[ToolCall], results: Sequence[ToolResult]
    ) -> None:
        if not self.policy.continue_on_tool_failure:
            for call, result in zip(calls, results, strict=True):
                if isinstance(result, ToolFailure):
                    raise InvocationFailed(
                        f"tool {call.name!r} failed: {result.error}", run_id=run.run_id
                    )

    async def _run_tools(
        self,
        run: Run,
        calls: tuple[ToolCall, ...],
        messages: list[Message],
        warn: tuple[int, str] | None = None,
    ) -> None:
        """Execute ``calls`` and commit their replies (``warn``: a note appended to the reply
        of the call at that index)."""
        run_id = run.run_id
        results = await self._executor.execute(calls, run_id=run_id, limit=self._limit(run))
        contents = [reply_of(result) for result in results]
        if warn is not None:
            at, note = warn
            contents[at] = f"{contents[at]}\n\n{note}"
        replies = self._answer(run, calls, contents)
        await self.log.commit_messages(run.session_id, replies)
        self._committed(run, replies, messages)
        self._fail_on_tool_failure(run, calls, results)

    def _answer(
        self, run: Run, calls: tuple[ToolCall, ...], contents: list[str]
    ) -> list[Message]:
        """The tool messages answering ``calls``, in call order."""
        return [
            new_message("tool", content, run.run_id, tool_call_id=call.id)
            for call, content in zip(calls, contents, strict=True)
        ]

    def _committed(self, run: Run, replies: list[Message], messages: list[Message]) -> None:
        """``replies`` are written (or deferred to the terminal write): into the context, and
        announced."""
        messages.extend(replies)
        for reply in replies:
            self.bus.publish(tool_message_committed(run.run_id, reply.id, reply.tool_call_id or ""))
