"""AgentRuntime: the agent loop, driven by ScriptedProvider and real ``@tool`` tools.

Events are collected with a synchronous observer on ``runtime.events``; runs are synchronised
with ``asyncio.Event`` gates and ``asyncio.sleep(0)`` checkpoints, never with timing. Whole
event sequences are asserted (``[e.type for e in events]``); ids and timestamps loosely.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timezone
from typing import Any
from unittest.mock import ANY

import pytest

import rxinvoke.runtime
from rxinvoke import (
    AgentRuntime,
    ChatFinished,
    ChatRequest,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallStarted,
    ContextBuilt,
    Control,
    DoomLoopPolicy,
    FinishReason,
    InvalidRequest,
    InvocationCancelled,
    InvocationEvent,
    InvocationFailed,
    InvocationTimedOut,
    MemoryStore,
    Message,
    OfflineProvider,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    RunFailed,
    RunRequest,
    RuntimePolicy,
    ScriptedProvider,
    SqliteStore,
    SubscriberError,
    TextDelta,
    TokenUsage,
    ToolCall,
    ToolCallCompleted,
    ToolCallDelta,
    ToolChoice,
    ToolExecutionFinished,
    ToolFailure,
    ToolSuccess,
    UserError,
    builtin_tools,
    tool,
)
from rxinvoke.providers.scripted import TurnItem

TERMINAL = ("run_completed", "run_failed", "run_cancelled")

text_turn = ScriptedProvider.text_turn
tool_call_turn = ScriptedProvider.tool_call_turn
tool_calls_turn = ScriptedProvider.tool_calls_turn


# --- helpers -----------------------------------------------------------------------------------


class TrackingProvider(ScriptedProvider):
    """A ScriptedProvider that records whether its stream generator was closed or cancelled."""

    def __init__(self, turns: Any, **kwargs: Any) -> None:
        super().__init__(turns, **kwargs)
        self.closed = 0
        self.cancelled = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        try:
            async for event in super().stream(request):
                yield event
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.closed += 1


def make_runtime(
    turns: Sequence[Sequence[TurnItem]] | Callable[[ChatRequest], Sequence[TurnItem]],
    *,
    tools: Sequence[Any] = (),
    policy: RuntimePolicy | None = None,
    provider: ScriptedProvider | None = None,
) -> tuple[AgentRuntime, ScriptedProvider, list[InvocationEvent]]:
    """A runtime over one scripted provider, and the list every published event lands in."""
    provider = provider if provider is not None else ScriptedProvider(turns)
    runtime = AgentRuntime(providers=[provider], tools=tools, policy=policy, store=MemoryStore())
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)
    return runtime, provider, events


def request(text: str = "hello", **kwargs: Any) -> RunRequest:
    return RunRequest(provider="scripted", model="scripted", input=text, **kwargs)


def types(events: Sequence[InvocationEvent]) -> list[str]:
    return [e.type for e in events]


def of_run(events: Sequence[InvocationEvent], run_id: str) -> list[InvocationEvent]:
    return [e for e in events if e.run_id == run_id]


def only(events: Sequence[InvocationEvent], kind: str) -> list[Any]:
    return [e for e in events if e.type == kind]


def assert_run_shape(events: Sequence[InvocationEvent], run_id: str, terminal: str) -> None:
    """``run_started`` first, exactly one terminal event, last, of the expected kind."""
    mine = of_run(events, run_id)
    assert mine[0].type == "run_started"
    assert [e.type for e in mine if e.type in TERMINAL] == [terminal]
    assert mine[-1].type == terminal


def assert_tool_call_order(events: Sequence[InvocationEvent]) -> None:
    """DESIGN §2: per call, started < completed < execution started < finished < committed."""
    order = (
        "tool_call_started",
        "tool_call_completed",
        "tool_execution_started",
        "tool_execution_finished",
        "tool_message_committed",
    )
    positions: dict[str, dict[str, list[int]]] = {}
    for index, event in enumerate(events):
        if event.type not in order:
            continue
        call_id = event.call.id if isinstance(event, ToolCallCompleted) else event.call_id
        positions.setdefault(call_id, {}).setdefault(event.type, []).append(index)
    assert positions, "no tool call events"
    for call_id, seen in positions.items():
        assert all(len(seen.get(kind, [])) == 1 for kind in order), (call_id, seen)
        indexes = [seen[kind][0] for kind in order]
        assert indexes == sorted(indexes), (call_id, seen)


def is_utc_now(value: datetime) -> bool:
    return (
        value.tzinfo is not None
        and value.utcoffset() == timezone.utc.utcoffset(value)
        and (abs((datetime.now(timezone.utc) - value).total_seconds()) < 600)
    )


async def until(predicate: Callable[[], bool], *, turns: int = 1000) -> None:
    """Let the loop run (``sleep(0)`` checkpoints) until ``predicate()`` holds."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached within the allowed loop turns")


async def settle(turns: int = 50) -> None:
    for _ in range(turns):
        await asyncio.sleep(0)


async def history(runtime: AgentRuntime, session_id: uuid.UUID) -> list[Message]:
    """The session's committed messages, as the store returns them."""
    return await runtime.store.load_history(session_id)


# --- 1. one tool call, arguments in three deltas, then a text answer ------------------------


ONE_TOOL_CALL_RUN = [
    "run_started",
    "context_built",
    "model_started",
    "chat_started",
    "chat_tool_call_started",
    "tool_call_started",
    "chat_tool_call_arguments_delta",
    "tool_call_delta",
    "chat_tool_call_arguments_delta",
    "tool_call_delta",
    "chat_tool_call_arguments_delta",
    "tool_call_delta",
    "chat_tool_call_completed",
    "tool_call_completed",
    "chat_finished",
    "assistant_message_committed",
    "usage_recorded",
    "tool_execution_started",
    "tool_execution_finished",
    "tool_message_committed",
    "model_started",
    "chat_started",
    "chat_text_delta",
    "text_delta",
    "chat_finished",
    "assistant_message_committed",
    "usage_recorded",
    "run_completed",
]


