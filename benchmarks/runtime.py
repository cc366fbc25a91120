"""Runtime benchmark: a whole agent run against a plain asyncio loop doing the essential work.

W1 = one run with one tool call (arguments in 3 deltas) and a 50-delta streamed answer, one
``observe()`` consumer of every event, ``MemoryStore``. The baseline is a plain asyncio
coroutine that builds the same events (the same frozen pydantic models, 124 of them) and
publishes them through a reactivex ``Subject`` → ``filter`` chain to one consumer, with the same
number of loop checkpoints as the scripted provider makes: what any reactive agent loop must
pay. The ratio (rxinvoke time / baseline time per run) is the runtime's overhead factor,
measured in alternating paired rounds (``benchmarks._common.paired``: the median of the
per-round ratios, which the machine's drift hits alike).

C1000 = 1000 concurrent W1 runs on distinct sessions whose model calls each take 10 ms
(``asyncio.sleep``), wall time for all of them, against the baseline doing the same, in
alternating paired rounds of one burst each (after a warm-up burst of each).

Line 4 counts what a burst keeps alive: GC-tracked objects per run while 1000 runs wait on
their model (a full collection walks all of them; the plain baseline's coroutines keep a
dozen), and the collector's full collections and time over a burst of 1000 runs.

    python -m benchmarks.runtime            # full run
    python -m benchmarks.runtime --quick    # smoke run with tiny counts (CI)
"""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from reactivex import operators as ops
from reactivex.subject import Subject

from benchmarks._common import cli, machine_line, paired
from rxinvoke import (
    AgentRuntime,
    ChatFinished,
    ChatRequest,
    ChatStarted,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
    EmitRequest,
    FinishReason,
    RuntimeInvocation,
    TokenUsage,
    ToolCall,
    tool,
)
from rxinvoke.events import (
    AssistantMessageCommitted,
    ContextBuilt,
    ModelStarted,
    RunCompleted,
    RunStarted,
    TextDelta,
    ToolCallCompleted,
    ToolCallDelta,
    ToolCallStarted,
    ToolExecutionFinished,
    ToolExecutionStarted,
    ToolMessageCommitted,
    ToolSuccess,
    UsageRecorded,
)

WORDS = [f"word{i} " for i in range(50)]
ARGUMENTS = json.dumps({"key": "abc"})
PIECES = [ARGUMENTS[i : i + 5] for i in range(0, len(ARGUMENTS), 5)][:3]
USAGE = TokenUsage(input_tokens=10, output_tokens=50, total_tokens=60)


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()


