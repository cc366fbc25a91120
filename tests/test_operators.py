"""Pipeable event operators in virtual time, and ``to_async_iterator`` on a real loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import pytest
import reactivex
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.disposable import CompositeDisposable, Disposable
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler

import rxinvoke
from rxinvoke import (
    ChatTextDelta,
    EventBase,
    EventKind,
    FinishReason,
    ModelStarted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    TextDelta,
    ToolCallStarted,
    accumulate_text,
    coalesce_text,
    for_run,
    of_kind,
    per_run,
    text_of,
    throttle_latest,
    to_async_iterator,
    until_terminal,
)

on_next = ReactiveTest.on_next
on_completed = ReactiveTest.on_completed
on_error = ReactiveTest.on_error
subscribe = ReactiveTest.subscribe


def started(run: str = "r1") -> RunStarted:
    return RunStarted(run_id=run, session_id="s1", provider="offline", model="offline")


def model(run: str = "r1") -> ModelStarted:
    return ModelStarted(run_id=run, provider="offline", model="offline", iteration=1)


def text(delta: str, run: str = "r1") -> TextDelta:
    return TextDelta(run_id=run, delta=delta)


def completed(run: str = "r1") -> RunCompleted:
    return RunCompleted(run_id=run, finish_reason=FinishReason.STOP, iterations=1)


def run_pipe(
    scheduler: TestScheduler,
    messages: list[Any],
    *operators: Callable[[Observable[Any]], Observable[Any]],
) -> tuple[list[Any], list[Any]]:
    """Messages recorded by ``scheduler.start`` and the source's subscriptions."""
    source = scheduler.create_hot_observable(*messages)
    results = scheduler.start(lambda: source.pipe(*operators))
    return results.messages, source.subscriptions


# --- of_kind ----------------------------------------------------------------------------------

S, M, T1, T2, C = started(), model(), text("Hel"), text("lo"), completed()
MIXED = [
    on_next(210, S),
    on_next(220, M),
    on_next(230, T1),
    on_next(240, T2),
    on_next(250, C),
    on_completed(300),
]


@pytest.mark.parametrize("kind", [EventKind.TEXT_DELTA, "text_delta"])
def test_of_kind_keeps_only_that_kind(kind: EventKind | str) -> None:
    scheduler = TestScheduler()
    messages, subscriptions = run_pipe(scheduler, MIXED, of_kind(kind))
    assert messages == [on_next(230, T1), on_next(240, T2), on_completed(300)]
    assert subscriptions == [subscribe(200, 300)]


@pytest.mark.parametrize("kind", [EventKind.ANY, "any"])
def test_of_kind_any_keeps_everything(kind: EventKind | str) -> None:
    messages, _ = run_pipe(TestScheduler(), MIXED, of_kind(kind))
    assert messages == MIXED


def test_of_kind_distinguishes_chat_and_agent_text() -> None:
    chat = ChatTextDelta(run_id="r1", delta="Hel")
    source = [on_next(210, chat), on_next(211, T1), on_completed(220)]
    messages, _ = run_pipe(TestScheduler(), source, of_kind("chat_text_delta"))
    assert messages == [on_next(210, chat), on_completed(220)]


def test_of_kind_rejects_an_unknown_kind_when_built() -> None:
    with pytest.raises(ValueError, match="valid kinds"):
        of_kind("text")


def test_of_kind_forwards_errors() -> None:
    error = RuntimeError("boom")
    source = [on_next(210, S), on_error(220, error)]
    messages, _ = run_pipe(TestScheduler(), source, of_kind(EventKind.RUN_STARTED))
    assert messages == [on_next(210, S), on_error(220, error)]


# --- for_run ----------------------------------------------------------------------------------


def test_for_run_keeps_one_runs_events() -> None:
    a1, b1, a2 = started("a"), started("b"), text("x", run="a")
    chat_a = ChatTextDelta(run_id="a", delta="x")
    chat_unbound = ChatTextDelta(delta="x")
    source = [
        on_next(210, a1),
        on_next(220, b1),
        on_next(230, chat_unbound),
        on_next(240, chat_a),
        on_next(250, a2),
        on_next(260, completed("b")),
        on_completed(300),
    ]
    messages, _ = run_pipe(TestScheduler(), source, for_run("a"))
    assert messages == [on_next(210, a1), on_next(240, chat_a), on_next(250, a2), on_completed(300)]


