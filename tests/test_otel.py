"""OpenTelemetry GenAI export (issue 15 §3) with the SDK's in-memory span exporter and metric
reader: names, kinds, attributes and values, the parent/child tree (the same as the notebook's
span model), timing from the events, content only when asked, concurrent runs never mixed,
cancelled and failed runs' status, the two histograms."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from rxinvoke import (  # noqa: E402
    AgentRuntime,
    Control,
    InvocationCancelled,
    InvocationEvent,
    InvocationFailed,
    MemoryStore,
    ProviderHTTPError,
    RunRequest,
    ScriptedProvider,
    TokenUsage,
    spans,
    tool,
)
from rxinvoke.otel import _ns, instrument  # noqa: E402
from rxinvoke.providers import Refuse  # noqa: E402

text_turn = ScriptedProvider.text_turn
tool_call_turn = ScriptedProvider.tool_call_turn
FIRST = TokenUsage(input_tokens=5, output_tokens=2, total_tokens=7)
SECOND = TokenUsage(input_tokens=11, output_tokens=3, total_tokens=14)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def explode() -> str:
    """Fail."""
    raise RuntimeError("kaboom")


class Otel:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self) -> list[Any]:
        return sorted(self.exporter.get_finished_spans(), key=lambda s: s.start_time)

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += list(metric.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    yield o
    o.tracer_provider.shutdown()
    o.meter_provider.shutdown()


def rig(otel: Otel, turns: Any, *, tools: Any = (add,), capture: bool = False, name: str | None = None) -> tuple[AgentRuntime, list[InvocationEvent], Any]:
    runtime = AgentRuntime(providers=[ScriptedProvider(turns)], tools=tools, store=MemoryStore(), name=name)
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)
    handle = instrument(runtime, otel.tracer_provider, otel.meter_provider, capture_content=capture)
    return runtime, events, handle


def request(session: uuid.UUID | None = None) -> RunRequest:
    return RunRequest(provider="scripted", model="scripted", input="add 2 and 3", session_id=session)


W1 = [tool_call_turn("add", {"a": 2, "b": 3}, call_id="call_1", pieces=3, usage=FIRST), text_turn("5", pieces=2, usage=SECOND)]


async def test_a_run_is_an_invoke_agent_span_with_chat_and_execute_tool_children(otel: Otel) -> None:
    runtime, events, _ = rig(otel, W1, name="helper")
    session = uuid.uuid4()
    output = await runtime.run(request(session))

    got = otel.spans()
    assert [(s.name, s.kind) for s in got] == [
        ("invoke_agent helper", SpanKind.INTERNAL),
        ("chat scripted", SpanKind.CLIENT),
        ("execute_tool add", SpanKind.INTERNAL),
        ("chat scripted", SpanKind.CLIENT),
    ]
    root, chat1, tool_span, chat2 = got
    assert root.parent is None and all(s.parent.span_id == root.context.span_id for s in got[1:])
    assert len({s.context.trace_id for s in got}) == 1
    assert dict(root.attributes) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": "helper",
        "gen_ai.provider.name": "scripted",
        "gen_ai.request.model": "scripted",
        "gen_ai.conversation.id": str(session),
        "rxinvoke.run_id": output.run_id,
        "rxinvoke.finish_reason": "stop",
        "rxinvoke.iterations": 2,
    }
    assert chat1.attributes["gen_ai.operation.name"] == "chat"
    assert chat1.attributes["gen_ai.response.finish_reasons"] == ("tool_calls",)
    assert (chat1.attributes["gen_ai.usage.input_tokens"], chat1.attributes["gen_ai.usage.output_tokens"]) == (5, 2)
    assert chat2.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert chat1.attributes["gen_ai.response.time_to_first_chunk"] >= 0
    assert {k: tool_span.attributes[k] for k in ("gen_ai.tool.name", "gen_ai.tool.call.id", "gen_ai.tool.type")} == {
        "gen_ai.tool.name": "add", "gen_ai.tool.call.id": "call_1", "gen_ai.tool.type": "function"
    }
    assert all(s.status.status_code is StatusCode.UNSET for s in got)
    # no content by default, and never a span per fragment
    assert not any(k.startswith(("gen_ai.tool.call.arguments", "gen_ai.output")) for s in got for k in s.attributes)
    # timing: the events' own timestamps
    started = next(e for e in events if e.type == "run_started")
    ended = next(e for e in events if e.type == "run_completed")
    assert (root.start_time, root.end_time) == (_ns(started.timestamp), _ns(ended.timestamp))


async def test_the_exporter_and_the_span_model_give_the_same_tree(otel: Otel) -> None:
    runtime, events, _ = rig(otel, W1)
    await runtime.run(request())

    model = spans(events)
    exported = otel.spans()
    assert len(model) == len(exported)
    by_id = {s.span_id: s for s in model}
    otel_ids = {s.context.span_id: s for s in exported}
    for ours, theirs in zip(model, exported, strict=True):
        assert (_ns(ours.start), _ns(ours.end)) == (theirs.start_time, theirs.end_time)
        expected = "invoke_agent rxinvoke" if ours.kind == "run" else ours.name
        assert theirs.name == expected
        parent = otel_ids[theirs.parent.span_id] if theirs.parent else None
        if ours.parent_id is None:
            assert parent is None
        else:
            assert parent is not None and parent.name.startswith("invoke_agent")
            assert by_id[ours.parent_id].kind == "run"


async def test_content_is_exported_only_when_asked(otel: Otel) -> None:
    runtime, _, _ = rig(otel, W1, capture=True)
    await runtime.run(request())
    root, chat1, tool_span, chat2 = otel.spans()
    assert json.loads(tool_span.attributes["gen_ai.tool.call.arguments"]) == {"a": 2, "b": 3}
    assert tool_span.attributes["gen_ai.tool.call.result"] == "5"
    output = json.loads(chat2.attributes["gen_ai.output.messages"])
    assert output == [{"role": "assistant", "parts": [{"type": "text", "content": "5"}]}]
    assert "gen_ai.output.messages" not in chat1.attributes  # it only called a tool


async def test_concurrent_runs_are_never_mixed(otel: Otel) -> None:
    def answer(req: Any) -> Any:
        return text_turn(f"answer for {req.run_id}")

    runtime, _, _ = rig(otel, answer)
    sessions = [uuid.uuid4() for _ in range(5)]
    outputs = await asyncio.gather(*(runtime.run(request(s)) for s in sessions))

    got = otel.spans()
    roots = [s for s in got if s.parent is None]
    assert len(roots) == 5 and len({r.context.trace_id for r in roots}) == 5
    for root in roots:
        children = [s for s in got if s.parent is not None and s.parent.span_id == root.context.span_id]
        assert [c.name for c in children] == ["chat scripted"]
        assert all(c.context.trace_id == root.context.trace_id for c in children)
        assert children[0].attributes["gen_ai.conversation.id"] == root.attributes["gen_ai.conversation.id"]
    assert {r.attributes["rxinvoke.run_id"] for r in roots} == {o.run_id for o in outputs}


async def test_a_cancelled_run_and_a_failed_one_are_errors(otel: Otel) -> None:
    gate = asyncio.Event()
    runtime, events, _ = rig(otel, [[gate, *text_turn("never")], [Refuse(ProviderHTTPError("scripted", "scripted", 400, "bad"))]])
    control = Control()
    streaming = asyncio.Event()
    runtime.events.subscribe(lambda e: streaming.set() if e.type == "chat_started" else None)
    run = asyncio.ensure_future(runtime.run(request(), control))
    await asyncio.wait_for(streaming.wait(), 30)
    control.cancel()
    with pytest.raises(InvocationCancelled):
        await run
    with pytest.raises(InvocationFailed):
        await runtime.run(request())

    roots = [s for s in otel.spans() if s.parent is None]
    assert [(r.status.status_code, r.attributes["error.type"]) for r in roots] == [
        (StatusCode.ERROR, "cancelled"), (StatusCode.ERROR, "run_failed")
    ]
    cancelled_chat = next(s for s in otel.spans() if s.name.startswith("chat"))
    assert cancelled_chat.status.status_code is StatusCode.ERROR
    assert cancelled_chat.attributes["error.type"] == "cancelled"


async def test_a_failed_tool_is_an_error_span_and_the_run_is_not(otel: Otel) -> None:
    runtime, _, _ = rig(otel, [tool_call_turn("explode", {}), text_turn("it failed")], tools=[explode])
    await runtime.run(request())
    tool_span = next(s for s in otel.spans() if s.name == "execute_tool explode")
    assert tool_span.status.status_code is StatusCode.ERROR
    assert tool_span.attributes["error.type"] == "ToolExecutionError"
    assert "kaboom" in (tool_span.status.description or "")
    root = next(s for s in otel.spans() if s.parent is None)
    assert root.status.status_code is StatusCode.UNSET


async def test_the_token_usage_and_operation_duration_histograms(otel: Otel) -> None:
    runtime, _, _ = rig(otel, W1)
    await runtime.run(request())
    tokens = otel.points("gen_ai.client.token.usage")
    by_type = {p.attributes["gen_ai.token.type"]: p for p in tokens}
    assert (by_type["input"].sum, by_type["input"].count) == (16, 2)
    assert (by_type["output"].sum, by_type["output"].count) == (5, 2)
    assert by_type["input"].attributes["gen_ai.operation.name"] == "chat"
    (duration,) = otel.points("gen_ai.client.operation.duration")
    assert duration.count == 2 and duration.sum >= 0


async def test_disposing_stops_the_export(otel: Otel) -> None:
    runtime, _, handle = rig(otel, [text_turn("one"), text_turn("two")])
    await runtime.run(request())
    handle.dispose()
    assert not runtime.bus._routes  # every route of the exporter is gone
    await runtime.run(request())
    assert len([s for s in otel.spans() if s.parent is None]) == 1


async def test_only_a_model_calls_first_fragment_is_routed_to_the_exporter(otel: Otel) -> None:
    runtime, _, _ = rig(otel, W1)
    routed: list[tuple[str, int]] = []  # the exporter's fragment routes as each event arrives
    runtime.events.subscribe(  # (runtime.events is served before the kind routes)
        lambda e: routed.append((e.type, len(runtime.bus._routes.get("text_delta", ()))))
    )
    await runtime.run(request())
    assert [n for kind, n in routed if kind == "chat_started"] == [1, 1]  # awaiting a first fragment
    fragments = [n for kind, n in routed if kind in ("text_delta", "tool_call_started", "tool_call_delta")]
    assert len(fragments) > 2 and fragments.count(1) == 2 and fragments[0] == 1  # each call's first only
    assert routed[-1][1] == 0
    chat1, chat2 = (s for s in otel.spans() if s.name.startswith("chat"))
    assert "gen_ai.response.time_to_first_chunk" in chat1.attributes
    assert "gen_ai.response.time_to_first_chunk" in chat2.attributes


async def test_an_exporter_fault_is_reported_and_never_reaches_the_run(otel: Otel) -> None:
    class Broken(TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            tracer = super().get_tracer(*args, **kwargs)

            def start_span(*a: Any, **k: Any) -> Any:
                raise RuntimeError("exporter down")

            tracer.start_span = start_span  # type: ignore[method-assign]
            return tracer

    runtime = AgentRuntime(providers=[ScriptedProvider(W1)], tools=[add], store=MemoryStore())
    errors: list[Any] = []
    runtime.bus.errors.subscribe(errors.append)
    instrument(runtime, Broken(), otel.meter_provider)
    output = await runtime.run(request())
    assert output.output_text == "5"
    assert [(e.subscription, e.event.type) for e in errors] == [("otel", "run_completed")]
    assert "exporter down" in errors[0].message


async def test_a_run_taken_over_from_a_dead_process_is_traced_from_its_run_resumed(otel: Otel, tmp_path: Any) -> None:
    from test_resume import die_inside

    from rxinvoke import SqliteStore

    entered = asyncio.Event()

    @tool(name="add")
    async def stuck(a: int, b: int) -> int:
        """Add (its process dies meanwhile)."""
        entered.set()
        await asyncio.Event().wait()
        return 0

    path = tmp_path / "r.db"
    dead = await die_inside(path, stuck, entered, tool_call_turn("add", {"a": 2, "b": 3}), request())
    record = dead.record
    async with SqliteStore(path, recover_on_open=False) as store:
        runtime = AgentRuntime(providers=[ScriptedProvider([text_turn("5")])], tools=[add], store=store, name="w2")
        handle = instrument(runtime, otel.tracer_provider, otel.meter_provider)
        assert await runtime.resume_interrupted(record.run_id) is not None
        handle.dispose()
        spans = {s.name: s for s in otel.spans()}
        agent, tool_span, chat = spans["invoke_agent w2"], spans["execute_tool add"], spans["chat scripted"]
        assert agent.attributes["gen_ai.conversation.id"] == str(record.session_id)
        assert tool_span.parent.span_id == agent.context.span_id == chat.parent.span_id
        assert agent.status.status_code is StatusCode.UNSET
        dead.control.cancel()
        with pytest.raises(InvocationFailed):
            await dead.running
    await dead.store.close()


async def test_a_runs_spans_are_children_of_the_span_current_where_it_started(otel: Otel) -> None:
    runtime, _, _ = rig(otel, W1 * 2)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as outer:
        inside = await runtime.run(request())
    outside = await runtime.run(request())
    roots = {s.attributes["rxinvoke.run_id"]: s for s in otel.spans() if s.name.startswith("invoke_agent")}
    child = roots[inside.run_id]
    assert child.parent is not None and child.parent.span_id == outer.get_span_context().span_id
    assert child.context.trace_id == outer.get_span_context().trace_id
    assert roots[outside.run_id].parent is None  # no span was current: a trace of its own


async def test_a_run_submitted_to_a_worker_is_traced_under_the_submitters_span(
    otel: Otel, redis_server: Any, tmp_path: Any
) -> None:
    from rxinvoke import EmitRequest, RuntimeInvocation, SqliteStore
    from rxinvoke.transports.redis import RedisTransport
    from rxinvoke.transports.remote import RemoteRuns
    from rxinvoke.transports.worker import Worker

    transport = RedisTransport(redis_server.url, prefix=f"o{uuid.uuid4().hex[:8]}:", block=0.2)
    store = SqliteStore(tmp_path / "w.db")
    # the worker: its own runtime, instrumented; its tasks began outside any span
    runtime = AgentRuntime(providers=[ScriptedProvider(W1 * 2)], tools=[add], store=store, name="worker")
    instrument(runtime, otel.tracer_provider, otel.meter_provider)
    stop = asyncio.Event()
    serving = asyncio.ensure_future(Worker(runtime, transport).serve(stop))
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handle request") as outer:
        traced = inv.submit(EmitRequest(provider="scripted", model="scripted", input="add 2 and 3"))
    first = await asyncio.wait_for(traced.result, 30)  # (one at a time: the script is shared)
    untraced = inv.submit(EmitRequest(provider="scripted", model="scripted", input="add 2 and 3"))
    outs = [first, await asyncio.wait_for(untraced.result, 30)]
    stop.set()
    await asyncio.wait_for(serving, 20)
    await transport.close()
    await store.close()
    got = otel.spans()
    roots = {s.attributes["rxinvoke.run_id"]: s for s in got if s.name == "invoke_agent worker"}
    remote_root = roots[outs[0].run_id]
    assert remote_root.parent is not None and remote_root.parent.span_id == outer.get_span_context().span_id
    trace_id = outer.get_span_context().trace_id
    assert [s.name for s in got if s.context.trace_id == trace_id] == [
        "handle request", "invoke_agent worker", "chat scripted", "execute_tool add", "chat scripted"
    ]
    assert roots[outs[1].run_id].parent is None  # submitted outside any span


def test_the_trace_context_goes_with_a_job_and_is_entered_where_it_runs(otel: Otel) -> None:
    import subprocess
    import sys

    from opentelemetry import trace

    from rxinvoke.transports import _tracing
    from rxinvoke.transports.base import Job
    from rxinvoke.transports.worker import _request_of

    tracer = otel.tracer_provider.get_tracer("app")
    assert _tracing.current() is None  # no span current: nothing to send
    with tracer.start_as_current_span("submitter") as span:
        carrier = _tracing.current()
    assert carrier is not None and f"{span.get_span_context().trace_id:032x}" in carrier["traceparent"]
    request = RunRequest(provider="scripted", model="scripted", input="hi", run_id="r1", trace_context=carrier)
    sent = _request_of(Job("1-0", "r1", request.model_dump_json().encode()))
    assert sent is not None and sent.trace_context == carrier
    assert _request_of(Job("1-0", "r1", b"not json")) is None  # the run fails as invalid, untraced
    with _tracing.entered(carrier):
        assert trace.get_current_span().get_span_context().span_id == span.get_span_context().span_id
    assert not trace.get_current_span().get_span_context().is_valid  # left as it was
    with _tracing.entered(None):
        assert not trace.get_current_span().get_span_context().is_valid
    # a process that never used OpenTelemetry sends nothing and imports nothing
    code = (
        "import sys; from rxinvoke.transports import _tracing; "
        "assert _tracing.current() is None; assert 'opentelemetry' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_retried_model_call_is_one_chat_span_that_counts_its_retries(otel: Otel) -> None:
    slow_down = ProviderHTTPError("scripted", "scripted", 429, "slow down", retry_after=0.0)
    runtime, events, _ = rig(otel, [[Refuse(slow_down)], *W1])
    await runtime.run(request())
    (retried,) = [e for e in events if e.type == "model_retried"]
    assert (retried.attempt, retried.status, retried.delay_ms) == (1, 429, 0.0)  # type: ignore[attr-defined]
    assert retried.error == "scripted/scripted: HTTP 429: slow down"  # type: ignore[attr-defined]
    first, second = [s for s in spans(events) if s.kind == "model_call"]
    assert (first.attributes["retries"], first.attributes["retry_error"]) == (1, retried.error)  # type: ignore[attr-defined]
    assert "retries" not in second.attributes
    # the notebook's timeline says so too (the same span model)
    from rxinvoke.notebook import RunView

    assert "retried 1× (last: scripted/scripted: HTTP 429: slow down)" in (RunView.from_events(events)._repr_html_() or "")
    chats = [s for s in otel.spans() if s.name.startswith("chat")]
    assert len(chats) == 2  # the failed attempt is no span of its own
    assert chats[0].attributes["rxinvoke.retries"] == 1 and "rxinvoke.retries" not in chats[1].attributes
    assert chats[0].status.status_code is StatusCode.UNSET  # it answered in the end