async def test_tool_call_then_answer_publishes_the_whole_event_sequence() -> None:
    seen: list[dict[str, Any]] = []

    @tool
    def lookup(city: str, days: int) -> str:
        """Weather forecast."""
        seen.append({"city": city, "days": days})
        return f"sunny in {city} for {days} days"

    first_usage = TokenUsage(input_tokens=5, output_tokens=2, total_tokens=7)
    second_usage = TokenUsage(input_tokens=11, output_tokens=3, total_tokens=14)
    turns = [
        tool_call_turn(
            "lookup", {"city": "Paris", "days": 3}, call_id="call_1", pieces=3, usage=first_usage
        ),
        text_turn("It will be sunny.", usage=second_usage),
    ]
    runtime, provider, events = make_runtime(turns, tools=[lookup])

    output = await runtime.run(request("weather in Paris?"))

    assert types(events) == ONE_TOOL_CALL_RUN
    assert output.model_dump() == {
        "run_id": ANY,
        "session_id": ANY,
        "iterations": 2,
        "finish_reason": FinishReason.STOP,
        "total_usage": {"input_tokens": 16, "output_tokens": 5, "total_tokens": 21},
        "output_text": "It will be sunny.",
        "pending": (),
    }
    run_id = output.run_id
    assert all(e.run_id == run_id for e in events)
    assert all(is_utc_now(e.timestamp) for e in events)
    assert events[0].model_dump() == {
        "type": "run_started",
        "run_id": run_id,
        "timestamp": ANY,
        "session_id": str(output.session_id),
        "provider": "scripted",
        "model": "scripted",
        "runtime": None,  # AgentRuntime(name=...) names it
        "resumes": None,  # set on the run that continues one paused for approval
    }
    assert [e.iteration for e in only(events, "model_started")] == [1, 2]
    assert [e.usage for e in only(events, "usage_recorded")] == [first_usage, second_usage]
    assert only(events, "run_completed")[0].model_dump() == {
        "type": "run_completed",
        "run_id": run_id,
        "timestamp": ANY,
        "finish_reason": FinishReason.STOP,
        "iterations": 2,
    }

    # The argument fragments put back together are the completed call's arguments.
    deltas = only(events, "tool_call_delta")
    assert all(isinstance(d, ToolCallDelta) and d.call_id == "call_1" for d in deltas)
    completed = only(events, "tool_call_completed")[0].call
    assert completed == ToolCall(
        id="call_1", name="lookup", arguments=json.dumps({"city": "Paris", "days": 3})
    )
    assert "".join(d.delta for d in deltas) == completed.arguments
    assert seen == [{"city": "Paris", "days": 3}]  # parsed and validated, days is an int

    finished = only(events, "tool_execution_finished")[0]
    assert finished.model_dump() == {
        "type": "tool_execution_finished",
        "run_id": run_id,
        "timestamp": ANY,
        "call_id": "call_1",
        "tool_name": "lookup",
        "result": {"status": "success", "output": "sunny in Paris for 3 days"},
        "duration_ms": ANY,
    }
    assert finished.duration_ms >= 0
    assert_tool_call_order(events)

    # The second model call sees the assistant's tool call and the tool's result.
    assert len(provider.requests) == 2
    second = provider.requests[1]
    assert second.run_id == run_id
    assert [m.role for m in second.messages] == ["user", "assistant", "tool"]
    user, assistant, tool_message = second.messages
    assert user.content == "weather in Paris?"
    assert assistant.tool_calls == (completed,)
    assert tool_message.tool_call_id == "call_1"
    assert tool_message.content == "sunny in Paris for 3 days"
    assert [s.name for s in second.tools] == ["lookup"]

    # The committed message ids are the ones the events name, in commit order.
    committed = [
        e.message_id
        for e in events
        if e.type in ("assistant_message_committed", "tool_message_committed")
    ]
    stored = await history(runtime, output.session_id)
    assert [m.role for m in stored] == ["user", "assistant", "tool", "assistant"]
    assert [m.id for m in stored[1:]] == committed
    assert all(m.run_id == run_id for m in stored)


# --- 2. session history ----------------------------------------------------------------------


async def test_a_second_run_on_the_same_session_sees_the_first_runs_messages() -> None:
    runtime, provider, events = make_runtime(
        [text_turn("one"), text_turn("two"), text_turn("three")]
    )
    session = uuid.uuid4()

    first = await runtime.run(request("first", session_id=session, system_prompt="Be brief."))
    second = await runtime.run(request("second", session_id=session, system_prompt="Ignored."))
    fresh = await runtime.run(request("third", system_prompt="Fresh."))

    assert first.session_id == second.session_id == session
    assert fresh.session_id != session
    assert [e.message_count for e in only(events, "context_built")] == [2, 4, 2]

    def sent(index: int) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in provider.requests[index].messages]

    assert sent(0) == [("system", "Be brief."), ("user", "first")]
    assert sent(1) == [
        ("system", "Be brief."),
        ("user", "first"),
        ("assistant", "one"),
        ("user", "second"),
    ]
    assert sent(2) == [("system", "Fresh."), ("user", "third")]
    assert [(m.role, m.content) for m in await history(runtime, session)] == [
        *sent(1),
        ("assistant", "two"),
    ]
    assert second.output_text == "two"


async def test_a_new_session_without_a_system_prompt_starts_with_the_user_message_only() -> None:
    runtime, provider, events = make_runtime([text_turn("hi")])

    output = await runtime.run(request("hello"))

    assert only(events, "context_built")[0].message_count == 1
    assert [(m.role, m.content) for m in provider.requests[0].messages] == [("user", "hello")]
    assert [m.role for m in await history(runtime, output.session_id)] == ["user", "assistant"]


# --- 3. tool failures ------------------------------------------------------------------------


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def explode() -> str:
    """Always fails."""
    raise ValueError("kaboom")


@tool
async def gives_up() -> str:
    """Fails with a timeout of its own (not the tool deadline)."""
    raise TimeoutError("upstream did not answer")