# --- until_terminal ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "terminal",
    [completed(), RunFailed(run_id="r1", error="boom"), RunCancelled(run_id="r1")],
    ids=["completed", "failed", "cancelled"],
)
def test_until_terminal_completes_right_after_the_terminal_event(terminal: EventBase) -> None:
    late = text("late")
    source = [
        on_next(210, S),
        on_next(220, T1),
        on_next(230, terminal),
        on_next(240, late),
        on_completed(300),
    ]
    messages, subscriptions = run_pipe(TestScheduler(), source, until_terminal())
    assert messages == [
        on_next(210, S),
        on_next(220, T1),
        on_next(230, terminal),
        on_completed(230),
    ]
    assert subscriptions == [subscribe(200, 230)]


def test_until_terminal_without_a_terminal_event_follows_the_source() -> None:
    source = [on_next(210, S), on_completed(250)]
    messages, subscriptions = run_pipe(TestScheduler(), source, until_terminal())
    assert messages == [on_next(210, S), on_completed(250)]
    assert subscriptions == [subscribe(200, 250)]


def test_for_run_then_until_terminal_ignores_other_runs_terminals() -> None:
    source = [
        on_next(210, started("a")),
        on_next(220, completed("b")),
        on_next(230, text("x", run="a")),
        on_next(240, completed("a")),
        on_next(250, text("y", run="a")),
    ]
    messages, _ = run_pipe(TestScheduler(), source, for_run("a"), until_terminal())
    assert [m.time for m in messages] == [210, 230, 240, 240]
    assert messages[-1] == on_completed(240)


# --- text_of ----------------------------------------------------------------------------------


def test_text_of_maps_text_deltas_to_strings() -> None:
    source = [
        on_next(210, S),
        on_next(220, T1),
        # chat deltas are not counted: the runtime republishes each one as a text_delta
        on_next(225, ChatTextDelta(run_id="r1", delta="Hel")),
        on_next(230, ToolCallStarted(run_id="r1", call_id="c", tool_name="now")),
        on_next(240, T2),
        on_next(250, C),
        on_completed(300),
    ]
    messages, _ = run_pipe(TestScheduler(), source, text_of())
    assert messages == [on_next(220, "Hel"), on_next(240, "lo"), on_completed(300)]


# --- coalesce_text ----------------------------------------------------------------------------


def _coalesce(quiet: float, source: list[Any]) -> tuple[list[Any], list[Any]]:
    scheduler = TestScheduler()
    return run_pipe(scheduler, source, coalesce_text(quiet, scheduler=scheduler))


def test_coalesce_text_flushes_after_the_quiet_period() -> None:
    source = [
        on_next(210, text("Hel")),
        on_next(220, text("lo")),
        on_next(300, text("!")),
        on_completed(400),
    ]
    messages, subscriptions = _coalesce(30, source)
    assert messages == [on_next(250, "Hello"), on_next(330, "!"), on_completed(400)]
    assert subscriptions == [subscribe(200, 400)]  # one shared subscription


def test_coalesce_text_flushes_pending_text_on_completion() -> None:
    source = [
        on_next(210, text("Hel")),
        on_next(220, text("lo")),
        on_next(300, text("!")),
        on_completed(310),
    ]
    messages, _ = _coalesce(30, source)
    assert messages == [on_next(250, "Hello"), on_next(310, "!"), on_completed(310)]


def test_coalesce_text_keeps_one_chunk_while_deltas_keep_coming() -> None:
    source = [on_next(t, text(str(i))) for i, t in enumerate(range(210, 300, 10))]
    messages, _ = _coalesce(15, [*source, on_completed(500)])
    assert messages == [on_next(305, "012345678"), on_completed(500)]


def test_coalesce_text_ignores_other_events() -> None:
    tool_call = ToolCallStarted(run_id="r1", call_id="c", tool_name="now")
    source = [
        on_next(205, S),
        on_next(210, text("Hel")),
        on_next(230, tool_call),  # neither flushes nor extends the quiet period
        on_next(235, text("lo")),
        on_next(280, C),
        on_completed(400),
    ]
    messages, _ = _coalesce(30, source)
    assert messages == [on_next(265, "Hello"), on_completed(400)]


