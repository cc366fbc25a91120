"""Group commit: SqliteStore's worker commits the writes that wait together, each isolated;
the event log hands ordered stores its writes without waiting for the write before."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from rxinvoke import Message, RunRecord, RunRequest, SqliteStore, StoreError
from rxinvoke._bus import EventBus
from rxinvoke._eventlog import EventLog
from rxinvoke._futures import shielded
from rxinvoke.events import RunStarted, TextDelta
from rxinvoke.stores import EventEnvelope, MemoryStore, RunOutcome
from rxinvoke.stores._packed import revive
from rxinvoke.stores._worker import GroupWorker, Outcome


def record(session: uuid.UUID | None = None, run_id: str | None = None) -> RunRecord:
    run_id, session = run_id or str(uuid.uuid4()), session or uuid.uuid4()
    request = RunRequest(provider="p", model="m", input="hi", run_id=run_id, session_id=session)
    return RunRecord(run_id=run_id, session_id=session, request=request)


async def _logging_one_run(store: MemoryStore) -> tuple[EventBus, EventLog, RunRecord]:
    """A bus, an event log on ``store``, and a run begun in both."""
    bus = EventBus()
    log = EventLog(store, bus)
    r = record()
    await store.begin_run(r, [])
    log.begin(r.run_id, r.session_id)
    return bus, log, r


async def test_the_worker_groups_consecutive_writes_and_runs_reads_alone_in_order() -> None:
    log: list[tuple[str, Any]] = []
    started, release = threading.Event(), threading.Event()

    def run_one(fn: str) -> str:
        if fn == "block":
            started.set()
            release.wait(5)
        log.append(("one", fn))
        return fn.upper()

    def run_group(fns: Sequence[str]) -> list[Outcome]:
        log.append(("group", list(fns)))
        return [(False, ValueError(fn)) if fn == "bad" else (True, fn.upper()) for fn in fns]

    worker: GroupWorker[str] = GroupWorker(run_one, run_group, name="test-worker")
    blocker = worker.submit("block", write=False)  # holds the thread while the rest queue up
    await asyncio.to_thread(started.wait, 5)
    futures = [
        worker.submit("w1", write=True),
        worker.submit("bad", write=True),
        worker.submit("w3", write=True),
        worker.submit("read", write=False),
        worker.submit("w5", write=True),
    ]
    release.set()
    assert await blocker == "BLOCK"
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert outcomes[0] == "W1" and outcomes[2] == "W3" and outcomes[3] == "READ"
    assert isinstance(outcomes[1], ValueError)
    assert outcomes[4] == "W5"
    assert log == [
        ("one", "block"),
        ("group", ["w1", "bad", "w3"]),  # consecutive writes: one group
        ("one", "read"),  # a read runs alone, in its place
        ("one", "w5"),  # a write alone is not a group
    ]
    await worker.close(lambda: None)


async def test_a_failing_write_in_a_group_is_rolled_back_alone(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "group.db")
    await store.open()
    taken = record()
    await store.begin_run(taken, [Message(role="user", content="a")])
    started, release = threading.Event(), threading.Event()

    def block(conn: object) -> None:
        started.set()
        release.wait(5)

    groups: list[int] = []
    group = store._group

    def counted(conn: Any, fns: Sequence[Any]) -> list[Outcome]:
        groups.append(len(fns))
        return group(conn, fns)

    store._group = counted  # type: ignore[method-assign]
    blocker = asyncio.ensure_future(store._call(block))
    await asyncio.to_thread(started.wait, 5)  # the worker is inside the blocker
    fresh = [record() for _ in range(20)]
    writes = [store.begin_run(r, [Message(role="user", content="hi")]) for r in fresh[:10]]
    writes.append(store.begin_run(record(run_id=taken.run_id), []))  # the run id is taken
    writes.extend(store.begin_run(r, [Message(role="user", content="hi")]) for r in fresh[10:])
    pending = [asyncio.ensure_future(w) for w in writes]
    await asyncio.sleep(0)  # each write's task runs to its call: all wait for the blocker
    release.set()
    await blocker
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], StoreError)
    assert "already stored" in str(failed[0])
    assert groups == [21]  # one transaction for all of them
    for r in fresh:  # all twenty others committed, with their opening message
        assert (await store.get_run(r.run_id)) is not None
        assert [m.content for m in await store.load_history(r.session_id)] == ["hi"]
    await store.close()


class _GatedStore(MemoryStore):
    """A MemoryStore whose message commits wait for a gate (as a worker thread would)."""

    def __init__(self, ordered: bool) -> None:
        super().__init__()
        self.ordered_calls = ordered  # type: ignore[misc]
        self.gate = asyncio.Event()
        self.entered = 0

    async def append_messages(
        self,
        session_id: uuid.UUID,
        messages: Sequence[Message],
        *,
        events: Sequence[EventEnvelope] = (),
    ) -> None:
        self.entered += 1
        await self.gate.wait()
        await super().append_messages(session_id, messages, events=events)


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
async def test_writes_overlap_only_for_a_store_that_orders_its_calls(ordered: bool) -> None:
    store = _GatedStore(ordered)
    bus = EventBus()
    log = EventLog(store, bus)
    runs = [record() for _ in range(3)]
    for r in runs:
        await store.begin_run(r, [])
        log.begin(r.run_id, r.session_id)
        bus.publish(RunStarted(run_id=r.run_id, session_id=str(r.session_id), provider="p", model="m"))
    commits = [
        asyncio.ensure_future(log.commit_messages(r.session_id, [Message(role="user", content="x")]))
        for r in runs
    ]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert store.entered == (3 if ordered else 1)
    store.gate.set()
    await asyncio.gather(*commits)
    for r in runs:
        assert [e.seq for e in await store.read_events(r.run_id)] == [1]


class _FailsTwice(_GatedStore):
    """Its first two message commits wait for the gate, then fail."""

    def __init__(self) -> None:
        super().__init__(True)
        self.failures = 2

    async def append_messages(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            await self.gate.wait()
            raise StoreError("disk hiccup")
        await super().append_messages(*args, **kwargs)


async def test_two_failed_writes_in_flight_put_back_each_runs_envelopes_in_seq_order() -> None:
    store = _FailsTwice()
    bus, log, r = await _logging_one_run(store)
    for i in range(3):
        bus.publish(TextDelta(run_id=r.run_id, delta=f"a{i}"))
    first = asyncio.ensure_future(log.commit_messages(r.session_id, []))
    await asyncio.sleep(0)  # the write of a0..a2 is in flight, waiting
    for i in range(2):
        bus.publish(TextDelta(run_id=r.run_id, delta=f"b{i}"))  # numbered while it waits
    second = asyncio.ensure_future(log.commit_messages(r.session_id, []))
    await asyncio.sleep(0)  # the write of b0, b1 is in flight behind it
    store.gate.set()
    for write in (first, second):  # they fail in write order
        with pytest.raises(StoreError, match="hiccup"):
            await write
    assert [e.seq for e in log.unflushed(r.run_id)] == [1, 2, 3, 4, 5]  # back in seq order
    assert [e.event.delta for e in log.unflushed(r.run_id)] == ["a0", "a1", "a2", "b0", "b1"]  # type: ignore[union-attr]
    await log.commit_messages(r.session_id, [])
    stored = await store.read_events(r.run_id)
    assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
    assert [e.event.delta for e in stored] == ["a0", "a1", "a2", "b0", "b1"]  # type: ignore[union-attr]


async def test_the_log_keeps_plain_events_in_entries_the_collector_stops_tracking() -> None:
    store = _GatedStore(True)
    bus, log, r = await _logging_one_run(store)
    published = [TextDelta(run_id=r.run_id, delta=f"t{i}") for i in range(3)]
    for event in published:
        bus.publish(event)
    waiting = log._runs[r.run_id].pending  # one list item per event, no entry tuple around it
    assert len(waiting) == 3 and all(type(item) is tuple for item in waiting)  # not the models
    # a tuple holding a dict, a UUID or a model stays tracked: these hold plain values only,
    # untracked by the first collection that sees them
    gc.collect()
    assert not any(gc.is_tracked(item) for item in waiting)
    assert [e.event for e in log.unflushed(r.run_id)] == published  # equal events again
    store.gate.set()
    await log.commit_messages(r.session_id, [])
    assert [e.event for e in await store.read_events(r.run_id)] == published


async def test_a_store_dropped_without_close_is_collected_and_its_thread_ends(tmp_path: Path) -> None:
    import gc
    import warnings
    import weakref

    store = SqliteStore(tmp_path / "dropped.db")
    await store.begin_run(record(), [Message(role="user", content="hi")])
    thread = store._worker._thread
    assert thread is not None and thread.is_alive()
    ref = weakref.ref(store)
    del store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the connection was left open, as asked
        gc.collect()
    assert ref() is None  # the thread does not keep the store (nor its connection) alive
    await asyncio.to_thread(thread.join, 5)
    assert not thread.is_alive()


async def test_a_group_whose_transaction_sqlite_ended_writes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "aborted.db")
    await store.open()
    started, release = threading.Event(), threading.Event()

    def block(conn: object) -> None:
        started.set()
        release.wait(5)

    blocker = asyncio.ensure_future(store._call(block))
    await asyncio.to_thread(started.wait, 5)
    first, last = record(), record()
    pending = [
        asyncio.ensure_future(store.begin_run(first, [Message(role="user", content="a")])),
        # as SQLite does on a full disk or an I/O error: the whole transaction rolled back
        asyncio.ensure_future(store._call(lambda conn: conn.execute("ROLLBACK"), write=True)),
        asyncio.ensure_future(store.begin_run(last, [Message(role="user", content="b")])),
    ]
    await asyncio.sleep(0)
    release.set()
    await blocker
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(o, StoreError) for o in outcomes), outcomes
    assert await store.get_run(first.run_id) is None and await store.get_run(last.run_id) is None
    fresh = record()  # the store goes on working
    assert (await store.begin_run(fresh, []))[0].run_id == fresh.run_id
    await store.close()


def _entries(stretches: list[Any]) -> list[tuple[Any, ...]]:
    """The ``(run_id, session key, seq, item)`` of taken stretches, each alias its own tuple."""
    from rxinvoke.stores._packed import dealias

    return [(rid, key, first + i, item) for rid, key, first, items in stretches for i, item in enumerate(dealias(items))]


async def test_a_collector_gets_every_numbered_event_and_hears_of_the_first_and_of_overflow() -> None:
    from rxinvoke._eventlog import Collector

    bus = EventBus()
    log = EventLog(MemoryStore(), bus)
    r = record()
    log.begin(r.run_id, r.session_id)
    heard: list[str] = []
    collector = Collector(lambda: heard.append("first"), lambda: heard.append("full"), limit=3)
    stop = log.collect(collector)
    for i in range(2):
        bus.publish(TextDelta(run_id=r.run_id, delta=f"a{i}"))
    assert heard == ["first"] and len(collector) == 2  # once, when it held nothing
    taken = collector.take()
    assert len(taken) == 1  # one list for the run, no entry per event
    assert [(rid, sid, seq) for rid, sid, seq, _ in _entries(taken)] == [
        (r.run_id, str(r.session_id), 1), (r.run_id, str(r.session_id), 2)
    ]
    assert [revive(item).delta for *_, item in _entries(taken)] == ["a0", "a1"]  # type: ignore[union-attr]
    assert len(collector) == 0
    for i in range(4):
        bus.publish(TextDelta(run_id=r.run_id, delta=f"b{i}"))
    assert heard == ["first", "first", "full"]  # the 4th event took it past 3
    assert collector.drop(2) == 2 and len(collector) == 2  # the owner drops the oldest
    bus.publish(TextDelta(run_id=r.run_id, delta="b4"))  # 3 held: not past the limit
    assert heard == ["first", "first", "full"]
    bus.publish(TextDelta(run_id="another-run", delta="x"))  # not logged: not collected
    stop.dispose()
    bus.publish(TextDelta(run_id=r.run_id, delta="late"))
    held = _entries(collector.take())
    assert [seq for _, _, seq, _ in held] == [5, 6, 7] and heard == ["first", "first", "full"]
    assert [revive(item).delta for *_, item in held] == ["b2", "b3", "b4"]  # type: ignore[union-attr]


async def test_a_collector_s_lists_are_closed_by_take_and_shared_by_two_collectors() -> None:
    from rxinvoke._eventlog import Collector
    from rxinvoke.events import ChatTextDelta, text_twin

    bus = EventBus()
    log = EventLog(MemoryStore(), bus)
    r = record()
    log.begin(r.run_id, r.session_id)
    one, two = Collector(lambda: None, lambda: None, 100), Collector(lambda: None, lambda: None, 100)
    log.collect(one)
    log.collect(two)
    chat = ChatTextDelta(run_id=r.run_id, delta="x")
    bus.publish(chat)
    first = one.take()  # closes the run's list: its twin starts a new one, spelled out
    bus.publish(text_twin(r.run_id, chat.timestamp, "x"))
    bus.publish(TextDelta(run_id=r.run_id, delta="y"))
    later = one.take()
    assert [item[2] for *_, item in _entries(first)] == ["chat_text_delta"]
    assert later[0][2] == 2 and later[0][3][0][2] == "text_delta"  # not an alias
    # the other collector got the same events, in two lists (the first closed by one.take())
    assert [(seq, item[2]) for _, _, seq, item in _entries(two.take())] == [
        (1, "chat_text_delta"), (2, "text_delta"), (3, "text_delta")
    ]
    # dropping the first event of a list that begins with a fragment spells out its twin
    bus.publish(chat2 := ChatTextDelta(run_id=r.run_id, delta="z"))
    bus.publish(text_twin(r.run_id, chat2.timestamp, "z"))
    assert log._runs[r.run_id].tap is not None and log._runs[r.run_id].tap[1] is log._runs[r.run_id].tap[0]  # type: ignore[index]
    assert one.drop(1) == 1
    [(_, _, seq, items)] = one.take()
    assert seq == 5 and items[0][2] == "text_delta" and revive(items[0]).delta == "z"  # type: ignore[union-attr]


async def test_dropping_past_a_run_s_open_list_keeps_it_open_for_its_next_events() -> None:
    from rxinvoke._eventlog import Collector

    bus = EventBus()
    log = EventLog(MemoryStore(), bus)
    a, b = record(), record()
    log.begin(a.run_id, a.session_id)
    log.begin(b.run_id, b.session_id)
    collector = Collector(lambda: None, lambda: None, 100)
    log.collect(collector)
    bus.publish(TextDelta(run_id=a.run_id, delta="a1"))
    bus.publish(TextDelta(run_id=b.run_id, delta="b1"))
    bus.publish(TextDelta(run_id=b.run_id, delta="b2"))
    assert collector.drop(1) == 1 and collector.drop(1) == 1  # a's list, empty, then into b's
    assert len(collector) == 1
    bus.publish(TextDelta(run_id=a.run_id, delta="a2"))  # a's list is still open: held
    held = _entries(collector.take())
    assert [(rid, seq, revive(item).delta) for rid, _, seq, item in held] == [  # type: ignore[union-attr]
        (a.run_id, 2, "a2"), (b.run_id, 2, "b2")
    ]
    assert collector.drop(5) == 0 and len(collector) == 0


class _GatedFinish(_GatedStore):
    """A MemoryStore whose finish_run (and message commits) wait for a gate."""

    async def finish_run(self, run_id: str, outcome: RunOutcome, **kwargs: Any) -> None:
        await self.gate.wait()
        await super().finish_run(run_id, outcome, **kwargs)


@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
async def test_a_run_s_last_write_outlives_a_waiter_that_stops_waiting(ordered: bool) -> None:
    store = _GatedFinish(ordered)
    bus, log, r = await _logging_one_run(store)
    bus.publish(RunStarted(run_id=r.run_id, session_id=str(r.session_id), provider="p", model="m"))
    write = log.finishing(r.run_id, RunOutcome(status="completed"))
    waiter = asyncio.ensure_future(shielded(write))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not write.done()  # the write goes on without its waiter
    store.gate.set()
    await write
    assert (await store.get_run(r.run_id)).status == "completed"  # type: ignore[union-attr]
    assert [e.type for e in await store.read_events(r.run_id)] == ["run_started"]


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_fragments_twin_waits_as_an_alias_of_it_and_is_read_back_as_itself(
    kind: str, tmp_path: Path
) -> None:
    from rxinvoke._eventlog import Collector
    from rxinvoke.events import ChatTextDelta, text_twin

    store: Any = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "log.db")
    try:
        bus, log, r = await _logging_one_run(store)
        chat = ChatTextDelta(run_id=r.run_id, delta="hel")
        look_alike = TextDelta(run_id=r.run_id, delta="lo")  # its own moment: not a twin
        published = [
            chat,
            text_twin(r.run_id, chat.timestamp, "hel"),
            ChatTextDelta(run_id=r.run_id, delta="lo"),
            look_alike,
        ]
        tap = Collector(lambda: None, lambda: None, 100)
        tapping = log.collect(tap)
        for event in published:
            bus.publish(event)
        tapping.dispose()
        waiting = log._runs[r.run_id].pending
        assert waiting[1] is waiting[0]  # the twin: no object of its own
        assert waiting[3] is not waiting[2] and waiting[3][2] == "text_delta"
        # a tap gets the twin as an alias too, read back as its own tuple
        [(_, _, _, tapped)] = tap.take()
        assert tapped[1] is tapped[0]
        assert [item[2] for *_, item in _entries([(r.run_id, None, 1, tapped)])] == [e.type for e in published]
        assert [e.event for e in log.unflushed(r.run_id)] == published
        await log.commit_messages(r.session_id, [])
        stored = await store.read_events(r.run_id)
        assert [e.event for e in stored] == published and [e.seq for e in stored] == [1, 2, 3, 4]
        # a read that starts at the twin still knows what it is the twin of
        assert [e.event for e in await store.read_events(r.run_id, after_seq=1)] == published[1:]
    finally:
        await store.close()


async def test_one_event_object_published_twice_is_two_envelopes_not_a_twin_alias() -> None:
    from rxinvoke import TokenUsage
    from rxinvoke.events import UsageRecorded

    store = _GatedStore(True)
    bus, log, r = await _logging_one_run(store)
    usage = TokenUsage(input_tokens=1, output_tokens=2, total_tokens=3)
    again = UsageRecorded(run_id=r.run_id, usage=usage)  # holds a model: kept as itself
    bus.publish(again)
    bus.publish(again)
    assert [(e.seq, e.event) for e in log.unflushed(r.run_id)] == [(1, again), (2, again)]
    store.gate.set()
    await log.commit_messages(r.session_id, [])
    assert [e.event for e in await store.read_events(r.run_id)] == [again, again]
