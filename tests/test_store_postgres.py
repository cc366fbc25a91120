"""PostgresStore beyond the shared contract (tests/test_store.py runs that on it too): several
processes on one database, crash recovery by liveness lock, migrations, connection faults and
the password. Against a real PostgreSQL server (tests/tests_support_servers.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests_support_servers import PostgresServer, postgres_server

from rxinvoke import (
    AgentRuntime,
    Compaction,
    EmitRequest,
    InvocationCancelled,
    InvocationFailed,
    Message,
    MigrationError,
    PostgresStore,
    RunRecord,
    RunRequest,
    RuntimeInvocation,
    ScriptedProvider,
    StoreError,
)
from rxinvoke.errors import SessionAwaitingApproval, SessionBusy
from rxinvoke.events import RunCompleted, RunStarted, TextDelta
from rxinvoke.messages import FinishReason, TokenUsage
from rxinvoke.request import PendingApproval, RunOutput
from rxinvoke.stores import EventEnvelope, RunOutcome

text_turn = ScriptedProvider.text_turn


def record(session: uuid.UUID, key: str | None = None) -> RunRecord:
    run_id = str(uuid.uuid4())
    request = RunRequest(
        provider="p", model="m", input="hi", run_id=run_id, session_id=session, client_request_id=key
    )
    return RunRecord(run_id=run_id, session_id=session, request=request, client_request_id=key)


def started(rec: RunRecord, seq: int = 1) -> EventEnvelope:
    event = RunStarted(run_id=rec.run_id, session_id=str(rec.session_id), provider="p", model="m")
    return EventEnvelope.of(event, rec.run_id, rec.session_id, seq)


@pytest.fixture
def schema() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def two(postgres_server: PostgresServer, schema: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two stores on one schema: what two processes see (each has its own liveness lock)."""
    a = await PostgresStore(postgres_server.dsn, schema=schema, session_poll=30).open()
    b = await PostgresStore(postgres_server.dsn, schema=schema, session_poll=30).open()
    yield a, b
    await a.close()
    await b.close()