@pytest.mark.parametrize(
    ("name", "arguments", "error_type", "fragment"),
    [
        ("missing_tool", {}, "UnknownTool", "unknown tool 'missing_tool'"),
        ("add", '{"a": 1, "b":', "ToolArgumentsError", "not valid JSON"),
        ("add", {"a": "one", "b": 2}, "ToolArgumentsError", "a: Input should be a valid integer"),
        ("add", {"a": 1}, "ToolArgumentsError", "b: Field required"),
        ("add", {"a": 1, "b": 2, "c": 3}, "ToolArgumentsError", "c: Extra inputs"),
        ("add", "[1, 2]", "ToolArgumentsError", "must be a JSON object"),
        ("explode", {}, "ToolExecutionError", "raised ValueError: kaboom"),
        ("gives_up", {}, "ToolExecutionError", "raised TimeoutError: upstream did not answer"),
        ("hang", {}, "ToolTimeout", "tool 'hang' timed out after 0.05s"),
    ],
    ids=[
        "unknown-tool",
        "malformed-json",
        "wrong-type",
        "missing-required",
        "extra-field",
        "not-an-object",
        "tool-raises",
        "tool-raises-its-own-timeout",
        "tool-timeout",
    ],
)
async def test_a_failing_tool_call_is_reported_to_the_model_and_the_run_continues(
    name: str, arguments: dict[str, Any] | str, error_type: str, fragment: str
) -> None:
    never = asyncio.Event()
    hang_cancelled: list[bool] = []

    @tool
    async def hang() -> str:
        """Waits forever."""
        try:
            await never.wait()
        except asyncio.CancelledError:
            hang_cancelled.append(True)
            raise
        return "unreachable"

    turns = [tool_call_turn(name, arguments, call_id="c1"), text_turn("sorry")]
    runtime, provider, events = make_runtime(
        turns, tools=[add, explode, gives_up, hang], policy=RuntimePolicy(tool_timeout=0.05)
    )

    output = await runtime.run(request("go"))

    assert types(events) == [
        "run_started",
        "context_built",
        "model_started",
        "chat_started",
        "chat_tool_call_started",
        "tool_call_started",
        "chat_tool_call_arguments_delta",
        "tool_call_delta",
        "chat_tool_call_completed",
        "tool_call_completed",
        "chat_finished",
        "assistant_message_committed",
        "usage_recorded",
        "tool_execution_started",
        "tool_execution_finished",
        "tool_message_committed",
        "model_started",
        "chat_started",
        "chat_text_delta",
        "text_delta",
        "chat_finished",
        "assistant_message_committed",
        "usage_recorded",
        "run_completed",
    ]
    finished = only(events, "tool_execution_finished")
    assert len(finished) == 1
    result = finished[0].result
    assert isinstance(result, ToolFailure)
    assert result.status == "failure"
    assert result.error_type == error_type
    assert fragment in result.error
    assert finished[0].call_id == "c1" and finished[0].tool_name == name
    assert not finished[0].is_success

    tool_message = provider.requests[1].messages[-1]
    assert tool_message.role == "tool"
    assert tool_message.tool_call_id == "c1"
    assert tool_message.content == f"Error: {result.error}"

    assert output.finish_reason is FinishReason.STOP
    assert output.iterations == 2
    assert output.output_text == "sorry"
    assert_run_shape(events, output.run_id, "run_completed")
    assert_tool_call_order(events)
    if name == "hang":
        assert hang_cancelled == [True]  # the timed-out tool was cancelled, not abandoned


async def test_a_failing_tool_ends_the_run_when_continue_on_tool_failure_is_false() -> None:
    turns = [tool_call_turn("explode", {}, call_id="c1"), text_turn("never sent")]
    runtime, provider, events = make_runtime(
        turns, tools=[explode], policy=RuntimePolicy(continue_on_tool_failure=False)
    )

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request("go"))

    assert types(events)[-5:] == [
        "usage_recorded",
        "tool_execution_started",
        "tool_execution_finished",
        "tool_message_committed",
        "run_failed",
    ]
    run_id = events[0].run_id
    assert caught.value.run_id == run_id
    assert caught.value.kind == "runtime"
    failed = events[-1]
    assert isinstance(failed, RunFailed)
    assert "explode" in failed.error and "kaboom" in failed.error
    assert str(caught.value) == failed.error
    assert len(provider.requests) == 1
    assert_run_shape(events, run_id, "run_failed")


# --- 4. max_iterations and doom loops --------------------------------------------------------


async def test_a_model_that_always_calls_a_tool_stops_at_max_iterations() -> None:
    @tool
    def step(n: int) -> int:
        """One more step."""
        return n

    def always_a_new_call(req: ChatRequest) -> list[TurnItem]:
        return tool_call_turn("step", {"n": len(req.messages)})

    runtime, provider, events = make_runtime(
        always_a_new_call, tools=[step], policy=RuntimePolicy(max_iterations=4)
    )

    output = await runtime.run(request("loop"))

    assert output.finish_reason is FinishReason.MAX_ITERATIONS
    assert output.iterations == 4
    assert len(only(events, "model_started")) == 4
    assert len(provider.requests) == 4
    assert len(only(events, "tool_execution_finished")) == 4
    assert "doom_loop_detected" not in types(events)
    assert events[-1].model_dump() == {
        "type": "run_completed",
        "run_id": output.run_id,
        "timestamp": ANY,
        "finish_reason": FinishReason.MAX_ITERATIONS,
        "iterations": 4,
    }
    assert_run_shape(events, output.run_id, "run_completed")


async def test_the_same_call_repeated_is_a_doom_loop_stopped_before_the_third_runs() -> None:
    ran: list[tuple[int, int]] = []

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        ran.append((a, b))
        return a + b

    turns = [tool_call_turn("add", {"a": 1, "b": 2}) for _ in range(5)]
    runtime, provider, events = make_runtime(
        turns, tools=[add], policy=RuntimePolicy(doom_loop=DoomLoopPolicy(consecutive_threshold=3))
    )
    session = uuid.uuid4()

    output = await runtime.run(request("loop", session_id=session))

    assert output.finish_reason is FinishReason.DOOM_LOOP
    assert output.iterations == 3
    assert len(provider.requests) == 3
    assert ran == [(1, 2), (1, 2)]  # the third, identical call never ran
    assert types(events)[-4:] == [
        "usage_recorded", "doom_loop_detected", "tool_message_committed", "run_completed"
    ]
    detected = only(events, "doom_loop_detected")
    assert len(detected) == 1
    assert "add" in detected[0].description and "3 times" in detected[0].description
    assert (detected[0].pattern, detected[0].count, detected[0].action) == (("add",), 3, "stop")
    assert events[-1].finish_reason is FinishReason.DOOM_LOOP
    assert_run_shape(events, output.run_id, "run_completed")
    # the refused call is answered in the stored history: the session stays a valid context
    stored = await history(runtime, session)
    assert [m.role for m in stored][-2:] == ["assistant", "tool"]
    assert stored[-1].tool_call_id == stored[-2].tool_calls[0].id
    assert stored[-1].content.startswith("Error: not run:")


async def test_a_repeated_call_broken_by_a_different_one_is_not_a_doom_loop() -> None:
    turns = [
        tool_call_turn("add", {"a": 1, "b": 2}),
        tool_call_turn("add", {"a": 1, "b": 2}),
        tool_call_turn("add", {"a": 2, "b": 2}),
        tool_call_turn("add", {"a": 1, "b": 2}),
        text_turn("done"),
    ]
    runtime, _, events = make_runtime(
        turns, tools=[add], policy=RuntimePolicy(doom_loop=DoomLoopPolicy(consecutive_threshold=3))
    )

    output = await runtime.run(request("loop"))

    assert output.finish_reason is FinishReason.STOP
    assert output.iterations == 5
    assert "doom_loop_detected" not in types(events)


