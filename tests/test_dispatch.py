"""Dispatch in virtual time: ``on()`` ordering, take_until cancellation, concurrency limits
and handler timeouts driven by ``reactivex.testing.TestScheduler``, no sleeps.

Publishes are scheduled on the TestScheduler; the asyncio loop only runs the handler
coroutines between virtual-time steps (``_settle`` lets it run until nothing is ready).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from reactivex.testing import TestScheduler

from rxinvoke import (
    AgentRuntime,
    Control,
    EventKind,
    RuntimeInvocation,
    SessionContext,
    SubscriberError,
    TextDelta,
    ToolCallDelta,
)


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def _delta(text: str, run_id: str = "r1") -> TextDelta:
    return TextDelta(run_id=run_id, delta=text)


def _publish_at(scheduler: TestScheduler, runtime: AgentRuntime, time: float, event: Any) -> None:
    scheduler.schedule_absolute(time, lambda *_: runtime.bus.publish(event))


async def test_events_arrive_in_publication_order_across_virtual_time() -> None:
    scheduler = TestScheduler()
    runtime = AgentRuntime()
    inv = RuntimeInvocation(runtime)
    seen: list[tuple[float, str]] = []

    async def handler(event: Any, ctx: SessionContext, control: Control) -> None:
        await asyncio.sleep(0)
        seen.append((scheduler.clock, event.delta))

    await inv.on(EventKind.TEXT_DELTA, handler)
    for time, text in [(210, "a"), (210, "b"), (220, "c"), (300, "d")]:
        _publish_at(scheduler, runtime, time, _delta(text))
    _publish_at(scheduler, runtime, 215, ToolCallDelta(run_id="r1", call_id="c", delta="{}"))

    for time in (210, 220, 300):
        scheduler.advance_to(time)
        await _settle()

    assert seen == [(210, "a"), (210, "b"), (220, "c"), (300, "d")]


async def test_cancelling_the_control_ends_the_subscription_like_take_until() -> None:
    scheduler = TestScheduler()
    runtime = AgentRuntime()
    inv = RuntimeInvocation(runtime)
    control = Control()
    seen: list[str] = []
    handle = await inv.on("text_delta", lambda e, c, k: seen.append(e.delta), control)
    _publish_at(scheduler, runtime, 210, _delta("before"))
    scheduler.schedule_absolute(300, lambda *_: control.cancel())
    _publish_at(scheduler, runtime, 300, _delta("same tick, after cancel"))
    _publish_at(scheduler, runtime, 400, _delta("after"))

    scheduler.advance_to(250)
    await _settle()
    assert seen == ["before"] and not handle.is_finished
    scheduler.advance_to(500)
    await _settle()

    assert seen == ["before"]
    assert handle.is_finished


async def test_cancel_from_another_thread_ends_the_subscription() -> None:
    runtime = AgentRuntime()
    inv = RuntimeInvocation(runtime)
    control = Control()
    seen: list[str] = []
    handle = await inv.on("text_delta", lambda e, c, k: seen.append(e.delta), control)
    thread = threading.Thread(target=control.cancel)
    thread.start()
    thread.join()
    await _settle()
    runtime.bus.publish(_delta("late"))
    await _settle()
    assert handle.is_finished and seen == []


async def test_concurrency_limit_bounds_handlers_in_flight() -> None:
    scheduler = TestScheduler()
    runtime = AgentRuntime()
    inv = RuntimeInvocation(runtime)
    control = Control(concurrency_limit=2)
    gates = {str(i): asyncio.Event() for i in range(5)}
    started: list[str] = []
    finished: list[str] = []

    async def handler(event: Any, ctx: SessionContext, ctl: Control) -> None:
        started.append(event.delta)
        await gates[event.delta].wait()
        finished.append(event.delta)

    handle = await inv.on("text_delta", handler, control)
    for i in range(5):
        _publish_at(scheduler, runtime, 210, _delta(str(i)))
    scheduler.advance_to(210)
    await _settle()
    assert started == ["0", "1"]
    assert handle.stats.in_flight == 2 and handle.stats.queued == 3

    gates["1"].set()
    await _settle()
    assert started == ["0", "1", "2"] and finished == ["1"]

    for gate in gates.values():
        gate.set()
    await handle.wait_idle()
    assert started == ["0", "1", "2", "3", "4"]
    assert sorted(finished) == ["0", "1", "2", "3", "4"]
    assert handle.stats.delivered == 5 and handle.stats.in_flight == 0


async def test_handler_timeout_in_virtual_time() -> None:
    scheduler = TestScheduler()
    runtime = AgentRuntime()
    inv = RuntimeInvocation(runtime)
    never = asyncio.Event()
    errors: list[SubscriberError] = []
    inv.errors.subscribe(errors.append)
    seen: list[str] = []

    async def handler(event: Any, ctx: SessionContext, control: Control) -> None:
        seen.append(event.delta)
        if event.delta == "slow":
            await never.wait()

    handle = await inv.on("text_delta", handler, Control(timeout=5.0), scheduler=scheduler)
    runtime.bus.publish(_delta("slow"))
    runtime.bus.publish(_delta("next"))
    await _settle()
    assert seen == ["slow"]

    scheduler.advance_by(4.9)
    await _settle()
    assert seen == ["slow"] and errors == []

    scheduler.advance_by(0.1)
    await handle.wait_idle()
    assert seen == ["slow", "next"]
    assert len(errors) == 1
    assert "timed out after 5s" in errors[0].message
    assert errors[0].event is not None and errors[0].event.delta == "slow"
    assert handle.stats.failed == 1 and handle.stats.delivered == 1
    assert not handle.is_finished


async def test_a_handler_finishing_in_time_disarms_its_timer() -> None:
    scheduler = TestScheduler()
    runtime = AgentRuntime()
    inv = RuntimeInvocation(runtime)
    errors: list[SubscriberError] = []
    inv.errors.subscribe(errors.append)
    seen: list[str] = []

    async def handler(event: Any, ctx: SessionContext, control: Control) -> None:
        await asyncio.sleep(0)
        seen.append(event.delta)

    handle = await inv.on("text_delta", handler, Control(timeout=1.0), scheduler=scheduler)
    runtime.bus.publish(_delta("quick"))
    await handle.wait_idle()
    scheduler.advance_by(10.0)
    runtime.bus.publish(_delta("again"))
    await handle.wait_idle()
    assert seen == ["quick", "again"] and errors == []
    assert handle.stats.delivered == 2


async def test_abort_cancels_a_running_handler_without_reporting_a_timeout() -> None:
    scheduler = TestScheduler()
    runtime = AgentRuntime()
    inv = RuntimeInvocation(runtime)
    never = asyncio.Event()
    cancelled: list[bool] = []
    errors: list[SubscriberError] = []
    inv.errors.subscribe(errors.append)

    async def handler(event: Any, ctx: SessionContext, control: Control) -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    handle = await inv.on("text_delta", handler, Control(timeout=5.0), scheduler=scheduler)
    runtime.bus.publish(_delta("x"))
    await _settle()
    handle.abort()
    await handle.wait_idle()
    scheduler.advance_by(10.0)
    await _settle()
    assert cancelled == [True]
    assert errors == []
    assert handle.is_finished
