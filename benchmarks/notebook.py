"""Notebook benchmark (issue 10 targets):

1. a RunView of a 10 000-event run: HTML built in <= 100 ms and <= 300 KB (the event table
   elides the middle with a count);
2. a run streaming 5 000 fragments (a scripted model at 2 000 fragments/s) with a live view
   attached (every update rendered to HTML, as Jupyter would) against the same run without:
   <= 10% slower, and <= 10 display updates per second.

    python -m benchmarks.notebook            # full run
    python -m benchmarks.notebook --quick    # smoke run (CI)
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timedelta, timezone

from benchmarks._common import cli, machine_line
from rxinvoke import RunView
from rxinvoke.events import (
    InvocationEvent,
    ModelStarted,
    RunCompleted,
    RunStarted,
    TextDelta,
    ToolExecutionFinished,
    ToolExecutionStarted,
    ToolSuccess,
    UsageRecorded,
)
from rxinvoke.messages import FinishReason, TokenUsage


def big_run(events: int) -> list[InvocationEvent]:
    start = datetime.now(timezone.utc)
    made: list[InvocationEvent] = [RunStarted(run_id="r", session_id="s", provider="p", model="m", timestamp=start)]
    t = 0.0
    iteration = 0
    while len(made) < events - 1:
        iteration += 1
        t += 1
        made.append(ModelStarted(run_id="r", provider="p", model="m", iteration=iteration, timestamp=start + timedelta(milliseconds=t)))
        for _ in range(95):
            t += 0.1
            made.append(TextDelta(run_id="r", delta="word ", timestamp=start + timedelta(milliseconds=t)))
        made.append(UsageRecorded(run_id="r", usage=TokenUsage(total_tokens=100), timestamp=start + timedelta(milliseconds=t)))
        made.append(ToolExecutionStarted(run_id="r", call_id=f"c{iteration}", tool_name="tool", timestamp=start + timedelta(milliseconds=t)))
        t += 2
        made.append(ToolExecutionFinished(run_id="r", call_id=f"c{iteration}", tool_name="tool", result=ToolSuccess(output="ok"), duration_ms=2, timestamp=start + timedelta(milliseconds=t)))
    made = made[: events - 1]
    made.append(RunCompleted(run_id="r", finish_reason=FinishReason.STOP, iterations=iteration, timestamp=start + timedelta(milliseconds=t + 1)))
    return made


async def live_overhead(fragments: int) -> tuple[float, float, float]:
    """(wall with live / wall without, updates per second, seconds) for one streamed run."""

    from rxinvoke import AgentRuntime, EmitRequest, RuntimeInvocation, ScriptedProvider
    from rxinvoke.notebook import live

    text = " ".join(f"w{i}" for i in range(fragments))

    async def one(with_live: bool) -> tuple[float, int]:
        provider = ScriptedProvider([ScriptedProvider.text_turn(text, pieces=fragments)], delay=0.0005)
        inv = RuntimeInvocation(AgentRuntime(providers=[provider]))
        renders = [0]

        def render(obj: object, display_id: str) -> None:
            obj._repr_mimebundle_()  # type: ignore[attr-defined]
            renders[0] += 1

        begin = time.perf_counter()
        if with_live:
            with live(inv, display=render, update=render) as view:
                await inv.emit(EmitRequest("go"))
            updates = view.updates
        else:
            await inv.emit(EmitRequest("go"))
            updates = 0
        return time.perf_counter() - begin, updates

    await one(False)  # warm up
    plain = min([(await one(False))[0] for _ in range(3)])
    runs = [await one(True) for _ in range(3)]
    with_live, updates = min(runs)
    return with_live / plain, updates / with_live, with_live


async def main(quick: bool) -> None:
    count = 1_000 if quick else 10_000
    print(f"# rxinvoke notebook benchmark ({'quick' if quick else 'full'})")
    print(f"# machine: {machine_line()}")
    events = big_run(count)
    timings = []
    html = ""
    for _ in range(3 if quick else 7):
        begin = time.perf_counter()
        html = RunView.from_events(events).html()
        timings.append((time.perf_counter() - begin) * 1000)
    print(
        f"1. RunView of a {count:,}-event run: HTML built in {statistics.median(timings):.1f} ms "
        f"(median; target <= 100 ms) · {len(html.encode()) / 1024:.0f} KB (target <= 300 KB)"
    )
    ratio, rate, seconds = await live_overhead(500 if quick else 5_000)
    print(
        f"2. a {500 if quick else 5_000:,}-fragment run with a live view: {ratio:.2f}x the run without "
        f"(target <= 1.10x) · {rate:.1f} display updates/s (target <= 10) over {seconds:.2f} s"
    )


if __name__ == "__main__":
    cli(main, __doc__)
