"""AgentRuntime: the agent loop, publishing every step on the runtime's hot subject.

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
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Literal

from reactivex import Observable

from ._compat import uncancel, wait_with_timeout
from ._context import answer_dangling_calls
from ._retry import is_retryable
from .accumulate import Accumulator
from .bus import EventBus
from .control import Control, SessionContext
from .errors import (
    InvalidRequest,
    InvocationCancelled,
    InvocationError,
    InvocationFailed,
    InvocationTimedOut,
    ProviderError,
    StoreError,
    SubscriberError,
)
from .eventlog import EventLog
from .events import (
    AssistantMessageCommitted,
    ContextBuilt,
    DoomLoopDetected,
    EventKind,
    InvocationEvent,
    ModelStarted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    ToolCallCompleted,
    ToolFailure,
    ToolMessageCommitted,
    UsageRecorded,
)
from .execute import ToolExecutor
from .messages import ChatRequest, FinishReason, Message, TokenUsage, ToolCall, new_id
from .policy import RuntimePolicy
from .provider import ChatProvider, ProviderRegistry
from .request import RunOutput, RunRequest
from .store import MemoryStore, RunRecord, RunStatus, Store
from .tools import Tool, ToolRegistry

__all__ = ("AgentRuntime",)

_Reason = Literal["cancelled", "timeout"]


class _RunState:
    __slots__ = ("reason", "started")

    def __init__(self) -> None:
        self.reason: _Reason | None = None
        self.started = False  # _drive began: cancelling the task now lands inside it


class _SessionGate:
    """One active run per session; later runs wait their turn, in arrival order."""

    def __init__(self) -> None:
        self._locks: dict[uuid.UUID, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, session_id: uuid.UUID) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(session_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[session_id]


class AgentRuntime:
    """Runs agent loops over registered providers and tools; owns the event bus.

    Args:
        providers: chat providers, looked up by ``RunRequest.provider``.
        tools: :class:`~rxinvoke.tools.Tool` objects or plain typed functions.
        policy: limits enforced on every run.
        store: where session history lives (default: a new :class:`MemoryStore`).
    """

    def __init__(
        self,
        providers: Iterable[ChatProvider] = (),
        tools: Iterable[Tool | Callable[..., Any]] = (),
        policy: RuntimePolicy | None = None,
        store: Store | None = None,
    ) -> None:
        self.providers = ProviderRegistry(providers)
        self.tools = ToolRegistry(tools)
        self.policy = policy or RuntimePolicy()
        self.store: Store = store if store is not None else MemoryStore()
        self._contexts: dict[str, SessionContext] = {}
        self._stray_context = SessionContext()
        self.bus = EventBus(context_for=self.context_for)
        self.log = EventLog(self.store, self.bus)
        """The durable event log of this runtime's runs (``replay``, ``subscribe_run``)."""
        self._ends: dict[str, asyncio.Event] = {}  # run id -> set when run() returns
        self._executor = ToolExecutor(self.tools, self.policy, self.bus.publish)
        self._gate = _SessionGate()

    @property
    def events(self) -> Observable[InvocationEvent]:
        """The hot stream of every event of every run."""
        return self.bus.observe(EventKind.ANY)

    @property
    def errors(self) -> Observable[SubscriberError]:
        """Subscriber failures (raising handlers, overflows); never run failures."""
        return self.bus.errors

    def context_for(self, run_id: str | None) -> SessionContext:
        """The session and run of an active run's event (empty context for unknown runs)."""
        if run_id is not None:
            context = self._contexts.get(run_id)
            if context is not None:
                return context
        stray = self._stray_context  # events published for runs this runtime does not run
        if stray.run_id != run_id:
            stray = self._stray_context = SessionContext.model_construct(
                session_id=None, run_id=run_id
            )
        return stray

    def validate(self, request: RunRequest) -> ChatProvider:
        """The request's provider; InvalidRequest for an unknown provider/model or empty input."""
        provider = self.providers.get(request.provider)
        if provider is None:
            known = ", ".join(self.providers.ids) or "none"
            raise InvalidRequest(f"unknown provider {request.provider!r}; registered: {known}")
        models = tuple(provider.models)
        if models and request.model not in models:
            raise InvalidRequest(
                f"unknown model {request.model!r} for provider {request.provider!r}; "
                f"available: {', '.join(models)}"
            )
        if not request.input.strip():
            raise InvalidRequest("input must not be empty")
        if request.tool_choice.mode == "tool" and self.tools.get(request.tool_choice.name or "") is None:
            raise InvalidRequest(f"tool_choice names unknown tool {request.tool_choice.name!r}")
        if request.run_id is not None and request.run_id in self._contexts:
            raise InvalidRequest(f"run id {request.run_id!r} is already running")
        return provider

    async def run(self, request: RunRequest, control: Control | None = None) -> RunOutput:
        """Run ``request`` to its end and return its output.

        Raises:
            InvalidRequest: before any event is published.
            InvocationCancelled: ``control`` was cancelled (before or during the run).
            InvocationTimedOut: the control's deadline expired.
            InvocationFailed: the run failed; ``cause`` holds the underlying error.
        """
        control = control or Control()
        provider = self.validate(request)
        if control.is_cancelled:
            raise InvocationCancelled("cancelled before the run started", run_id=request.run_id)
        run_id = request.run_id or new_id()
        session_id = request.session_id or uuid.uuid4()
        self._contexts[run_id] = SessionContext(session_id=session_id, run_id=run_id)
        loop = asyncio.get_running_loop()
        state = _RunState()
        self._ends[run_id] = asyncio.Event()
        task = loop.create_task(self._drive(request, provider, run_id, session_id, control, state))
        loop_thread = threading.get_ident()

        def stop(reason: _Reason) -> None:
            if state.reason is None and not task.done():
                state.reason = reason
                if not state.started:
                    return  # a task cancelled before it starts never runs: _drive checks reason
                if threading.get_ident() != loop_thread:
                    loop.call_soon_threadsafe(task.cancel)
                elif asyncio.current_task(loop) is task:
                    # From inside the run (an observer): land at its next await; a run that
                    # completes first returns its output, consistent with its run_completed.
                    loop.call_soon(task.cancel)
                else:
                    task.cancel()

        listener = control.add_cancel_listener(lambda: stop("cancelled"))
        timer = (
            loop.call_later(control.timeout, stop, "timeout") if control.timeout is not None else None
        )
        try:
            return await task
        except asyncio.CancelledError:
            if state.reason == "timeout":
                raise InvocationTimedOut(
                    f"run {run_id} timed out after {control.timeout:g}s", run_id=run_id
                ) from None
            if state.reason == "cancelled":
                raise InvocationCancelled(f"run {run_id} was cancelled", run_id=run_id) from None
            raise
        finally:
            listener.dispose()
            if timer is not None:
                timer.cancel()
            del self._contexts[run_id]
            self.log.end(run_id)
            self._ends.pop(run_id).set()

    # --- the loop ------------------------------------------------------------------------

    async def _drive(
        self,
        request: RunRequest,
        provider: ChatProvider,
        run_id: str,
        session_id: uuid.UUID,
        control: Control,
        state: _RunState,
    ) -> RunOutput:
        state.started = True
        record = RunRecord(
            run_id=run_id,
            session_id=session_id,
            request=request.model_copy(update={"run_id": run_id, "session_id": session_id}),
            client_request_id=request.client_request_id,
        )
        preamble = (
            [Message(role="system", content=request.system_prompt, run_id=run_id)]
            if request.system_prompt
            else []
        )
        opening = [Message(role="user", content=request.input, run_id=run_id)]
        # Wait for the session first: a run stopped while it waits has published and stored
        # nothing (run() raises InvocationCancelled / InvocationTimedOut). Then one store call
        # claims the run (the idempotency check), reads the history and commits the opening;
        # a claim that is cancelled still completes, so a stored run always gets its terminal
        # event (_begun). The gate is held until the run is settled: its last messages are
        # written with its terminal status (EventLog.defer_messages), before the next run of
        # the session reads the history.
        async with self._gate.hold(session_id):
            claim = asyncio.ensure_future(
                self.store.begin_run(record, opening, preamble=preamble)
            )
            interrupted = False
            try:
                stored, history = await asyncio.shield(claim)
            except asyncio.CancelledError:
                (stored, history), interrupted = await claim, True
            if stored.run_id == run_id:
                return await self._begun(
                    request, provider, run_id, session_id, control, state, history, interrupted
                )
        # an earlier emit with the same client_request_id: its outcome, outside the gate
        if interrupted:
            raise asyncio.CancelledError
        return await self._rejoin(stored)

    async def _begun(
        self,
        request: RunRequest,
        provider: ChatProvider,
        run_id: str,
        session_id: uuid.UUID,
        control: Control,
        state: _RunState,
        history: list[Message],
        interrupted: bool,
    ) -> RunOutput:
        """The claimed run, from ``run_started`` to its settled terminal event."""
        publish = self.bus.publish
        self.log.begin(run_id, session_id)
        publish(
            RunStarted(
                run_id=run_id,
                session_id=str(session_id),
                provider=request.provider,
                model=request.model,
            )
        )
        try:
            if interrupted or state.reason is not None:
                raise asyncio.CancelledError  # stopped before the run began
            output = await self._loop(request, provider, run_id, session_id, control, history)
        except asyncio.CancelledError:
            if state.reason == "timeout":
                error = f"timed out after {control.timeout:g}s"
                publish(RunFailed(run_id=run_id, error=error))
                await self._settle(run_id, "failed", error=error)
            else:
                publish(RunCancelled(run_id=run_id))
                await self._settle(run_id, "cancelled", error="cancelled")
            raise
        except InvocationError as exc:
            publish(RunFailed(run_id=run_id, error=exc.message))
            await self._settle(run_id, "failed", error=exc.message)
            raise
        except Exception as exc:
            message = str(exc) or type(exc).__name__
            if not isinstance(exc, ProviderError):
                message = f"{type(exc).__name__}: {message}"
            publish(RunFailed(run_id=run_id, error=message))
            await self._settle(run_id, "failed", error=message)
            raise InvocationFailed(message, run_id=run_id, cause=exc) from exc
        publish(
            RunCompleted(
                run_id=run_id, finish_reason=output.finish_reason, iterations=output.iterations
            )
        )
        await self._settle(run_id, "completed", output=output)
        return output

    async def _settle(
        self,
        run_id: str,
        status: RunStatus,
        *,
        output: RunOutput | None = None,
        error: str | None = None,
    ) -> None:
        # The terminal event and status are stored before run() returns. The terminal event
        # is published already, so the outcome is decided: a cancel arriving now is absorbed
        # (like one arriving after the run returned) while the write completes.
        write = asyncio.ensure_future(self.log.finish(run_id, status, output=output, error=error))
        while not write.done():
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    uncancel(task)
        write.result()

    async def _rejoin(self, record: RunRecord) -> RunOutput:
        """The outcome of the stored run ``record`` (an earlier emit with the same
        ``client_request_id``), waiting for it to end if it is still running.

        A run of this runtime is awaited through its end event; a run of another process is
        polled in the store (recovering it if that process died).
        """
        delay = 0.02
        while not record.is_finished:
            ended = self._ends.get(record.run_id)
            if ended is not None and not ended.is_set():
                await ended.wait()
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                await self.store.recover_interrupted()
            latest = await self.store.get_run(record.run_id)
            if latest is None:
                raise StoreError(f"run {record.run_id!r} disappeared from the store")
            record = latest
        key = record.client_request_id
        if record.status == "completed" and record.output is not None:
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

    async def _loop(
        self,
        request: RunRequest,
        provider: ChatProvider,
        run_id: str,
        session_id: uuid.UUID,
        control: Control,
        history: list[Message],
    ) -> RunOutput:
        publish = self.bus.publish
        policy = self.policy
        # the stored history, ending with this run's opening (committed by begin_run); the
        # events published so far are written with the run's next write
        messages = answer_dangling_calls(history)
        publish(ContextBuilt(run_id=run_id, message_count=len(messages)))

        specs = self.tools.specs()
        total = TokenUsage()
        signatures: list[tuple[tuple[str, str], ...]] = []
        text = ""
        finish = FinishReason.MAX_ITERATIONS
        iteration = 0
        for iteration in range(1, policy.max_iterations + 1):
            publish(
                ModelStarted(
                    run_id=run_id, provider=request.provider, model=request.model, iteration=iteration
                )
            )
            chat = ChatRequest(
                provider=request.provider,
                model=request.model,
                messages=tuple(messages),
                tools=specs,
                tool_choice=request.tool_choice,
                run_id=run_id,
            )
            accumulated = await self._call_model(provider, chat, run_id)
            assistant = accumulated.message(run_id)
            if assistant.tool_calls:
                await self.log.commit_messages(session_id, [assistant])
            else:
                # the final answer: this last step is written with the terminal event and
                # status (EventLog.finish, under the session gate): one transaction fewer
                self.log.defer_messages(run_id, session_id, [assistant])
            messages.append(assistant)
            publish(AssistantMessageCommitted(run_id=run_id, message_id=assistant.id))
            usage = accumulated.usage or TokenUsage()
            total = total + usage
            publish(UsageRecorded(run_id=run_id, usage=usage))
            text = assistant.content

            calls = assistant.tool_calls
            if not calls:
                finish = accumulated.finish_reason or FinishReason.STOP
                break
            await self._run_tools(calls, run_id, session_id, control, messages)
            signatures.append(tuple((c.name, c.arguments) for c in calls))
            repeats = policy.doom_loop_threshold
            if len(signatures) >= repeats and len(set(signatures[-repeats:])) == 1:
                names = ", ".join(c.name for c in calls)
                publish(
                    DoomLoopDetected(
                        run_id=run_id,
                        description=(
                            f"the same tool call(s) ({names}) with the same arguments were "
                            f"requested {repeats} times in a row"
                        ),
                    )
                )
                finish = FinishReason.DOOM_LOOP
                break
        return RunOutput(
            run_id=run_id,
            session_id=session_id,
            iterations=iteration,
            finish_reason=finish,
            total_usage=total,
            output_text=text,
        )

    async def _call_model(self, provider: ChatProvider, chat: ChatRequest, run_id: str) -> Accumulator:
        # Retries live here, for every provider: a retryable error (HTTP 408/429/5xx, a
        # connection failure) raised before the attempt yielded any event is retried with
        # backoff (the policy's retry_delay: Retry-After, else full jitter); an attempt that
        # already published events is never repeated (its deltas would be published twice).
        policy = self.policy
        timeout = policy.provider_timeout
        attempt = 0
        while True:
            accumulator = Accumulator(chat.provider, chat.model)
            try:
                if timeout is None:
                    await self._stream(provider, chat, run_id, accumulator)
                else:
                    # not asyncio.wait_for: on 3.11 it swallows a cancel that races completion
                    await wait_with_timeout(
                        self._stream(provider, chat, run_id, accumulator), timeout
                    )
            except asyncio.TimeoutError as exc:
                raise ProviderError(
                    chat.provider, chat.model, f"no complete response within {timeout:g}s"
                ) from exc
            except ProviderError as exc:
                if accumulator.has_events or attempt >= policy.max_retries or not is_retryable(exc):
                    raise
                delay = policy.retry_delay(attempt, getattr(exc, "retry_after", None))
                attempt += 1
                logging.getLogger("rxinvoke").info(
                    "run %s: %s; retry %d of %d in %.2fs",
                    run_id, exc, attempt, policy.max_retries, delay,
                )
                await asyncio.sleep(delay)
                continue
            return accumulator

    async def _stream(
        self, provider: ChatProvider, chat: ChatRequest, run_id: str, accumulator: Accumulator
    ) -> None:
        publish = self.bus.publish
        stream = provider.stream(chat)
        try:
            async for raw in stream:
                event = raw.model_copy(update={"run_id": run_id})
                accumulator.add(event)
                publish(event)
                derived = event.as_agent()
                if derived is not None:
                    publish(derived)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if accumulator.finish_reason is None:
            return  # a broken stream: announce no call as complete (message() raises)
        for call in accumulator.pending_calls():
            publish(ToolCallCompleted(run_id=run_id, call=call))

    async def _run_tools(
        self,
        calls: tuple[ToolCall, ...],
        run_id: str,
        session_id: uuid.UUID,
        control: Control,
        messages: list[Message],
    ) -> None:
        limit = self.policy.max_tool_concurrency
        if control.concurrency_limit is not None:
            limit = min(limit, control.concurrency_limit)
        results = await self._executor.execute(calls, run_id=run_id, limit=limit)
        replies = [
            Message(
                role="tool",
                content=(
                    f"Error: {result.error}" if isinstance(result, ToolFailure) else result.output
                ),
                tool_call_id=call.id,
                run_id=run_id,
            )
            for call, result in zip(calls, results, strict=True)
        ]
        await self.log.commit_messages(session_id, replies)
        messages.extend(replies)
        for reply in replies:
            self.bus.publish(
                ToolMessageCommitted(
                    run_id=run_id, message_id=reply.id, call_id=reply.tool_call_id or ""
                )
            )
        if not self.policy.continue_on_tool_failure:
            for call, result in zip(calls, results, strict=True):
                if isinstance(result, ToolFailure):
                    raise InvocationFailed(
                        f"tool {call.name!r} failed: {result.error}", run_id=run_id
                    )
