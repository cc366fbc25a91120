"""Notebook benchmark: a RunView of a 10 000-event run (issue 10 targets: HTML built in
<= 100 ms and <= 300 KB; the event table elides the middle with a count).

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


if __name__ == "__main__":
    cli(main, __doc__)
