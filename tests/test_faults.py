"""Faults with a defined outcome (issue 9): cancellation and deadlines follow asyncio's rules,
provider faults are provider errors, text is valid Unicode whatever the provider sends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from reactivex import operators as ops
from reactivex.testing import TestScheduler

from rxinvoke import (
    AgentRuntime,
    ChatFinished,
    ChatTextDelta,
    ChatToolCallCompleted,
    Control,
    EventKind,
    FinishReason,
    InvocationCancelled,
    InvocationEvent,
    InvocationFailed,
    InvocationTimedOut,
    MemoryStore,
    ProviderError,
    RunRecord,
    RunRequest,
    RuntimeInvocation,
    RuntimePolicy,
    ScriptedProvider,
    SqliteStore,
    Store,
    StoreError,
    SubscriberError,
    ToolCall,
    ToolExecutionFinished,
    ToolFailure,
    tool,
)
from rxinvoke.providers.scripted import TurnItem
from rxinvoke.stores import RunOutcome

text_turn = ScriptedProvider.text_turn
tool_call_turn = ScriptedProvider.tool_call_turn


def make(
    turns: Sequence[Sequence[TurnItem]], **kwargs: Any
) -> tuple[AgentRuntime, list[InvocationEvent]]:
    kwargs.setdefault("store", MemoryStore())
    runtime = AgentRuntime(providers=[ScriptedProvider(turns)], **kwargs)
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)
    return runtime, events


def request(text: str = "hi", **kwargs: Any) -> RunRequest:
    return RunRequest(provider="scripted", model="scripted", input=text, **kwargs)


def types(events: Sequence[InvocationEvent]) -> list[str]:
    return [e.type for e in events]


async def until(predicate: Any, turns: int = 1000) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


TERMINAL = {"run_completed", "run_failed", "run_cancelled"}


# --- cancellation follows asyncio's rules -------------------------------------------------------


class GatedFinishStore(MemoryStore):
    """finish_run waits for ``release`` (the run is settling meanwhile)."""

    def __init__(self) -> None:
        super().__init__()
        self.settling = asyncio.Event()
        self.release = asyncio.Event()

    async def finish_run(self, run_id: str, outcome: RunOutcome, **kwargs: Any) -> None:
        self.settling.set()
        await self.release.wait()
        await super().finish_run(run_id, outcome, **kwargs)


@pytest.mark.parametrize("times", [1, 3])
async def test_cancelling_the_caller_while_the_run_settles_ends_the_caller_cancelled(
    times: int,
) -> None:
    store = GatedFinishStore()
    runtime, events = make([text_turn("done")], store=store)
    caller = asyncio.ensure_future(runtime.run(request()))
    await store.settling.wait()
    for _ in range(times):  # repeated cancels are still one cancellation
        caller.cancel()
        await asyncio.sleep(0)
    store.release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()
    assert [t for t in types(events) if t in TERMINAL] == ["run_completed"]  # it had ended
    record = await store.get_run(events[0].run_id or "")
    assert record is not None and record.status == "completed"  # and it is stored so


async def test_cancelling_the_caller_mid_run_stores_run_cancelled_then_propagates() -> None:
    gate = asyncio.Event()
    runtime, events = make([[gate, *text_turn("never")]])
    caller = asyncio.ensure_future(runtime.run(request()))
    await until(lambda: "chat_started" in types(events))
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert events[-1].type == "run_cancelled"
    record = await runtime.store.get_run(events[0].run_id or "")
    assert record is not None and record.status == "cancelled"


async def test_a_timeout_set_after_the_run_started_is_enforced_in_virtual_time() -> None:
    clock = TestScheduler()
    gate = asyncio.Event()
    runtime, events = make([[gate, *text_turn("never")]], scheduler=clock)
    control = Control()
    task = asyncio.ensure_future(runtime.run(request(), control))
    await until(lambda: "chat_started" in types(events))
    clock.advance_by(100.0)  # no deadline yet: nothing happens
    await asyncio.sleep(0)
    assert not task.done()

    control.set_timeout(130.0)  # 100 s already elapsed: 30 s left
    clock.advance_by(29.0)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance_by(1.0)
    with pytest.raises(InvocationTimedOut, match="timed out after 130s"):
        await task
    assert events[-1].type == "run_failed" and "timed out" in events[-1].error  # type: ignore[union-attr]


async def test_a_timeout_shortened_below_the_elapsed_time_fires_at_once() -> None:
    clock = TestScheduler()
    gate = asyncio.Event()
    runtime, events = make([[gate, *text_turn("never")]], scheduler=clock)
    control = Control(timeout=60.0)
    task = asyncio.ensure_future(runtime.run(request(), control))
    await until(lambda: "chat_started" in types(events))
    clock.advance_by(10.0)
    control.set_timeout(5.0)  # already past
    with pytest.raises(InvocationTimedOut):
        await task


async def test_removing_the_timeout_during_the_run_removes_the_deadline() -> None:
    clock = TestScheduler()
    gate = asyncio.Event()
    runtime, events = make(
        [[gate, *text_turn("ok")]], scheduler=clock, policy=RuntimePolicy(provider_timeout=None)
    )
    control = Control(timeout=5.0)
    task = asyncio.ensure_future(runtime.run(request(), control))
    await until(lambda: "chat_started" in types(events))
    control.set_timeout(None)
    clock.advance_by(1000.0)
    gate.set()
    output = await task
    assert output.output_text == "ok"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_tool_raising_cancelled_error_itself_is_a_tool_failure(kind: str) -> None:
    if kind == "async":

        async def grumpy() -> str:
            """Raises CancelledError though nothing cancelled it."""
            raise asyncio.CancelledError

    else:

        def grumpy() -> str:  # type: ignore[misc]
            """Raises CancelledError though nothing cancelled it."""
            raise asyncio.CancelledError

    runtime, events = make(
        [tool_call_turn("grumpy", {}), text_turn("sorry")], tools=[tool(grumpy)]
    )
    output = await runtime.run(request())
    assert output.output_text == "sorry"  # the run continued
    finished = [e for e in events if isinstance(e, ToolExecutionFinished)]
    assert isinstance(finished[0].result, ToolFailure)
    assert "CancelledError" in finished[0].result.error
    assert events[-1].type == "run_completed"


async def test_cancelling_the_run_during_an_async_tool_still_cancels_the_run() -> None:
    started, never = asyncio.Event(), asyncio.Event()

    @tool
    async def slow() -> str:
        """Waits forever."""
        started.set()
        await never.wait()
        return "no"

    runtime, events = make([tool_call_turn("slow", {}), text_turn("x")], tools=[slow])
    control = Control()
    task = asyncio.ensure_future(runtime.run(request(), control))
    await started.wait()
    control.cancel()
    with pytest.raises(InvocationCancelled):
        await task
    assert events[-1].type == "run_cancelled"


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_handler_raising_cancelled_error_is_a_handler_failure(kind: str) -> None:
    runtime, _ = make([text_turn("one two three", pieces=3)])
    inv = RuntimeInvocation(runtime)
    errors: list[SubscriberError] = []
    inv.errors.subscribe(errors.append)
    seen: list[str] = []

    if kind == "async":

        async def handler(event: InvocationEvent, ctx: Any, control: Any) -> None:
            seen.append(event.type)
            if len(seen) == 1:
                raise asyncio.CancelledError

    else:

        def handler(event: InvocationEvent, ctx: Any, control: Any) -> None:  # type: ignore[misc]
            seen.append(event.type)
            if len(seen) == 1:
                raise asyncio.CancelledError

    handle = await inv.on(EventKind.ANY, handler)
    out = await runtime.run(request())
    await asyncio.wait_for(handle.wait_idle(), 5)
    assert out.output_text == "one two three"
    assert seen[-1] == "run_completed"  # every later event still delivered
    assert handle.stats.failed == 1 and handle.stats.delivered == len(seen) - 1
    assert len(errors) == 1 and isinstance(errors[0].cause, asyncio.CancelledError)
    handle.dispose()


# --- providers: their faults are provider errors ------------------------------------------------


class RaisingProvider(ScriptedProvider):
    def __init__(self, error: BaseException) -> None:
        super().__init__([[]])
        self.error = error

    async def stream(self, request: Any) -> Any:
        raise self.error
        yield  # pragma: no cover


@pytest.mark.parametrize("provider_timeout", [300.0, None])
async def test_a_provider_raising_timeout_error_itself_is_its_own_error(
    provider_timeout: float | None,
) -> None:
    runtime = AgentRuntime(
        providers=[RaisingProvider(TimeoutError("upstream took too long"))],
        policy=RuntimePolicy(provider_timeout=provider_timeout),
    )
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)
    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request())
    assert "no complete response" not in caught.value.message
    assert "TimeoutError: upstream took too long" in caught.value.message
    assert isinstance(caught.value.cause, ProviderError)
    assert caught.value.cause.provider == "scripted"
    assert [t for t in types(events) if t in TERMINAL] == ["run_failed"]


async def test_the_provider_deadline_still_says_no_complete_response() -> None:
    from rxinvoke.testing import advance

    clock = TestScheduler()
    gate = asyncio.Event()
    runtime, events = make([[gate]], policy=RuntimePolicy(provider_timeout=120.0), scheduler=clock)
    task = asyncio.ensure_future(runtime.run(request()))
    await advance(clock, 121.0)
    with pytest.raises(InvocationFailed, match="no complete response within 120s"):
        await task


async def test_two_tool_calls_with_one_id_are_both_answered() -> None:
    @tool
    def echo(text: str) -> str:
        """Echo."""
        return text

    turn: list[TurnItem] = [
        ChatToolCallCompleted(call=ToolCall(id="c1", name="echo", arguments='{"text": "a"}')),
        ChatToolCallCompleted(call=ToolCall(id="c1", name="echo", arguments='{"text": "b"}')),
        ChatFinished(finish_reason=FinishReason.TOOL_CALLS),
    ]
    provider = ScriptedProvider([turn, text_turn("ok")])
    runtime = AgentRuntime(providers=[provider], tools=[echo])
    out = await runtime.run(request())
    history = await runtime.history(out.session_id)
    calls = history[1].tool_calls
    assert [c.arguments for c in calls] == ['{"text": "a"}', '{"text": "b"}']
    assert len({c.id for c in calls}) == 2
    replies = {m.tool_call_id: m.content for m in history if m.role == "tool"}
    assert replies == {calls[0].id: "a", calls[1].id: "b"}
    # the model's next context answers every call it made, once
    sent = provider.requests[1].messages
    assert [m.tool_call_id for m in sent if m.role == "tool"] == [c.id for c in calls]


# --- text is valid Unicode ----------------------------------------------------------------------


async def test_a_surrogate_pair_split_over_two_fragments_is_joined_and_stored(
    tmp_path: Path,
) -> None:
    turn: list[TurnItem] = [
        ChatTextDelta(delta="smile \ud83d"),
        ChatTextDelta(delta="\ude00 and a lone \udc00 one"),
        ChatFinished(finish_reason=FinishReason.STOP),
    ]
    async with SqliteStore(tmp_path / "s.db") as store:
        runtime, events = make([turn], store=store)
        out = await runtime.run(request())
        assert out.output_text == "smile \U0001f600 and a lone \ufffd one"
        deltas = "".join(e.delta for e in events if e.type == "text_delta")  # type: ignore[union-attr]
        assert deltas == out.output_text
        record = await store.get_run(out.run_id)
        assert record is not None and record.status == "completed"
        history = await store.load_history(out.session_id)
        assert history[-1].content == out.output_text
        stored = await store.read_events(out.run_id)
        assert stored[-1].event.type == "run_completed"


async def test_a_lone_high_surrogate_at_the_end_becomes_a_replacement_character() -> None:
    turn: list[TurnItem] = [
        ChatTextDelta(delta="cut \ud83d"),
        ChatFinished(finish_reason=FinishReason.STOP),
    ]
    runtime, _ = make([turn])
    out = await runtime.run(request())
    assert out.output_text == "cut \ufffd"


async def test_a_tool_output_with_lone_surrogates_is_stored_valid(tmp_path: Path) -> None:
    @tool
    def broken() -> str:
        """Returns invalid text."""
        return "half \ud83d"

    async with SqliteStore(tmp_path / "s.db") as store:
        runtime, _ = make([tool_call_turn("broken", {}), text_turn("ok")], tools=[broken], store=store)
        out = await runtime.run(request(session_id=uuid.uuid4()))
        tool_message = [m for m in await store.load_history(out.session_id) if m.role == "tool"]
        assert tool_message[0].content == "half \ufffd"


# --- stores: transient failures are retried, nothing is lost -------------------------------------


class FlakyStore(MemoryStore):
    """Fails the first ``fail_finish`` finish_run calls and ``fail_commit`` append_messages
    calls with a StoreError, writing nothing."""

    def __init__(self, *, fail_finish: int = 0, fail_commit: int = 0) -> None:
        super().__init__()
        self.fail_finish, self.fail_commit = fail_finish, fail_commit

    async def finish_run(self, run_id: str, outcome: RunOutcome, **kwargs: Any) -> None:
        if self.fail_finish:
            self.fail_finish -= 1
            raise StoreError("disk hiccup")
        await super().finish_run(run_id, outcome, **kwargs)

    async def append_messages(self, session_id: uuid.UUID, messages: Any, **kwargs: Any) -> None:
        if self.fail_commit:
            self.fail_commit -= 1
            raise StoreError("disk hiccup")
        await super().append_messages(session_id, messages, **kwargs)


async def test_a_transient_failure_to_record_the_end_is_retried() -> None:
    store = FlakyStore(fail_finish=2)
    runtime, events = make([text_turn("ok", pieces=2)], store=store)
    out = await runtime.run(request())
    record = await store.get_run(out.run_id)
    assert record is not None and record.status == "completed"
    stored = [e.event for e in await store.read_events(out.run_id)]
    assert stored == events  # every published event, once, in order


async def test_a_store_that_keeps_failing_is_an_invocation_failed_with_the_cause() -> None:
    store = FlakyStore(fail_finish=99)
    runtime, events = make([text_turn("ok")], store=store)
    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request())
    assert isinstance(caught.value.cause, StoreError)
    assert "could not record" in caught.value.message
    assert events[-1].type == "run_completed"  # it had ended; the store could not say so


async def test_a_failed_step_commit_keeps_its_events_for_the_next_write() -> None:
    """The event log requeues a batch whose write failed: the run fails, and its stored log
    still holds every event it published, contiguous, with the terminal one last."""

    @tool
    def noop() -> str:
        """Nothing."""
        return "ok"

    store = FlakyStore(fail_commit=1)
    runtime, events = make([tool_call_turn("noop", {}), text_turn("x")], tools=[noop], store=store)
    with pytest.raises(InvocationFailed, match="disk hiccup"):
        await runtime.run(request())
    run_id = events[0].run_id or ""
    stored = await store.read_events(run_id)
    assert [e.seq for e in stored] == list(range(1, len(events) + 1))
    assert [e.event for e in stored] == events
    assert stored[-1].event.type == "run_failed"


@pytest.mark.parametrize("after", [-1, -5])
async def test_subscribe_run_with_a_negative_seq_is_the_whole_log(after: int) -> None:
    runtime, events = make([text_turn("ok")])
    inv = RuntimeInvocation(runtime)
    out = await runtime.run(request())
    got = await inv.subscribe_run(out.run_id, after_seq=after).pipe(ops.to_list())
    replayed = await inv.replay(out.run_id, after_seq=after).pipe(ops.to_list())
    assert [e.seq for e in got] == [e.seq for e in replayed] == list(range(1, len(events) + 1))


async def test_a_store_failing_to_claim_the_run_is_an_invocation_failed() -> None:
    class NoClaims(MemoryStore):
        async def begin_run(self, record: Any, messages: Any, **kwargs: Any) -> Any:
            raise StoreError("disk full")

    runtime, events = make([text_turn("x")], store=NoClaims())
    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(request())
    assert isinstance(caught.value.cause, StoreError) and "disk full" in caught.value.message
    assert events == []  # nothing was published


def _reply_lost_after(store: Store, commits: bool) -> list[str]:
    """Make ``store``'s next ``begin_run`` raise as a connection dropped at the commit does:
    after committing the claim (``commits``), or before. Returns the errors raised."""
    claim = store.begin_run
    raised: list[str] = []

    async def lossy(record: Any, messages: Any, **kw: Any) -> Any:
        store.begin_run = claim  # type: ignore[method-assign]
        if commits:
            await claim(record, messages, **kw)
        raised.append("lost")
        raise StoreError("server closed the connection unexpectedly")

    store.begin_run = lossy  # type: ignore[method-assign]
    return raised


async def test_a_claim_committed_whose_reply_was_lost_goes_on_from_the_stored_claim(store: Store) -> None:
    runtime, events = make([text_turn("fine")], store=store)
    raised = _reply_lost_after(store, commits=True)
    out = await runtime.run(request("hi", run_id="lost-reply"))
    assert raised == ["lost"] and out.output_text == "fine"
    assert types(events)[0] == "run_started" and types(events)[-1] == "run_completed"
    assert types(events).count("run_started") == 1
    stored = await store.get_run("lost-reply")
    assert stored is not None and stored.status == "completed"
    assert [e.event for e in await store.read_events("lost-reply")] == events
    assert [m.role for m in await store.load_history(out.session_id)] == ["user", "assistant"]


async def test_a_claim_that_failed_before_its_commit_is_still_an_invocation_failed(store: Store) -> None:
    runtime, events = make([text_turn("never")], store=store)
    raised = _reply_lost_after(store, commits=False)
    with pytest.raises(InvocationFailed, match="server closed the connection") as caught:
        await runtime.run(request("hi", run_id="not-stored"))
    assert raised == ["lost"] and isinstance(caught.value.cause, StoreError)
    assert events == [] and await store.get_run("not-stored") is None


async def test_a_stored_run_of_another_claim_is_not_taken_for_a_lost_reply(store: Store) -> None:
    # the same run id claimed and run before (a job queued twice): not this claim's
    first, _ = make([text_turn("first")], store=store)
    await first.run(request("hi", run_id="twice"))
    runtime, events = make([text_turn("second")], store=store)
    _reply_lost_after(store, commits=False)
    with pytest.raises(InvocationFailed, match="server closed the connection"):
        await runtime.run(request("hi", run_id="twice"))
    assert events == []
    stored = await store.get_run("twice")
    assert stored is not None and stored.status == "completed" and stored.output is not None
    assert stored.output.output_text == "first"


async def test_a_running_claim_of_an_earlier_attempt_is_not_taken_for_a_lost_reply(store: Store) -> None:
    # the same run id, session and owner, running with nothing logged (an earlier attempt of
    # this process): only its start differs from this claim's, and that is enough to refuse it
    session = uuid.uuid4()
    earlier = request("hi", run_id="attempts", session_id=session)
    await store.begin_run(RunRecord.begun("attempts", session, earlier), [])
    runtime, events = make([text_turn("never")], store=store)
    _reply_lost_after(store, commits=False)
    with pytest.raises(InvocationFailed, match="server closed the connection"):
        await runtime.run(request("hi", run_id="attempts", session_id=session))
    assert events == [] and await store.read_events("attempts") == []
    stored = await store.get_run("attempts")
    assert stored is not None and stored.status == "running"