# --- 5. provider failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        ProviderStreamError("scripted", "scripted", "connection reset mid-message"),
        ProviderHTTPError("scripted", "scripted", 400, "bad request"),
    ],
    ids=["stream-error", "http-error"],
)
async def test_a_provider_error_mid_message_fails_the_run_and_commits_nothing_partial(
    error: ProviderError,
) -> None:
    turn: list[TurnItem] = [ChatTextDelta(delta="Half an ans"), error]
    runtime, provider, events = make_runtime([turn, text_turn("never sent")])
    session = uuid.uuid4()

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request("question", session_id=session))

    assert types(events) == [
        "run_started",
        "context_built",
        "model_started",
        "chat_started",
        "chat_text_delta",
        "text_delta",
        "run_failed",
    ]
    run_id = events[0].run_id
    assert caught.value.cause is error
    assert caught.value.run_id == run_id
    assert caught.value.kind == "runtime"
    failed = events[-1]
    assert isinstance(failed, RunFailed)
    assert "scripted" in failed.error  # names the provider
    assert error.message in failed.error
    assert_run_shape(events, run_id, "run_failed")
    assert len(provider.requests) == 1
    assert [(m.role, m.content) for m in await history(runtime, session)] == [("user", "question")]


@pytest.mark.parametrize(
    "turn",
    [
        [ChatTextDelta(delta="cut off")],
        [
            ChatToolCallStarted(id="c1", name="add"),
            ChatToolCallArgumentsDelta(id="c1", delta='{"a": 1'),
        ],
    ],
    ids=["text", "tool-call"],
)
async def test_a_stream_ending_without_chat_finished_fails_the_run(turn: list[TurnItem]) -> None:
    runtime, provider, events = make_runtime([turn], tools=[add])
    session = uuid.uuid4()

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request("question", session_id=session))

    failed = events[-1]
    assert isinstance(failed, RunFailed)
    assert "without chat_finished" in failed.error
    assert isinstance(caught.value.cause, ProviderStreamError)
    assert_run_shape(events, caught.value.run_id or "", "run_failed")
    kinds = types(events)
    for never in (
        "chat_finished",
        "tool_call_completed",  # an unfinished call is not announced as complete
        "tool_execution_started",
        "assistant_message_committed",
        "usage_recorded",
    ):
        assert never not in kinds
    assert [m.role for m in await history(runtime, session)] == ["user"]


async def test_events_after_chat_finished_are_a_stream_error() -> None:
    turn: list[TurnItem] = [
        ChatFinished(finish_reason=FinishReason.STOP),
        ChatTextDelta(delta="late"),
    ]
    runtime, _, events = make_runtime([turn])

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request())

    assert isinstance(caught.value.cause, ProviderStreamError)
    assert "after chat_finished" in events[-1].error
    assert "assistant_message_committed" not in types(events)


async def test_a_generic_provider_exception_fails_the_run() -> None:
    boom = RuntimeError("socket on fire")
    runtime, _, events = make_runtime([[boom]])

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request())

    # translated once, at the provider boundary: a ProviderError naming provider and model
    cause = caught.value.cause
    assert isinstance(cause, ProviderError) and (cause.provider, cause.model) == ("scripted", "scripted")
    assert cause.__cause__ is boom
    assert types(events) == [
        "run_started",
        "context_built",
        "model_started",
        "chat_started",
        "run_failed",
    ]
    assert events[-1].error == "scripted/scripted: the provider raised RuntimeError: socket on fire"
    assert caught.value.run_id == events[0].run_id


async def test_an_exhausted_script_fails_the_run() -> None:
    runtime, _, events = make_runtime([tool_call_turn("add", {"a": 1, "b": 1})], tools=[add])

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request())

    assert isinstance(caught.value.cause, ProviderStreamError)
    assert "script exhausted" in events[-1].error
    assert_run_shape(events, events[0].run_id or "", "run_failed")


# --- 6. tool concurrency ---------------------------------------------------------------------