class W1Provider:
    """Streams the W1 turns; ``latency`` seconds before each response (the model's time)."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency

    @property
    def id(self) -> str:
        return "w1"

    @property
    def models(self) -> Sequence[str]:
        return ("w1",)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        if self.latency:
            await asyncio.sleep(self.latency)
        yield ChatStarted(provider="w1", model=request.model)
        if request.messages[-1].role != "tool":
            yield ChatToolCallStarted(id="c1", name="lookup")
            for piece in PIECES:
                await asyncio.sleep(0)
                yield ChatToolCallArgumentsDelta(id="c1", delta=piece)
            yield ChatToolCallCompleted(call=ToolCall(id="c1", name="lookup", arguments=ARGUMENTS))
            yield ChatFinished(finish_reason=FinishReason.TOOL_CALLS, usage=USAGE)
            return
        for word in WORDS:
            await asyncio.sleep(0)
            yield ChatTextDelta(delta=word)
        yield ChatFinished(finish_reason=FinishReason.STOP, usage=USAGE)


async def baseline_run(run: int, publish: Any, latency: float) -> None:
    """The essential work of a W1 run: build and publish its events, same checkpoints."""
    rid, sid = f"run-{run}", "session"
    publish(RunStarted(run_id=rid, session_id=sid, provider="w1", model="w1"))
    publish(ContextBuilt(run_id=rid, message_count=1))
    for turn in (1, 2):
        publish(ModelStarted(run_id=rid, provider="w1", model="w1", iteration=turn))
        if latency:
            await asyncio.sleep(latency)
        publish(ChatStarted(run_id=rid, provider="w1", model="w1"))
        if turn == 1:
            publish(ChatToolCallStarted(run_id=rid, id="c1", name="lookup"))
            publish(ToolCallStarted(run_id=rid, call_id="c1", tool_name="lookup"))
            for piece in PIECES:
                await asyncio.sleep(0)
                publish(ChatToolCallArgumentsDelta(run_id=rid, id="c1", delta=piece))
                publish(ToolCallDelta(run_id=rid, call_id="c1", delta=piece))
            call = ToolCall(id="c1", name="lookup", arguments=ARGUMENTS)
            publish(ChatToolCallCompleted(run_id=rid, call=call))
            publish(ToolCallCompleted(run_id=rid, call=call))
        else:
            for word in WORDS:
                await asyncio.sleep(0)
                publish(ChatTextDelta(run_id=rid, delta=word))
                publish(TextDelta(run_id=rid, delta=word))
        publish(ChatFinished(run_id=rid, finish_reason=FinishReason.STOP, usage=USAGE))
        publish(AssistantMessageCommitted(run_id=rid, message_id="m"))
        publish(UsageRecorded(run_id=rid, usage=USAGE))
        if turn == 1:
            publish(ToolExecutionStarted(run_id=rid, call_id="c1", tool_name="lookup"))
            result = ToolSuccess(output=lookup(key="abc"))
            publish(ToolExecutionFinished(run_id=rid, call_id="c1", tool_name="lookup", result=result, duration_ms=0.0))
            publish(ToolMessageCommitted(run_id=rid, message_id="t", call_id="c1"))
    publish(RunCompleted(run_id=rid, finish_reason=FinishReason.STOP, iterations=2))


def _baseline_publisher() -> tuple[Any, list[int]]:
    subject: Subject[Any] = Subject()
    seen = [0]
    subject.pipe(ops.filter(lambda e: True)).subscribe(lambda e: seen.__setitem__(0, seen[0] + 1))
    return subject.on_next, seen


def _runtime(latency: float) -> tuple[RuntimeInvocation, list[int]]:
    inv = RuntimeInvocation(AgentRuntime(providers=[W1Provider(latency)], tools=[lookup]))
    seen = [0]
    inv.observe().subscribe(lambda e: seen.__setitem__(0, seen[0] + 1))
    return inv, seen


def _build(ctx: object, control: object) -> EmitRequest:
    return EmitRequest(provider="w1", model="w1", input="look abc up")


async def sequential(runs: int, rounds: int) -> tuple[float, float, float, int, int]:
    """µs per run: rxinvoke, baseline (medians), the median of their per-round ratios
    (``benchmarks._common.paired``: alternating rounds); events per run of each."""
    inv, seen = _runtime(0.0)
    publish, base_seen = _baseline_publisher()
    counter = iter(range(10**9))

    async def rxinvoke(count: int) -> None:
        for _ in range(count):
            await inv.emit(_build)

    async def baseline(count: int) -> None:
        for _ in range(count):
            await baseline_run(next(counter), publish, 0.0)

    variants = {"baseline": baseline, "rxinvoke": rxinvoke}
    for block in variants.values():  # warm up
        await block(20)
    seen[0] = base_seen[0] = 0
    measured = await paired(variants, runs, rounds)
    (base, _), (rx, ratio) = measured["baseline"], measured["rxinvoke"]
    done = runs * rounds
    return rx, base, ratio, seen[0] // done, base_seen[0] // done


async def spread(runs: int) -> tuple[float, float, float]:
    """Per-run ms of ``runs`` sequential W1 runs after the store is full: median, p99, max
    (a collection pause shows as a p99 far above the median)."""
    inv, _ = _runtime(0.0)
    for _ in range(1100):  # past MemoryStore's 1000 kept runs: eviction included
        await inv.emit(_build)
    times: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        await inv.emit(_build)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99) - 1], times[-1]


async def concurrent(runs: int, latency: float, rounds: int) -> tuple[float, float, float]:
    """Wall seconds for a burst of ``runs`` concurrent runs (medians): rxinvoke, baseline; and
    the median of their per-round ratios (``benchmarks._common.paired``, one burst of each per
    round after one warm-up burst; one runtime throughout, its store full after the first)."""
    inv, _ = _runtime(latency)
    publish, _ = _baseline_publisher()

    async def rxinvoke(bursts: int) -> None:
        for _ in range(bursts):
            await asyncio.gather(*(inv.emit(_build) for _ in range(runs)))

    async def baseline(bursts: int) -> None:
        for _ in range(bursts):
            await asyncio.gather(*(baseline_run(run, publish, latency) for run in range(runs)))

    variants = {"baseline": baseline, "rxinvoke": rxinvoke}
    for block in variants.values():  # warm up
        await block(1)
    measured = await paired(variants, 1, rounds)
    (base, _), (rx, ratio) = measured["baseline"], measured["rxinvoke"]
    return rx / 1e6, base / 1e6, ratio


async def in_flight(runs: int) -> tuple[float, float, int, float]:
    """GC-tracked objects per run kept alive while ``runs`` concurrent runs wait on their first
    model call (what a full collection walks during a burst): rxinvoke, baseline; and the
    collector's work over the whole burst: collections of the oldest generation, seconds."""
    inv, _ = _runtime(0.05)
    await inv.emit(_build)  # warm: first-use caches are not the runs' own
    publish, _ = _baseline_publisher()

    async def count(start: Callable[[int], Awaitable[Any]]) -> tuple[float, list[asyncio.Task[Any]]]:
        gc.collect()
        before = len(gc.get_objects())
        tasks = [asyncio.ensure_future(start(run)) for run in range(runs)]
        await asyncio.sleep(0.02)  # every run is in its first model call (50 ms)
        gc.collect()
        return (len(gc.get_objects()) - before) / runs, tasks

    base, tasks = await count(lambda run: baseline_run(run, publish, 0.05))
    await asyncio.gather(*tasks)
    rx, tasks = await count(lambda run: inv.emit(_build))
    await asyncio.gather(*tasks)
    full, seconds, began = [0], [0.0], [0.0]

    def timing(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            seconds[0] += time.perf_counter() - began[0]
            full[0] += info["generation"] == 2

    inv, _ = _runtime(0.010)
    await inv.emit(_build)
    gc.collect()
    gc.callbacks.append(timing)
    try:
        await asyncio.gather(*(inv.emit(_build) for _ in range(runs)))
    finally:
        gc.callbacks.remove(timing)
    return rx, base, full[0], seconds[0]


async def main(quick: bool) -> None:
    (runs, rounds), concurrent_runs = ((10, 2), 50) if quick else ((100, 20), 1000)
    print(f"# rxinvoke runtime benchmark ({'quick' if quick else 'full'})")
    print(f"# machine: {machine_line()}")
    rx, base, ratio, rx_events, base_events = await sequential(runs, rounds)
    print(
        f"1. W1 run, sequential: rxinvoke {rx / 1000:.2f} ms/run ({rx_events} events) · plain asyncio "
        f"+ Subject→filter {base / 1000:.2f} ms/run ({base_events} events) · ratio {ratio:.2f}x"
        f" (median of {rounds} paired rounds of {runs} runs; target <= 1.5x)"
    )
    bursts = 2 if quick else 8
    rx_wall, base_wall, wall_ratio = await concurrent(concurrent_runs, 0.010, bursts)
    print(
        f"2. {concurrent_runs} concurrent W1 runs, 10 ms per model call: rxinvoke "
        f"{rx_wall:.2f} s wall · plain asyncio {base_wall:.2f} s · ratio {wall_ratio:.2f}x"
        f" (median of {bursts} paired rounds of one burst; target <= 2x)"
    )
    rx_kept, base_kept, full, gc_seconds = await in_flight(concurrent_runs)
    print(
        f"4. {concurrent_runs} W1 runs in flight, waiting on the model: {rx_kept:.0f} GC-tracked objects "
        f"kept per run (plain asyncio {base_kept:.0f}) · over a burst of {concurrent_runs} runs the "
        f"collector ran {full} full collections, {gc_seconds:.2f} s"
    )
    if quick:
        return
    median, p99, worst = await spread(3000)
    print(
        f"3. per-run time of 3000 sequential W1 runs (store full): median {median:.2f} ms · p99 "
        f"{p99:.2f} ms = {p99 / median:.2f}x the median (target <= 2x) · max {worst:.2f} ms"
    )


if __name__ == "__main__":
    cli(main, __doc__)
