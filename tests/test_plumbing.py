"""The runtime's slotted plumbing: the session gate, the model call's deadline, a run's end
event (made only when someone waits for it)."""

from __future__ import annotations

import asyncio
import sys
import uuid

import pytest
from reactivex.testing import TestScheduler

from rxinvoke import ScriptedProvider
from rxinvoke._clock import deadline
from rxinvoke._compat import DeadlineExceeded
from rxinvoke._run import Run
from rxinvoke._sessions import SessionGate
from rxinvoke.control import Control
from rxinvoke.request import RunRequest


async def test_the_gate_admits_one_holder_per_session_in_arrival_order_and_forgets_idle_sessions() -> None:
    gate, session, other = SessionGate(), uuid.uuid4(), uuid.uuid4()
    order: list[str] = []

    async def hold(name: str, session_id: uuid.UUID, release: asyncio.Event) -> None:
        async with gate.hold(session_id):
            order.append(f"{name} in")
            await release.wait()
            order.append(f"{name} out")

    releases = {name: asyncio.Event() for name in ("a", "b", "c", "x")}
    tasks = [
        asyncio.ensure_future(hold("a", session, releases["a"])),
        asyncio.ensure_future(hold("b", session, releases["b"])),
        asyncio.ensure_future(hold("c", session, releases["c"])),
        asyncio.ensure_future(hold("x", other, releases["x"])),
    ]
    await asyncio.sleep(0)
    assert order == ["a in", "x in"]  # another session does not wait
    tasks[1].cancel()  # a waiter cancelled while waiting leaves the queue
    await asyncio.sleep(0)
    releases["a"].set()
    for _ in range(5):  # a's exit, the lock's hand-over, c's entry: a few loop iterations
        await asyncio.sleep(0)
    assert order == ["a in", "x in", "a out", "c in"]
    for name in ("c", "x"):
        releases[name].set()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert gate._locks == {}  # nobody holds or waits: nothing kept


async def test_a_holder_that_raises_releases_the_session() -> None:
    gate, session = SessionGate(), uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with gate.hold(session):
            raise RuntimeError("boom")
    async with gate.hold(session):  # not held any more
        pass
    assert gate._locks == {}


async def test_the_deadline_cancels_the_block_once_past_and_raises_deadline_exceeded() -> None:
    never = asyncio.Event()
    with pytest.raises(DeadlineExceeded):
        async with deadline(None, 0.01):
            await never.wait()
    current = asyncio.current_task()
    assert current is not None
    if sys.version_info >= (3, 11):
        assert current.cancelling() == 0  # the deadline's own cancel was taken back


async def test_a_block_that_ends_in_time_leaves_no_timer_and_its_own_errors_pass() -> None:
    async with deadline(None, 10.0):
        await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    assert not [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
    with pytest.raises(TimeoutError):
        async with deadline(None, 10.0):
            raise TimeoutError("its own")
    with pytest.raises(asyncio.CancelledError):  # a cancel from elsewhere is not the deadline's
        async with deadline(None, 10.0):
            raise asyncio.CancelledError
    async with deadline(None, None):  # no bound
        await asyncio.sleep(0)


def test_the_deadline_on_a_virtual_clock_expires_in_virtual_time() -> None:
    scheduler = TestScheduler()
    outcome: list[str] = []

    async def main() -> None:
        never = asyncio.Event()
        try:
            async with deadline(scheduler, 5.0):
                await never.wait()
        except DeadlineExceeded:
            outcome.append("expired")

    async def drive() -> None:
        task = asyncio.ensure_future(main())
        await asyncio.sleep(0)
        scheduler.advance_by(4.0)
        await asyncio.sleep(0)
        assert outcome == []
        scheduler.advance_by(1.0)
        await task

    asyncio.run(drive())
    assert outcome == ["expired"]


async def test_a_runs_end_event_is_set_whether_it_was_asked_for_before_or_after_the_run_closed() -> None:
    request = RunRequest(provider="scripted", model="m", input="hi")

    def run() -> Run:
        return Run(request, ScriptedProvider([]), Control(), run_id="r", session_id=uuid.uuid4())

    early = run()
    ended = early.ended  # asked for first: set by close()
    assert not ended.is_set()
    early.close()
    assert ended.is_set() and early.ended is ended
    late = run()
    late.close()
    assert late.ended.is_set()  # made after close(): set at once
    await asyncio.wait_for(late.ended.wait(), 1.0)