class Gauge:
    """An async tool that counts how many of its calls run at once; they wait for ``release``."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = 0
        self.peak = 0
        self.started: list[int] = []
        self.tool = tool(self.work, name="work")

    async def work(self, n: int) -> str:
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(n)
        try:
            await self.release.wait()
            for _ in range(3):
                await asyncio.sleep(0)
        finally:
            self.running -= 1
        return f"done {n}"


SIX_CALLS = [("work", {"n": n}, f"c{n}") for n in range(6)]


@pytest.mark.parametrize(
    ("policy", "control", "limit"),
    [
        (RuntimePolicy(max_tool_concurrency=2), None, 2),
        (RuntimePolicy(), Control(concurrency_limit=1), 1),
        (RuntimePolicy(max_tool_concurrency=3), Control(concurrency_limit=5), 3),
    ],
    ids=["policy-2", "control-1", "min-of-both"],
)
async def test_tool_calls_of_one_turn_run_concurrently_up_to_the_limit(
    policy: RuntimePolicy, control: Control | None, limit: int
) -> None:
    gauge = Gauge()
    turns = [tool_calls_turn(SIX_CALLS), text_turn("all done")]
    runtime, provider, events = make_runtime(turns, tools=[gauge.tool], policy=policy)

    task = asyncio.create_task(runtime.run(request("six"), control))
    await until(lambda: gauge.running == limit)
    await settle()  # give any call beyond the limit every chance to start
    assert gauge.running == limit
    assert len(gauge.started) == limit
    gauge.release.set()
    output = await task

    assert gauge.peak == limit
    assert sorted(gauge.started) == list(range(6))
    assert output.finish_reason is FinishReason.STOP
    finished = only(events, "tool_execution_finished")
    assert len(finished) == 6 and all(f.is_success for f in finished)
    # Committed in call order, whatever order they finished in.
    committed = only(events, "tool_message_committed")
    assert [c.call_id for c in committed] == [f"c{n}" for n in range(6)]
    tool_messages = [m for m in provider.requests[1].messages if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in tool_messages] == [
        (f"c{n}", f"done {n}") for n in range(6)
    ]
    assert_tool_call_order(events)


async def test_tool_results_are_committed_in_call_order_when_they_finish_in_reverse() -> None:
    gates = {n: asyncio.Event() for n in range(4)}
    finished_order: list[int] = []

    @tool
    async def wait_for(n: int) -> str:
        """Waits for its gate."""
        await gates[n].wait()
        finished_order.append(n)
        return f"r{n}"

    calls = [("wait_for", {"n": n}, f"c{n}") for n in range(4)]
    runtime, provider, events = make_runtime(
        [tool_calls_turn(calls), text_turn("ok")], tools=[wait_for]
    )
    task = asyncio.create_task(runtime.run(request("go")))
    await until(lambda: len(only(events, "tool_execution_started")) == 4)
    for n in reversed(range(4)):
        gates[n].set()
        await until(lambda n=n: n in finished_order)
    await task

    assert finished_order == [3, 2, 1, 0]
    assert [f.call_id for f in only(events, "tool_execution_finished")] == [
        "c3",
        "c2",
        "c1",
        "c0",
    ]
    assert [c.call_id for c in only(events, "tool_message_committed")] == ["c0", "c1", "c2", "c3"]
    assert [m.content for m in provider.requests[1].messages if m.role == "tool"] == [
        "r0",
        "r1",
        "r2",
        "r3",
    ]
    assert_tool_call_order(events)


# --- 7. one run at a time per session -------------------------------------------------------


async def test_concurrent_runs_on_one_session_are_serialised() -> None:
    gate = asyncio.Event()

    def turn(req: ChatRequest) -> list[TurnItem]:
        question = req.messages[-1].content
        if question == "A":
            return [gate, *text_turn("answer A")]
        return text_turn("answer B")

    runtime, _, events = make_runtime(turn)
    session = uuid.uuid4()

    run_a = asyncio.ensure_future(runtime.run(request("A", session_id=session, run_id="run-a")))
    run_b = asyncio.ensure_future(runtime.run(request("B", session_id=session, run_id="run-b")))
    both = asyncio.gather(run_a, run_b)
    await until(lambda: "model_started" in types(of_run(events, "run-a")))
    await settle()
    # B waits for the session: it has published nothing (run_started follows its claim, made
    # with the history read under the session gate) and has not read the history yet.
    assert types(of_run(events, "run-b")) == []
    gate.set()
    out_a, out_b = await both

    assert (out_a.output_text, out_b.output_text) == ("answer A", "answer B")
    positions = {(e.run_id, e.type): i for i, e in enumerate(events)}
    assert positions[("run-b", "run_started")] > positions[("run-a", "run_completed")]
    context_b = [e for e in events if isinstance(e, ContextBuilt) and e.run_id == "run-b"][0]
    assert context_b.message_count == 3  # A's user + assistant messages, then B's user message
    assert_run_shape(events, "run-a", "run_completed")
    assert_run_shape(events, "run-b", "run_completed")

    stored = await history(runtime, session)
    assert [(m.run_id, m.role) for m in stored] == [
        ("run-a", "user"),
        ("run-a", "assistant"),
        ("run-b", "user"),
        ("run-b", "assistant"),
    ]


async def test_a_run_id_that_is_already_running_is_rejected() -> None:
    gate = asyncio.Event()
    runtime, _, events = make_runtime([[gate, *text_turn("done")]])
    first = asyncio.create_task(runtime.run(request("one", run_id="same")))
    await until(lambda: "model_started" in types(events))
    before = list(events)

    with pytest.raises(InvalidRequest, match="already running"):
        await runtime.run(request("two", run_id="same"))

    assert events == before
    gate.set()
    assert (await first).run_id == "same"


# --- 8. many concurrent runs -----------------------------------------------------------------


async def test_two_hundred_concurrent_runs_keep_their_events_apart() -> None:
    @tool
    async def echo(text: str) -> str:
        """Echo the text."""
        await asyncio.sleep(0)
        return text.upper()

    def answer(req: ChatRequest) -> list[TurnItem]:
        question = [m for m in req.messages if m.role == "user"][-1].content
        tool_results = [m.content for m in req.messages if m.role == "tool"]
        if question.endswith("!") and not tool_results:
            return tool_call_turn("echo", {"text": question}, pieces=2)
        suffix = f" [{tool_results[0]}]" if tool_results else ""
        return text_turn(f"you said {question}{suffix}", pieces=3)

    runtime, _, events = make_runtime(answer, tools=[echo])
    inputs = [f"message {i}" + ("!" if i % 4 == 0 else "") for i in range(200)]

    outputs = await asyncio.gather(*(runtime.run(request(text)) for text in inputs))

    assert len(outputs) == 200
    assert len({o.run_id for o in outputs}) == 200
    assert len({o.session_id for o in outputs}) == 200
    by_run: dict[str, list[InvocationEvent]] = {}
    for event in events:
        assert event.run_id is not None
        by_run.setdefault(event.run_id, []).append(event)
    assert set(by_run) == {o.run_id for o in outputs}
    for text, output in zip(inputs, outputs, strict=True):
        mine = by_run[output.run_id]
        expected = f"you said {text}" + (f" [{text.upper()}]" if text.endswith("!") else "")
        assert output.output_text == expected
        assert mine[0].type == "run_started"
        assert [e.type for e in mine if e.type in TERMINAL] == ["run_completed"]
        assert mine[-1].type == "run_completed"
        assert "".join(e.delta for e in mine if isinstance(e, TextDelta)) == expected
        assert [e.message_count for e in mine if isinstance(e, ContextBuilt)] == [1]
        executions = [e for e in mine if isinstance(e, ToolExecutionFinished)]
        if text.endswith("!"):
            assert output.iterations == 2
            assert [e.result for e in executions] == [ToolSuccess(output=text.upper())]
            assert_tool_call_order(mine)
        else:
            assert output.iterations == 1
            assert executions == []


# --- 9. invalid requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "fragment"),
    [
        ({"provider": "nope"}, "unknown provider 'nope'"),
        ({"model": "gpt-9"}, "unknown model 'gpt-9'"),
        ({"input": ""}, "input must not be empty"),
        ({"input": "  \n\t "}, "input must not be empty"),
        ({"tool_choice": ToolChoice.tool("missing")}, "unknown tool 'missing'"),
    ],
    ids=["unknown-provider", "unknown-model", "empty-input", "blank-input", "unknown-tool-choice"],
)
async def test_an_invalid_request_raises_before_any_event(
    bad: dict[str, Any], fragment: str
) -> None:
    runtime, provider, events = make_runtime([text_turn("never")], tools=[add])
    fields: dict[str, Any] = {"provider": "scripted", "model": "scripted", "input": "hi", **bad}

    with pytest.raises(InvalidRequest) as caught:
        await runtime.run(RunRequest(**fields))

    assert fragment in str(caught.value)
    assert caught.value.kind == "invalid_request"
    assert isinstance(caught.value, ValueError)
    assert events == []
    assert provider.requests == []
    assert isinstance(runtime.store, MemoryStore) and runtime.store.session_ids == ()


async def test_tool_choice_naming_a_registered_tool_is_valid() -> None:
    runtime, provider, _ = make_runtime([text_turn("ok")], tools=[add])

    await runtime.run(request("hi", tool_choice=ToolChoice.tool("add")))

    assert provider.requests[0].tool_choice == ToolChoice.tool("add")


# --- 10. cancellation and the run deadline ---------------------------------------------------


async def test_cancel_before_start_raises_and_publishes_nothing() -> None:
    runtime, provider, events = make_runtime([text_turn("never")])
    control = Control()
    control.cancel()

    with pytest.raises(InvocationCancelled) as caught:
        await runtime.run(request(), control)

    assert caught.value.kind == "cancelled"
    assert events == []
    assert provider.requests == []


async def test_cancel_while_the_provider_streams_closes_the_stream_and_commits_nothing() -> None:
    gate = asyncio.Event()  # never set
    provider = TrackingProvider([[ChatTextDelta(delta="Thinking"), gate, *text_turn("never")]])
    runtime, _, events = make_runtime([], provider=provider)
    session = uuid.uuid4()
    control = Control()

    task = asyncio.create_task(runtime.run(request("question", session_id=session), control))
    await until(lambda: "text_delta" in types(events))
    await settle()
    control.cancel()
    with pytest.raises(InvocationCancelled) as caught:
        await task

    run_id = events[0].run_id
    assert caught.value.run_id == run_id
    assert types(events) == [
        "run_started",
        "context_built",
        "model_started",
        "chat_started",
        "chat_text_delta",
        "text_delta",
        "run_cancelled",
    ]
    assert_run_shape(events, run_id or "", "run_cancelled")
    assert (provider.cancelled, provider.closed) == (1, 1)
    assert [m.role for m in await history(runtime, session)] == ["user"]


async def test_cancel_while_a_tool_runs_cancels_the_tool_and_commits_no_tool_message() -> None:
    entered = asyncio.Event()
    never = asyncio.Event()
    outcome: list[str] = []

    @tool
    async def slow() -> str:
        """Waits for a gate that never opens."""
        entered.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        outcome.append("finished")
        return "never"

    runtime, provider, events = make_runtime(
        [tool_call_turn("slow", {}, call_id="c1"), text_turn("never")], tools=[slow]
    )
    session = uuid.uuid4()
    control = Control()

    task = asyncio.create_task(runtime.run(request("go", session_id=session), control))
    await entered.wait()
    control.cancel()
    with pytest.raises(InvocationCancelled) as caught:
        await task

    assert outcome == ["cancelled"]
    assert types(events)[-3:] == ["usage_recorded", "tool_execution_started", "run_cancelled"]
    assert_run_shape(events, caught.value.run_id or "", "run_cancelled")
    assert "tool_message_committed" not in types(events)
    assert "tool_execution_finished" not in types(events)
    assert len(provider.requests) == 1
    assert [m.role for m in await history(runtime, session)] == ["user", "assistant"]


async def test_a_session_continued_after_a_cancelled_tool_gives_the_model_a_valid_context() -> None:
    entered = asyncio.Event()
    never = asyncio.Event()

    @tool
    async def slow() -> str:
        """Waits for a gate that never opens."""
        entered.set()
        await never.wait()
        return "never"

    runtime, provider, events = make_runtime(
        [tool_call_turn("slow", {}, call_id="c1"), text_turn("second run answer")], tools=[slow]
    )
    session = uuid.uuid4()
    control = Control()
    task = asyncio.create_task(runtime.run(request("go", session_id=session), control))
    await entered.wait()
    control.cancel()
    with pytest.raises(InvocationCancelled):
        await task

    output = await runtime.run(request("again", session_id=session))

    assert output.output_text == "second run answer"
    context = provider.requests[1].messages
    assert [m.role for m in context] == ["user", "assistant", "tool", "user"]
    assert context[2].tool_call_id == "c1"
    assert context[2].content.startswith("Error: no result")
    # the store keeps what happened; the reply exists in the context only
    assert [m.role for m in await history(runtime, session)] == [
        "user", "assistant", "user", "assistant"
    ]


async def test_cancelling_the_callers_task_cancels_the_run() -> None:
    gate = asyncio.Event()  # never set
    provider = TrackingProvider([[gate, *text_turn("never")]])
    runtime, _, events = make_runtime([], provider=provider)

    task = asyncio.create_task(runtime.run(request("question")))
    await until(lambda: "chat_started" in types(events))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert types(events) == [
        "run_started",
        "context_built",
        "model_started",
        "chat_started",
        "run_cancelled",
    ]
    assert (provider.cancelled, provider.closed) == (1, 1)


async def test_the_run_deadline_fails_the_run_with_timed_out() -> None:
    gate = asyncio.Event()  # never set: only the deadline can end this run
    provider = TrackingProvider([[gate, *text_turn("never")]])
    runtime, _, events = make_runtime([], provider=provider)

    with pytest.raises(InvocationTimedOut) as caught:
        await runtime.run(request("question"), Control(timeout=0.05))

    run_id = events[0].run_id
    assert caught.value.kind == "timeout"
    assert caught.value.run_id == run_id
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, InvocationFailed)
    assert types(events) == [
        "run_started",
        "context_built",
        "model_started",
        "chat_started",
        "run_failed",
    ]
    assert "timed out" in events[-1].error
    assert (provider.cancelled, provider.closed) == (1, 1)


async def test_a_run_waiting_for_its_session_can_be_cancelled() -> None:
    gate = asyncio.Event()
    runtime, provider, events = make_runtime([[gate, *text_turn("first")], text_turn("second")])
    session = uuid.uuid4()
    control = Control()

    first = asyncio.create_task(runtime.run(request("one", session_id=session, run_id="r1")))
    second = asyncio.create_task(
        runtime.run(request("two", session_id=session, run_id="r2"), control)
    )
    await until(lambda: "chat_started" in types(events))
    await settle()
    control.cancel()
    with pytest.raises(InvocationCancelled):
        await second
    gate.set()
    await first

    # Stopped before its claim: no event published, nothing stored.
    assert types(of_run(events, "r2")) == []
    assert await runtime.store.get_run("r2") is None
    assert len(provider.requests) == 1
    assert [(m.run_id, m.role) for m in await history(runtime, session)] == [
        ("r1", "user"),
        ("r1", "assistant"),
    ]
    # The session is free again afterwards, and the cancelled run left nothing in it.
    third = await runtime.run(request("three", session_id=session))
    assert third.output_text == "second"
    assert [m.content for m in provider.requests[1].messages] == ["one", "first", "three"]


async def test_a_run_timing_out_while_waiting_for_its_session_publishes_and_stores_nothing() -> None:
    gate = asyncio.Event()
    runtime, provider, events = make_runtime([[gate, *text_turn("first")], text_turn("second")])
    session = uuid.uuid4()
    first = asyncio.create_task(runtime.run(request("one", session_id=session, run_id="r1")))
    await until(lambda: "chat_started" in types(events))

    with pytest.raises(InvocationTimedOut) as caught:
        await runtime.run(request("two", session_id=session, run_id="r2"), Control(timeout=0.01))
    assert caught.value.run_id == "r2"
    gate.set()
    await first

    assert types(of_run(events, "r2")) == []
    assert await runtime.store.get_run("r2") is None
    assert [m.run_id for m in await history(runtime, session)] == ["r1", "r1"]


class _HeldClaimStore(MemoryStore):
    """A MemoryStore whose ``begin_run`` waits for ``release`` before it claims the run."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def begin_run(self, record: Any, messages: Any, **kw: Any) -> Any:
        self.entered.set()
        await self.release.wait()
        return await super().begin_run(record, messages, **kw)