def test_coalesce_text_emits_nothing_without_text() -> None:
    messages, _ = _coalesce(10, [on_next(210, S), on_next(220, C), on_completed(300)])
    assert messages == [on_completed(300)]


def test_coalesce_text_forwards_errors() -> None:
    error = RuntimeError("boom")
    source = [on_next(210, text("Hel")), on_error(300, error)]
    messages, subscriptions = _coalesce(30, source)
    assert messages == [on_next(240, "Hel"), on_error(300, error)]
    assert subscriptions == [subscribe(200, 300)]


def test_coalesce_text_stops_when_disposed() -> None:
    source = [on_next(210, text("a")), on_next(990, text("b")), on_next(1010, text("c"))]
    messages, subscriptions = _coalesce(30, source)
    assert messages == [on_next(240, "a")]  # "b" was pending at dispose time (1000)
    assert subscriptions == [subscribe(200, 1000)]


# --- to_async_iterator ------------------------------------------------------------------------


class Boom(Exception):
    pass


def tracked(
    emit: Callable[[abc.ObserverBase[Any]], None],
) -> tuple[Observable[Any], asyncio.Event]:
    """A cold observable running ``emit`` on subscribe, and an Event set when it is disposed."""
    disposed = asyncio.Event()

    def on_subscribe(observer: abc.ObserverBase[Any], scheduler: Any = None) -> abc.DisposableBase:
        emit(observer)
        return Disposable(disposed.set)

    return reactivex.create(on_subscribe), disposed


async def test_async_iterator_yields_items_in_order_then_stops() -> None:
    items = [value async for value in to_async_iterator(reactivex.of(*range(20)))]
    assert items == list(range(20))


async def test_async_iterator_raises_on_error_after_earlier_items() -> None:
    error = Boom("stream broke")
    observable = reactivex.concat(reactivex.of(1, 2), reactivex.throw(error))
    received: list[int] = []
    with pytest.raises(Boom) as info:
        async for value in to_async_iterator(observable):
            received.append(value)
    assert info.value is error
    assert received == [1, 2]


async def test_async_iterator_disposes_after_an_error() -> None:
    def emit(observer: abc.ObserverBase[Any]) -> None:
        observer.on_next(1)
        observer.on_error(Boom())

    observable, disposed = tracked(emit)
    with pytest.raises(Boom):
        async for _ in to_async_iterator(observable):
            pass
    assert disposed.is_set()


async def test_async_iterator_closed_early_disposes_at_once() -> None:
    def emit(observer: abc.ObserverBase[Any]) -> None:
        for i in range(10):
            observer.on_next(i)

    observable, disposed = tracked(emit)
    received: list[int] = []
    async with contextlib.aclosing(to_async_iterator(observable)) as items:
        async for value in items:
            received.append(value)
            if value == 2:
                break
        assert not disposed.is_set()
    assert disposed.is_set()
    assert received == [0, 1, 2]


async def test_async_iterator_break_disposes_the_subscription() -> None:
    subject: Subject[int] = Subject()
    disposed = asyncio.Event()

    def on_subscribe(observer: abc.ObserverBase[int], scheduler: Any = None) -> Any:
        return CompositeDisposable(subject.subscribe(observer), Disposable(disposed.set))

    async def publish() -> None:
        for i in range(5):
            await asyncio.sleep(0)
            subject.on_next(i)

    publisher = asyncio.ensure_future(publish())
    received: list[int] = []
    async for value in to_async_iterator(reactivex.create(on_subscribe)):
        received.append(value)
        if value == 1:
            break
    # The abandoned generator is closed by the loop's async-generator finalizer, not at the
    # `break` itself (use contextlib.aclosing for that); wait for it, bounded by a timeout.
    await asyncio.wait_for(disposed.wait(), timeout=10)
    await publisher
    assert received == [0, 1]
    assert subject.observers == []


async def test_async_iterator_subscribes_at_once_and_releases_on_aclose() -> None:
    subject: Subject[str] = Subject()
    iterator = to_async_iterator(subject)
    assert len(subject.observers) == 1  # subscribed before the first step
    subject.on_next("published before the first step")
    first = asyncio.ensure_future(iterator.__anext__())
    assert await first == "published before the first step"
    subject.on_next("a")
    assert await iterator.__anext__() == "a"
    await iterator.aclose()
    assert subject.observers == []


