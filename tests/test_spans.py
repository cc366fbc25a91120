"""The span model (rxinvoke.spans) and the one-line reprs of events and records (issue 10)."""

from __future__ import annotations

import asyncio
import typing
from typing import Any

import pytest
from tests_support_spans import T0, at, one_run_with_overlapping_tools  # noqa: E402,F401

from rxinvoke import (
    AgentRuntime,
    EmitRequest,
    InvocationCancelled,
    InvocationEvent,
    OfflineProvider,
    RuntimeInvocation,
    ScriptedProvider,
    builtin_tools,
    tool,
)
from rxinvoke.events import (
    ChatFinished,
    ModelStarted,
    RunCompleted,
    RunResumed,
    RunStarted,
    TextDelta,
    ToolExecutionStarted,
    ToolFailure,
    UsageRecorded,
)
from rxinvoke.messages import FinishReason, TokenUsage
from rxinvoke.spans import spans


def test_spans_form_the_run_tree_with_times_and_lanes() -> None:
    tree = spans(one_run_with_overlapping_tools())
    kinds = [(s.kind, s.name) for s in tree]
    assert kinds == [
        ("run", "run"), ("model_call", "chat m"), ("tool_execution", "execute_tool search"),
        ("tool_execution", "execute_tool open"), ("tool_execution", "execute_tool open"),
        ("model_call", "chat m"),
    ]
    run, model1, search, open_b, open_c, model2 = tree
    assert run.parent_id is None and all(s.parent_id == run.span_id for s in tree[1:])
    assert run.duration_ms == pytest.approx(91) and run.status == "ok"
    assert run.attributes["finish_reason"] == "stop" and run.attributes["iterations"] == 2
    assert model1.duration_ms == pytest.approx(40)
    assert model1.attributes["first_fragment_ms"] == pytest.approx(20)
    assert model1.attributes["streaming_ms"] == pytest.approx(20)
    assert model1.attributes["total_tokens"] == 12 and model1.attributes["iteration"] == 1
    assert (search.attributes["lane"], open_b.attributes["lane"], open_c.attributes["lane"]) == (0, 1, 0)
    assert open_b.status == "error" and open_b.attributes["error"] == "404"
    assert search.status == open_c.status == "ok"
    assert model2.attributes.get("first_fragment_ms") is None


def test_what_a_dead_attempt_left_open_ends_interrupted_where_the_run_resumed() -> None:
    r = "run-r"
    events: list[Any] = [
        RunStarted(run_id=r, session_id="s", provider="p", model="m", runtime="w1", timestamp=at(0)),
        ToolExecutionStarted(run_id=r, call_id="c1", tool_name="book", timestamp=at(5)),
        ModelStarted(run_id=r, provider="p", model="m", iteration=2, timestamp=at(10)),
        TextDelta(run_id=r, delta="a", timestamp=at(12)),
        # the process died; another went on
        RunResumed(run_id=r, session_id="s", after_seq=4, attempt=2, runtime="w2", timestamp=at(500)),
        ModelStarted(run_id=r, provider="p", model="m", iteration=2, timestamp=at(510)),
        ChatFinished(run_id=r, finish_reason=FinishReason.STOP, timestamp=at(530)),
        UsageRecorded(run_id=r, usage=TokenUsage(input_tokens=1, output_tokens=1, total_tokens=2), timestamp=at(530)),
        RunCompleted(run_id=r, finish_reason=FinishReason.STOP, iterations=2, timestamp=at(540)),
    ]
    run, tool_span, cut, model = spans(events)
    assert run.status == "ok" and run.attributes["attempts"] == 2 and run.attributes["runtime"] == "w2"
    assert (tool_span.status, tool_span.end, tool_span.attributes["error"]) == ("error", at(500), "interrupted")
    assert (cut.status, cut.end, cut.attributes["error"]) == ("error", at(500), "interrupted")
    assert (model.status, model.start, model.end) == ("ok", at(510), at(530))
    # a run view that starts at the resumption (another process's live events) has its run span
    run_only, model_only = spans(events[4:])
    assert run_only.start == at(500) and run_only.attributes["session_id"] == "s"
    assert model_only.status == "ok"


def test_a_run_still_going_has_running_spans() -> None:
    events = one_run_with_overlapping_tools()[:6]  # tool b and a still executing
    tree = spans(events)
    assert tree[0].status == "running" and tree[0].end is None and tree[0].duration_ms is None
    assert [s.status for s in tree if s.kind == "tool_execution"] == ["running", "running"]


