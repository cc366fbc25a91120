"""RuntimeInvocation: emit, on(kind, handler), observe and stream, with Control enforced."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from reactivex import operators as ops
from reactivex.testing import TestScheduler

import rxinvoke
from rxinvoke import (
    AgentRuntime,
    ChatTextDelta,
    Control,
    EmitRequest,
    EventKind,
    InvalidRequest,
    InvocationCancelled,
    InvocationError,
    InvocationFailed,
    InvocationHandle,
    InvocationTimedOut,
    Overflow,
    ProviderError,
    RunOutput,
    RuntimeInvocation,
    SessionContext,
    SubscriberError,
    SubscriberOverflow,
    TextDelta,
    ToolExecutionFinished,
    UserError,
)
from rxinvoke.events import EventBase, InvocationEvent
from rxinvoke.messages import ChatRequest, FinishReason
from rxinvoke.providers.scripted import ScriptedProvider, TurnItem
from rxinvoke.tools import tool

Turns = Sequence[Sequence[TurnItem]] | Callable[[ChatRequest], Sequence[TurnItem]]

TEXT_RUN = [
    "run_started",
    "context_built",
    "model_started",
    "chat_started",
    "chat_text_delta",
    "text_delta",
    "chat_text_delta",
    "text_delta",
    "chat_text_delta",
    "text_delta",
    "chat_finished",
    "assistant_message_committed",
    "usage_recorded",
    "run_completed",
]
TERMINAL = {"run_completed", "run_failed", "run_cancelled"}


def setup(
    turns: Turns, tools: Sequence[Any] = ()
) -> tuple[AgentRuntime, RuntimeInvocation, ScriptedProvider]:
    provider = ScriptedProvider(turns)
    runtime = AgentRuntime(providers=[provider], tools=tools)
    return runtime, RuntimeInvocation(runtime), provider


def request(text: str = "hello", **fields: Any) -> EmitRequest:
    values: dict[str, Any] = {"provider": "scripted", "model": "scripted", "input": text}
    values.update(fields)
    return EmitRequest(**values)


def record(inv: RuntimeInvocation, kind: EventKind | str = EventKind.ANY) -> list[Any]:
    """Every event of ``kind`` published from now on, synchronously."""
    events: list[Any] = []
    inv.observe(kind).subscribe(on_next=events.append)
    return events


def record_errors(inv: RuntimeInvocation) -> list[SubscriberError]:
    errors: list[SubscriberError] = []
    inv.errors.subscribe(on_next=errors.append)
    return errors


def signal_on(inv: RuntimeInvocation, kind: str) -> asyncio.Event:
    """An event set (synchronously) when the first event of ``kind`` is published."""
    reached = asyncio.Event()
    inv.observe(kind).subscribe(on_next=lambda _: reached.set())
    return reached


async def settle(turns: int = 10) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


def gated_text_turn(gate: asyncio.Event) -> list[TurnItem]:
    """``a`` streamed, then wait for ``gate``, then ``b`` and the finish."""
    a, b, finish = ScriptedProvider.text_turn("ab", pieces=2)
    return [a, gate, b, finish]


def types(events: Sequence[Any]) -> list[str]:
    return [event.type for event in events]


def deltas(n: int, run_id: str = "r") -> list[TextDelta]:
    return [TextDelta(run_id=run_id, delta=str(i)) for i in range(n)]


# --- 1. emit --------------------------------------------------------------------------------


async def test_emit_with_sync_build_runs_to_completion() -> None:
    _, inv, provider = setup([ScriptedProvider.text_turn("Hello there world", pieces=3)])
    events = record(inv)
    seen: list[tuple[SessionContext, Control]] = []
    control = Control()

    def build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        seen.append((ctx, ctl))
        return request("hi")

    output = await inv.emit(build, control)

    [(ctx, ctl)] = seen
    assert isinstance(ctx.session_id, uuid.UUID)
    assert isinstance(ctx.run_id, str) and ctx.run_id
    assert ctl is control
    assert isinstance(output, RunOutput)
    assert output.run_id == ctx.run_id
    assert output.session_id == ctx.session_id
    assert output.iterations == 1
    assert output.finish_reason is FinishReason.STOP
    assert output.output_text == "Hello there world"
    assert types(events) == TEXT_RUN
    assert {event.run_id for event in events} == {output.run_id}
    assert events[0].session_id == str(output.session_id)
    assert provider.requests[0].messages[-1].content == "hi"


async def test_emit_with_async_build() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("ok")])
    seen: list[tuple[SessionContext, Control]] = []

    async def build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        await asyncio.sleep(0)
        seen.append((ctx, ctl))
        return request()

    output = await inv.emit(build)

    [(ctx, ctl)] = seen
    assert isinstance(ctl, Control)
    assert not ctl.is_cancelled
    assert ctx.session_id is not None
    assert output.run_id == ctx.run_id
    assert output.output_text == "ok"


async def test_each_emit_gets_fresh_run_and_session_ids() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("one"), ScriptedProvider.text_turn("two")])
    contexts: list[SessionContext] = []

    def build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        contexts.append(ctx)
        return request()

    first = await inv.emit(build)
    second = await inv.emit(build)

    assert first.run_id != second.run_id
    assert first.session_id != second.session_id
    assert [c.run_id for c in contexts] == [first.run_id, second.run_id]


async def test_with_session_id_continues_a_session_across_emits() -> None:
    _, inv, provider = setup(
        [ScriptedProvider.text_turn("first answer"), ScriptedProvider.text_turn("second answer")]
    )
    started = record(inv, "run_started")

    first = await inv.emit(lambda ctx, ctl: request("question one"))
    second = await inv.emit(
        lambda ctx, ctl: request("question two").with_session_id(first.session_id)
    )

    assert second.session_id == first.session_id
    assert second.run_id != first.run_id
    assert [e.session_id for e in started] == [str(first.session_id)] * 2
    history = [(m.role, m.content) for m in provider.requests[1].messages]
    assert history == [
        ("user", "question one"),
        ("assistant", "first answer"),
        ("user", "question two"),
    ]


async def test_with_session_id_accepts_a_string() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("a"), ScriptedProvider.text_turn("b")])
    first = await inv.emit(lambda ctx, ctl: request())
    second = await inv.emit(lambda ctx, ctl: request().with_session_id(str(first.session_id)))
    assert second.session_id == first.session_id


async def test_every_event_handler_gets_the_runs_session_and_run_ids() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    _, inv, _ = setup(
        [
            ScriptedProvider.tool_call_turn("add", {"a": 2, "b": 3}, pieces=3),
            ScriptedProvider.text_turn("2 + 3 = 5", pieces=2),
            ScriptedProvider.text_turn("again", pieces=2),
        ],
        tools=[add],
    )
    delivered: list[tuple[Any, SessionContext]] = []
    handle = await inv.on(EventKind.ANY, lambda event, ctx, ctl: delivered.append((event, ctx)))

    first = await inv.emit(lambda ctx, ctl: request("2+3?"))
    second = await inv.emit(lambda ctx, ctl: request("again"))
    await handle.wait_idle()

    by_run = {first.run_id: first, second.run_id: second}
    assert {event.run_id for event, _ in delivered} == set(by_run)
    kinds = {event.type for event, _ in delivered}
    assert {"tool_execution_finished", "chat_text_delta", "run_completed"} <= kinds
    for event, ctx in delivered:
        output = by_run[event.run_id]
        assert ctx.run_id == output.run_id, event.type
        assert ctx.session_id == output.session_id, event.type
    assert len(delivered) > 20


async def test_an_event_class_names_its_kind_to_observe_on_and_of_kind() -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    _, inv, _ = setup(
        [ScriptedProvider.tool_call_turn("add", {"a": 2, "b": 3}), ScriptedProvider.text_turn("5", pieces=2)],
        tools=[add],
    )
    finished: list[ToolExecutionFinished] = []
    inv.observe(ToolExecutionFinished).subscribe(on_next=finished.append)
    fragments: list[str] = []
    inv.observe().pipe(rxinvoke.of_kind(TextDelta), ops.map(lambda e: e.delta)).subscribe(fragments.append)
    handled: list[tuple[str, str]] = []

    def on_finished(event: ToolExecutionFinished, ctx: SessionContext, control: Control) -> None:
        handled.append((event.tool_name, ctx.run_id or ""))

    handle = await inv.on(ToolExecutionFinished, on_finished)
    out = await inv.emit(request("2+3?"))
    await handle.wait_idle()
    assert [(e.type, e.tool_name) for e in finished] == [("tool_execution_finished", "add")]
    assert fragments and "".join(fragments) == out.output_text == "5"
    assert handled == [("add", out.run_id)]
    assert EventKind.parse(ChatTextDelta) is EventKind.CHAT_TEXT_DELTA


@pytest.mark.parametrize("cls", [EventBase, int])
def test_a_class_that_is_not_one_kind_is_refused(cls: type) -> None:
    with pytest.raises(ValueError, match=f"{cls.__name__} is not the class of one event kind"):
        EventKind.parse(cls)
    _, inv, _ = setup([])
    with pytest.raises(ValueError, match="not the class of one event kind"):
        inv.observe(cls)


async def test_a_handler_that_cannot_take_event_ctx_and_control_is_refused_by_on() -> None:
    import functools

    _, inv, _ = setup([ScriptedProvider.text_turn("hi")])
    for wrong in (lambda event: None, lambda: None, lambda event, ctx, control, extra: None):
        with pytest.raises(UserError, match=r"must take \(event, ctx, control\)"):
            await inv.on("text_delta", wrong)
    with pytest.raises(UserError, match="handler must be callable"):
        await inv.on("text_delta", "print")  # type: ignore[call-overload]

    class Recorder:
        def __init__(self) -> None:
            self.seen: list[str] = []

        def __call__(self, event: Any, ctx: SessionContext, control: Control) -> None:
            self.seen.append(event.type)

    def flexible(event: Any, *rest: Any, limit: int = 3) -> None:
        seen.append("flexible")

    async def later(tag: str, event: Any, ctx: SessionContext, control: Control) -> None:
        seen.append(tag)

    seen: list[str] = []
    recorder = Recorder()
    handles = [await inv.on("run_completed", h) for h in (recorder, flexible, functools.partial(later, "partial"), print)]
    await inv.emit(request())
    for handle in handles:
        await handle.wait_idle()
    assert recorder.seen == ["run_completed"] and sorted(seen) == ["flexible", "partial"]


# --- 2. emit errors -------------------------------------------------------------------------


async def test_emit_with_control_cancelled_before_start_publishes_nothing() -> None:
    _, inv, provider = setup([ScriptedProvider.text_turn("never")])
    events = record(inv)
    built: list[SessionContext] = []
    control = Control()
    control.cancel()

    with pytest.raises(InvocationCancelled) as info:
        await inv.emit(lambda ctx, ctl: built.append(ctx) or request(), control)

    assert info.value.kind == "cancelled"
    assert isinstance(info.value, InvocationError)
    assert events == []
    assert provider.requests == []
    assert built == []


async def test_emit_cancelled_while_building_publishes_nothing() -> None:
    _, inv, provider = setup([ScriptedProvider.text_turn("never")])
    events = record(inv)

    async def build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        ctl.cancel()
        return request()

    with pytest.raises(InvocationCancelled):
        await inv.emit(build)

    assert events == []
    assert provider.requests == []


@pytest.mark.parametrize("is_async", [False, True])
async def test_build_raising_validation_error_is_invalid_request(is_async: bool) -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("never")])
    events = record(inv)

    def sync_build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        return EmitRequest(provider="scripted", model="", input="x")

    async def async_build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        return sync_build(ctx, ctl)

    with pytest.raises(InvalidRequest) as info:
        await inv.emit(async_build if is_async else sync_build)

    assert info.value.kind == "invalid_request"
    assert isinstance(info.value, ValueError)
    assert "model" in str(info.value)
    assert events == []


@pytest.mark.parametrize(
    ("emit_request", "message"),
    [
        (request(provider="nope"), "unknown provider 'nope'"),
        (request(model="gpt-nope"), "unknown model 'gpt-nope'"),
        (request(""), "input must not be empty"),
        (request("   \n"), "input must not be empty"),
    ],
    ids=["unknown-provider", "unknown-model", "empty-input", "blank-input"],
)
async def test_invalid_request_is_raised_before_any_event(
    emit_request: EmitRequest, message: str
) -> None:
    _, inv, provider = setup([ScriptedProvider.text_turn("never")])
    events = record(inv)

    with pytest.raises(InvalidRequest, match=message) as info:
        await inv.emit(lambda ctx, ctl: emit_request)

    assert info.value.kind == "invalid_request"
    assert events == []
    assert provider.requests == []


@pytest.mark.parametrize("built", [None, {"provider": "scripted"}, "hello"])
async def test_build_returning_a_non_emit_request_is_invalid_request(built: Any) -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("never")])
    events = record(inv)

    with pytest.raises(InvalidRequest, match="must return an EmitRequest"):
        await inv.emit(lambda ctx, ctl: built)

    assert events == []


async def test_build_raising_another_exception_propagates_it() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("never")])
    events = record(inv)

    def build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        raise LookupError("no such prompt")

    with pytest.raises(LookupError, match="no such prompt"):
        await inv.emit(build)
    assert events == []


async def test_failing_run_raises_invocation_failed_with_run_id_and_cause() -> None:
    boom = RuntimeError("provider exploded")
    a, _finish = ScriptedProvider.text_turn("partial")
    _, inv, _ = setup([[a, boom]])
    events = record(inv)
    contexts: list[SessionContext] = []

    def build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        contexts.append(ctx)
        return request()

    with pytest.raises(InvocationFailed) as info:
        await inv.emit(build)

    error = info.value
    assert error.kind == "runtime"
    assert not isinstance(error, InvocationTimedOut)
    assert error.run_id == contexts[0].run_id
    assert isinstance(error.cause, ProviderError) and error.cause.__cause__ is boom
    assert "provider exploded" in error.message
    assert [t for t in types(events) if t in TERMINAL] == ["run_failed"]
    assert events[-1].type == "run_failed"
    assert "provider exploded" in events[-1].error
    assert "assistant_message_committed" not in types(events)  # nothing partial committed


async def test_run_after_a_failed_run_still_works() -> None:
    _, inv, _ = setup([[RuntimeError("boom")], ScriptedProvider.text_turn("fine")])
    with pytest.raises(InvocationFailed):
        await inv.emit(lambda ctx, ctl: request())
    output = await inv.emit(lambda ctx, ctl: request())
    assert output.output_text == "fine"


# --- 3. cancellation and deadlines through Control ------------------------------------------


async def test_handler_cancelling_emit_during_streaming() -> None:
    gate = asyncio.Event()
    _, inv, _ = setup([gated_text_turn(gate)])
    events = record(inv)
    control = Control()
    contexts: list[SessionContext] = []
    handle = await inv.on("text_delta", lambda event, ctx, ctl: control.cancel())

    def build(ctx: SessionContext, ctl: Control) -> EmitRequest:
        contexts.append(ctx)
        return request()

    with pytest.raises(InvocationCancelled) as info:
        await inv.emit(build, control)

    assert info.value.kind == "cancelled"
    assert info.value.run_id == contexts[0].run_id
    assert [t for t in types(events) if t in TERMINAL] == ["run_cancelled"]
    assert events[-1].type == "run_cancelled"
    assert events[-1].run_id == contexts[0].run_id
    assert [e.delta for e in events if e.type == "text_delta"] == ["a"]
    assert "assistant_message_committed" not in types(events)
    await handle.wait_idle()


async def test_handler_cancelling_emit_on_tool_call_started() -> None:
    gate = asyncio.Event()
    executed: list[int] = []

    @tool
    def echo(x: int) -> int:
        """Echo."""
        executed.append(x)
        return x

    started, *rest = ScriptedProvider.tool_call_turn("echo", {"x": 1}, pieces=3)
    _, inv, _ = setup([[started, gate, *rest], ScriptedProvider.text_turn("done")], [echo])
    events = record(inv)
    control = Control()
    handle = await inv.on(EventKind.TOOL_CALL_STARTED, lambda e, ctx, ctl: control.cancel())

    with pytest.raises(InvocationCancelled) as info:
        await inv.emit(lambda ctx, ctl: request(), control)

    assert info.value.run_id == events[0].run_id
    assert types(events).count("run_cancelled") == 1
    assert events[-1].type == "run_cancelled"
    assert "tool_call_completed" not in types(events)
    assert executed == []
    await handle.wait_idle()


async def test_cancel_after_the_provider_gate_is_reached() -> None:
    gate = asyncio.Event()
    _, inv, _ = setup([gated_text_turn(gate)])
    events = record(inv)
    reached = signal_on(inv, "text_delta")
    control = Control()

    task = asyncio.create_task(inv.emit(lambda ctx, ctl: request(), control))
    await reached.wait()
    await settle()  # the stream is now parked on the gate
    control.cancel()
    control.cancel()  # idempotent

    with pytest.raises(InvocationCancelled) as info:
        await task
    assert info.value.run_id == events[0].run_id
    assert types(events).count("run_cancelled") == 1
    assert events[-1].type == "run_cancelled"


async def test_cancel_during_a_tool_cancels_the_tool() -> None:
    never = asyncio.Event()
    tool_started = asyncio.Event()
    tool_log: list[str] = []

    @tool
    async def slow(x: int) -> str:
        """Wait forever."""
        tool_started.set()
        tool_log.append("started")
        try:
            await never.wait()
        except asyncio.CancelledError:
            tool_log.append("cancelled")
            raise
        return "unreachable"

    _, inv, _ = setup(
        [ScriptedProvider.tool_call_turn("slow", {"x": 1}), ScriptedProvider.text_turn("x")],
        [slow],
    )
    events = record(inv)
    control = Control()

    task = asyncio.create_task(inv.emit(lambda ctx, ctl: request(), control))
    await tool_started.wait()
    control.cancel()

    with pytest.raises(InvocationCancelled) as info:
        await task
    assert tool_log == ["started", "cancelled"]
    assert info.value.run_id == events[0].run_id
    names = types(events)
    assert "tool_execution_started" in names
    assert "tool_execution_finished" not in names
    assert "tool_message_committed" not in names
    assert names.count("run_cancelled") == 1
    assert names[-1] == "run_cancelled"


async def test_cancel_from_another_thread() -> None:
    gate = asyncio.Event()
    _, inv, _ = setup([gated_text_turn(gate)])
    events = record(inv)
    reached = signal_on(inv, "text_delta")
    control = Control()

    task = asyncio.create_task(inv.emit(lambda ctx, ctl: request(), control))
    await reached.wait()
    canceller = threading.Thread(target=control.cancel)
    canceller.start()
    canceller.join()

    with pytest.raises(InvocationCancelled):
        await task
    assert control.is_cancelled
    assert types(events).count("run_cancelled") == 1
    assert events[-1].type == "run_cancelled"


async def test_emit_timeout_fails_the_run_with_timed_out() -> None:
    never = asyncio.Event()
    _, inv, _ = setup([gated_text_turn(never)])
    events = record(inv)
    control = Control()
    control.set_timeout(0.05)

    with pytest.raises(InvocationTimedOut) as info:
        await inv.emit(lambda ctx, ctl: request(), control)

    error = info.value
    assert error.kind == "timeout"
    assert isinstance(error, InvocationFailed)
    assert isinstance(error, TimeoutError)
    assert error.run_id == events[0].run_id
    assert "timed out" in error.message
    terminal = [e for e in events if e.type in TERMINAL]
    assert [e.type for e in terminal] == ["run_failed"]
    assert "timed out" in terminal[0].error
    assert events[-1] is terminal[0]
    assert not control.is_cancelled


async def test_emit_timeout_does_not_fire_after_a_fast_run() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("quick"), ScriptedProvider.text_turn("again")])
    control = Control(timeout=0.05)
    output = await inv.emit(lambda ctx, ctl: request(), control)
    assert output.output_text == "quick"


async def test_emit_concurrency_limit_bounds_tools_in_flight() -> None:
    gate = asyncio.Event()
    running: list[int] = []
    peak: list[int] = []

    @tool
    async def work(n: int) -> int:
        """Work on n."""
        running.append(n)
        peak.append(len(running))
        await gate.wait()
        running.remove(n)
        return n

    calls = [("work", {"n": n}, f"call_{n}") for n in range(5)]
    _, inv, _ = setup(
        [ScriptedProvider.tool_calls_turn(calls), ScriptedProvider.text_turn("done")], [work]
    )
    second_started = asyncio.Event()
    started = record(inv, "tool_execution_started")
    inv.observe("tool_execution_started").subscribe(
        on_next=lambda _: len(started) >= 2 and second_started.set()
    )
    control = Control()
    control.set_concurrency_limit(2)

    task = asyncio.create_task(inv.emit(lambda ctx, ctl: request(), control))
    await second_started.wait()
    await settle()
    assert len(running) == 2
    gate.set()
    output = await task

    assert max(peak) == 2
    assert output.output_text == "done"


def test_control_copies_share_state() -> None:
    control = Control()
    twin = control.copy()
    assert twin is not control

    twin.set_timeout(2.5)
    twin.set_concurrency_limit(4)
    assert (control.timeout, control.concurrency_limit) == (2.5, 4)

    heard: list[str] = []
    control.add_cancel_listener(lambda: heard.append("original"))
    twin.copy().cancel()
    assert control.is_cancelled
    assert twin.is_cancelled
    assert heard == ["original"]

    late: list[str] = []
    control.add_cancel_listener(lambda: late.append("late"))  # already cancelled: at once
    assert late == ["late"]


def test_control_cancelled_observable_emits_once() -> None:
    control = Control()
    seen: list[Any] = []
    done: list[bool] = []
    control.cancelled.subscribe(on_next=seen.append, on_completed=lambda: done.append(True))
    control.cancel()
    control.cancel()
    late: list[Any] = []
    control.cancelled.subscribe(on_next=late.append)
    assert seen == [None]
    assert done == [True]
    assert late == [None]


def test_control_cancel_listener_can_be_removed() -> None:
    control = Control()
    heard: list[int] = []
    listener = control.add_cancel_listener(lambda: heard.append(1))
    listener.dispose()
    control.cancel()
    assert heard == []


def test_control_defaults_and_none_resets() -> None:
    control = Control(timeout=1.0, concurrency_limit=2)
    control.set_timeout(None)
    control.set_concurrency_limit(None)
    assert control.timeout is None
    assert control.concurrency_limit is None
    assert not control.is_cancelled
    assert "Control(" in repr(control)


@pytest.mark.parametrize("value", [0, 0.0, -1, -0.5, True, False, float("nan"), "5"])
def test_set_timeout_rejects_invalid_values(value: Any) -> None:
    control = Control()
    with pytest.raises(ValueError, match="timeout"):
        control.set_timeout(value)
    with pytest.raises(ValueError, match="timeout"):
        Control(timeout=value)
    assert control.timeout is None


@pytest.mark.parametrize("value", [0, -1, True, False, 1.5, "3"])
def test_set_concurrency_limit_rejects_invalid_values(value: Any) -> None:
    control = Control()
    with pytest.raises(ValueError, match="concurrency limit"):
        control.set_concurrency_limit(value)
    with pytest.raises(ValueError, match="concurrency limit"):
        Control(concurrency_limit=value)
    assert control.concurrency_limit is None


# --- 4. on() --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [EventKind.TEXT_DELTA, "text_delta"])
async def test_on_accepts_kind_members_and_string_values(kind: EventKind | str) -> None:
    runtime, inv, _ = setup([])
    seen: list[Any] = []
    handle = await inv.on(kind, lambda event, ctx, ctl: seen.append(event))
    assert isinstance(handle, InvocationHandle)
    assert "text_delta" in handle.name

    runtime.bus.publish(TextDelta(run_id="r", delta="x"))
    runtime.bus.publish(ChatTextDelta(run_id="r", delta="y"))
    await handle.wait_idle()

    assert [(e.type, e.delta) for e in seen] == [("text_delta", "x")]


async def test_on_unknown_kind_raises_value_error_naming_valid_kinds() -> None:
    _, inv, _ = setup([])
    with pytest.raises(ValueError, match="unknown event kind 'nope'") as info:
        await inv.on("nope", lambda event, ctx, ctl: None)
    assert "text_delta" in str(info.value)
    assert "any" in str(info.value)


async def test_on_rejects_a_non_callable_handler() -> None:
    _, inv, _ = setup([])
    with pytest.raises(UserError, match="callable"):
        await inv.on("text_delta", "not a function")  # type: ignore[arg-type]


@pytest.mark.parametrize("is_async", [False, True])
async def test_handler_receives_event_context_and_its_control(is_async: bool) -> None:
    runtime, inv, _ = setup([])
    calls: list[tuple[Any, SessionContext, Control]] = []
    control = Control()

    def sync_handler(event: Any, ctx: SessionContext, ctl: Control) -> None:
        calls.append((event, ctx, ctl))

    async def async_handler(event: Any, ctx: SessionContext, ctl: Control) -> None:
        await asyncio.sleep(0)
        sync_handler(event, ctx, ctl)

    handle = await inv.on("any", async_handler if is_async else sync_handler, control)
    assert handle.control is control
    events = deltas(3, run_id="not-running")
    for event in events:
        runtime.bus.publish(event)
    await handle.wait_idle()

    assert [c[0] for c in calls] == events
    for _, ctx, ctl in calls:
        assert ctl is control
        assert ctx.run_id == "not-running"  # an unknown run: no session
        assert ctx.session_id is None
    assert handle.stats.delivered == 3
    assert handle.stats.failed == 0


async def test_on_without_a_control_gets_its_own() -> None:
    runtime, inv, _ = setup([])
    controls: list[Control] = []
    handle = await inv.on("text_delta", lambda event, ctx, ctl: controls.append(ctl))
    runtime.bus.publish(deltas(1)[0])
    await handle.wait_idle()
    assert controls == [handle.control]
    assert handle.control.concurrency_limit is None


async def test_handlers_of_one_subscription_run_in_order_without_overlap() -> None:
    runtime, inv, _ = setup([])
    log: list[tuple[str, str]] = []

    async def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        log.append(("start", event.delta))
        for _ in range(3):
            await asyncio.sleep(0)
        log.append(("end", event.delta))

    handle = await inv.on("text_delta", handler)
    events = deltas(8)
    for event in events:
        runtime.bus.publish(event)
    await handle.wait_idle()

    expected = [(step, e.delta) for e in events for step in ("start", "end")]
    assert log == expected
    assert handle.stats.delivered == 8
    assert handle.stats.in_flight == 0
    assert handle.stats.queued == 0


async def test_handlers_of_a_real_run_see_publication_order() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("one two three four", pieces=4)])
    published = record(inv)
    delivered: list[Any] = []

    async def handler(event: Any, ctx: SessionContext, ctl: Control) -> None:
        await asyncio.sleep(0)
        delivered.append(event)

    handle = await inv.on(EventKind.ANY, handler)
    await inv.emit(lambda ctx, ctl: request())
    await handle.wait_idle()

    assert delivered == published


async def test_concurrency_limit_bounds_handlers_in_flight() -> None:
    runtime, inv, _ = setup([])
    gate = asyncio.Event()
    started: list[str] = []
    in_flight: list[int] = [0]
    peak: list[int] = [0]

    async def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        started.append(event.delta)
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await gate.wait()
        finally:
            in_flight[0] -= 1

    control = Control()
    control.set_concurrency_limit(3)
    handle = await inv.on("text_delta", handler, control)
    events = deltas(10)
    for event in events:
        runtime.bus.publish(event)
    await settle()

    assert handle.stats.in_flight == 3
    assert handle.stats.queued == 7
    assert peak[0] == 3
    assert started == ["0", "1", "2"]

    gate.set()
    await handle.wait_idle()

    assert started == [e.delta for e in events]
    assert peak[0] == 3
    assert handle.stats.delivered == 10
    assert handle.stats.in_flight == 0


async def test_handler_timeout_cancels_the_call_and_reports_it() -> None:
    runtime, inv, _ = setup([])
    errors = record_errors(inv)
    never = asyncio.Event()
    done: list[str] = []
    cancelled: list[str] = []

    async def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        if event.delta == "1":
            try:
                await never.wait()
            except asyncio.CancelledError:
                cancelled.append(event.delta)
                raise
        done.append(event.delta)

    control = Control()
    control.set_timeout(0.05)
    clock = TestScheduler()  # virtual time: the timeout fires when the test advances it
    handle = await inv.on("text_delta", handler, control, scheduler=clock)
    events = deltas(4)
    for event in events:
        runtime.bus.publish(event)
    for _ in range(5):
        await asyncio.sleep(0)
    assert done == ["0"] and cancelled == []
    clock.advance_by(0.05)
    await handle.wait_idle()

    assert cancelled == ["1"]
    assert done == ["0", "2", "3"]
    assert handle.stats.failed == 1
    assert handle.stats.delivered == 3
    [error] = errors
    assert isinstance(error, SubscriberError)
    assert "timed out" in error.message
    assert error.subscription == handle.name
    assert error.event is events[1]
    assert not handle.is_finished


@pytest.mark.parametrize("is_async", [False, True])
async def test_raising_handler_is_reported_and_isolated(is_async: bool) -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("all good here", pieces=3)])
    errors = record_errors(inv)
    published = record(inv)
    good: list[Any] = []

    def sync_bad(event: Any, ctx: SessionContext, ctl: Control) -> None:
        raise RuntimeError(f"bad handler on {event.type}")

    async def async_bad(event: Any, ctx: SessionContext, ctl: Control) -> None:
        await asyncio.sleep(0)
        sync_bad(event, ctx, ctl)

    bad = await inv.on(EventKind.ANY, async_bad if is_async else sync_bad)
    other = await inv.on(EventKind.ANY, lambda event, ctx, ctl: good.append(event))

    output = await inv.emit(lambda ctx, ctl: request())
    await bad.wait_idle()
    await other.wait_idle()

    assert output.output_text == "all good here"
    assert good == published
    assert types(published) == TEXT_RUN
    assert [e.event for e in errors] == published
    for error in errors:
        assert error.subscription == bad.name
        assert isinstance(error.cause, RuntimeError)
        assert bad.name in error.message
    assert bad.stats.failed == len(published)
    assert bad.stats.delivered == 0
    assert not bad.is_finished  # a raising handler does not end its subscription


async def test_slow_handler_never_delays_the_run() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("fast run text", pieces=3)])
    published = record(inv)
    release = asyncio.Event()
    received: list[Any] = []

    async def slow(event: Any, ctx: SessionContext, ctl: Control) -> None:
        received.append(event)
        await release.wait()

    handle = await inv.on(EventKind.ANY, slow)
    output = await inv.emit(lambda ctx, ctl: request())

    assert output.output_text == "fast run text"
    assert published[-1].type == "run_completed"
    assert handle.stats.in_flight == 1
    assert types(received) == ["run_started"]

    release.set()
    await handle.wait_idle()

    assert received == published
    assert handle.stats.delivered == len(published)


async def test_dispose_stops_delivery_at_once() -> None:
    runtime, inv, _ = setup([])
    seen: list[str] = []
    handle = await inv.on("text_delta", lambda event, ctx, ctl: seen.append(event.delta))
    first, second, third = deltas(3)

    runtime.bus.publish(first)
    await handle.wait_idle()
    runtime.bus.publish(second)  # queued, not yet delivered
    handle.dispose()
    runtime.bus.publish(third)
    await settle()
    await handle.wait_idle()

    assert seen == ["0"]
    assert handle.is_finished
    handle.dispose()  # idempotent


async def test_dispose_lets_a_running_handler_finish() -> None:
    runtime, inv, _ = setup([])
    gate = asyncio.Event()
    log: list[str] = []

    async def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        log.append(f"start {event.delta}")
        await gate.wait()
        log.append(f"end {event.delta}")

    handle = await inv.on("text_delta", handler)
    for event in deltas(3):
        runtime.bus.publish(event)
    await settle()
    handle.dispose()
    gate.set()
    await handle.wait_idle()

    assert log == ["start 0", "end 0"]
    assert handle.stats.delivered == 1


async def test_abort_cancels_the_running_handler_call() -> None:
    runtime, inv, _ = setup([])
    errors = record_errors(inv)
    never = asyncio.Event()
    log: list[str] = []

    async def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        log.append(f"start {event.delta}")
        try:
            await never.wait()
        except asyncio.CancelledError:
            log.append(f"cancelled {event.delta}")
            raise

    handle = await inv.on("text_delta", handler)
    for event in deltas(3):
        runtime.bus.publish(event)
    await settle()
    handle.abort()
    await handle.wait_idle()
    runtime.bus.publish(TextDelta(run_id="r", delta="late"))
    await settle()

    assert log == ["start 0", "cancelled 0"]
    assert handle.is_finished
    assert handle.stats.in_flight == 0
    assert errors == []


async def test_handle_as_context_manager_disposes_on_exit() -> None:
    runtime, inv, _ = setup([])
    seen: list[str] = []
    with await inv.on("text_delta", lambda e, ctx, ctl: seen.append(e.delta)) as handle:
        runtime.bus.publish(TextDelta(run_id="r", delta="in"))
        await handle.wait_idle()
        assert not handle.is_finished
    assert handle.is_finished
    runtime.bus.publish(TextDelta(run_id="r", delta="out"))
    await settle()
    assert seen == ["in"]
    assert "finished=True" in repr(handle)


async def test_cancelling_the_subscription_control_ends_it() -> None:
    runtime, inv, _ = setup([])
    seen: list[str] = []
    control = Control()
    handle = await inv.on("text_delta", lambda e, ctx, ctl: seen.append(e.delta), control)

    runtime.bus.publish(TextDelta(run_id="r", delta="before"))
    await handle.wait_idle()
    control.copy().cancel()
    assert handle.is_finished
    runtime.bus.publish(TextDelta(run_id="r", delta="after"))
    await settle()
    await handle.wait_idle()

    assert seen == ["before"]


async def test_cancelling_the_subscription_control_from_another_thread() -> None:
    runtime, inv, _ = setup([])
    seen: list[str] = []
    control = Control()
    handle = await inv.on("text_delta", lambda e, ctx, ctl: seen.append(e.delta), control)
    runtime.bus.publish(TextDelta(run_id="r", delta="before"))
    await handle.wait_idle()

    canceller = threading.Thread(target=control.cancel)
    canceller.start()
    canceller.join()
    await settle()
    runtime.bus.publish(TextDelta(run_id="r", delta="after"))
    await settle()

    assert handle.is_finished
    assert seen == ["before"]


async def test_a_handler_can_cancel_its_own_subscription() -> None:
    runtime, inv, _ = setup([])
    seen: list[str] = []

    def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        seen.append(event.delta)
        if event.delta == "1":
            ctl.cancel()

    handle = await inv.on("text_delta", handler)
    runtime.bus.publish(deltas(2)[0])
    runtime.bus.publish(deltas(2)[1])
    await handle.wait_idle()
    runtime.bus.publish(TextDelta(run_id="r", delta="2"))
    await settle()

    assert seen == ["0", "1"]
    assert handle.is_finished


async def test_on_with_an_already_cancelled_control_delivers_nothing() -> None:
    runtime, inv, _ = setup([])
    seen: list[Any] = []
    control = Control()
    control.cancel()
    handle = await inv.on("text_delta", lambda e, ctx, ctl: seen.append(e), control)
    runtime.bus.publish(deltas(1)[0])
    await settle()
    assert handle.is_finished
    assert seen == []


# --- 5. buffers and overflow ----------------------------------------------------------------


async def flood_a_gated_handler(
    overflow: Overflow,
) -> tuple[InvocationHandle, list[TextDelta], list[str], list[SubscriberError], asyncio.Event]:
    """A handler with a buffer of 5 blocked on event 0 while 19 more are published."""
    runtime, inv, _ = setup([])
    errors = record_errors(inv)
    gate = asyncio.Event()
    received: list[str] = []

    async def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        received.append(event.delta)
        await gate.wait()

    handle = await inv.on("text_delta", handler, buffer=5, overflow=overflow)
    events = deltas(20)
    runtime.bus.publish(events[0])
    await settle()  # event 0 is now in flight
    for event in events[1:]:
        runtime.bus.publish(event)
    return handle, events, received, errors, gate


async def test_drop_oldest_keeps_the_newest_events_and_reports_the_drops() -> None:
    handle, _, received, errors, gate = await flood_a_gated_handler("drop_oldest")
    await settle()

    assert handle.stats.dropped == 14
    assert handle.stats.queued == 5
    gate.set()
    await handle.wait_idle()

    assert received == ["0", "15", "16", "17", "18", "19"]
    assert handle.stats.delivered == 6
    [overflow] = errors
    assert isinstance(overflow, SubscriberOverflow)
    assert overflow.dropped == 14
    assert overflow.subscription == handle.name
    assert "drop_oldest" in overflow.message
    assert not handle.is_finished


async def test_overflow_error_ends_the_subscription() -> None:
    handle, events, received, errors, gate = await flood_a_gated_handler("error")

    assert handle.is_finished
    gate.set()
    await handle.wait_idle()

    assert received == ["0"]  # the call in flight finished; the queued events were dropped
    [overflow] = errors
    assert isinstance(overflow, SubscriberOverflow)
    assert overflow.subscription == handle.name
    assert overflow.dropped == 6
    assert overflow.event is events[6]
    assert handle.stats.dropped == 6


async def test_a_burst_within_the_buffer_loses_nothing() -> None:
    runtime, inv, _ = setup([])
    errors = record_errors(inv)
    received: list[str] = []
    handle = await inv.on(
        "text_delta", lambda e, ctx, ctl: received.append(e.delta), buffer=50, overflow="error"
    )
    events = deltas(50)
    for event in events:
        runtime.bus.publish(event)
    await handle.wait_idle()
    assert received == [e.delta for e in events]
    assert errors == []
    assert handle.stats.dropped == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"buffer": 0}, "buffer"),
        ({"buffer": -3}, "buffer"),
        ({"buffer": True}, "buffer"),
        ({"buffer": 2.5}, "buffer"),
        ({"overflow": "drop_newest"}, "overflow"),
        ({"overflow": ""}, "overflow"),
    ],
)
async def test_invalid_buffer_or_overflow_raises_value_error(
    options: dict[str, Any], message: str
) -> None:
    runtime, inv, _ = setup([])
    with pytest.raises(ValueError, match=message):
        await inv.on("text_delta", lambda e, ctx, ctl: None, **options)
    runtime.bus.publish(deltas(1)[0])  # no half-made subscription left behind


# --- 6. observe and stream ------------------------------------------------------------------


async def test_observe_composes_with_pipe() -> None:
    _, inv, _ = setup([ScriptedProvider.text_turn("one two three", pieces=3)])
    pieces: list[str] = []
    inv.observe("text_delta").pipe(ops.map(lambda e: e.delta)).subscribe(on_next=pieces.append)
    started: list[str] = []
    inv.observe(EventKind.RUN_STARTED).pipe(ops.map(lambda e: e.run_id)).subscribe(
        on_next=started.append
    )

    output = await inv.emit(lambda ctx, ctl: request())

    assert "".join(pieces) == "one two three"
    assert len(pieces) == 3
    assert started == [output.run_id]


async def test_observe_unknown_kind_raises() -> None:
    _, inv, _ = setup([])
    with pytest.raises(ValueError, match="valid kinds"):
        inv.observe("nope")


def _by_input(scripts: dict[str, list[TurnItem]]) -> Callable[[ChatRequest], list[TurnItem]]:
    return lambda chat: scripts[chat.messages[-1].content]


async def test_stream_is_cold_and_yields_exactly_its_run() -> None:
    gate = asyncio.Event()
    _, inv, provider = setup(
        _by_input(
            {
                "streamed": gated_text_turn(gate),
                "other": ScriptedProvider.text_turn("other run", pieces=2),
            }
        )
    )
    published = record(inv)
    control = Control()
    observable = inv.stream(request("streamed"), control)
    await settle()
    assert published == []
    assert provider.requests == []

    streamed: list[Any] = []
    completed = asyncio.Event()
    observable.subscribe(on_next=streamed.append, on_completed=completed.set)
    await settle()
    assert types(streamed)[0] == "run_started"
    assert not completed.is_set()

    other = await inv.emit(lambda ctx, ctl: request("other"))  # runs while streamed is gated
    gate.set()
    await completed.wait()

    run_id = streamed[0].run_id
    assert run_id != other.run_id
    assert {e.run_id for e in streamed} == {run_id}
    assert types(streamed) == TEXT_RUN[:4] + TEXT_RUN[6:]  # two deltas, not three
    assert streamed == [e for e in published if e.run_id == run_id]
    assert any(e.run_id == other.run_id for e in published)
    await settle()
    assert not control.is_cancelled  # completing normally does not cancel the caller's control


async def test_a_run_stream_is_one_run_every_subscriber_sees_whole() -> None:
    """A RunStream is one run (its id is known up front): the first subscription starts it;
    a subscriber that comes later still sees it from run_started. For another run, stream()
    again."""
    _, inv, provider = setup(
        [ScriptedProvider.text_turn("first"), ScriptedProvider.text_turn("second")]
    )
    stream = inv.stream(request())
    early: list[Any] = []
    stream.subscribe(on_next=early.append)
    output = await stream.result
    late: list[Any] = []
    finished = asyncio.Event()
    stream.subscribe(on_next=late.append, on_completed=finished.set)
    await finished.wait()
    assert len(provider.requests) == 1
    assert early == late and early[0].type == "run_started" and early[-1].type == "run_completed"
    assert {e.run_id for e in early} == {stream.run_id} == {output.run_id}
    assert output.session_id == stream.session_id and stream.is_finished
    other = await inv.stream(request()).result
    assert other.run_id != output.run_id and other.output_text == "second"


async def test_stream_of_a_failing_run_ends_with_run_failed_not_on_error() -> None:
    _, inv, _ = setup([[RuntimeError("stream broke")]])
    streamed: list[Any] = []
    errors: list[Exception] = []
    completed = asyncio.Event()
    inv.stream(request()).subscribe(
        on_next=streamed.append, on_error=errors.append, on_completed=completed.set
    )
    await completed.wait()
    assert errors == []
    assert streamed[-1].type == "run_failed"
    assert "stream broke" in streamed[-1].error


@pytest.mark.parametrize(
    "bad", [request(provider="nope"), request(model="nope"), request("  ")], ids=str
)
async def test_stream_invalid_request_arrives_as_on_error(bad: EmitRequest) -> None:
    _, inv, provider = setup([ScriptedProvider.text_turn("never")])
    published = record(inv)
    errors: list[Exception] = []
    streamed: list[Any] = []
    inv.stream(bad).subscribe(on_next=streamed.append, on_error=errors.append)
    await settle()

    [error] = errors
    assert isinstance(error, InvalidRequest)
    assert streamed == []
    assert published == []
    assert provider.requests == []


async def test_disposing_a_stream_early_cancels_the_run() -> None:
    never = asyncio.Event()
    _, inv, _ = setup([gated_text_turn(never)])
    published = record(inv)
    cancelled = signal_on(inv, "run_cancelled")
    reached = signal_on(inv, "text_delta")
    streamed: list[Any] = []
    subscription = inv.stream(request()).subscribe(on_next=streamed.append)
    await reached.wait()

    subscription.dispose()
    await cancelled.wait()
    await settle()

    assert "run_cancelled" not in types(streamed)  # disposed: nothing more delivered
    assert types(published).count("run_cancelled") == 1
    assert published[-1].type == "run_cancelled"
    assert published[-1].run_id == streamed[0].run_id


# --- 7. thread safety -----------------------------------------------------------------------


async def test_publish_from_another_thread_is_delivered_on_the_loop_thread_in_order() -> None:
    runtime, inv, _ = setup([])
    loop_thread = threading.get_ident()
    received: list[tuple[str, int]] = []
    all_in = asyncio.Event()
    count = 50

    def handler(event: TextDelta, ctx: SessionContext, ctl: Control) -> None:
        received.append((event.delta, threading.get_ident()))
        if len(received) == count:
            all_in.set()

    handle = await inv.on("text_delta", handler)
    events = deltas(count)
    publisher_thread: list[int] = []

    def publish_all() -> None:
        publisher_thread.append(threading.get_ident())
        for event in events:
            runtime.bus.publish(event)

    publisher = threading.Thread(target=publish_all)
    publisher.start()
    publisher.join()
    await all_in.wait()
    await handle.wait_idle()

    assert publisher_thread[0] != loop_thread
    assert [delta for delta, _ in received] == [e.delta for e in events]
    assert {thread for _, thread in received} == {loop_thread}


# --- facade ergonomics (issue 11) ------------------------------------------------------------


async def test_emit_takes_a_request_directly_and_defaults_fill_provider_and_model() -> None:
    from rxinvoke import AgentRuntime, OfflineProvider, builtin_tools

    inv = RuntimeInvocation(AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools()))
    out = await inv.emit(EmitRequest("what is 2 + 3?"))  # one provider, one model: both implied
    assert out.output_text == "2 + 3 = 5."
    out = await inv.emit(EmitRequest("offline", "offline", "what is 4 * 5?"))
    assert out.output_text == "4 * 5 = 20."
    record = await inv.runtime.store.get_run(out.run_id)
    assert record is not None and (record.request.provider, record.request.model) == ("offline", "offline")


def test_positional_requests_take_input_or_provider_model_input() -> None:
    assert EmitRequest("hi").input == "hi" and EmitRequest("hi").provider is None
    full = EmitRequest("p", "m", "hi")
    assert (full.provider, full.model, full.input) == ("p", "m", "hi")
    with pytest.raises(TypeError, match="positionally"):
        EmitRequest("p", "hi")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="twice"):
        EmitRequest("hi", input="again")  # type: ignore[call-arg]
    assert rxinvoke.RunRequest("p", "m", "x").model == "m"


async def test_missing_provider_or_model_is_an_invalid_request_naming_the_fix() -> None:
    from rxinvoke import AgentRuntime

    two = AgentRuntime(providers=[ScriptedProvider([], id="a"), ScriptedProvider([], id="b")])
    with pytest.raises(InvalidRequest, match="names no provider and 2 are registered"):
        await RuntimeInvocation(two).emit(EmitRequest("hi"))
    many = AgentRuntime(providers=[ScriptedProvider([], models=("x", "y"))])
    with pytest.raises(InvalidRequest, match="names no model"):
        await RuntimeInvocation(many).emit(EmitRequest("hi"))
    chosen = AgentRuntime(
        providers=[ScriptedProvider([ScriptedProvider.text_turn("ok")], models=("x", "y"))],
        default_model="y",
    )
    out = await RuntimeInvocation(chosen).emit(EmitRequest("hi"))
    assert out.output_text == "ok"


async def test_a_named_runtime_says_so_on_run_started_and_in_every_context() -> None:
    from rxinvoke import AgentRuntime

    runtime = AgentRuntime(providers=[ScriptedProvider([ScriptedProvider.text_turn("ok")])], name="east")
    inv = RuntimeInvocation(runtime)
    contexts: list[SessionContext] = []
    handle = await inv.on("any", lambda event, ctx, control: contexts.append(ctx))
    events: list[InvocationEvent] = []
    inv.observe().subscribe(events.append)
    await inv.emit(EmitRequest("hi"))
    await handle.wait_idle()
    assert isinstance(events[0], rxinvoke.RunStarted) and events[0].runtime == "east"
    assert contexts and {c.runtime for c in contexts} == {"east"}
    assert inv.scheduler is runtime.scheduler
    handle.dispose()


def test_a_tool_call_accepts_a_dict_of_arguments() -> None:
    call = rxinvoke.ToolCall(id="c", name="add", arguments={"a": 1, "b": 2})
    assert call.arguments == '{"a": 1, "b": 2}'
    assert rxinvoke.ToolCall(id="c", name="add", arguments='{"a": 1}').arguments == '{"a": 1}'
