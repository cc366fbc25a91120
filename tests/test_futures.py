"""start_eagerly: a coroutine run at once up to its first suspension (no task when none)."""

from __future__ import annotations

import asyncio

import pytest

from rxinvoke._futures import start_eagerly


async def test_a_coroutine_that_does_not_wait_completes_in_the_callers_task() -> None:
    caller = asyncio.current_task()
    ran_in: list[asyncio.Task[object] | None] = []

    async def quick() -> int:
        ran_in.append(asyncio.current_task())
        return 7

    tasks_before = len(asyncio.all_tasks())
    future = start_eagerly(quick())
    assert future.done() and future.result() == 7
    assert ran_in == [caller]
    assert len(asyncio.all_tasks()) == tasks_before  # no task was made


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
