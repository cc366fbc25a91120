"""The event log through the runtime: replay, subscribe_run (replay then live, no gap, no
duplicate: a hypothesis property over interleavings), idempotent emit, atomic commits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactivex import Observable
from reactivex import operators as ops

from rxinvoke import (
    AgentRuntime,
    ChatTextDelta,
    EmitRequest,
    InvocationFailed,
    MemoryStore,
    ProviderStreamError,
    RunCompleted,
    RunOutput,
    RunRecord,
    RunRequest,
    RuntimeInvocation,
    ScriptedProvider,
    SqliteStore,
    Store,
    TextDelta,
    UnknownRun,
)
from rxinvoke._bus import EventBus
from rxinvoke._eventlog import Collector, EventLog
from rxinvoke.messages import FinishReason
from rxinvoke.stores import EventEnvelope, RunOutcome

text_turn = ScriptedProvider.text_turn
tool_call_turn = ScriptedProvider.tool_call_turn


def emit_request(text: str = "hi", **kw: Any) -> EmitRequest:
    return EmitRequest(provider="scripted", model="scripted", input=text, **kw)


def invocation(store: Store, turns: Any) -> RuntimeInvocation:
    return RuntimeInvocation(AgentRuntime(providers=[ScriptedProvider(turns)], store=store))


async def collect(observable: Observable[EventEnvelope]) -> list[EventEnvelope]:
    return list(await observable.pipe(ops.to_list()))


def shape(envelopes: Sequence[EventEnvelope]) -> list[tuple[int, str]]:
    return [(e.seq, e.type) for e in envelopes]


# --- replay --------------------------------------------------------------------------------------


async def test_replay_gives_every_published_event_in_order(store: Store) -> None:
    inv = invocation(store, [tool_call_turn("missing", {}), text_turn("done", pieces=3)])
    published: list[Any] = []
    inv.runtime.events.subscribe(published.append)
    out = await inv.emit(lambda ctx, c: emit_request())
    envelopes = await collect(inv.replay(out.run_id))
    assert [e.event for e in envelopes] == published
    assert [e.seq for e in envelopes] == list(range(1, len(published) + 1))
    assert {(e.run_id, e.session_id) for e in envelopes} == {(out.run_id, out.session_id)}
    assert shape(await collect(inv.replay(out.run_id, after_seq=len(published) - 2))) == shape(envelopes[-2:])


async def test_each_tap_of_the_log_sees_the_envelopes_while_it_taps(store: Store) -> None:
    # the log skips its taps while none is there: each kind must switch them on and off
    gate = asyncio.Event()
    inv = invocation(store, [text_turn("one"), text_turn("two"), [gate, *text_turn("three")]])
    log = inv.runtime.log
    seen: list[EventEnvelope] = []
    observed = log.envelopes.subscribe(seen.append)
    first = await inv.emit(emit_request())
    observed.dispose()
    await inv.emit(emit_request())
    assert {e.run_id for e in seen} == {first.run_id}
    assert shape(seen) == shape(await collect(inv.replay(first.run_id)))
    collector, followed = Collector(lambda: None, lambda: None, 10_000), []
    stops = [log.collect(collector)]
    began = asyncio.Event()
    inv.runtime.events.subscribe(lambda e: began.set() if e.type == "run_started" else None)
    third = asyncio.ensure_future(inv.emit(emit_request()))
    await began.wait()  # the third run waits at its gate
    stops.append(log.follow(next(iter(log._runs)), followed.append))
    gate.set()
    output = await third
    for stop in stops:
        stop.dispose()
    taken = collector.take()
    seqs = [first + i for _run, _key, first, events in taken for i in range(len(events))]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 1
    assert {e.run_id for e in followed} == {output.run_id} and followed[-1].type == "run_completed"
    assert "text_delta" in [e.type for e in followed]
    assert not log._tapped


async def test_replay_and_subscribe_run_of_an_unknown_run_error(store: Store) -> None:
    inv = invocation(store, [])
    for observable in (inv.replay("nope"), inv.subscribe_run("nope")):
        with pytest.raises(UnknownRun, match="unknown run 'nope'"):
            await collect(observable)


async def test_subscribe_run_of_a_finished_run_replays_and_completes(store: Store) -> None:
    inv = invocation(store, [text_turn("done")])
    out = await inv.emit(lambda ctx, c: emit_request())
    stored = await collect(inv.replay(out.run_id))
    assert shape(await collect(inv.subscribe_run(out.run_id))) == shape(stored)
    assert shape(await collect(inv.subscribe_run(out.run_id, after_seq=3))) == shape(stored[3:])
    assert await collect(inv.subscribe_run(out.run_id, after_seq=1000)) == []


async def test_subscribe_run_mid_run_replays_then_continues_live(store: Store) -> None:
    gate = asyncio.Event()
    inv = invocation(store, [[ChatTextDelta(delta="a"), gate, *text_turn("b")]])
    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    inv.observe("text_delta").subscribe(lambda e: started.done() or started.set_result(e.run_id or ""))
    run = asyncio.ensure_future(inv.emit(lambda ctx, c: emit_request()))
    run_id = await started  # the run is blocked at the gate, part of its log unwritten
    follower = asyncio.ensure_future(collect(inv.subscribe_run(run_id, after_seq=1)))
    await asyncio.sleep(0)
    gate.set()
    out = await run
    received = await follower
    stored = await collect(inv.replay(out.run_id))
    assert shape(received) == shape(stored[1:])
    assert received[-1].type == "run_completed"


# --- the property: no gap, no duplicate, whatever the interleaving ------------------------------


class SteppedStore(MemoryStore):
    """A MemoryStore whose reads and writes take ``lag`` loop turns, so that publishing,
    flushing and the replay can interleave at every point."""

    def __init__(self, lag: int) -> None:
        super().__init__()
        self.lag = lag

    async def _turns(self) -> None:
        for _ in range(self.lag):
            await asyncio.sleep(0)

    async def append_events(self, events: Sequence[EventEnvelope]) -> None:
        await self._turns()
        await super().append_events(events)

    async def finish_run(self, run_id: str, outcome: Any, **kw: Any) -> None:
        await self._turns()
        await super().finish_run(run_id, outcome, **kw)

    async def read_events(self, run_id: str, *, after_seq: int | None = None) -> list[EventEnvelope]:
        await self._turns()
        snapshot = await super().read_events(run_id, after_seq=after_seq)
        await self._turns()
        return snapshot


STEPS = st.lists(st.sampled_from(["publish", "flush", "turn"]), max_size=30)


async def interleave(before: list[str], after: list[str], after_seq: int, lag: int) -> tuple[list[int], int, list[str]]:
    store = SteppedStore(lag)
    bus = EventBus()
    log = EventLog(store, bus)
    run_id, session = "run", uuid.uuid4()
    await store.begin_run(RunRecord(run_id=run_id, session_id=session, request=RunRequest(provider="p", model="m", input="x")), [])
    log.begin(run_id, session)
    received: list[int] = []
    outcome: list[str] = []
    done = asyncio.Event()
    flushes: list[asyncio.Future[None]] = []

    def step(op: str) -> Any:
        if op == "publish":
            bus.publish(TextDelta(run_id=run_id, delta="x"))
        elif op == "flush":
            flushes.append(asyncio.ensure_future(log.flush()))
        return asyncio.sleep(0)

    for op in before:
        await step(op)
    log.subscribe_run(run_id, after_seq).subscribe(
        on_next=lambda e: received.append(e.seq),
        on_error=lambda exc: (outcome.append(f"error {exc}"), done.set()),
        on_completed=lambda: (outcome.append("completed"), done.set()),
    )
    for op in after:
        await step(op)
    bus.publish(RunCompleted(run_id=run_id, finish_reason=FinishReason.STOP, iterations=1))
    await asyncio.gather(*flushes)
    await log.finish(run_id, RunOutcome(status="completed"))
    await asyncio.wait_for(done.wait(), timeout=10)  # a hang guard, not synchronisation
    total = len(await MemoryStore.read_events(store, run_id))
    return received, total, outcome


@settings(max_examples=300, deadline=None)
@given(before=STEPS, after=STEPS, after_seq=st.integers(0, 35), lag=st.integers(0, 3))
def test_subscribe_run_delivers_each_seq_once_in_order(before: list[str], after: list[str], after_seq: int, lag: int) -> None:
    received, total, outcome = asyncio.run(interleave(before, after, after_seq, lag))
    assert received == list(range(after_seq + 1, total + 1))
    assert outcome == ["completed"]


# --- idempotent emit -----------------------------------------------------------------------------


async def test_a_second_emit_with_the_same_client_request_id_returns_the_first_output(store: Store) -> None:
    inv = invocation(store, [text_turn("one"), text_turn("two")])
    first = await inv.emit(lambda ctx, c: emit_request(client_request_id="key-1"))
    again = await inv.emit(lambda ctx, c: emit_request("other input", client_request_id="key-1"))
    assert again == first
    assert len(await store.list_runs()) == 1
    other = await inv.emit(lambda ctx, c: emit_request(client_request_id="key-2"))
    assert other.output_text == "two"


async def test_a_duplicate_emit_waits_for_the_running_first_one(store: Store) -> None:
    gate = asyncio.Event()
    inv = invocation(store, [[gate, *text_turn("late")]])
    events: list[Any] = []
    inv.runtime.events.subscribe(events.append)
    started = asyncio.Event()
    inv.observe("model_started").subscribe(lambda e: started.set())
    first = asyncio.ensure_future(inv.emit(lambda ctx, c: emit_request(client_request_id="k")))
    second = asyncio.ensure_future(inv.emit(lambda ctx, c: emit_request(client_request_id="k")))
    await started.wait()
    await asyncio.sleep(0)
    assert not second.done()
    gate.set()
    assert await second == await first
    assert sum(e.type == "run_started" for e in events) == 1  # nothing new started


async def test_a_duplicate_of_a_failed_run_raises_its_failure(store: Store) -> None:
    inv = invocation(store, [[ProviderStreamError("scripted", "scripted", "boom")]])
    with pytest.raises(InvocationFailed) as first:
        await inv.emit(lambda ctx, c: emit_request(client_request_id="k"))
    with pytest.raises(InvocationFailed, match="boom") as second:
        await inv.emit(lambda ctx, c: emit_request(client_request_id="k"))
    assert second.value.run_id == first.value.run_id


async def test_a_duplicate_of_a_run_in_another_runtime_polls_the_store(tmp_path: Path) -> None:
    gate = asyncio.Event()
    async with SqliteStore(tmp_path / "r.db") as one, SqliteStore(tmp_path / "r.db") as two:
        first_inv, second_inv = invocation(one, [[gate, *text_turn("shared")]]), invocation(two, [])
        started = asyncio.Event()
        first_inv.observe("model_started").subscribe(lambda e: started.set())
        first = asyncio.ensure_future(first_inv.emit(lambda ctx, c: emit_request(client_request_id="k")))
        await started.wait()
        second = asyncio.ensure_future(second_inv.emit(lambda ctx, c: emit_request(client_request_id="k")))
        await asyncio.sleep(0)
        gate.set()
        out: RunOutput = await first
        assert await second == out


# --- atomic commits ------------------------------------------------------------------------------


async def test_a_stream_that_dies_mid_message_commits_no_partial_message(store: Store) -> None:
    session = uuid.uuid4()
    inv = invocation(store, [[ChatTextDelta(delta="half a"), ProviderStreamError("scripted", "scripted", "reset")]])
    with pytest.raises(InvocationFailed) as caught:
        await inv.emit(lambda ctx, c: emit_request(session_id=session))
    assert [m.role for m in await store.load_history(session)] == ["user"]
    envelopes = await collect(inv.replay(caught.value.run_id or ""))
    assert envelopes[-1].type == "run_failed"
    assert [e.type for e in envelopes].count("assistant_message_committed") == 0
    record = await store.get_run(caught.value.run_id or "")
    assert record is not None and record.status == "failed" and "reset" in (record.error or "")


async def test_the_final_answer_is_written_with_the_terminal_status_before_the_next_run(store: Store) -> None:
    # The final assistant message is committed by finish_run (one transaction with the
    # terminal event): a second run of the session, queued behind the first, still sees it.
    session = uuid.uuid4()
    seen: list[list[str]] = []

    def turn(request: Any) -> Any:
        seen.append([m.content for m in request.messages])
        return text_turn(f"answer {len(seen)}")

    inv = invocation(SteppedStore(2) if isinstance(store, MemoryStore) else store, turn)
    first = asyncio.ensure_future(inv.emit(lambda ctx, c: emit_request("one", session_id=session)))
    second = asyncio.ensure_future(inv.emit(lambda ctx, c: emit_request("two", session_id=session)))
    out = await first
    await second
    assert seen[1] == ["one", "answer 1", "two"]
    history = await inv.runtime.store.load_history(session)
    assert [m.content for m in history] == ["one", "answer 1", "two", "answer 2"]
    envelopes = await collect(inv.replay(out.run_id))
    assert [e.type for e in envelopes][-3:] == ["assistant_message_committed", "usage_recorded", "run_completed"]