async def test_a_run_cancelled_during_its_claim_still_stores_its_terminal_event() -> None:
    store = _HeldClaimStore()
    runtime = AgentRuntime(providers=[ScriptedProvider([text_turn("never")])], store=store)
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)
    control = Control()
    run = asyncio.create_task(runtime.run(request("one", run_id="r1"), control))
    await store.entered.wait()
    control.cancel()  # the claim is in flight: it completes, then the run is cancelled
    await settle()
    assert types(events) == []
    store.release.set()
    with pytest.raises(InvocationCancelled):
        await run

    assert types(events) == ["run_started", "run_cancelled"]
    stored = await store.get_run("r1")
    assert stored is not None and (stored.status, stored.error) == ("cancelled", "cancelled")
    assert [e.type for e in await store.read_events("r1")] == ["run_started", "run_cancelled"]
    assert [m.role for m in await store.load_history(stored.session_id)] == ["user"]


@pytest.mark.parametrize(
    "policy",
    [RuntimePolicy(), RuntimePolicy(tool_timeout=None, provider_timeout=None)],
    ids=["with-timeouts", "without-timeouts"],
)
@pytest.mark.parametrize("at", range(len(ONE_TOOL_CALL_RUN)))
async def test_cancel_from_an_observer_at_any_event_ends_the_run_consistently(
    at: int, policy: RuntimePolicy
) -> None:
    turns = [tool_call_turn("add", {"a": 1, "b": 2}, pieces=3), text_turn("3")]
    runtime, _, events = make_runtime(turns, tools=[add], policy=policy)
    control = Control()

    def cancel_at(event: InvocationEvent) -> None:
        if len(events) == at + 1:
            control.cancel()

    runtime.events.subscribe(cancel_at)

    try:
        output = await runtime.run(request("add"), control)
    except InvocationCancelled as exc:
        assert exc.run_id == events[0].run_id
        outcome = "run_cancelled"
    else:
        assert output.output_text == "3"
        outcome = "run_completed"

    assert types(events)[: at + 1] == ONE_TOOL_CALL_RUN[: at + 1]
    assert_run_shape(events, events[0].run_id or "", outcome)
    # A cancel that returns before the terminal event is published wins, also when the run
    # has no await point left (a cancel from a subscriber of chat_finished,
    # assistant_message_committed or usage_recorded of the last turn); events, result and
    # store agree.
    if at < len(ONE_TOOL_CALL_RUN) - 1:
        assert outcome == "run_cancelled"
    else:  # cancelled from a subscriber of run_completed itself: the run had ended
        assert outcome == "run_completed"
    record = await runtime.store.get_run(events[0].run_id or "")
    assert record is not None
    assert record.status == outcome.removeprefix("run_")