def test_spans_of_concurrent_runs_are_never_mixed() -> None:
    a = one_run_with_overlapping_tools()
    b = [e.model_copy(update={"run_id": "run-2"}) for e in a]
    mixed = [e for pair in zip(a, b, strict=True) for e in pair]
    tree = spans(mixed)
    assert {s.run_id for s in tree[:6]} == {"run-1"} and {s.run_id for s in tree[6:]} == {"run-2"}
    assert [s.name for s in tree[:6]] == [s.name for s in tree[6:]]


async def test_spans_of_a_real_run_and_a_cancelled_one() -> None:
    inv = RuntimeInvocation(AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools()))
    events: list[InvocationEvent] = []
    inv.observe().subscribe(events.append)
    await inv.emit(EmitRequest("what is 2 + 3?"))
    tree = spans(events)
    assert [s.kind for s in tree] == ["run", "model_call", "tool_execution", "model_call"]
    assert tree[2].attributes["tool_name"] == "calculate"

    gate = asyncio.Event()
    provider = ScriptedProvider([[gate]])
    cancelled = RuntimeInvocation(AgentRuntime(providers=[provider]))
    more: list[InvocationEvent] = []
    cancelled.observe().subscribe(more.append)
    calling = asyncio.Event()
    cancelled.observe("chat_started").subscribe(lambda e: calling.set())
    stream = cancelled.stream(EmitRequest("hi"))
    subscription = stream.subscribe(lambda e: None)
    await calling.wait()  # the model call is under way
    subscription.dispose()
    with pytest.raises(InvocationCancelled):
        await stream.result
    tree = spans(more)
    assert tree[0].status == "cancelled" and tree[1].status == "cancelled"


# --- one-line reprs -----------------------------------------------------------------------------


def every_event_kind() -> list[Any]:
    import rxinvoke.events as ev

    long = "x" * 10_000
    made = []
    for cls in typing.get_args(typing.get_args(ev.InvocationEvent)[0]):
        fields: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            if name in ("type", "timestamp") or not info.is_required():
                continue
            annotation = str(info.annotation)
            if name == "run_id":
                fields[name] = "0123456789abcdef-run"
            elif name == "call":
                fields[name] = ev.ToolCall(id="c" * 40, name="t" * 50, arguments="{" + long + "}")
            elif name == "result":
                fields[name] = ToolFailure(error=long)
            elif name == "usage":
                fields[name] = TokenUsage(total_tokens=3)
            elif name == "finish_reason":
                fields[name] = FinishReason.STOP
            elif name == "reason":
                fields[name] = "proactive"
            elif "bool" in annotation:
                fields[name] = True
            elif "int" in annotation or "float" in annotation:
                fields[name] = 12345
            else:
                fields[name] = long
        made.append(cls(**fields))
    return made


def test_every_event_repr_is_one_short_line() -> None:
    events = every_event_kind()
    assert len(events) == 29
    for event in events:
        text = repr(event)
        assert len(text) < 160, text
        assert "\n" not in text and text.startswith(event.type + "(")
        assert "datetime.datetime" not in text
        if event.run_id:
            assert "run 01234567" in text


async def test_records_and_outputs_have_short_reprs() -> None:
    @tool
    def shout(text: str) -> str:
        """Shout."""
        return text.upper()

    provider = ScriptedProvider([ScriptedProvider.tool_call_turn("shout", {"text": "a" * 500}), ScriptedProvider.text_turn("b" * 5000)])
    runtime = AgentRuntime(providers=[provider], tools=[shout])
    out = await runtime.run(rxinvoke_request())
    record = await runtime.store.get_run(out.run_id)
    envelopes = await runtime.store.read_events(out.run_id)
    history = await runtime.history(out.session_id)
    for value in (out, record, out.total_usage, *envelopes, *history):
        text = repr(value)
        assert len(text) < 160 and "\n" not in text, text
    assert repr(out).startswith(f"RunOutput(run {out.run_id[:8]}, stop, 2 iterations")
    assert repr(out.total_usage).startswith("TokenUsage(in ")


def rxinvoke_request() -> Any:
    from rxinvoke import RunRequest

    return RunRequest("go")


def test_chat_twins_are_exactly_the_chat_events_with_an_agent_twin() -> None:
    from rxinvoke.events import CHAT_TWINS

    chat = [e.with_run_id("r") for e in every_event_kind() if e.type.startswith("chat_")]
    with_twin = {e.type for e in chat if e.as_agent() is not None}
    assert with_twin == CHAT_TWINS