async def test_async_iterator_receives_items_from_another_thread() -> None:
    subject: Subject[tuple[int, int]] = Subject()
    iterator = to_async_iterator(subject)
    first = asyncio.ensure_future(iterator.__anext__())
    await asyncio.sleep(0)
    assert len(subject.observers) == 1

    def publish() -> None:
        ident = threading.get_ident()
        for i in range(200):
            subject.on_next((i, ident))
        subject.on_completed()

    thread = threading.Thread(target=publish)
    thread.start()
    received = [await first]
    received.extend([item async for item in iterator])
    thread.join()
    assert [i for i, _ in received] == list(range(200))
    assert {ident for _, ident in received} == {thread.ident}
    assert thread.ident != threading.get_ident()


# --- throttle_latest (virtual time) ------------------------------------------------------------


def test_throttle_latest_emits_at_once_then_the_latest_per_window() -> None:
    scheduler = TestScheduler()
    source = [
        on_next(201, "a"), on_next(202, "b"), on_next(203, "c"),  # one window: a now, c at 211
        on_next(230, "d"), on_next(235, "e"),  # a new window at 230: d now, e at 240
        on_completed(300),
    ]
    messages, _ = run_pipe(scheduler, source, throttle_latest(10, scheduler=scheduler))
    assert messages == [
        on_next(201, "a"), on_next(211, "c"), on_next(230, "d"), on_next(240, "e"), on_completed(300)
    ]


def test_throttle_latest_never_drops_the_last_item_before_completion() -> None:
    scheduler = TestScheduler()
    source = [on_next(201, "a"), on_next(205, "final"), on_completed(206)]
    messages, _ = run_pipe(scheduler, source, throttle_latest(10, scheduler=scheduler))
    assert messages == [on_next(201, "a"), on_next(206, "final"), on_completed(206)]


def test_throttle_latest_uses_the_subscribers_scheduler_and_forwards_errors() -> None:
    scheduler = TestScheduler()
    error = RuntimeError("boom")
    source = [on_next(201, "a"), on_next(202, "b"), on_error(203, error)]
    messages, _ = run_pipe(scheduler, source, throttle_latest(10))  # TestScheduler.start passes itself
    assert messages == [on_next(201, "a"), on_error(203, error)]


def test_throttle_latest_bounds_a_burst_to_one_item_per_window() -> None:
    scheduler = TestScheduler()
    source = [on_next(200 + t, t) for t in range(1, 101)] + [on_completed(400)]
    messages, _ = run_pipe(scheduler, source, throttle_latest(10, scheduler=scheduler))
    values = [m.value.value for m in messages if m.value.kind == "N"]
    assert values[0] == 1 and values[-1] == 100
    times = [m.time for m in messages if m.value.kind == "N"]
    assert all(b - a >= 10 for a, b in zip(times, times[1:], strict=False))


async def test_time_operators_default_to_the_running_loop_not_a_thread() -> None:
    threads: list[int] = []
    both = asyncio.Event()

    def seen(_: Any) -> None:
        threads.append(threading.get_ident())
        if len(threads) == 2:
            both.set()

    source: Subject[Any] = Subject()
    sub = source.pipe(throttle_latest(0.01)).subscribe(seen)
    source.on_next(1)
    source.on_next(2)  # goes out when the window closes, from a loop timer (not a thread)
    await asyncio.wait_for(both.wait(), 5)
    sub.dispose()
    assert threads == [threading.get_ident()] * 2


def test_a_time_operator_outside_a_loop_without_scheduler_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="pass scheduler="):
        reactivex.of(text("a")).pipe(coalesce_text(0.1)).subscribe()


# --- accumulate_text and per_run (virtual time) -----------------------------------------------


def test_accumulate_text_is_the_text_so_far_per_run() -> None:
    scheduler = TestScheduler()
    source = [
        on_next(210, started("a")), on_next(220, text("He", "a")), on_next(230, text("Hi", "b")),
        on_next(240, text("llo", "a")), on_next(250, completed("a")), on_next(260, text("!", "b")),
        on_next(270, text("x", "a")), on_completed(300),
    ]
    messages, _ = run_pipe(scheduler, source, accumulate_text())
    assert messages == [
        on_next(220, "He"), on_next(230, "Hi"), on_next(240, "Hello"), on_next(260, "Hi!"),
        on_next(270, "x"),  # run a ended at 250: its text was forgotten
        on_completed(300),
    ]


