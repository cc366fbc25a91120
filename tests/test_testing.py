"""The testing kit (rxinvoke.testing): probes, marbles, virtual time for whole runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import reactivex
from reactivex.scheduler import HistoricalScheduler
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler

from rxinvoke import (
    Control,
    EmitRequest,
    InvocationCancelled,
    InvocationTimedOut,
    ProviderHTTPError,
    RunCompleted,
    RunStarted,
    RuntimePolicy,
    ScriptedProvider,
    TextDelta,
    ToolExecutionFinished,
    ToolFailure,
    tool,
)
from rxinvoke.messages import FinishReason
from rxinvoke.notebook import RunView
from rxinvoke.providers import Pause, Refuse
from rxinvoke.spans import spans
from rxinvoke.testing import EventProbe, Scripted, advance, marbles_of, turn_from_marbles

REPO_ROOT = Path(__file__).resolve().parents[1]
VIRTUAL_ZERO = datetime(1970, 1, 1, tzinfo=timezone.utc)  # a TestScheduler's time 0


# --- virtual time for whole runs ---------------------------------------------------------------


async def test_a_slow_model_with_a_refused_call_runs_in_virtual_time(
    scripted: Any, virtual_clock: TestScheduler
) -> None:
    run: Scripted = scripted(
        [
            [Refuse(ProviderHTTPError("scripted", "scripted", 503, "busy", retry_after=5.0))],
            [Pause(30.0), *ScriptedProvider.text_turn("hi")],
        ],
        scheduler=virtual_clock,
    )
    result = asyncio.ensure_future(run.inv.emit(EmitRequest("hello")))
    await advance(virtual_clock, 34.0)
    assert not result.done()  # 5 s backoff + 30 s latency: not yet
    await advance(virtual_clock, 2.0)
    assert (await result).output_text == "hi"
    assert run.provider.calls == 2


async def test_the_run_deadline_and_the_provider_timeout_follow_the_clock(
    scripted: Any, virtual_clock: TestScheduler
) -> None:
    run: Scripted = scripted([[Pause(1000.0)]], scheduler=virtual_clock)
    result = asyncio.ensure_future(run.inv.emit(EmitRequest("hi"), Control(timeout=60.0)))
    await advance(virtual_clock, 61.0)
    with pytest.raises(InvocationTimedOut):
        await result

    slow: Scripted = scripted(
        [[Pause(1000.0)]], scheduler=virtual_clock, policy=RuntimePolicy(provider_timeout=120.0)
    )
    failed = asyncio.ensure_future(slow.inv.emit(EmitRequest("hi")))
    await advance(virtual_clock, 121.0)
    with pytest.raises(Exception, match="no complete response within 120s"):
        await failed


async def test_a_tool_timeout_follows_the_clock(scripted: Any, virtual_clock: TestScheduler) -> None:
    @tool(timeout=10.0)
    async def wait_forever() -> str:
        """Never returns."""
        await asyncio.Event().wait()
        return "no"

    run: Scripted = scripted(
        [ScriptedProvider.tool_call_turn("wait_forever", {}), ScriptedProvider.text_turn("gave up")],
        tools=[wait_forever],
        scheduler=virtual_clock,
    )
    result = asyncio.ensure_future(run.inv.emit(EmitRequest("go")))
    await advance(virtual_clock, 11.0)
    assert (await result).output_text == "gave up"
    finished = [e for e in run.events if isinstance(e, ToolExecutionFinished)]
    assert isinstance(finished[0].result, ToolFailure) and "timed out after 10s" in finished[0].result.error


async def test_a_scripted_delay_paces_every_fragment(scripted: Any, virtual_clock: TestScheduler) -> None:
    run: Scripted = scripted(
        [ScriptedProvider.text_turn("a b c d", pieces=4)], scheduler=virtual_clock, delay=1.0
    )
    result = asyncio.ensure_future(run.inv.emit(EmitRequest("hi")))
    await advance(virtual_clock, 2.5, steps=25)
    assert [e.delta for e in run.events if isinstance(e, TextDelta)] == ["a ", "b "]
    await advance(virtual_clock, 5.0)
    assert (await result).output_text == "a b c d"


async def test_a_virtual_time_run_stamps_its_events_on_the_virtual_clock(
    scripted: Any, virtual_clock: TestScheduler
) -> None:
    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return key.upper()

    run: Scripted = scripted(
        [
            [Refuse(ProviderHTTPError("scripted", "scripted", 503, "busy", retry_after=5.0))],
            [Pause(2.0), *ScriptedProvider.tool_call_turn("lookup", {"key": "k"})],
            [Pause(30.0), *ScriptedProvider.text_turn("done", pieces=2)],
        ],
        tools=[lookup],
        scheduler=virtual_clock,
    )
    result = asyncio.ensure_future(run.inv.emit(EmitRequest("go")))
    await advance(virtual_clock, 40.0)
    assert (await result).output_text == "done"
    at = [(e.type, (e.timestamp - VIRTUAL_ZERO).total_seconds()) for e in run.events]
    assert all(0.0 <= seconds <= 40.0 for _, seconds in at), at  # none on the wall clock

    def first(kind: str) -> float:
        return next(seconds for type_, seconds in at if type_ == kind)

    assert first("run_started") == first("model_retried") == 0.0
    assert first("tool_call_started") == 7.0  # 5 s backoff, then 2 s until the call streams
    assert first("tool_execution_finished") == 7.0
    assert first("text_delta") == first("run_completed") == 37.0  # 30 s to the answer
    model_calls = [s for s in spans(run.events) if s.kind == "model_call"]
    assert [s.duration_ms for s in model_calls] == [7000.0, 30000.0]
    (root,) = [s for s in spans(run.events) if s.kind == "run"]
    assert root.duration_ms == 37000.0
    header = RunView(run.events).html().split('class="rxi-transcript"')[0]
    assert "duration" in header and "37.00 s" in header  # the notebook's header, on that clock
    kinds = [e for e in run.events if e.type in ("model_started", "tool_call_started", "run_completed")]
    assert marbles_of(kinds, tick=1.0) == (
        "model_started-------tool_call_started-model_started" + "-" * 30 + "run_completed"
    )


async def test_runs_on_the_wall_clock_are_not_stamped_by_a_virtual_run_beside_them(
    scripted: Any, virtual_clock: TestScheduler
) -> None:
    virtual: Scripted = scripted(
        [[Pause(60.0), *ScriptedProvider.text_turn("late")]], scheduler=virtual_clock
    )
    wall: Scripted = scripted([ScriptedProvider.text_turn("now")])
    control = Control()
    waiting = asyncio.ensure_future(virtual.inv.emit(EmitRequest("wait"), control))
    await advance(virtual_clock, 1.0)
    before = datetime.now(timezone.utc)
    assert (await wall.inv.emit(EmitRequest("hi"))).output_text == "now"
    assert wall.events and all(e.timestamp >= before for e in wall.events)
    await advance(virtual_clock, 9.0)
    control.cancel()  # the terminal event is published on the caller's side
    with pytest.raises(InvocationCancelled):
        await waiting
    assert virtual.events[-1].type == "run_cancelled"
    assert [(e.timestamp - VIRTUAL_ZERO).total_seconds() for e in virtual.events][-1] == 10.0
    assert all(e.timestamp < before for e in virtual.events)


async def test_a_historical_scheduler_stamps_its_runs_at_its_own_time_in_utc(scripted: Any) -> None:
    clock = HistoricalScheduler(initial_clock=datetime(2030, 1, 2, 3, 4, 5))  # naive: read as UTC
    run: Scripted = scripted([ScriptedProvider.text_turn("then")], scheduler=clock)
    assert (await run.inv.emit(EmitRequest("when?"))).output_text == "then"
    assert {e.timestamp for e in run.events} == {datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}


def test_the_request_log_is_bounded() -> None:
    provider = ScriptedProvider(lambda request: ScriptedProvider.text_turn("x"), max_requests=2)

    async def three_runs() -> None:
        from rxinvoke import AgentRuntime, RuntimeInvocation

        inv = RuntimeInvocation(AgentRuntime(providers=[provider]))
        for text in ("one", "two", "three"):
            await inv.emit(EmitRequest(text))

    asyncio.run(three_runs())
    assert [r.messages[-1].content for r in provider.requests] == ["two", "three"]
    assert provider.calls == 3


# --- EventProbe ---------------------------------------------------------------------------------


async def test_a_probe_pulls_events_in_order_and_checks_kinds(scripted: Any, probe: Any) -> None:
    run: Scripted = scripted([ScriptedProvider.text_turn("hello")])
    events = probe(run.inv.observe())
    task = asyncio.ensure_future(run.inv.emit(EmitRequest("hi")))
    started = await events.next("run_started")
    assert isinstance(started, RunStarted)
    await events.next("context_built")
    with pytest.raises(AssertionError, match="expected run_completed, got model_started"):
        await events.next("run_completed")
    rest = await events.until_terminal()
    assert rest[-1].type == "run_completed"
    events.expect_no_events()
    await task


async def test_a_probe_times_out_and_reports_unconsumed_events() -> None:
    subject: Subject[Any] = Subject()
    probe = EventProbe(subject, timeout=0.01)
    with pytest.raises(AssertionError, match="nothing within"):
        await probe.next()
    subject.on_next(TextDelta(run_id="r", delta="x"))
    with pytest.raises(AssertionError, match="unexpected text_delta"):
        probe.close()
    error = RuntimeError("source broke")
    failing = EventProbe(reactivex.throw(error))
    with pytest.raises(RuntimeError, match="source broke"):
        await failing.next()


# --- marbles ------------------------------------------------------------------------------------


def test_marbles_of_events_and_of_recorded_messages() -> None:
    started = RunStarted(run_id="r", session_id="s", provider="p", model="m")
    delta = TextDelta(run_id="r", delta="x")
    done = RunCompleted(run_id="r", finish_reason=FinishReason.STOP, iterations=1)
    assert marbles_of([started, delta, done]) == "run_started-text_delta-run_completed"
    scheduler = TestScheduler()
    source = scheduler.create_hot_observable(
        ReactiveTest.on_next(210, started), ReactiveTest.on_next(230, delta),
        ReactiveTest.on_next(240, done), ReactiveTest.on_completed(250),
    )
    results = scheduler.start(lambda: source)
    assert marbles_of(results.messages) == "run_started-text_delta-run_completed|"
    assert marbles_of(results.messages, tick=10) == (
        "---------------------run_started--text_delta-run_completed|"
    )


def test_turn_from_marbles_builds_a_scripted_turn() -> None:
    turn = turn_from_marbles("Hel-lo-|")
    assert [getattr(i, "delta", None) for i in turn] == ["Hel", "lo", None]
    assert turn[-1].type == "chat_finished"  # type: ignore[union-attr]
    paced = turn_from_marbles("a--b|", tick=0.5)
    assert [type(i).__name__ for i in paced] == ["ChatTextDelta", "Pause", "Pause", "ChatTextDelta", "ChatFinished"]
    broken = turn_from_marbles("a-#")
    assert isinstance(broken[-1], Exception)


async def test_a_marble_turn_drives_a_run(scripted: Any) -> None:
    run: Scripted = scripted([turn_from_marbles("Hel-lo-!|")])
    out = await run.inv.emit(EmitRequest("hi"))
    assert out.output_text == "Hello!"
    assert marbles_of(e for e in run.events if e.type in ("run_started", "text_delta", "run_completed")) == (
        "run_started-text_delta-text_delta-text_delta-run_completed"
    )


# --- a downstream project --------------------------------------------------------------------


def test_a_downstream_project_writes_a_virtual_time_run_test_in_ten_lines(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["rxinvoke.testing"]\n')
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    (tmp_path / "test_downstream.py").write_text(
        "import asyncio\n"
        "from datetime import timedelta\n"
        "from rxinvoke import EmitRequest, ScriptedProvider\n"
        "from rxinvoke.providers import Pause\n"
        "from rxinvoke.testing import advance\n"
        "\n"
        "async def test_slow_model(scripted, virtual_clock):\n"
        "    run = scripted([[Pause(30.0), *ScriptedProvider.text_turn('hi')]], scheduler=virtual_clock)\n"
        "    result = asyncio.ensure_future(run.inv.emit(EmitRequest('hello')))\n"
        "    await advance(virtual_clock, 31.0)\n"
        "    assert (await result).output_text == 'hi'\n"
        "    assert run.events[-1].timestamp - run.events[0].timestamp == timedelta(seconds=30)\n"
    )
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


async def test_no_network_refuses_a_host_that_is_not_loopback(no_network: None) -> None:
    import httpx

    from rxinvoke.testing import OutboundRequestRefused

    async with httpx.AsyncClient() as client:  # the guard refuses before any connection
        with pytest.raises(OutboundRequestRefused, match="198.51.100.7"):
            await client.get("http://198.51.100.7/")