async def test_the_provider_timeout_fails_the_run() -> None:
    gate = asyncio.Event()  # never set
    provider = TrackingProvider([[ChatTextDelta(delta="so"), gate, *text_turn("never")]])
    runtime, _, events = make_runtime(
        [], provider=provider, policy=RuntimePolicy(provider_timeout=0.05)
    )
    session = uuid.uuid4()

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request("question", session_id=session))

    assert not isinstance(caught.value, InvocationTimedOut)  # the model, not the run deadline
    assert isinstance(caught.value.cause, ProviderError)
    assert types(events)[-2:] == ["text_delta", "run_failed"]
    assert "scripted" in events[-1].error and "0.05s" in events[-1].error
    assert (provider.cancelled, provider.closed) == (1, 1)
    assert [m.role for m in await history(runtime, session)] == ["user"]


async def test_every_event_of_a_run_maps_to_its_session_while_it_runs() -> None:
    runtime, _, events = make_runtime(
        [tool_call_turn("add", {"a": 1, "b": 2}), text_turn("3")], tools=[add]
    )
    contexts: list[tuple[str | None, uuid.UUID | None]] = []
    runtime.events.subscribe(
        lambda e: contexts.append(
            (runtime.context_for(e.run_id).run_id, runtime.context_for(e.run_id).session_id)
        )
    )
    session = uuid.uuid4()

    output = await runtime.run(request("add", session_id=session))

    assert contexts == [(output.run_id, session)] * len(events)
    assert runtime.context_for(output.run_id).session_id is None  # forgotten once it ended


# --- 11. fault-isolated observers ------------------------------------------------------------


async def test_a_raising_observer_breaks_neither_the_run_nor_other_observers() -> None:
    provider = ScriptedProvider([tool_call_turn("add", {"a": 2, "b": 3}), text_turn("5")])
    runtime = AgentRuntime(providers=[provider], tools=[add])
    errors: list[SubscriberError] = []
    runtime.errors.subscribe(errors.append)

    def explode_on(event: InvocationEvent) -> None:
        raise RuntimeError(f"observer cannot take {event.type}")

    runtime.events.subscribe(explode_on)
    collected: list[InvocationEvent] = []
    runtime.events.subscribe(collected.append)

    output = await runtime.run(request("add"))

    assert output.output_text == "5"
    assert collected[0].type == "run_started" and collected[-1].type == "run_completed"
    assert len(collected) == 24
    assert len(errors) == len(collected)
    assert [e.event for e in errors] == collected
    assert all(isinstance(e.cause, RuntimeError) for e in errors)
    assert "observer cannot take run_started" in errors[0].message


# --- 12. the offline provider end to end -----------------------------------------------------


def offline_runtime() -> tuple[AgentRuntime, list[InvocationEvent]]:
    runtime = AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools())
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)
    return runtime, events


def offline(text: str, **kwargs: Any) -> RunRequest:
    return RunRequest(provider="offline", model="offline", input=text, **kwargs)


