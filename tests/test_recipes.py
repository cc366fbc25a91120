"""The README's five pipeline recipes, as a newcomer writes them (issue 11). Each test is the
recipe's code; time-based ones run in virtual time with the same code as on a real loop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import reactivex
from reactivex import operators as ops
from reactivex.testing import TestScheduler

from rxinvoke import (
    AgentRuntime,
    EmitRequest,
    InvocationCancelled,
    OfflineProvider,
    RuntimeInvocation,
    ScriptedProvider,
    accumulate_text,
    builtin_tools,
    of_kind,
    per_run,
    text_of,
    throttle_latest,
)
from rxinvoke.testing import advance


def offline(name: str | None = None) -> RuntimeInvocation:
    return RuntimeInvocation(
        AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools(), name=name)
    )


async def test_recipe_1_token_rate_per_run_on_the_loops_clock() -> None:
    clock = TestScheduler()  # in the README: the real loop; here the same code in virtual time
    provider = ScriptedProvider(
        [ScriptedProvider.text_turn("one two three four five six", pieces=6)], delay=0.5, scheduler=clock
    )
    inv = RuntimeInvocation(AgentRuntime(providers=[provider], scheduler=clock))

    # --- recipe ---
    rates = inv.runs().pipe(
        ops.flat_map(lambda run: run.pipe(
            of_kind("text_delta"),
            ops.window_with_time(1.0, scheduler=inv.scheduler),   # on the loop, not a thread
            ops.flat_map(lambda window: window.pipe(ops.count())),
            ops.map(lambda n: (run.run_id, n / 1.0)),          # fragments per second
        )),
    )
    # --- end ---
    seen: list[tuple[str, float]] = []
    rates.subscribe(seen.append)
    result = asyncio.ensure_future(inv.emit(EmitRequest("go")))
    await advance(clock, 5.0)
    out = await result
    assert sum(n for _, n in seen) == 6  # every fragment counted once
    assert {run for run, _ in seen} == {out.run_id}
    count_after_end = len(seen)
    await advance(clock, 10.0)
    assert len(seen) == count_after_end  # the run's windows ended with it: no 0.0 forever


async def test_recipe_2_each_runs_text_over_20_concurrent_runs() -> None:
    inv = offline()
    # --- recipe ---
    texts = inv.observe().pipe(
        per_run(lambda run: run.pipe(text_of(), ops.reduce(lambda text, piece: text + piece, ""))),
        ops.take(20),
        ops.to_list(),
    )
    collected = asyncio.ensure_future(_await(texts))
    await asyncio.sleep(0)
    outputs = await asyncio.gather(*(inv.emit(EmitRequest(f"what is {n} * 2?")) for n in range(20)))
    # --- end ---
    assert sorted(await collected) == sorted(o.output_text for o in outputs)
    assert len(set(await collected)) == 20


async def _await(observable: Any) -> Any:
    return await observable


async def test_recipe_3_ui_frames_throttled_and_the_final_text_kept() -> None:
    clock = TestScheduler()
    answer = " ".join(f"w{i}" for i in range(50))
    provider = ScriptedProvider([ScriptedProvider.text_turn(answer, pieces=50)], delay=0.01, scheduler=clock)
    inv = RuntimeInvocation(AgentRuntime(providers=[provider], scheduler=clock))
    frames: list[str] = []
    # --- recipe ---
    stream = inv.stream(EmitRequest("tell me"))
    stream.pipe(accumulate_text(), throttle_latest(0.1, scheduler=inv.scheduler)).subscribe(frames.append)
    # --- end ---
    result = asyncio.ensure_future(_await(stream.result))
    await advance(clock, 1.0)
    out = await result
    assert frames[-1] == out.output_text == answer  # the final text is never dropped
    assert len(frames) <= 7  # ~0.5 s of streaming at most 10 frames per second (+ the last)


async def test_recipe_4_merging_two_runtimes_says_where_each_result_came_from() -> None:
    east, west = offline("east"), offline("west")
    seen: list[tuple[str | None, str, str]] = []
    # --- recipe ---
    reactivex.merge(east.runs(), west.runs()).pipe(
        ops.flat_map(lambda run: run.pipe(
            of_kind("tool_execution_finished"),
            ops.map(lambda e: (run.runtime, e.tool_name, e.result.output)),
        )),
    ).subscribe(seen.append)
    # --- end ---
    await asyncio.gather(east.emit(EmitRequest("what is 2 + 3?")), west.emit(EmitRequest("what is 4 * 5?")))
    assert sorted(seen) == [("east", "calculate", "5"), ("west", "calculate", "20")]


async def test_recipe_5_take_until_cancels_the_run_and_the_result_says_so() -> None:
    clock = TestScheduler()
    provider = ScriptedProvider([ScriptedProvider.text_turn("slow " * 100, pieces=100)], delay=0.1, scheduler=clock)
    inv = RuntimeInvocation(AgentRuntime(providers=[provider], scheduler=clock))
    # --- recipe ---
    stream = inv.stream(EmitRequest("long answer"))
    shown = stream.pipe(ops.take_until(reactivex.timer(2.0, scheduler=inv.scheduler)), text_of())
    pieces: list[str] = []
    shown.subscribe(pieces.append)          # disposed at 2 s: the run is cancelled
    # --- end ---
    await advance(clock, 3.0)
    with pytest.raises(InvocationCancelled):
        await stream.result                  # once run_cancelled is stored
    record = await inv.runtime.store.get_run(stream.run_id)
    assert record is not None and record.status == "cancelled"
    assert 10 <= len(pieces) <= 25
