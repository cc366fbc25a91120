"""RunStream: one run as events + ids + result; inv.runs() (issue 11)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reactivex import operators as ops
from reactivex.subject import Subject

from rxinvoke import (
    AgentRuntime,
    EmitRequest,
    InvalidRequest,
    InvocationCancelled,
    InvocationFailed,
    OfflineProvider,
    RunStream,
    RuntimeInvocation,
    ScriptedProvider,
    builtin_tools,
    text_of,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def make(turns: Any) -> tuple[RuntimeInvocation, ScriptedProvider]:
    provider = ScriptedProvider(turns)
    return RuntimeInvocation(AgentRuntime(providers=[provider])), provider


async def test_result_is_the_runs_output_and_the_events_complete_after_the_terminal() -> None:
    inv, _ = make([ScriptedProvider.text_turn("hello world", pieces=2)])
    stream = inv.stream(EmitRequest("hi"))
    assert isinstance(stream, RunStream) and not stream.is_finished
    texts = stream.pipe(text_of(), ops.to_list())
    collected = asyncio.ensure_future(_await(texts))
    output = await stream.result
    assert output.output_text == "hello world" and output.run_id == stream.run_id
    assert "".join(await collected) == "hello world"
    assert await stream.result == output  # awaitable again


async def _await(observable: Any) -> Any:
    return await observable


async def until(predicate: Any, turns: int = 1000) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


async def test_every_subscriber_sees_every_event_and_one_that_raises_is_reported() -> None:
    inv, _ = make([ScriptedProvider.text_turn("a b c", pieces=3)])
    stream = inv.stream(EmitRequest("hi"))
    errors: list[Any] = []
    inv.errors.subscribe(errors.append)
    early: list[str] = []
    broken: list[str] = []

    def fragile(event: Any) -> None:
        broken.append(event.type)
        if event.type == "text_delta":
            raise RuntimeError("boom")

    stream.subscribe(lambda e: early.append(e.type))
    stream.subscribe(fragile)
    await stream.result
    late: list[str] = []
    done: list[bool] = []
    stream.subscribe(late.append, on_completed=lambda: done.append(True))  # after the end
    assert early == broken  # the raising observer kept receiving
    assert [e.type for e in late] == early and done == [True]  # the whole run, then completed
    assert early[0] == "run_started" and early[-1] == "run_completed"
    assert len(errors) == early.count("text_delta") == 3
    assert all("boom" in e.message for e in errors)


async def test_result_raises_the_runs_error() -> None:
    inv, _ = make([[RuntimeError("broke")]])
    stream = inv.stream(EmitRequest("hi"))
    with pytest.raises(InvocationFailed, match="broke"):
        await stream.result
    events = await stream.pipe(ops.to_list())
    assert events[-1].type == "run_failed"


async def test_an_invalid_request_is_on_error_and_the_result_raises_it() -> None:
    inv, _ = make([])
    stream = inv.stream(EmitRequest("scripted", "nope", "hi"))
    errors: list[Exception] = []
    stream.subscribe(on_error=errors.append)
    assert isinstance(errors[0], InvalidRequest)
    with pytest.raises(InvalidRequest):
        await stream.result


async def test_disposing_early_cancels_and_the_result_says_so_once_stored() -> None:
    gate = asyncio.Event()
    inv, _ = make([[gate, *ScriptedProvider.text_turn("never")]])
    stream = inv.stream(EmitRequest("hi"))
    seen: list[str] = []
    subscription = stream.subscribe(lambda e: seen.append(e.type))
    for _ in range(100):
        if "chat_started" in seen:
            break
        await asyncio.sleep(0)
    subscription.dispose()
    with pytest.raises(InvocationCancelled) as caught:
        await stream.result
    assert caught.value.run_id == stream.run_id
    record = await inv.runtime.store.get_run(stream.run_id)
    assert record is not None and record.status == "cancelled"  # stored before result raised


async def test_take_until_cancellation_of_a_stream() -> None:
    gate = asyncio.Event()
    inv, _ = make([[gate, *ScriptedProvider.text_turn("never")]])
    stop: Subject[None] = Subject()
    stream = inv.stream(EmitRequest("hi"))
    calling = asyncio.Event()
    inv.observe("chat_started").subscribe(lambda e: calling.set())
    collected = asyncio.ensure_future(_await(stream.pipe(ops.take_until(stop), ops.to_list())))
    await calling.wait()  # the run is under way: now stop watching it
    stop.on_next(None)
    events = await collected
    assert events[0].type == "run_started"
    with pytest.raises(InvocationCancelled):
        await stream.result


async def test_cancelling_an_awaiter_of_result_touches_nothing_else() -> None:
    gate = asyncio.Event()
    inv, _ = make([[gate, *ScriptedProvider.text_turn("done")]])
    stream = inv.stream(EmitRequest("hi"))
    waiter = asyncio.ensure_future(_await(stream.result))
    await until(lambda: stream.is_started)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.set()
    assert (await stream.result).output_text == "done"


async def test_runs_gives_each_run_its_own_completing_stream() -> None:
    runtime = AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools())
    inv = RuntimeInvocation(runtime)
    count = 20

    def text_of_run(run: RunStream) -> Any:
        return run.pipe(text_of(), ops.reduce(lambda acc, t: acc + t, ""), ops.map(lambda t: (run.run_id, t)))

    collected = asyncio.ensure_future(
        _await(inv.runs().pipe(ops.take(count), ops.flat_map(text_of_run), ops.to_list()))
    )
    await asyncio.sleep(0)
    outputs = await asyncio.gather(
        *(inv.emit(EmitRequest(f"what is {n} + 1?")) for n in range(count))
    )
    texts = dict(await collected)
    assert len(texts) == count
    for output in outputs:
        assert texts[output.run_id] == output.output_text


async def test_a_runs_stream_has_the_runs_result_and_dispose_does_not_cancel() -> None:
    inv, _ = make([ScriptedProvider.text_turn("ok")])
    streams: list[RunStream] = []
    inv.runs().subscribe(streams.append)
    task = asyncio.ensure_future(inv.emit(EmitRequest("hi")))
    for _ in range(100):
        if streams:
            break
        await asyncio.sleep(0)
    stream = streams[0]
    stream.subscribe(lambda e: None).dispose()  # an attached stream's dispose only stops delivery
    output = await task
    assert (await stream.result) == output
    events = await stream.pipe(ops.to_list())
    assert events[0].type == "run_started" and events[-1].type == "run_completed"


def test_no_unhandled_exception_at_loop_shutdown() -> None:
    """Returning from main right after disposing a stream, or with a run still going, prints
    nothing at asyncio.run() shutdown, on every Python/reactivex pair."""
    code = """
import asyncio
from reactivex import operators as ops
import rxinvoke

async def main() -> None:
    gate = asyncio.Event()
    provider = rxinvoke.ScriptedProvider([[gate], [gate], [gate]])
    inv = rxinvoke.RuntimeInvocation(rxinvoke.AgentRuntime(providers=[provider]))
    stream = inv.stream(rxinvoke.EmitRequest("hi"))
    sub = stream.subscribe(lambda e: None)
    await asyncio.sleep(0.01)
    sub.dispose()                                          # cancelled, not awaited
    inv.stream(rxinvoke.EmitRequest("again")).subscribe()  # still going at shutdown
    failing = inv.stream(rxinvoke.EmitRequest("scripted", "nope", "x"))
    failing.subscribe(on_error=lambda e: None)             # an invalid request, never awaited
    await asyncio.sleep(0.01)

asyncio.run(main())
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok\n"
    assert proc.stderr == ""
