"""A run whose process died goes on in another (``AgentRuntime.resume_interrupted``, what
``Worker(on_worker_loss="retry")`` does): from the session's last committed step, numbered after
the stored log, with exactly one terminal event. Against a real SQLite file; the first test kills
a real `rxinvoke run` process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_store_sqlite import REPO_ROOT, cli, cli_env, kill_dead

from rxinvoke import (
    AgentRuntime,
    Control,
    InvocationFailed,
    MemoryStore,
    OfflineProvider,
    RunRequest,
    RunResumed,
    ScriptedProvider,
    SqliteStore,
    StoreError,
    UnknownRun,
    UserError,
    builtin_tools,
    tool,
)
from rxinvoke.messages import TokenUsage
from rxinvoke.stores import RunRecord
from rxinvoke.tools import Tool

text_turn = ScriptedProvider.text_turn
tool_call_turn = ScriptedProvider.tool_call_turn
TERMINAL = {"run_completed", "run_failed", "run_cancelled"}


@dataclass
class Dying:
    """A run whose process "died" inside a tool: its runtime is still there, blocked, and will
    write nothing more until cancelled; the file names a dead owner."""

    store: SqliteStore
    record: RunRecord
    control: Control
    running: asyncio.Future[Any]


async def die_inside(path: Path, stuck: Tool, entered: asyncio.Event, turn: Any, request: RunRequest) -> Dying:
    """Run ``request`` on its own store until the tool ``stuck`` sets ``entered``, then let its
    process die (:func:`kill_dead`)."""
    store = SqliteStore(path)
    runtime = AgentRuntime(providers=[ScriptedProvider([turn])], tools=[stuck], store=store)
    control = Control()
    running = asyncio.ensure_future(runtime.run(request, control))
    await asyncio.wait_for(entered.wait(), 10)
    (record,) = await store.list_runs()
    kill_dead(path, record.run_id)
    return Dying(store, record, control, running)


def scripted(prompt: str) -> RunRequest:
    return RunRequest(input=prompt, provider="scripted", model="scripted")


def test_a_run_whose_process_was_killed_goes_on_here_from_its_last_committed_step(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        cli("run", "what is 2 + 3?", "--json", "--delay", "0.5", "--db", str(db)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        for line in proc.stdout:
            seen.append(json.loads(line)["type"])
            if seen[-1] == "text_delta" and "tool_message_committed" in seen:
                break  # killed in its second model call, after its tool's reply was committed
        assert seen[-1] == "text_delta", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)

    async def resume() -> None:
        async with SqliteStore(db, recover_on_open=False) as store:
            (record,) = await store.list_runs()
            before = await store.read_events(record.run_id)
            assert record.status == "running" and before[-1].type == "tool_execution_finished"  # with its reply
            runtime = AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools(), store=store)
            published: list[Any] = []
            runtime.events.subscribe(published.append)
            output = await runtime.resume_interrupted(record.run_id)
            assert output is not None
            assert (output.output_text, output.iterations) == ("2 + 3 = 5.", 2)
            log = await store.read_events(record.run_id)
            types = [e.type for e in log]
            assert [e.seq for e in log] == list(range(1, len(log) + 1))
            assert types[: len(before)] == [e.type for e in before]  # the first attempt's, kept
            resumed = log[len(before)].event
            assert isinstance(resumed, RunResumed) and (resumed.after_seq, resumed.attempt) == (len(before), 2)
            assert types.count("run_started") == 1 and types.count("run_resumed") == 1
            assert [t for t in types if t in TERMINAL] == ["run_completed"] == types[-1:]
            assert types.count("tool_execution_started") == 1  # its committed tool call is not run again
            assert [getattr(e.event, "iteration", None) for e in log if e.type == "model_started"] == [1, 2]
            assert published[0].type == "run_resumed" and [e.type for e in published] == [
                e.type for e in log[len(before):]
            ]  # the go-on attempt's events, published here
            spent = TokenUsage()
            for envelope in log:
                if envelope.type == "usage_recorded":
                    spent = spent + envelope.event.usage  # type: ignore[union-attr]
            assert output.total_usage == spent  # both attempts' model calls
            history = await store.load_history(record.session_id)
            assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
            done = await store.get_run(record.run_id)
            assert done is not None and done.status == "completed" and done.output == output
            assert await runtime.resume_interrupted(record.run_id) is None  # finished: nothing

    asyncio.run(resume())


async def test_tool_calls_whose_replies_were_not_committed_run_again(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    entered = asyncio.Event()
    ran: list[str] = []

    @tool(name="book")
    async def stuck() -> str:
        """Book it (this process dies while it does)."""
        ran.append("first")
        entered.set()
        await asyncio.Event().wait()
        return "never"

    @tool(name="book")
    async def book() -> str:
        """Book it."""
        ran.append("again")
        return "booked"

    dead = await die_inside(path, stuck, entered, tool_call_turn("book", {}), scripted("book it"))
    record = dead.record

    async with SqliteStore(path, recover_on_open=False) as store:
        runtime = AgentRuntime(providers=[ScriptedProvider([text_turn("booked it")])], tools=[book], store=store)
        output = await asyncio.wait_for(runtime.resume_interrupted(record.run_id), 10)
        assert output is not None and output.output_text == "booked it" and output.iterations == 2
        assert ran == ["first", "again"]  # at least once: the call ran again, its reply committed
        history = await store.load_history(record.session_id)
        assert [(m.role, m.content) for m in history] == [
            ("user", "book it"), ("assistant", ""), ("tool", "booked"), ("assistant", "booked it"),
        ]
        types = [e.type for e in await store.read_events(record.run_id)]
        assert types.count("run_resumed") == 1 and [t for t in types if t in TERMINAL] == ["run_completed"]

        # the old attempt, were it still alive, could write nothing more to the run
        dead.control.cancel()
        with pytest.raises(InvocationFailed) as failed:
            await asyncio.wait_for(dead.running, 10)
        assert isinstance(failed.value.cause, StoreError)
        assert [t for t in [e.type for e in await store.read_events(record.run_id)] if t in TERMINAL] == [
            "run_completed"
        ]
    await dead.store.close()


async def test_uncommitted_calls_that_now_need_approval_pause_the_resumed_run(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    entered = asyncio.Event()
    ran: list[str] = []

    @tool(name="pay")
    async def stuck() -> str:
        """Pay (this process dies while it does)."""
        entered.set()
        await asyncio.Event().wait()
        return "never"

    @tool(name="pay", requires_approval=True)
    async def pay() -> str:
        """Pay, once a person approved it."""
        ran.append("pay")
        return "paid"

    dead = await die_inside(path, stuck, entered, tool_call_turn("pay", {}), scripted("pay it"))
    record = dead.record
    async with SqliteStore(path, recover_on_open=False) as store:
        runtime = AgentRuntime(providers=[ScriptedProvider([text_turn("paid it")])], tools=[pay], store=store)
        output = await asyncio.wait_for(runtime.resume_interrupted(record.run_id), 10)
        assert output is not None and output.finish_reason.value == "awaiting_approval"
        assert [p.tool_name for p in output.pending] == ["pay"] and ran == []  # not run unapproved
        stored = await store.get_run(record.run_id)
        assert stored is not None and stored.status == "awaiting_approval"
        types = [e.type for e in await store.read_events(record.run_id)]
        assert types[-2:] == ["approval_requested", "run_completed"] and types.count("run_resumed") == 1
        # approved: the continuation runs the call (once) and answers
        continued = await asyncio.wait_for(runtime.approve(record.run_id, output.pending[0].call_id), 10)
        assert continued is not None and continued.output_text == "paid it" and ran == ["pay"]
        dead.control.cancel()
        with pytest.raises(InvocationFailed):
            await asyncio.wait_for(dead.running, 10)
    await dead.store.close()


async def test_a_run_that_cannot_be_taken_over_publishes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    gate = asyncio.Event()
    async with SqliteStore(path) as store:
        runtime = AgentRuntime(providers=[ScriptedProvider([[gate, *text_turn("hi")]])], store=store)
        published: list[Any] = []
        begun = asyncio.Event()
        runtime.events.subscribe(published.append)
        runtime.events.subscribe(lambda e: begun.set() if e.type == "run_started" else None)
        running = asyncio.ensure_future(runtime.run(RunRequest(input="hi", provider="scripted", model="scripted")))
        await asyncio.wait_for(begun.wait(), 10)  # claimed in the store before it is published
        (record,) = await store.list_runs()
        async with SqliteStore(path, recover_on_open=False) as other:
            elsewhere = AgentRuntime(providers=[ScriptedProvider([text_turn("no")])], store=other)
            assert await elsewhere.resume_interrupted(record.run_id) is None  # its owner lives
            gate.set()
            await running
            assert await elsewhere.resume_interrupted(record.run_id) is None  # finished
            with pytest.raises(UnknownRun):
                await elsewhere.resume_interrupted("no-such-run")
        assert "run_resumed" not in [e.type for e in published]
    with pytest.raises(UserError, match="cannot resume"):
        await AgentRuntime(store=MemoryStore()).resume_interrupted(record.run_id)
