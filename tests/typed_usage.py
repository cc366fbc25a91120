"""The README's code as a user's type checker reads it: ``mypy --strict`` of this file is clean
(the lint env runs it), so the documented calls type-check in a user's project. It is not a
test module (pytest does not collect it) and is never run: only checked.

A line that must be refused carries ``# type: ignore[code]``; ``--strict`` warns of an unused
ignore, so the check also fails if such a line stops being an error.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import reactivex
from reactivex import Observable
from reactivex import operators as ops
from reactivex.testing import TestScheduler

import rxinvoke
import rxinvoke.otel
from rxinvoke import (
    AgentRuntime,
    ApprovalPolicy,
    CompactionPolicy,
    Control,
    DoomLoopPolicy,
    EmitRequest,
    EventKind,
    InvocationEvent,
    ModelLimits,
    OfflineProvider,
    RunOutput,
    RunRequest,
    RunStreamLike,
    RuntimeInvocation,
    RuntimePolicy,
    ScriptedProvider,
    SessionContext,
    TextDelta,
    accumulate_text,
    of_kind,
    per_run,
    text_of,
    throttle_latest,
)
from rxinvoke.stores import SqliteStore
from rxinvoke.stores.postgres import PostgresStore
from rxinvoke.transports.redis import RedisTransport
from rxinvoke.transports.remote import RemoteRuns
from rxinvoke.transports.worker import Worker


async def quickstart() -> None:
    runtime = AgentRuntime(providers=[OfflineProvider()], tools=rxinvoke.builtin_tools())
    inv = RuntimeInvocation(runtime)

    async def show_tool(event: Any, ctx: SessionContext, control: Control) -> None:
        print(f"[{ctx.session_id}] {event.tool_name} -> {event.result}")

    handle = await inv.on(EventKind.TOOL_EXECUTION_FINISHED, show_tool)
    words: list[str] = []
    sub = inv.observe("text_delta").pipe(rxinvoke.text_of(), ops.map(str.strip)).subscribe(words.append)
    out: RunOutput = await inv.emit(
        lambda ctx, control: EmitRequest(provider="offline", model="offline", input="what is 2 + 3?")
    )
    await handle.wait_idle()
    handle.dispose()
    sub.dispose()
    print(out.output_text, out.finish_reason.value, out.total_usage.total_tokens)


def requests() -> list[EmitRequest | RunRequest]:
    session = uuid.uuid4()
    return [
        EmitRequest("what is 2 + 3?"),
        EmitRequest("offline", "offline", "what is 2 + 3?", session_id=session),
        EmitRequest(input="hi", client_request_id="k1", metadata={"user": 7}),
        EmitRequest("hi").with_session_id(session).with_metadata({"a": 1}),
        RunRequest(provider="anthropic", model="claude-sonnet-4-5", input="hi"),
        RunRequest("hi", system_prompt="be brief", timeout=30.0),
        EmitRequest("a", "b"),  # type: ignore[call-overload]
        EmitRequest(input="hi", colour="red"),  # type: ignore[call-overload]
        EmitRequest(input=3),  # type: ignore[call-overload]
    ]


async def pipelines(inv: RuntimeInvocation, east: RuntimeInvocation, west: RuntimeInvocation) -> None:
    # mypy does not infer a lambda's parameters through reactivex's generic operators
    # (ops.flat_map(lambda run: ...)): typed code names those functions
    def rate(run: RunStreamLike) -> Observable[tuple[str, float]]:
        def count(window: Observable[InvocationEvent]) -> Observable[int]:
            return window.pipe(ops.count())

        def per_second(n: int) -> tuple[str, float]:
            return (run.run_id, n / 1.0)

        return run.pipe(
            of_kind("text_delta"),
            ops.window_with_time(1.0, scheduler=inv.scheduler),
            ops.flat_map(count),
            ops.map(per_second),
        )

    inv.runs().pipe(ops.flat_map(rate)).subscribe(print)

    def join(text: str, piece: str) -> str:
        return text + piece

    def whole_text(run: Observable[InvocationEvent]) -> Observable[str]:  # per_run's: a run's events
        return run.pipe(text_of(), ops.reduce(join, ""))

    texts = await inv.observe().pipe(per_run(whole_text), ops.take(20), ops.to_list())
    print(texts)
    stream = inv.stream(EmitRequest("tell me a story"))
    stream.pipe(accumulate_text(), throttle_latest(0.1)).subscribe(print)

    def tool_results(run: RunStreamLike) -> Observable[InvocationEvent]:
        return run.pipe(of_kind("tool_execution_finished"))

    reactivex.merge(east.runs(), west.runs()).pipe(ops.flat_map(tool_results)).subscribe(print)
    stream = inv.stream(EmitRequest("a long answer"))
    stream.pipe(ops.take_until(reactivex.timer(2.0, scheduler=inv.scheduler)), text_of()).subscribe(print)
    try:
        await stream.result
    except rxinvoke.InvocationCancelled:
        pass
    async for event in rxinvoke.to_async_iterator(inv.observe(EventKind.TEXT_DELTA), buffer=100):
        assert isinstance(event, TextDelta)


async def virtual_time() -> None:
    clock = TestScheduler()
    provider = ScriptedProvider([ScriptedProvider.text_turn("hello")], scheduler=clock)
    inv = RuntimeInvocation(
        AgentRuntime(providers=[provider], scheduler=clock, policy=RuntimePolicy(max_iterations=3))
    )
    task = asyncio.ensure_future(inv.emit(EmitRequest("hi")))
    await rxinvoke.testing.advance(clock, 1.0)
    print((await task).output_text)


async def scale_out(request: EmitRequest, call_id: str) -> None:
    transport = RedisTransport("redis://localhost:6379/0")
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request, Control(timeout=60))
    out = await stream.result
    await inv.cancel(stream.run_id)
    await inv.approve(out.run_id, call_id)
    await inv.view(stream.run_id)
    RemoteRuns(transport).observe_run(stream.run_id, after_seq=41).subscribe(print)
    worker = Worker(
        AgentRuntime(
            providers=[OfflineProvider()],
            store=PostgresStore("postgresql://localhost/rx"),
            policy=RuntimePolicy(approval=ApprovalPolicy(tools=("calculate",))),
        ),
        transport,
        concurrency=4,
    )
    await worker.serve(asyncio.Event())
    local = Worker(AgentRuntime(store=SqliteStore("runs.db")), transport, on_worker_loss="retry")
    print(local.name)


def observability(runtime: AgentRuntime) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    handle = rxinvoke.otel.instrument(runtime, tracer_provider=provider)
    handle.dispose()


async def notebook(inv: RuntimeInvocation) -> None:
    from rxinvoke.notebook import Events, live, marbles

    out = await inv.emit(EmitRequest("what is 2 + 3?"))
    await inv.view(out.run_id)
    with live(inv):
        await inv.emit(EmitRequest("what is 12 * 7?"))
    stream = inv.stream(EmitRequest("hello"))
    recording = asyncio.ensure_future(
        marbles(
            {"deltas": stream.pipe(text_of()), "frames": stream.pipe(accumulate_text(), throttle_latest(0.1))},
            until=1.0,
        )
    )
    await stream.result
    await recording
    events: list[InvocationEvent] = []
    rxinvoke.to_dataframe(events)
    Events(events)


def policies() -> list[RuntimePolicy]:
    return [
        RuntimePolicy(doom_loop=DoomLoopPolicy(consecutive_threshold=4, max_cycle=3, action="stop")),
        RuntimePolicy(
            compaction=CompactionPolicy(
                limits=ModelLimits(context_window=128_000, max_output_tokens=16_000),
                tail_turns=2,
                provider="cheap",
                model="mini",
                timeout=60.0,
                circuit_breaker_threshold=3,
                cooldown=300.0,
            )
        ),
        RuntimePolicy(approval=ApprovalPolicy(tools={"deploy"})),
        RuntimePolicy(approval=ApprovalPolicy(tools={"deploy"}, timeout=600.0, on_timeout="deny")),
        RuntimePolicy(max_iterations=5, tool_timeout=10.0, max_retries=0),
    ]


@rxinvoke.tool
def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()


@rxinvoke.tool(timeout=5.0, thread=True)
def slow(seconds: float) -> str:
    """Wait."""
    return f"waited {seconds}"


async def providers() -> None:
    from rxinvoke import AnthropicProvider, OpenAIProvider

    provider = OpenAIProvider(base_url="http://localhost:8000/v1", api_key_env="VLLM_KEY", timeout=60)
    runtime = AgentRuntime(providers=[provider], tools=[lookup, slow, *rxinvoke.builtin_tools()])
    await provider.aclose()
    anthropic = AnthropicProvider(max_tokens=2048)
    runtime = AgentRuntime(providers=[anthropic], tools=rxinvoke.builtin_tools())
    await runtime.run(RunRequest(provider="anthropic", model="claude-sonnet-4-5", input="hi"))
    scripted = ScriptedProvider(
        [ScriptedProvider.tool_call_turn("lookup", {"key": "k"}, pieces=3), ScriptedProvider.text_turn("K")]
    )
    print(scripted.calls)


async def durable() -> None:
    async with rxinvoke.SqliteStore("agent.db") as store:
        inv = RuntimeInvocation(AgentRuntime(providers=[OfflineProvider()], store=store))
        out = await inv.emit(
            lambda ctx, c: EmitRequest(
                provider="offline", model="offline", input="what is 2 + 3?", client_request_id="req-1"
            )
        )
        envelopes = await inv.replay(out.run_id).pipe(ops.to_list())
        print(len(envelopes), inv.subscribe_run(out.run_id, after_seq=5))


async def testing_kit(inv: RuntimeInvocation) -> None:
    from rxinvoke.providers import Pause, Refuse
    from rxinvoke.testing import EventProbe, advance, marbles_of, turn_from_marbles

    clock = TestScheduler()
    provider = ScriptedProvider(
        [
            [Refuse(rxinvoke.ProviderHTTPError("scripted", "scripted", 503, "busy", retry_after=5.0))],
            [Pause(30.0), *ScriptedProvider.text_turn("hi")],
            turn_from_marbles("Hel-lo-|", tick=0.1),
        ],
        scheduler=clock,
    )
    runtime = AgentRuntime(providers=[provider], scheduler=clock)
    probe = EventProbe(RuntimeInvocation(runtime).observe())
    started = await probe.next("run_started")
    rest = await probe.until_terminal()
    probe.expect_no_events()
    await advance(clock, 31.0)
    print(started.timestamp, marbles_of(rest, tick=1.0))
    control = Control(timeout=60.0)
    control.set_timeout(30.0)
    control.cancel()
    print(control.is_cancelled)


async def typed_kinds(inv: RuntimeInvocation) -> None:
    from rxinvoke import ToolExecutionFinished

    def on_finished(event: ToolExecutionFinished, ctx: SessionContext, control: Control) -> None:
        print(event.tool_name, ctx.run_id)

    def name_of(event: ToolExecutionFinished) -> str:
        return event.tool_name

    def fragment(event: TextDelta) -> str:
        return event.delta

    handle = await inv.on(ToolExecutionFinished, on_finished)
    handle.dispose()
    names: Observable[str] = inv.observe(ToolExecutionFinished).pipe(ops.map(name_of))
    texts: Observable[str] = inv.observe().pipe(of_kind(TextDelta), ops.map(fragment))
    print(names, texts)
    await inv.on(TextDelta, on_finished)  # type: ignore[arg-type]