async def psql(server: PostgresServer, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(server.dsn, autocommit=True) as conn:
        cur = await conn.execute(sql)
        return list(await cur.fetchall()) if cur.description else []


async def liveness_locks(server: PostgresServer, owner: str, *, until: int) -> int:
    """How many hold the liveness lock of the store ``owner`` (``host:pid:pg:<key>``), polled
    for up to five seconds until it is ``until``."""
    key = int(owner.rsplit(":", 1)[1])
    held = -1
    for _ in range(100):
        rows = await psql(server, f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {key}")
        held = int(rows[0][0])
        if held == until:
            break
        await asyncio.sleep(0.05)
    return held


async def test_a_close_that_is_cancelled_is_cancelled_not_finished(postgres_server: PostgresServer, schema: str) -> None:
    # the close stops the store's LISTEN task and waits for it: a cancel of the close itself
    # while it waits is the caller's, and must reach the caller
    store = await PostgresStore(postgres_server.dsn, schema=schema).open()
    assert store._listener is not None and not store._listener.done()
    closing = asyncio.ensure_future(store._close_own())
    await asyncio.sleep(0)  # it cancelled the listener and waits for it
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(store.close(), 10)  # closing again finishes the job
    assert store._listener is None


# --- one run per session across processes --------------------------------------------------------


async def test_a_session_runs_one_run_at_a_time_across_stores(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    session = uuid.uuid4()
    first = record(session)
    await a.begin_run(first, [Message(role="user", content="one", run_id=first.run_id)])
    second = record(session)
    with pytest.raises(SessionBusy) as busy:
        await b.begin_run(second, [Message(role="user", content="two", run_id=second.run_id)])
    assert busy.value.run_id == first.run_id
    assert await b.get_run(second.run_id) is None  # nothing written
    assert [m.content for m in await b.load_history(session)] == ["one"]

    waiting = asyncio.ensure_future(b.wait_session(session))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await a.finish_run(first.run_id, RunOutcome.failed("x"), events=[started(first)])
    # woken by the NOTIFY of the commit, long before session_poll (30 s)
    await asyncio.wait_for(waiting, 10)
    stored, history = await b.begin_run(second, [Message(role="user", content="two", run_id=second.run_id)])
    assert stored.run_id == second.run_id
    assert [m.content for m in history] == ["one", "two"]


async def test_a_runtime_waits_for_another_processes_run_of_the_session(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    session = uuid.uuid4()
    gate = asyncio.Event()
    inv_a = RuntimeInvocation(AgentRuntime(providers=[ScriptedProvider([[gate, *text_turn("first")]])], store=a))
    inv_b = RuntimeInvocation(AgentRuntime(providers=[ScriptedProvider([text_turn("second")])], store=b))

    def build(text: str) -> EmitRequest:
        return EmitRequest(provider="scripted", model="scripted", input=text, session_id=session)

    begun = asyncio.Event()
    inv_a.runtime.events.subscribe(lambda e: begun.set() if e.type == "run_started" else None)
    run_a = asyncio.ensure_future(inv_a.emit(build("one")))
    await begun.wait()
    run_b = asyncio.ensure_future(inv_b.emit(build("two")))
    await asyncio.sleep(0.2)
    assert not run_b.done()
    assert len(await b.list_runs(session_id=session)) == 1  # b claimed nothing yet
    gate.set()
    out_a, out_b = await asyncio.wait_for(asyncio.gather(run_a, run_b), 20)
    assert (out_a.output_text, out_b.output_text) == ("first", "second")
    history = [(m.role, m.content) for m in await b.load_history(session)]
    assert history == [("user", "one"), ("assistant", "first"), ("user", "two"), ("assistant", "second")]


async def test_a_run_cancelled_while_it_waits_for_another_process_stores_nothing(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    session = uuid.uuid4()
    held = record(session)
    await a.begin_run(held, [])
    inv_b = RuntimeInvocation(AgentRuntime(providers=[ScriptedProvider([text_turn("x")])], store=b))
    waiting = asyncio.ensure_future(
        inv_b.emit(EmitRequest(provider="scripted", model="scripted", input="two", session_id=session))
    )
    await asyncio.sleep(0.2)
    waiting.cancel()
    with pytest.raises((asyncio.CancelledError, InvocationCancelled)):
        await waiting
    assert [r.run_id for r in await b.list_runs(session_id=session)] == [held.run_id]


async def test_two_processes_claiming_one_client_request_id_get_one_run(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    claims = [record(uuid.uuid4(), key="same-key") for _ in range(2)]
    (one, _), (other, _) = await asyncio.gather(a.begin_run(claims[0], []), b.begin_run(claims[1], []))
    assert one.run_id == other.run_id
    assert len(await a.list_runs(limit=10)) == 1


# --- crash recovery ------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys, uuid
    from rxinvoke import Message, PostgresStore, RunRecord, RunRequest
    from rxinvoke.events import RunStarted, TextDelta
    from rxinvoke.stores import EventEnvelope

    async def main():
        store = await PostgresStore(sys.argv[1], schema=sys.argv[2]).open()
        session, run_id = uuid.UUID(sys.argv[3]), sys.argv[4]
        request = RunRequest(provider="p", model="m", input="hi", run_id=run_id, session_id=session)
        record = RunRecord(run_id=run_id, session_id=session, request=request)
        await store.begin_run(record, [Message(role="user", content="hi", run_id=run_id)])
        event = RunStarted(run_id=run_id, session_id=str(session), provider="p", model="m")
        await store.append_events([EventEnvelope.of(event, run_id, session, 1)])
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_killed_processes_run_is_recovered_once_its_lock_is_free(
    postgres_server: PostgresServer, schema: str, tmp_path: Path
) -> None:
    session, run_id = uuid.uuid4(), str(uuid.uuid4())
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(script), postgres_server.dsn, schema, str(session), run_id,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        assert (await asyncio.wait_for(child.stdout.readline(), 30)).strip() == b"ready"
        async with PostgresStore(postgres_server.dsn, schema=schema, session_poll=0.2) as other:
            assert await other.recover_interrupted() == []  # alive: left alone
            with pytest.raises(SessionBusy):
                await other.begin_run(record(session), [])
            child.send_signal(signal.SIGKILL)
            await child.wait()
            for _ in range(100):  # the server notices the dead backend
                recovered = await other.recover_interrupted()
                if recovered:
                    break
                await asyncio.sleep(0.05)
            assert recovered == [run_id]
            stored = await other.get_run(run_id)
            assert stored is not None and (stored.status, stored.error) == ("failed", "interrupted")
            log = await other.read_events(run_id)
            assert [(e.seq, e.type) for e in log] == [(1, "run_started"), (2, "run_failed")]
            assert await other.recover_interrupted() == []  # once
            # the session is free again
            nxt, history = await other.begin_run(record(session), [])
            assert [m.content for m in history] == ["hi"]
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_begin_run_recovers_a_session_held_by_a_dead_owner(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    session = uuid.uuid4()
    held = record(session)
    await a.begin_run(held, [])
    await a.close()  # its liveness lock goes with its connection (a moment later)
    for _ in range(100):
        try:
            mine, _ = await b.begin_run(record(session), [])
            break
        except SessionBusy:
            await asyncio.sleep(0.05)
    stored = await b.get_run(held.run_id)
    assert stored is not None and stored.error == "interrupted"
    assert [e.type for e in await b.read_events(held.run_id)] == ["run_started", "run_failed"]


async def _until_gone(dsn: str, owner: str | None) -> None:
    """Wait until the server has freed ``owner``'s liveness lock (its connection ended)."""
    import psycopg

    from rxinvoke.stores.postgres import _LOCK_CLASS, _owner_key

    key = _owner_key(owner)
    assert key is not None
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        for _ in range(200):
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, key))
            row = await cur.fetchone()
            if row and row[0]:
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_CLASS, key))
                return
            await asyncio.sleep(0.05)
    pytest.fail(f"{owner}'s liveness lock was never released")


async def test_without_recovery_a_dead_owners_session_waits_for_its_resumption(
    postgres_server: PostgresServer, schema: str
) -> None:
    dsn = postgres_server.dsn
    a = await PostgresStore(dsn, schema=schema).open()
    held = record(uuid.uuid4())
    await a.begin_run(held, [Message(role="user", content="first")])
    await a.append_events([started(held)])
    owner = a.owner
    await a.close()
    await _until_gone(dsn, owner)
    # b resumes dead runs (a retrying worker); c only starts new ones, without recovery either
    b = await PostgresStore(dsn, schema=schema, recover_on_open=False).open()
    c = await PostgresStore(dsn, schema=schema, recover_on_open=False, resume_grace=3600).open()
    try:
        for _ in range(3):  # the dead run keeps its session: the new run waits as for a live one
            with pytest.raises(SessionBusy):
                await c.begin_run(record(held.session_id), [])
        stored = await c.get_run(held.run_id)
        assert stored is not None and stored.status == "running"  # not failed meanwhile
        taken = await b.resume_run(held.run_id, [])
        assert taken is not None
        with pytest.raises(SessionBusy):
            await c.begin_run(record(held.session_id), [])
        done = RunOutcome.completed(RunOutput(
            run_id=held.run_id, session_id=held.session_id, iterations=1,
            finish_reason=FinishReason.STOP, total_usage=TokenUsage(), output_text="done",
        ))
        completed = RunCompleted(run_id=held.run_id, finish_reason=FinishReason.STOP, iterations=1)
        await b.finish_run(
            held.run_id, done, events=[EventEnvelope.of(completed, held.run_id, held.session_id, 2)],
            messages=[Message(role="assistant", content="done")],
        )
        nxt, history = await c.begin_run(record(held.session_id), [Message(role="user", content="next")])
        assert [m.content for m in history] == ["first", "done", "next"]
        stored = await c.get_run(held.run_id)
        assert stored is not None and stored.status == "completed"
        assert [e.type for e in await c.read_events(held.run_id)] == ["run_started", "run_completed"]
    finally:
        await b.close()
        await c.close()


async def test_without_recovery_a_dead_owners_run_is_failed_once_the_grace_is_over(
    postgres_server: PostgresServer, schema: str
) -> None:
    dsn = postgres_server.dsn
    a = await PostgresStore(dsn, schema=schema).open()
    held = record(uuid.uuid4())
    await a.begin_run(held, [])
    owner = a.owner
    await a.close()
    await _until_gone(dsn, owner)
    with pytest.raises(ValueError, match="resume_grace"):
        PostgresStore(dsn, schema=schema, resume_grace=-1)
    async with PostgresStore(dsn, schema=schema, recover_on_open=False, resume_grace=0) as c:
        stored = await c.get_run(held.run_id)
        assert stored is not None and stored.status == "running"  # opening recovered nothing
        mine, _ = await c.begin_run(record(held.session_id), [])
        assert mine.status == "running"
        stored = await c.get_run(held.run_id)
        assert stored is not None and (stored.status, stored.error) == ("failed", "interrupted")


async def test_a_dead_workers_run_is_left_to_the_reapers_which_settle_it_with_what_its_stream_showed(
    postgres_server: PostgresServer, schema: str
) -> None:
    dsn = postgres_server.dsn
    a = await PostgresStore(dsn, schema=schema).open()
    a.mark_as_worker()  # as a Worker does with its store
    held = record(uuid.uuid4())
    await a.begin_run(held, [])
    await a.append_events([started(held)])
    owner = a.owner
    assert owner.endswith("/worker")
    stored = await a.get_run(held.run_id)
    assert stored is not None and stored.owner == owner
    await a.close()
    await _until_gone(dsn, owner)
    # a store opened now (recovering on open, as any process's) cannot salvage: it leaves it
    async with PostgresStore(dsn, schema=schema, session_poll=30) as c:
        assert c.recovered == ()
        assert await c.recover_interrupted() == []
        with pytest.raises(SessionBusy):  # its session stays the dead worker's run's meanwhile
            await c.begin_run(record(held.session_id), [])
        stored = await c.get_run(held.run_id)
        assert stored is not None and stored.status == "running"
        seen = [  # what its stream showed: events the dead worker published, never committed
            started(held),
            EventEnvelope.of(TextDelta(run_id=held.run_id, delta="a"), held.run_id, held.session_id, 2),
        ]
        assert await c.recover_run(held.run_id, seen)  # a reaper's recovery
        assert [(e.seq, e.type) for e in await c.read_events(held.run_id)] == [
            (1, "run_started"), (2, "text_delta"), (3, "run_failed"),
        ]
    # past the grace (no worker took its job: the queue was lost, say) a store settles it
    d = await PostgresStore(dsn, schema=schema).open()
    d.mark_as_worker()
    late = record(uuid.uuid4())
    await d.begin_run(late, [])
    owner = d.owner
    await d.close()
    await _until_gone(dsn, owner)
    async with PostgresStore(dsn, schema=schema, resume_grace=0) as e:
        assert late.run_id in e.recovered
        stored = await e.get_run(late.run_id)
        assert stored is not None and (stored.status, stored.error) == ("failed", "interrupted")


async def test_concurrent_runs_writes_commit_together_and_a_refused_one_fails_alone(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    held = [record(uuid.uuid4()) for _ in range(20)]
    for rec in held:
        await a.begin_run(rec, [Message(role="user", content="hi")])
    done_already = held[0]
    await a.finish_run(done_already.run_id, RunOutcome.cancelled(), events=[started(done_already)])
    batches: list[int] = []
    run_batch = a._batcher._run_batch

    async def counted(writes: Any) -> None:
        batches.append(len(writes))
        await run_batch(writes)

    a._batcher._run_batch = counted  # type: ignore[method-assign]
    done = RunOutcome.completed(RunOutput(
        run_id="x", session_id=uuid.uuid4(), iterations=1, finish_reason=FinishReason.STOP,
        total_usage=TokenUsage(), output_text="",
    ))
    results = await asyncio.gather(
        *(
            a.finish_run(
                rec.run_id, done, events=[started(rec)], messages=[Message(role="assistant", content=rec.run_id)]
            )
            for rec in held
        ),
        return_exceptions=True,
    )
    refused, *landed = results
    assert isinstance(refused, StoreError) and "already cancelled" in str(refused)
    assert landed == [None] * 19
    assert batches == [20] + [1] * 20  # one transaction, refused by one write: then one by one
    for rec in held[1:]:
        stored = await b.get_run(rec.run_id)  # another process sees every run written
        assert stored is not None and stored.status == "completed"
        assert [m.content for m in await b.load_history(rec.session_id)] == ["hi", rec.run_id]
        assert [e.type for e in await b.read_events(rec.run_id)] == ["run_started"]
    # without a refusal, many runs' writes are one batch
    more = [record(uuid.uuid4()) for _ in range(10)]
    for rec in more:
        await a.begin_run(rec, [])
    batches.clear()
    await asyncio.gather(*(a.append_events([started(rec)]) for rec in more))
    assert batches == [10]


async def test_claims_at_once_are_one_transaction_and_a_refused_claim_writes_nothing(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    busy_session, paused_session, known = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await b.begin_run(record(busy_session), [])  # another process's run holds this session
    paused = record(paused_session)
    await a.begin_run(paused, [])
    await a.finish_run(paused.run_id, RunOutcome.paused(RunOutput(
        run_id=paused.run_id, session_id=paused_session, iterations=1,
        finish_reason=FinishReason.AWAITING_APPROVAL, total_usage=TokenUsage(), output_text="",
        pending=(PendingApproval(call_id="c1", tool_name="deploy", arguments="{}"),),
    )))
    earlier = record(known)
    await a.begin_run(earlier, [Message(role="user", content="before")])
    await a.finish_run(earlier.run_id, RunOutcome.cancelled())
    batches: list[int] = []
    run_batch = a._begins._run_batch

    async def counted(begins: Any) -> Any:
        batches.append(len(begins))
        return await run_batch(begins)

    a._begins._run_batch = counted  # type: ignore[method-assign]
    fresh = [record(uuid.uuid4()) for _ in range(8)]
    claims = [*fresh, record(busy_session), record(paused_session), record(known), record(uuid.uuid4(), key="k-1")]
    results = await asyncio.gather(
        *(a.begin_run(r, [Message(role="user", content=r.run_id)], preamble=[Message(role="system", content="be brief")]) for r in claims),
        return_exceptions=True,
    )
    assert batches == [12]
    *claimed, busy, waiting, again, keyed = results
    assert isinstance(busy, SessionBusy) and isinstance(waiting, SessionAwaitingApproval)
    for rec, got in zip(fresh, claimed, strict=True):
        assert not isinstance(got, BaseException)
        stored, history = got
        assert stored.run_id == rec.run_id and stored.owner == a.owner
        assert [m.content for m in history] == ["be brief", rec.run_id]  # a new session: the preamble
    assert not isinstance(again, BaseException)
    assert [m.content for m in again[1]] == ["before", claims[10].run_id]  # history, no preamble
    assert not isinstance(keyed, BaseException) and keyed[0].client_request_id == "k-1"  # (alone)
    for refused in (claims[8], claims[9]):
        assert await b.get_run(refused.run_id) is None  # nothing written for a refused claim
    for rec in fresh:
        stored = await b.get_run(rec.run_id)
        assert stored is not None and stored.status == "running"
        with pytest.raises(SessionBusy):  # each claimed session is held: another process waits
            await b.begin_run(record(rec.session_id), [])


async def test_recover_run_salvages_a_dead_owners_unstored_events(
    two: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = two
    held = record(uuid.uuid4())
    await a.begin_run(held, [])
    await a.append_events([started(held)])
    seen = [
        started(held),
        EventEnvelope.of(TextDelta(run_id=held.run_id, delta="a"), held.run_id, held.session_id, 2),
        EventEnvelope.of(TextDelta(run_id=held.run_id, delta="b"), held.run_id, held.session_id, 3),
    ]
    assert not await b.recover_run(held.run_id, seen)  # a lives
    await a.close()
    for _ in range(100):  # the server ends a's backend (and frees its lock) a moment later
        if await b.recover_run(held.run_id, seen):
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a's liveness lock was never released")
    assert [(e.seq, e.type) for e in await b.read_events(held.run_id)] == [
        (1, "run_started"), (2, "text_delta"), (3, "text_delta"), (4, "run_failed"),
    ]
    assert not await b.recover_run(held.run_id, seen)


async def test_recover_run_of_this_stores_own_run_needs_mine(two: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = two
    held = record(uuid.uuid4())
    await a.begin_run(held, [])  # a claim whose reply was lost: nothing in a runs it
    assert not await a.recover_run(held.run_id, [])  # its owner (a) lives
    assert not await b.recover_run(held.run_id, [], mine=True)  # a's, not b's: left
    assert await a.recover_run(held.run_id, [], mine=True)
    assert [e.type for e in await a.read_events(held.run_id)] == ["run_started", "run_failed"]
    settled = await a.get_run(held.run_id)
    assert settled is not None and (settled.status, settled.error) == ("failed", "interrupted")
    assert not await a.recover_run(held.run_id, [], mine=True)  # once


async def test_resume_run_takes_over_a_dead_owners_run_for_this_process(
    two: tuple[PostgresStore, PostgresStore], postgres_server: PostgresServer, schema: str
) -> None:
    a, b = two
    held = record(uuid.uuid4())
    await a.begin_run(held, [Message(role="user", content="hello")])
    await a.append_events([started(held)])
    seen = [
        started(held),
        EventEnvelope.of(TextDelta(run_id=held.run_id, delta="a"), held.run_id, held.session_id, 2),
    ]
    assert await b.resume_run(held.run_id, seen) is None  # a lives
    await a.close()
    for _ in range(100):  # the server ends a's backend (and frees its lock) a moment later
        taken = await b.resume_run(held.run_id, seen)
        if taken is not None:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("a's liveness lock was never released")
    owned, history, last_seq = taken
    assert (owned.status, owned.owner, last_seq) == ("running", b.owner, 2)
    assert [m.content for m in history] == ["hello"]
    stored = await b.get_run(held.run_id)
    assert stored is not None and (stored.status, stored.owner) == ("running", b.owner)
    assert [(e.seq, e.type) for e in await b.read_events(held.run_id)] == [(1, "run_started"), (2, "text_delta")]
    assert await b.resume_run(held.run_id, seen) is None  # its owner (b) lives: once
    c = await PostgresStore(postgres_server.dsn, schema=schema, session_poll=30).open()
    try:
        with pytest.raises(SessionBusy):  # the session stays the run's (a third process)
            await c.begin_run(record(held.session_id), [])
    finally:
        await c.close()
    # the log goes on after it; the run ends as any run
    done = RunCompleted(run_id=held.run_id, finish_reason=FinishReason.STOP, iterations=1)
    await b.finish_run(held.run_id, RunOutcome.completed(RunOutput(
        run_id=held.run_id, session_id=held.session_id, iterations=1, finish_reason=FinishReason.STOP,
        total_usage=TokenUsage(), output_text="",
    )), events=[EventEnvelope.of(done, held.run_id, held.session_id, 3)])
    assert [e.type for e in await b.read_events(held.run_id)] == ["run_started", "text_delta", "run_completed"]


async def test_the_runs_of_one_dead_owner_are_taken_over_at_once(
    two: tuple[PostgresStore, PostgresStore], postgres_server: PostgresServer, schema: str
) -> None:
    # the reapers of several workers take a dead worker's runs over together: a probe of its
    # liveness lock must not make another probe of the same lock think its owner lives
    a, b = two
    c = await PostgresStore(postgres_server.dsn, schema=schema, session_poll=30).open()
    try:
        runs = [record(uuid.uuid4()) for _ in range(8)]
        for rec in runs:
            await a.begin_run(rec, [])
            await a.append_events([started(rec)])
        owner = a.owner
        await a.close()
        # the server ends a's backend (and frees its lock) a moment later
        if await liveness_locks(postgres_server, owner, until=0) != 0:
            pytest.fail("a's liveness lock was never released")
        taken = await asyncio.gather(*(s.resume_run(rec.run_id, []) for rec in runs for s in (b, c)))
        owners = [[t[0].owner for t in taken[2 * i : 2 * i + 2] if t is not None] for i in range(len(runs))]
        assert all(len(o) == 1 for o in owners), owners  # each run taken over, once
        for rec, (owner,) in zip(runs, owners, strict=True):
            stored = await b.get_run(rec.run_id)
            assert stored is not None and (stored.status, stored.owner) == ("running", owner)
    finally:
        await c.close()


# --- schema --------------------------------------------------------------------------------------


async def test_concurrent_first_opens_migrate_once(postgres_server: PostgresServer, schema: str) -> None:
    stores = [PostgresStore(postgres_server.dsn, schema=schema) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    rows = await psql(postgres_server, f"SELECT version FROM {schema}.rxinvoke_schema")
    assert rows == [(stores[0].schema_version,)]
    for s in stores:
        await s.close()


async def test_a_newer_schema_is_refused(postgres_server: PostgresServer, schema: str) -> None:
    async with PostgresStore(postgres_server.dsn, schema=schema):
        pass
    await psql(postgres_server, f"UPDATE {schema}.rxinvoke_schema SET version = 99")
    with pytest.raises(MigrationError, match="version 99 is newer"):
        await PostgresStore(postgres_server.dsn, schema=schema).open()


async def test_a_version_1_schema_keeps_its_messages_and_gains_checkpoints(
    postgres_server: PostgresServer, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rxinvoke.stores import postgres as store_postgres

    monkeypatch.setattr(store_postgres, "MIGRATIONS", store_postgres.MIGRATIONS[:1])
    monkeypatch.setattr(store_postgres, "SCHEMA_VERSION", 1)
    async with PostgresStore(postgres_server.dsn, schema=schema):
        pass
    session = uuid.uuid4()
    old = Message(role="user", content="from version 1", run_id="r")
    await psql(  # the row version 1 wrote (no compaction column)
        postgres_server,
        f"INSERT INTO {schema}.sessions (id) VALUES ('{session}'); "
        f"INSERT INTO {schema}.messages (id, session_id, run_id, role, content, tool_calls, created_at) "
        f"VALUES ('{old.id}', '{session}', 'r', 'user', 'from version 1', '[]', now())",
    )
    monkeypatch.undo()
    mark = Compaction(keeps_from=old.id, messages_summarized=0, tokens_before=10, tokens_after=5)
    async with PostgresStore(postgres_server.dsn, schema=schema) as store:
        await store.append_messages(session, [Message(role="system", content="summary", compaction=mark)])
        loaded = await store.load_history(session)
    assert [m.content for m in loaded] == ["from version 1", "summary"]
    assert loaded[0].compaction is None and loaded[1].compaction == mark
    assert await psql(postgres_server, f"SELECT version FROM {schema}.rxinvoke_schema") == [(3,)]


async def test_another_applications_schema_is_refused_and_left_unchanged(
    postgres_server: PostgresServer, schema: str
) -> None:
    await psql(postgres_server, f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.runs (x int)")
    with pytest.raises(StoreError, match="not an rxinvoke schema"):
        await PostgresStore(postgres_server.dsn, schema=schema).open()
    tables = await psql(postgres_server, f"SELECT tablename FROM pg_tables WHERE schemaname = '{schema}'")
    assert tables == [("runs",)]


def test_a_bad_schema_name_or_dsn_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="schema must be"):
        PostgresStore("postgresql://u@h/db", schema="Robert'); DROP TABLE")
    with pytest.raises(ValueError, match="not a valid PostgreSQL connection string"):
        PostgresStore("postgresql://u:pw@h:notaport/db?x==")


# --- faults and the password ---------------------------------------------------------------------


async def test_the_password_is_in_no_error_and_no_repr(postgres_server: PostgresServer) -> None:
    secret = postgres_server.password
    wrong = postgres_server.dsn.replace(secret, secret + "-wrong")
    store = PostgresStore(wrong, timeout=2)
    assert secret not in repr(store) and secret not in store.where
    with pytest.raises(StoreError) as failed:
        await store.open()
    assert "password authentication failed" in str(failed.value)
    text = f"{failed.value!s} {failed.value!r} {failed.value.__cause__!r} {failed.value.__context__!r}"
    assert secret not in text


async def test_an_unreachable_server_fails_within_the_timeout() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = PostgresStore(f"postgresql://u:pw@127.0.0.1:{port}/db", timeout=1)
    with pytest.raises(StoreError, match=f"127.0.0.1:{port}"):
        await asyncio.wait_for(store.open(), 20)
    await store.close()


async def test_connections_killed_by_the_server_are_replaced_without_losing_a_write(
    postgres_server: PostgresServer, schema: str
) -> None:
    async with PostgresStore(postgres_server.dsn, schema=schema, max_size=2) as store:
        session = uuid.uuid4()
        rec = record(session)
        await store.begin_run(rec, [])
        await psql(
            postgres_server,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE pid <> pg_backend_pid() AND datname = '{postgres_server.database}'",
        )
        await store.append_events([started(rec)])  # a dead pooled connection: retried
        await store.finish_run(rec.run_id, RunOutcome.failed("x"))
        assert [e.seq for e in await store.read_events(rec.run_id)] == [1]
        # the store's own connection (its liveness lock) came back too: nobody recovers its runs
        other = record(uuid.uuid4())
        await store.begin_run(other, [])
        assert await liveness_locks(postgres_server, store.owner, until=1) == 1


async def test_a_store_closed_while_its_own_connection_reconnects_leaves_it_closed(
    postgres_server: PostgresServer, schema: str
) -> None:
    store = await PostgresStore(postgres_server.dsn, schema=schema).open()
    taking = asyncio.Event()
    caught: list[Any] = []

    async def stuck(conn: Any) -> None:  # the reconnect is cancelled while it takes the lock
        caught.append(conn)
        taking.set()
        await asyncio.Event().wait()

    store._lock_owner = stuck  # type: ignore[method-assign]
    key = store.owner.rsplit(":", 1)[1]
    await psql(
        postgres_server,
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
        f"AND objid = {key}",
    )
    await asyncio.wait_for(taking.wait(), 30)
    await store.close()
    assert caught and caught[0].closed  # not left for the garbage collector to warn about


@pytest.mark.timeout(300)  # a cluster of its own: slow on CI
async def test_a_run_whose_server_goes_away_fails_with_a_clear_error(tmp_path: Path) -> None:
    with postgres_server() as server:
        store = PostgresStore(server.dsn, timeout=2)
        gate = asyncio.Event()
        inv = RuntimeInvocation(AgentRuntime(providers=[ScriptedProvider([[gate, *text_turn("x")]])], store=store))
        begun = asyncio.Event()
        inv.runtime.events.subscribe(lambda e: begun.set() if e.type == "run_started" else None)
        run = asyncio.ensure_future(
            inv.emit(lambda c, _: EmitRequest(provider="scripted", model="scripted", input="hi"))
        )
        await begun.wait()
        server.stop()
        gate.set()
        with pytest.raises(InvocationFailed, match="the store could not record it") as failed:
            await asyncio.wait_for(run, 60)  # never a hang: the pool's timeout (2 s) ends it
        assert isinstance(failed.value.__cause__, StoreError)
        assert f"postgresql://{server.user}@127.0.0.1:{server.port}" in str(failed.value)
        assert server.password not in str(failed.value)
        await store.close()