async def test_offline_provider_calculates_with_the_calculate_tool() -> None:
    runtime, events = offline_runtime()

    output = await runtime.run(offline("what is 2 + 3?"))

    calls = [e.call for e in only(events, "tool_call_completed")]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("calculate", {"expression": "2 + 3"})
    ]
    assert [e.result for e in only(events, "tool_execution_finished")] == [ToolSuccess(output="5")]
    assert "5" in output.output_text
    assert output.output_text == "2 + 3 = 5."
    assert output.iterations == 2
    assert output.finish_reason is FinishReason.STOP
    assert len(only(events, "tool_call_delta")) > 1  # arguments stream in fragments
    assert output.total_usage.total_tokens > 0
    assert_tool_call_order(events)


async def test_offline_provider_tells_the_time_with_the_now_tool() -> None:
    runtime, events = offline_runtime()

    output = await runtime.run(offline("what time is it?"))

    assert [e.call.name for e in only(events, "tool_call_completed")] == ["now"]
    (finished,) = only(events, "tool_execution_finished")
    assert finished.is_success
    assert is_utc_now(datetime.fromisoformat(finished.result.output))
    assert output.output_text == f"It is {finished.result.output} (UTC)."


async def test_offline_provider_explains_itself_without_calling_a_tool() -> None:
    runtime, events = offline_runtime()

    output = await runtime.run(offline("hello"))

    assert "tool_call_started" not in types(events)
    assert output.iterations == 1
    assert "offline" in output.output_text and "calculate" in output.output_text
    assert "".join(e.delta for e in only(events, "text_delta")) == output.output_text


async def test_offline_provider_calls_no_tool_when_tool_choice_is_none() -> None:
    runtime, events = offline_runtime()

    output = await runtime.run(offline("what is 2 + 3?", tool_choice=ToolChoice.none()))

    assert "tool_call_started" not in types(events)
    assert "tool_execution_started" not in types(events)
    assert output.iterations == 1
    assert output.finish_reason is FinishReason.STOP


# --- lifetime: aclose / async with ----------------------------------------------------------


async def test_aclose_cancels_running_runs_stores_them_and_completes_the_stream() -> None:
    gate = asyncio.Event()
    runtime, _, events = make_runtime([[gate, *text_turn("never")]])
    completed: list[bool] = []
    runtime.events.subscribe(on_completed=lambda: completed.append(True))
    task = asyncio.ensure_future(runtime.run(request()))
    await until(lambda: "chat_started" in types(events))
    run_id = events[0].run_id

    await runtime.aclose()

    assert task.done()
    with pytest.raises(InvocationCancelled):
        task.result()
    assert_run_shape(events, run_id, "run_cancelled")
    assert completed == [True]  # the bus completed its observers
    record = await runtime.store.get_run(run_id)
    assert record is not None and record.status == "cancelled"  # an owned store closes after
    assert runtime.is_closed


async def test_a_closed_runtime_refuses_new_runs_and_aclose_is_idempotent() -> None:
    runtime, _, events = make_runtime([text_turn("hi")])
    await runtime.aclose()
    await runtime.aclose()
    with pytest.raises(UserError, match="closed"):
        await runtime.run(request())
    assert events == []


async def test_async_with_closes_an_owned_store_but_not_a_passed_one(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed = SqliteStore(tmp_path / "s.db")
    async with AgentRuntime(providers=[ScriptedProvider([text_turn("a")])], store=passed) as runtime:
        out = await runtime.run(request())
        assert [m.role for m in await runtime.history(out.session_id)] == ["user", "assistant"]
    assert runtime.is_closed
    record = await passed.get_run(out.run_id)  # the caller's store is still open
    assert record is not None and record.status == "completed"
    await passed.close()

    closed: list[bool] = []

    class Owned(MemoryStore):
        async def close(self) -> None:
            closed.append(True)

    monkeypatch.setattr(rxinvoke.runtime, "MemoryStore", Owned)
    async with AgentRuntime(providers=[ScriptedProvider([text_turn("a")])]) as runtime:
        assert isinstance(runtime.store, Owned)  # the default store: the runtime made it
        await runtime.run(request())
    assert closed == [True]  # what the runtime made itself is closed with it


async def test_history_is_the_sessions_stored_messages() -> None:
    runtime, _, _ = make_runtime([text_turn("one"), text_turn("two")])
    first = await runtime.run(request("a"))
    await runtime.run(request("b", session_id=first.session_id))
    assert [m.content for m in await runtime.history(first.session_id)] == ["a", "one", "b", "two"]
    assert await runtime.history(uuid.uuid4()) == []


class _Stamping:
    """Yields its text fragments with the request's run id (``stamp``) or without."""

    def __init__(self, stamp: bool) -> None:
        self.stamp = stamp
        self.yielded: list[ChatTextDelta] = []

    @property
    def id(self) -> str:
        return "stamping"

    @property
    def models(self) -> Sequence[str]:
        return ("m",)

    async def stream(self, request: ChatRequest) -> AsyncIterator[Any]:
        for word in ("a ", "b"):
            event = ChatTextDelta(delta=word, run_id=request.run_id if self.stamp else None)
            self.yielded.append(event)
            yield event
        yield ChatFinished(finish_reason=FinishReason.STOP)


@pytest.mark.parametrize("stamp", [True, False], ids=["stamped", "unstamped"])
async def test_a_fragment_stamped_with_the_run_id_is_published_as_it_is(stamp: bool) -> None:
    provider = _Stamping(stamp)
    runtime = AgentRuntime(providers=[provider])
    seen: list[Any] = []
    runtime.events.subscribe(seen.append)
    out = await runtime.run(RunRequest(input="hi"))
    published = [e for e in seen if e.type == "chat_text_delta"]
    assert [e.run_id for e in published] == [out.run_id] * 2
    assert [e.delta for e in published] == ["a ", "b"] and out.output_text == "a b"
    same = [p is y for p, y in zip(published, provider.yielded, strict=True)]
    assert same == [stamp, stamp]  # stamped: no copy; unstamped: a copy with the run id


async def test_a_runtime_name_that_is_not_text_is_refused_at_construction() -> None:
    # run_started carries the name unvalidated: a wrong one is refused before any run
    with pytest.raises(TypeError, match="name must be a str"):
        AgentRuntime(name=7)  # type: ignore[arg-type]
    runtime = AgentRuntime(providers=[ScriptedProvider([ScriptedProvider.text_turn("hi")])], name="edge-1")
    events: list = []
    runtime.events.subscribe(events.append)
    await runtime.run(request("x"))
    assert events[0].type == "run_started" and events[0].runtime == "edge-1"