def test_per_run_applies_a_pipeline_to_each_run_and_completes_with_them() -> None:
    scheduler = TestScheduler()

    def count(run: Observable[Any]) -> Observable[Any]:
        return run.pipe(ops.count())

    source = [
        on_next(210, started("a")), on_next(220, started("b")), on_next(230, text("x", "a")),
        on_next(240, completed("a")), on_next(250, text("y", "b")), on_next(260, completed("b")),
        on_completed(300),
    ]
    messages, _ = run_pipe(scheduler, source, per_run(count))
    assert messages == [on_next(240, 3), on_next(260, 3), on_completed(300)]


def test_per_run_collects_each_runs_text_over_concurrent_runs() -> None:
    scheduler = TestScheduler()

    def text_of_run(run: Observable[Any]) -> Observable[Any]:
        return run.pipe(text_of(), ops.reduce(lambda acc, t: acc + t, ""))

    source: list[Any] = []
    for i in range(20):  # 20 interleaved runs
        source += [on_next(210 + i, started(f"r{i}")), on_next(240 + i, text(f"t{i}", f"r{i}"))]
    source += [on_next(280 + i, completed(f"r{i}")) for i in range(20)] + [on_completed(400)]
    source.sort(key=lambda m: m.time)
    messages, _ = run_pipe(scheduler, source, per_run(text_of_run))
    assert [m.value.value for m in messages[:-1]] == [f"t{i}" for i in range(20)]


def test_per_run_waits_for_pipelines_that_finish_after_the_source() -> None:
    scheduler = TestScheduler()

    def last_frame(run: Observable[Any]) -> Observable[Any]:
        return run.pipe(accumulate_text(), ops.delay(50, scheduler=scheduler))

    source = [on_next(210, text("a", "r")), on_next(215, text("b", "r")), on_completed(220)]
    messages, _ = run_pipe(scheduler, source, per_run(last_frame))
    assert messages == [on_next(260, "a"), on_next(265, "ab"), on_completed(270)]


def test_per_run_forwards_a_pipeline_error() -> None:
    scheduler = TestScheduler()
    error = ValueError("bad run")

    def explode(run: Observable[Any]) -> Observable[Any]:
        return run.pipe(ops.map(lambda e: (_ for _ in ()).throw(error)))

    messages, _ = run_pipe(scheduler, [on_next(210, started("a")), on_completed(300)], per_run(explode))
    assert messages == [on_error(210, error)]


# --- to_async_iterator with a buffer policy ------------------------------------------------------


@pytest.mark.parametrize(
    ("overflow", "kept", "dropped"),
    [
        ("drop_oldest", [7, 8, 9], 7),
        ("drop_newest", [0, 1, 2], 7),
        ("latest", [9], 9),
        ("block", list(range(10)), 0),  # published on the loop's thread: queued past the bound
    ],
)
async def test_a_full_buffer_follows_its_policy_and_counts_drops(
    overflow: Any, kept: list[int], dropped: int
) -> None:
    subject: Subject[int] = Subject()
    iterator = to_async_iterator(subject, buffer=3, overflow=overflow)
    for i in range(10):
        subject.on_next(i)
    subject.on_completed()
    assert [v async for v in iterator] == kept
    assert iterator.dropped == dropped


async def test_markers_announce_drops_in_place() -> None:
    subject: Subject[int] = Subject()
    iterator = to_async_iterator(subject, buffer=2, overflow="drop_oldest", markers=True)
    for i in range(5):
        subject.on_next(i)
    subject.on_completed()
    assert [v async for v in iterator] == [rxinvoke.Dropped(3), 3, 4]


async def test_block_makes_a_publisher_on_another_thread_wait_and_loses_nothing() -> None:
    subject: Subject[int] = Subject()
    iterator = to_async_iterator(subject, buffer=2, overflow="block")

    def publish() -> None:
        for i in range(200):
            subject.on_next(i)
        subject.on_completed()

    thread = threading.Thread(target=publish)
    thread.start()
    received = [v async for v in iterator]
    thread.join(5)
    assert received == list(range(200)) and iterator.dropped == 0


async def test_a_bad_buffer_or_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="buffer"):
        to_async_iterator(reactivex.empty(), buffer=0)
    with pytest.raises(ValueError, match="overflow"):
        to_async_iterator(reactivex.empty(), overflow="spill")  # type: ignore[arg-type]
