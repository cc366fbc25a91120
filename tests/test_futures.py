"""start_eagerly: a coroutine run at once up to its first suspension (an eager task on 3.12+;
before, in the caller's task, with no task when it does not wait); when_done: waiting for a task
without cancelling it (and shielded: asyncio.shield for a future)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from rxinvoke._futures import shielded, start_eagerly, when_done


async def test_a_coroutine_that_does_not_wait_completes_in_the_callers_task() -> None:
    caller = asyncio.current_task()
    ran_in: list[asyncio.Task[object] | None] = []

    async def quick() -> int:
        ran_in.append(asyncio.current_task())
        return 7

    tasks_before = len(asyncio.all_tasks())
    future = start_eagerly(quick())
    assert future.done() and future.result() == 7
    assert ran_in == ([future] if sys.version_info >= (3, 12) else [caller])  # never scheduled
    assert len(asyncio.all_tasks()) == tasks_before


async def test_a_deadline_taken_in_the_first_step_ends_the_coroutine_not_the_caller() -> None:
    # asyncio.wait_for binds itself to the current task on 3.12+ (psycopg_pool's connection
    # wait does this): it must be the coroutine's own, or the caller is cancelled instead and
    # the wait goes on without a deadline
    async def bounded() -> None:
        await asyncio.wait_for(asyncio.Event().wait(), 0.01)

    future = start_eagerly(bounded())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.shield(future)  # as the runtime awaits a store write: nothing forwarded
    await asyncio.sleep(0)  # a cancellation misdelivered to this task would land here
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks: Python 3.12+")
async def test_asyncio_timeout_in_the_first_step_binds_to_the_coroutine() -> None:
    async def bounded() -> str:
        try:
            async with asyncio.timeout(0.01):  # type: ignore[attr-defined,unused-ignore]
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "never"

    assert await asyncio.shield(start_eagerly(bounded())) == "timed out"


async def test_a_coroutine_that_waits_goes_on_in_its_own_task() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def slow() -> str:
        steps.append("before")
        value = await gate
        steps.append("after")
        await asyncio.sleep(0)  # a bare yield (None) is passed through to the task too
        return value + "!"

    future = start_eagerly(slow())
    assert steps == ["before"] and not future.done()
    assert isinstance(future, asyncio.Task) and future is not asyncio.current_task()
    gate.set_result("done")
    assert await future == "done!"
    assert steps == ["before", "after"]


async def test_a_cancel_of_its_task_reaches_the_coroutine() -> None:
    seen: list[str] = []

    async def stubborn() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            return "cleaned up"
        return "never"

    future = start_eagerly(stubborn())
    await asyncio.sleep(0)
    future.cancel()
    assert await future == "cleaned up"
    assert seen == ["cancelled"]


async def test_errors_raised_at_once_are_the_futures_outcome() -> None:
    async def broken() -> None:
        raise ValueError("no")

    async def cancelled() -> None:
        raise asyncio.CancelledError

    failed = start_eagerly(broken())
    assert failed.done()
    with pytest.raises(ValueError, match="no"):
        await failed
    assert start_eagerly(cancelled()).cancelled()


async def test_an_error_after_the_first_suspension_is_the_tasks_outcome() -> None:
    async def later() -> None:
        await asyncio.sleep(0)
        raise KeyError("late")

    future = start_eagerly(later())
    assert not future.done()
    with pytest.raises(KeyError, match="late"):
        await future


async def test_when_done_settles_after_the_future_and_leaves_its_outcome_there() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiter = when_done(gate)
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.set_exception(ValueError("boom"))
    assert await waiter is None  # the outcome is not copied over
    with pytest.raises(ValueError, match="boom"):
        gate.result()


async def test_cancelling_the_waiter_of_when_done_leaves_the_task_running() -> None:
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    task = asyncio.ensure_future(work())
    waiter = when_done(task)
    awaiting = asyncio.ensure_future(waiter)
    await asyncio.sleep(0)
    awaiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await awaiting
    assert waiter.cancelled() and not task.done()
    release.set()
    assert await task == "done"  # and the waiter's callback, run after a cancel, raised nothing
    await asyncio.sleep(0)


async def test_shielded_gives_the_futures_outcome_and_a_cancelled_caller_leaves_it_running() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    done.set_result(7)
    assert await shielded(done) == 7
    failing: asyncio.Future[int] = loop.create_future()
    failing.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        await shielded(failing)
    pending: asyncio.Future[int] = loop.create_future()
    caller = asyncio.ensure_future(shielded(pending))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert not pending.done()  # the caller's cancellation did not reach it
    pending.set_result(1)
    gone: asyncio.Future[int] = loop.create_future()
    waiting = asyncio.ensure_future(shielded(gone))
    await asyncio.sleep(0)
    gone.cancel()  # the future itself cancelled: its awaiter sees the cancellation
    with pytest.raises(asyncio.CancelledError):
        await waiting
