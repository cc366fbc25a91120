"""The Store contract, run on MemoryStore, SqliteStore (a tmp_path file) and PostgresStore (a
private server, a schema per test) alike: the ``store`` fixture of conftest.py."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from rxinvoke import (
    Compaction,
    MemoryStore,
    Message,
    PendingApproval,
    PostgresStore,
    RunOutput,
    RunRecord,
    RunRequest,
    SessionAwaitingApproval,
    SqliteStore,
    Store,
    StoreError,
    TextDelta,
    TokenUsage,
    ToolCall,
    UnknownRun,
    UsageRecorded,
)
from rxinvoke.errors import RunAlreadyStored
from rxinvoke.events import InvocationEvent, RunCompleted, RunStarted
from rxinvoke.messages import FinishReason, utcnow
from rxinvoke.stores import EventEnvelope, RunOutcome
from rxinvoke.stores.base import EventBatch


def record(run_id: str | None = None, session: uuid.UUID | None = None, key: str | None = None, **kw: object) -> RunRecord:
    run_id = run_id or str(uuid.uuid4())
    session = session or uuid.uuid4()
    request = RunRequest(provider="p", model="m", input="hi", run_id=run_id, session_id=session, client_request_id=key)
    return RunRecord(run_id=run_id, session_id=session, request=request, client_request_id=key, **kw)  # type: ignore[arg-type]


async def start(store: Store, rec: RunRecord) -> RunRecord:
    """Claim ``rec`` with no opening messages (the stored record)."""
    stored, _ = await store.begin_run(rec, [])
    return stored


def envelope(rec: RunRecord, seq: int, event: InvocationEvent) -> EventEnvelope:
    """As the EventLog builds them: id ``"{run_id}:{seq}"``, emitted at the event's timestamp
    (a store keeps the event only and derives the other fields when it reads)."""
    return EventEnvelope.of(event, rec.run_id, rec.session_id, seq)


def output(rec: RunRecord) -> RunOutput:
    return RunOutput(
        run_id=rec.run_id, session_id=rec.session_id, iterations=1,
        finish_reason=FinishReason.STOP, total_usage=TokenUsage(total_tokens=3), output_text="ok",
    )


def test_every_store_implements_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MemoryStore(), Store)
    assert isinstance(SqliteStore(tmp_path / "x.db"), Store)
    assert isinstance(PostgresStore("postgresql://u@127.0.0.1/db"), Store)


async def test_messages_round_trip_in_commit_order(store: Store) -> None:
    session = uuid.uuid4()
    call = ToolCall(id="c1", name="add", arguments='{"a": 1}')
    first = [Message(role="user", content="hi", run_id="r"), Message(role="assistant", tool_calls=(call,), run_id="r")]
    second = [Message(role="tool", content="2", tool_call_id="c1", run_id="r")]
    await store.append_messages(session, first)
    await store.append_messages(session, second)
    assert await store.load_history(session) == [*first, *second]
    assert await store.load_history(uuid.uuid4()) == []


async def test_a_checkpoint_message_keeps_what_it_summarises(store: Store) -> None:
    session = uuid.uuid4()
    user = Message(role="user", content="next question", run_id="r")
    mark = Compaction(keeps_from=user.id, messages_summarized=12, tokens_before=9000, tokens_after=700)
    checkpoint = Message(role="system", content="Summary: the user wants …", run_id="r", compaction=mark)
    await store.append_messages(session, [user, checkpoint])
    loaded = await store.load_history(session)
    assert loaded == [user, checkpoint]
    assert loaded[1].compaction == mark and loaded[0].compaction is None


async def test_a_message_batch_is_atomic(store: Store) -> None:
    session = uuid.uuid4()
    kept = Message(role="user", content="one")
    await store.append_messages(session, [kept])
    if isinstance(store, MemoryStore):
        pytest.skip("MemoryStore appends in memory: nothing can fail half-way")
    with pytest.raises(StoreError):  # the second message reuses an id: the batch is refused whole
        await store.append_messages(session, [Message(role="user", content="two"), kept])
    assert await store.load_history(session) == [kept]


async def test_a_claimed_run_is_stored_running(store: Store) -> None:
    rec = record()
    stored = await start(store, rec)
    assert stored.run_id == rec.run_id and stored.status == "running"
    got = await store.get_run(rec.run_id)
    assert got is not None
    assert (got.status, got.request, got.session_id, got.iterations) == ("running", rec.request, rec.session_id, 0)
    assert await store.get_run("nope") is None
    with pytest.raises(StoreError):
        await start(store, rec)


async def test_a_claim_returns_the_run_with_the_same_client_request_id(store: Store) -> None:
    first = await start(store, record(key="k"))
    second = await start(store, record(key="k"))
    assert second.run_id == first.run_id
    assert [r.run_id for r in await store.list_runs()] == [first.run_id]
    other = await start(store, record(key="other"))  # another key: a new run
    assert other.run_id != first.run_id and other.status == "running"


async def test_begin_run_claims_reads_the_history_and_appends_the_opening(store: Store) -> None:
    session = uuid.uuid4()
    system = [Message(role="system", content="be brief")]
    first = record(session=session)
    opening = [Message(role="user", content="one", run_id=first.run_id)]
    stored, history = await store.begin_run(first, opening, preamble=system)
    assert (stored.run_id, stored.status) == (first.run_id, "running")
    assert history == [*system, *opening]  # a new session: the preamble comes first
    assert await store.load_history(session) == history
    got = await store.get_run(first.run_id)
    assert got is not None and (got.status, got.request) == ("running", first.request)

    second = record(session=session)
    more = [Message(role="user", content="two", run_id=second.run_id)]
    stored, history = await store.begin_run(second, more, preamble=system)
    assert stored.run_id == second.run_id
    assert history == [*system, *opening, *more]  # the session has history: no preamble
    assert await store.load_history(session) == history
    assert await store.read_events(second.run_id) == []


async def test_begin_run_with_a_stored_client_request_id_writes_nothing(store: Store) -> None:
    first = await start(store, record(key="k"))
    session = uuid.uuid4()
    duplicate = record(session=session, key="k")
    stored, history = await store.begin_run(duplicate, [Message(role="user", content="x")], preamble=[Message(role="system", content="s")])
    assert (stored.run_id, history) == (first.run_id, [])
    assert await store.load_history(session) == []
    assert await store.get_run(duplicate.run_id) is None
    assert [r.run_id for r in await store.list_runs()] == [first.run_id]
    again, _ = await store.begin_run(record(key="k"), [])  # begun runs are claimed the same way
    assert again.run_id == first.run_id


async def test_begin_run_rejects_a_stored_run_id_and_writes_nothing(store: Store) -> None:
    rec = await start(store, record())
    with pytest.raises(RunAlreadyStored) as refused:  # a StoreError
        await store.begin_run(rec, [Message(role="user", content="x")])
    assert refused.value.run_id == rec.run_id and isinstance(refused.value, StoreError)
    assert await store.load_history(rec.session_id) == []


async def test_begin_run_is_one_transaction(store: Store) -> None:
    session = uuid.uuid4()
    kept = Message(role="user", content="one")
    await store.append_messages(session, [kept])
    if isinstance(store, MemoryStore):
        pytest.skip("MemoryStore appends in memory: nothing can fail half-way")
    rec = record(session=session)
    with pytest.raises(StoreError):  # the opening reuses a message id: the claim is rolled back too
        await store.begin_run(rec, [Message(role="user", content="two"), kept])
    assert await store.get_run(rec.run_id) is None
    assert await store.load_history(session) == [kept]
    stored, history = await store.begin_run(rec, [Message(role="user", content="two", id="m2")])
    assert stored.run_id == rec.run_id and [m.content for m in history] == ["one", "two"]


async def test_events_are_numbered_from_one_without_gaps(store: Store) -> None:
    rec = await start(store, record())
    events = [envelope(rec, 1, RunStarted(run_id=rec.run_id, session_id=str(rec.session_id), provider="p", model="m"))]
    events += [envelope(rec, n, TextDelta(run_id=rec.run_id, delta=str(n))) for n in (2, 3)]
    await store.append_events(events[:1])
    await store.append_events(events[1:])
    assert await store.read_events(rec.run_id) == events
    assert await store.read_events(rec.run_id, after_seq=1) == events[1:]
    assert await store.read_events(rec.run_id, after_seq=3) == []
    for bad in (3, 5):  # a duplicate and a gap
        with pytest.raises(StoreError):
            await store.append_events([envelope(rec, bad, TextDelta(run_id=rec.run_id, delta="x"))])
    assert len(await store.read_events(rec.run_id)) == 3


async def test_a_bad_event_batch_writes_nothing(store: Store) -> None:
    rec = await start(store, record())
    good = envelope(rec, 1, TextDelta(run_id=rec.run_id, delta="a"))
    usage = envelope(rec, 2, UsageRecorded(run_id=rec.run_id, usage=TokenUsage(input_tokens=1, output_tokens=1, total_tokens=2)))
    bad = envelope(rec, 4, TextDelta(run_id=rec.run_id, delta="c"))
    with pytest.raises(StoreError):
        await store.append_events([good, usage, bad])
    with pytest.raises(StoreError):  # the same as the runtime's own batch of entries
        await store.append_events(EventBatch([(e.run_id, e.session_id, e.seq, e.event) for e in (good, usage, bad)]))
    assert await store.read_events(rec.run_id) == []
    stored = await store.get_run(rec.run_id)
    assert stored is not None and (stored.iterations, stored.total_usage.total_tokens) == (0, 0)


async def test_a_batch_of_interleaved_runs_is_written_whole_or_not_at_all(store: Store) -> None:
    a, b = await start(store, record()), await start(store, record())

    def delta(rec: RunRecord, seq: int) -> EventEnvelope:
        return envelope(rec, seq, TextDelta(run_id=rec.run_id, delta=f"{seq}"))

    with pytest.raises(StoreError):  # b's second stretch skips a seq: neither run gets anything
        await store.append_events([delta(a, 1), delta(b, 1), delta(a, 2), delta(b, 3)])
    with pytest.raises(StoreError):  # a's second stretch repeats a seq
        await store.append_events(EventBatch([
            (e.run_id, e.session_id, e.seq, e.event) for e in (delta(a, 1), delta(b, 1), delta(a, 1))
        ]))
    assert await store.read_events(a.run_id) == [] and await store.read_events(b.run_id) == []
    batch = [delta(a, 1), delta(b, 1), delta(a, 2), delta(b, 2), delta(b, 3)]
    await store.append_events(batch)
    assert [e.seq for e in await store.read_events(a.run_id)] == [1, 2]
    assert [e.seq for e in await store.read_events(b.run_id)] == [1, 2, 3]


async def test_unknown_runs(store: Store) -> None:
    with pytest.raises(UnknownRun) as caught:
        await store.read_events("nope")
    assert caught.value.run_id == "nope"
    with pytest.raises(UnknownRun):
        await store.append_events([envelope(record(run_id="nope"), 1, TextDelta(run_id="nope", delta="x"))])
    with pytest.raises(UnknownRun):
        await store.finish_run("nope", RunOutcome.failed("x"))


async def test_usage_is_recorded_with_its_event(store: Store) -> None:
    rec = await start(store, record())
    usages = [TokenUsage(input_tokens=2, output_tokens=3, total_tokens=5), TokenUsage(input_tokens=1, total_tokens=1)]
    await store.append_events([envelope(rec, n + 1, UsageRecorded(run_id=rec.run_id, usage=u)) for n, u in enumerate(usages)])
    got = await store.get_run(rec.run_id)
    assert got is not None
    assert (got.iterations, got.total_usage) == (2, TokenUsage(input_tokens=3, output_tokens=3, total_tokens=6))


async def test_finish_run_writes_the_terminal_event_and_status_together(store: Store) -> None:
    rec = await start(store, record())
    terminal = envelope(rec, 1, RunCompleted(run_id=rec.run_id, finish_reason=FinishReason.STOP, iterations=1))
    await store.finish_run(rec.run_id, RunOutcome.completed(output(rec)), events=[terminal])
    got = await store.get_run(rec.run_id)
    assert got is not None and got.is_finished
    assert (got.status, got.output, got.error) == ("completed", output(rec), None)
    assert got.finished_at is not None and got.finished_at >= got.started_at
    assert await store.read_events(rec.run_id) == [terminal]
    with pytest.raises(StoreError):  # finished once
        await store.finish_run(rec.run_id, RunOutcome.failed("again"))
    with pytest.raises(ValidationError):  # not a terminal status
        RunOutcome(status="running")  # type: ignore[arg-type]


async def test_finish_run_commits_the_last_messages_with_the_status(store: Store) -> None:
    rec = await start(store, record())
    await store.append_messages(rec.session_id, [Message(role="user", content="hi", run_id=rec.run_id)])
    answer = Message(role="assistant", content="ok", run_id=rec.run_id)
    terminal = envelope(rec, 1, RunCompleted(run_id=rec.run_id, finish_reason=FinishReason.STOP, iterations=1))
    if not isinstance(store, MemoryStore):  # refused whole: a reused message id
        with pytest.raises(StoreError):
            await store.finish_run(rec.run_id, RunOutcome(status="completed"), events=[terminal], messages=[answer, answer])
        got = await store.get_run(rec.run_id)
        assert got is not None and got.status == "running"
        assert await store.read_events(rec.run_id) == []
    await store.finish_run(rec.run_id, RunOutcome.completed(output(rec)), events=[terminal], messages=[answer])
    assert [m.content for m in await store.load_history(rec.session_id)] == ["hi", "ok"]
    assert await store.read_events(rec.run_id) == [terminal]
    rec2 = await start(store, record())  # the messages go to the run's own session
    await store.finish_run(rec2.run_id, RunOutcome.failed("x"), messages=[Message(role="user", content="x")])
    assert [m.content for m in await store.load_history(rec2.session_id)] == ["x"]
    got2 = await store.get_run(rec2.run_id)
    assert got2 is not None and (got2.status, got2.error, got2.output) == ("failed", "x", None)


async def test_events_of_several_runs_in_one_batch_read_back_per_run(store: Store) -> None:
    one, two = await start(store, record()), await start(store, record())
    batch = [envelope(rec, seq, TextDelta(run_id=rec.run_id, delta=f"{n}")) for n, (rec, seq) in enumerate([(one, 1), (two, 1), (one, 2), (two, 2), (one, 3)])]
    await store.append_events(batch)
    await store.append_events([envelope(one, 4, TextDelta(run_id=one.run_id, delta="x"))])
    got = await store.read_events(one.run_id)
    assert [e.seq for e in got] == [1, 2, 3, 4] and got[:3] == [batch[0], batch[2], batch[4]]
    assert await store.read_events(two.run_id) == [batch[1], batch[3]]
    for after in range(5):  # a slice starting inside a segment
        assert [e.seq for e in await store.read_events(one.run_id, after_seq=after)] == list(range(after + 1, 5))


async def test_list_runs_newest_first_with_limit_and_session(store: Store) -> None:
    session = uuid.uuid4()
    base = utcnow()
    ids = []
    for n in range(4):
        rec = record(session=session if n % 2 else None, started_at=base + timedelta(seconds=n))
        ids.append((await start(store, rec)).run_id)
    assert [r.run_id for r in await store.list_runs()] == ids[::-1]
    assert [r.run_id for r in await store.list_runs(limit=2)] == ids[:1:-1]
    assert [r.run_id for r in await store.list_runs(session_id=session)] == [ids[3], ids[1]]


async def test_recover_interrupted_leaves_live_runs_alone(store: Store) -> None:
    rec = await start(store, record())
    assert await store.recover_interrupted() == []  # this process owns it and is alive
    got = await store.get_run(rec.run_id)
    assert got is not None and got.status == "running"


async def test_memory_store_forgets_the_oldest_finished_runs_beyond_its_limit() -> None:
    store = MemoryStore(max_finished_runs=2)
    session = uuid.uuid4()
    first, second, third = [await start(store, record(session=session, key=f"k{i}")) for i in range(3)]
    running = await start(store, record(session=session))
    await store.append_messages(session, [Message(role="user", content="kept")])
    for rec in (first, second, third):
        terminal = envelope(rec, 1, RunCompleted(run_id=rec.run_id, finish_reason=FinishReason.STOP, iterations=1))
        await store.finish_run(rec.run_id, RunOutcome.completed(output(rec)), events=[terminal])

    assert await store.get_run(first.run_id) is None
    with pytest.raises(UnknownRun):
        await store.read_events(first.run_id)
    assert [r.run_id for r in await store.list_runs()] == [running.run_id, third.run_id, second.run_id]
    assert len(await store.read_events(third.run_id)) == 1
    assert [m.content for m in await store.load_history(session)] == ["kept"]  # history stays
    again = await start(store, record(session=session, key="k0"))  # its idempotency key is forgotten with it
    assert again.run_id != first.run_id and again.status == "running"
    assert (await start(store, record(key="k2"))).run_id == third.run_id  # a kept run's key holds
    with pytest.raises(ValueError):
        MemoryStore(max_finished_runs=0)


async def test_memory_store_forgets_the_least_recently_used_idle_sessions() -> None:
    store = MemoryStore(max_sessions=2)
    one, two, three = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    busy = await start(store, record(session=one))  # a running run keeps its session
    await store.append_messages(two, [Message(role="user", content="two")])
    await store.append_messages(three, [Message(role="user", content="three")])
    assert set(store.session_ids) == {one, three}  # two was the oldest idle one
    await store.load_history(one)
    terminal = envelope(busy, 1, RunCompleted(run_id=busy.run_id, finish_reason=FinishReason.STOP, iterations=1))
    await store.finish_run(busy.run_id, RunOutcome.completed(output(busy)), events=[terminal])
    await store.append_messages(two, [Message(role="user", content="again")])  # one is idle now
    assert set(store.session_ids) == {three, two}
    assert [m.content for m in await store.load_history(two)] == ["again"]
    with pytest.raises(ValueError):
        MemoryStore(max_sessions=0)


async def test_memory_store_keeps_finished_runs_and_idle_sessions_out_of_the_collectors_sight() -> None:
    import gc

    store = MemoryStore()
    session = uuid.uuid4()
    rec = await start(store, record(session=session))
    call = ToolCall(id="c1", name="calc", arguments="{}")
    await store.append_messages(
        session, [Message(role="assistant", tool_calls=(call,)), Message(role="tool", content="5", tool_call_id="c1")],
        events=[first := envelope(rec, 1, TextDelta(run_id=rec.run_id, delta="a"))],
    )
    assert isinstance(store._sessions[session.int], list)  # a run of it is running: live objects
    terminal = envelope(rec, 2, RunCompleted(run_id=rec.run_id, finish_reason=FinishReason.STOP, iterations=1))
    before = await store.load_history(session)
    await store.finish_run(rec.run_id, RunOutcome.completed(output(rec)), events=[terminal])
    gc.collect()
    gc.collect()
    kept = [store._runs[rec.run_id], store._sessions[session.int], store._logs[rec.run_id]]
    assert not any(gc.is_tracked(item) for item in kept)  # bytes, and tuples of plain values
    assert await store.load_history(session) == before  # decoded equal
    got = await store.get_run(rec.run_id)
    assert got is not None and got.status == "completed" and got.output == output(rec)
    assert await store.read_events(rec.run_id) == [first, terminal]  # unpacked equal
    with pytest.raises(StoreError, match="already completed"):
        await store.finish_run(rec.run_id, RunOutcome.cancelled())
    nxt = await start(store, record(session=session))  # the next run of the session decodes it
    assert isinstance(store._sessions[session.int], list)
    assert [m.content for m in await store.load_history(session)][:2] == ["", "5"]
    assert nxt.status == "running"


async def test_a_corrupted_sqlite_row_is_a_store_error_naming_the_run(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "c.db"
    async with SqliteStore(path) as store:
        rec = await start(store, record())
        await store.append_messages(rec.session_id, [Message(role="assistant", content="x", tool_calls=(ToolCall(id="c", name="t"),))])
        await store.append_events([envelope(rec, 1, TextDelta(run_id=rec.run_id, delta="a"))])
    conn = sqlite3.connect(path)
    conn.execute("UPDATE event_segments SET events = '[{\"type\": \"text_delta\", \"run_id\": 1'")
    conn.execute("UPDATE runs SET request = 'garbage'")
    conn.execute("UPDATE messages SET tool_calls = '[{\"id\": 3}]'")
    conn.commit()
    conn.close()
    async with SqliteStore(path) as store:
        for read in (store.get_run(rec.run_id), store.list_runs(), store.read_events(rec.run_id)):
            with pytest.raises(StoreError, match=rec.run_id):
                await read
        with pytest.raises(StoreError, match="stored message"):
            await store.load_history(rec.session_id)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE event_segments SET events = '[{\"type\": \"nope\"}]'")  # unknown type
    conn.commit()
    conn.close()
    async with SqliteStore(path) as store:
        with pytest.raises(StoreError, match=f"run {rec.run_id!r}: its stored event segment"):
            await store.read_events(rec.run_id)


@pytest.mark.parametrize("version", [0, 1, 2, 7])
def test_another_applications_sqlite_file_is_refused_and_left_unchanged(
    tmp_path: Path, version: int
) -> None:
    import asyncio as _asyncio
    import sqlite3

    path = tmp_path / "theirs.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    before = path.read_bytes()

    async def open_it() -> None:
        async with SqliteStore(path) as store:
            await store.list_runs()

    with pytest.raises(StoreError, match="not an rxinvoke database"):
        _asyncio.run(open_it())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs.db"]  # no -wal, no -shm


def test_an_empty_unmarked_file_with_a_user_version_is_refused(tmp_path: Path) -> None:
    import asyncio as _asyncio
    import sqlite3

    path = tmp_path / "odd.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 3")
    conn.close()

    async def open_it() -> None:
        async with SqliteStore(path) as store:
            await store.list_runs()

    with pytest.raises(StoreError, match="not an rxinvoke database"):
        _asyncio.run(open_it())


async def test_a_finished_runs_log_takes_no_more_events_and_reads_back_whole(store: Store) -> None:
    rec = await start(store, record())
    events = [envelope(rec, 1, TextDelta(run_id=rec.run_id, delta="a"))]
    await store.append_events(events)
    terminal = envelope(rec, 2, RunCompleted(run_id=rec.run_id, finish_reason=FinishReason.STOP, iterations=1))
    await store.finish_run(rec.run_id, RunOutcome.completed(output(rec)), events=[terminal])
    with pytest.raises(StoreError, match="finished"):
        await store.append_events([envelope(rec, 3, TextDelta(run_id=rec.run_id, delta="late"))])
    assert await store.read_events(rec.run_id) == [*events, terminal]
    assert await store.read_events(rec.run_id, after_seq=1) == [terminal]


# --- runs paused for approval --------------------------------------------------------------------


def paused_output(rec: RunRecord, *calls: str) -> RunOutput:
    pending = tuple(PendingApproval(call_id=c, tool_name="deploy", arguments="{}") for c in calls)
    return RunOutput(
        run_id=rec.run_id, session_id=rec.session_id, iterations=1,
        finish_reason=FinishReason.AWAITING_APPROVAL, total_usage=TokenUsage(), output_text="",
        pending=pending,
    )


async def test_a_paused_run_holds_its_session_until_a_continuation_resumes_it(store: Store) -> None:
    session = uuid.uuid4()
    paused = await start(store, record(session=session))
    await store.finish_run(paused.run_id, RunOutcome.paused(paused_output(paused, "c1")))
    got = await store.get_run(paused.run_id)
    assert got is not None and got.status == "awaiting_approval" and got.is_finished
    assert got.output is not None and [p.call_id for p in got.output.pending] == ["c1"]

    other = record(session=session)
    with pytest.raises(SessionAwaitingApproval) as refused:
        await store.begin_run(other, [Message(role="user", content="may I?")])
    assert refused.value.run_id == paused.run_id
    assert await store.get_run(other.run_id) is None  # nothing written
    assert [m.content for m in await store.load_history(session)] == []

    # a continuation claims it: the paused run is completed in the same transaction
    base = record(session=session)
    continuation = base.model_copy(update={"request": base.request.model_copy(update={"resumes": paused.run_id})})
    await store.begin_run(continuation, [])
    resumed = await store.get_run(paused.run_id)
    assert resumed is not None and resumed.status == "completed"
    again = record(session=session)
    twice = again.model_copy(update={"request": again.request.model_copy(update={"resumes": paused.run_id})})
    with pytest.raises(StoreError, match="not awaiting approval"):
        await store.begin_run(twice, [])  # exactly one continuation
    assert await store.get_run(twice.run_id) is None


async def test_decisions_are_recorded_one_by_one_until_the_run_is_ready(store: Store) -> None:
    paused = await start(store, record())
    await store.finish_run(paused.run_id, RunOutcome.paused(paused_output(paused, "c1", "c2")))

    rec, ready = await store.decide(paused.run_id, "c1", approved=True)
    assert not ready and rec.output is not None and rec.output.pending[0].approved is True
    rec, ready = await store.decide(paused.run_id, "c1", approved=True)  # the same again: no change
    assert not ready
    with pytest.raises(StoreError, match="already approved"):
        await store.decide(paused.run_id, "c1", approved=False)
    with pytest.raises(StoreError, match="no call 'c9' awaiting approval"):
        await store.decide(paused.run_id, "c9", approved=True)
    rec, ready = await store.decide(paused.run_id, "c2", approved=False, reason="not on a Friday")
    assert ready
    stored = await store.get_run(paused.run_id)
    assert stored is not None and stored.output is not None
    assert [(p.approved, p.reason) for p in stored.output.pending] == [(True, None), (False, "not on a Friday")]

    running = await start(store, record())
    with pytest.raises(StoreError, match="is running, not awaiting approval"):
        await store.decide(running.run_id, "c1", approved=True)
    with pytest.raises(UnknownRun):
        await store.decide("no-such-run", "c1", approved=True)
