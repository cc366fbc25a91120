"""Dispatch benchmark: rxinvoke's bus + ``on()`` against the naive reactivex chain.

The naive chain is what the design card literally says, one per subscription:
``subject.pipe(ops.filter(kind.matches), ops.observe_on(AsyncIOScheduler(loop)))`` with the
async handler started as a task per event. Both run in the same process, on the same loop,
in the same run; the ratios (rxinvoke / naive) are what to read — absolute numbers on a
shared 2-core machine are noise.

    python -m benchmarks.dispatch            # full run (about a minute)
    python -m benchmarks.dispatch --quick    # smoke run with tiny counts (CI)
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from reactivex import operators as ops
from reactivex.scheduler.eventloop import AsyncIOScheduler
from reactivex.subject import Subject

from benchmarks._common import cli, machine_line
from rxinvoke import AgentRuntime, EventKind, RuntimeInvocation, TextDelta
from rxinvoke.events import EventBase

KINDS = [kind for kind in EventKind if kind is not EventKind.ANY]


class _Counter:
    def __init__(self) -> None:
        self.count = 0
        self.target = 0
        self.done: asyncio.Event = asyncio.Event()

    def expect(self, target: int) -> None:
        self.count, self.target, self.done = 0, target, asyncio.Event()

    async def handler(self, *_: Any) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()


class _Event(EventBase):
    """A minimal event of any kind (the bus only looks at ``type``)."""

    type: str


def _events(n: int, kinds: Sequence[EventKind]) -> list[Any]:
    return [_Event(run_id="bench", type=kinds[i % len(kinds)].value) for i in range(n)]


# --- the two dispatchers under test --------------------------------------------------------


class _Naive:
    """One Subject; per subscription a filter → observe_on(AsyncIOScheduler) chain."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.subject: Subject[Any] = Subject()
        self.scheduler = AsyncIOScheduler(loop)
        self.loop = loop

    async def subscribe(self, kind: EventKind, handler: Callable[..., Coroutine[Any, Any, None]]) -> Any:
        loop = self.loop

        def start(event: Any) -> None:
            loop.create_task(handler(event))

        return self.subject.pipe(ops.filter(kind.matches), ops.observe_on(self.scheduler)).subscribe(
            on_next=start
        )

    def publish(self, event: Any) -> None:
        self.subject.on_next(event)


class _Rx:
    def __init__(self) -> None:
        self.runtime = AgentRuntime()
        self.inv = RuntimeInvocation(self.runtime)

    async def subscribe(self, kind: EventKind, handler: Callable[..., Awaitable[None]]) -> Any:
        return await self.inv.on(kind, handler, buffer=1_000_000)

    def publish(self, event: Any) -> None:
        self.runtime.bus.publish(event)


def _dispatcher(make: str) -> _Rx | _Naive:
    return _Rx() if make == "rx" else _Naive(asyncio.get_running_loop())


async def _deliver(publish: Callable[[Any], None], events: list[Any], counter: _Counter,
                   expected: int, burst: int = 1000) -> float:
    counter.expect(expected)
    start = time.perf_counter()
    for i in range(0, len(events), burst):
        for event in events[i : i + burst]:
            publish(event)
        await asyncio.sleep(0)
    await counter.done.wait()
    return time.perf_counter() - start


# --- scenarios -----------------------------------------------------------------------------


async def throughput_one(n: int) -> tuple[float, float]:
    """(1) events/s to one async handler on text_delta."""
    asyncio.get_running_loop()
    events = [TextDelta(run_id="bench", delta="x") for _ in range(n)]
    results = []
    for make in ("rx", "naive"):
        counter = _Counter()
        dispatcher = _dispatcher(make)
        await dispatcher.subscribe(EventKind.TEXT_DELTA, counter.handler)
        elapsed = await _deliver(dispatcher.publish, events, counter, n)
        results.append(n / elapsed)
    return results[0], results[1]


async def throughput_fanout(n: int, subscriptions: int = 100) -> tuple[float, float]:
    """(2) events/s delivered with 100 subscriptions spread over all kinds."""
    asyncio.get_running_loop()
    events = _events(n, KINDS)
    per_kind = [sum(1 for s in range(subscriptions) if s % len(KINDS) == k) for k in range(len(KINDS))]
    expected = sum(per_kind[i % len(KINDS)] for i in range(n))
    results = []
    for make in ("rx", "naive"):
        counter = _Counter()
        dispatcher = _dispatcher(make)
        for s in range(subscriptions):
            await dispatcher.subscribe(KINDS[s % len(KINDS)], counter.handler)
        publish = dispatcher.publish
        elapsed = await _deliver(publish, events, counter, expected)
        results.append(expected / elapsed)
    return results[0], results[1]


async def publisher_cost(n: int, subscriptions: int = 100) -> dict[str, float]:
    """(3) publisher-side µs per event with 100 non-matching subscriptions vs none."""
    loop = asyncio.get_running_loop()
    events = [TextDelta(run_id="bench", delta="x") for _ in range(n)]
    others = [k for k in KINDS if k is not EventKind.TEXT_DELTA]

    async def noop(*_: Any) -> None:
        return None

    def timed(publish: Callable[[Any], None]) -> float:
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for event in events:
                publish(event)
            best = min(best, time.perf_counter() - start)
        return best / n * 1e6

    out: dict[str, float] = {}
    rx = _Rx()
    out["rx_none"] = timed(rx.publish)
    for s in range(subscriptions):
        await rx.subscribe(others[s % len(others)], noop)
    out["rx_100"] = timed(rx.publish)
    naive = _Naive(loop)
    out["naive_none"] = timed(naive.publish)
    for s in range(subscriptions):
        await naive.subscribe(others[s % len(others)], noop)
    out["naive_100"] = timed(naive.publish)
    await asyncio.sleep(0)
    return out


async def _latency_of(make: str, rate: int, total: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    samples: list[float] = []
    sent: dict[str, float] = {}
    done = asyncio.Event()

    async def handler(event: Any, *_: Any) -> None:
        samples.append(time.perf_counter() - sent[event.delta])
        if len(samples) >= total:
            done.set()

    dispatcher = _dispatcher(make)
    await dispatcher.subscribe(EventKind.TEXT_DELTA, handler)
    publish = dispatcher.publish
    start = loop.time()
    for i in range(total):
        key = str(i)
        event = TextDelta(run_id="bench", delta=key)
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        sent[key] = time.perf_counter()
        publish(event)
    await done.wait()
    ordered = sorted(samples)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return p50, p99


async def latency(rate: int, seconds: float) -> dict[str, tuple[float, float]]:
    """(4) publish → handler latency p50/p99 (ms) at a steady rate."""
    total = int(rate * seconds)
    return {make: await _latency_of(make, rate, total) for make in ("rx", "naive")}


async def idle_memory(count: int) -> dict[str, float]:
    """(5) bytes per idle subscription (tracemalloc)."""
    asyncio.get_running_loop()

    async def noop(*_: Any) -> None:
        return None

    out: dict[str, float] = {}
    for make in ("rx", "naive"):
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        keep: list[Any] = []
        dispatcher = _dispatcher(make)
        for i in range(count):
            keep.append(await dispatcher.subscribe(KINDS[i % len(KINDS)], noop))
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        out[make] = grown / count
        del keep
    return out


async def run_index_cost(events: int, streams: int = 1000) -> dict[str, float]:
    """µs per published event of an unrelated run: no run streams open, ``streams`` open
    RunStreams (the run index), and ``streams`` ``for_run`` filters (one per stream)."""
    from rxinvoke import RunStarted, RunStream, for_run

    runtime = AgentRuntime()
    bus = runtime.bus
    event = TextDelta(run_id="unrelated", delta="x")

    def per_event() -> float:
        start = time.perf_counter()
        for _ in range(events):
            bus.publish(event)
        return (time.perf_counter() - start) / events * 1e6

    results = {"none": min(per_event() for _ in range(3))}
    opened = []
    for i in range(streams):
        started = RunStarted(run_id=f"run-{i}", session_id=str(uuid.uuid4()), provider="p", model="m")
        stream = RunStream(runtime, f"run-{i}", uuid.uuid4(), started=started)
        opened.append(stream.subscribe(lambda e: None))
    results["indexed"] = min(per_event() for _ in range(3))
    for subscription in opened:
        subscription.dispose()
    filters = [
        runtime.events.pipe(for_run(f"run-{i}")).subscribe(lambda e: None) for i in range(streams)
    ]
    results["filtered"] = min(per_event() for _ in range(3))
    for subscription in filters:
        subscription.dispose()
    results["none"] = min(results["none"], *(per_event() for _ in range(3)))  # warm, again
    return results


async def main(quick: bool) -> None:
    n = 2_000 if quick else 100_000
    print(f"# rxinvoke dispatch benchmark ({'quick' if quick else 'full'})")
    print(f"# machine: {machine_line()}")
    rx1, naive1 = await throughput_one(n)
    print(f"1. one async handler, text_delta: rxinvoke {rx1:,.0f} ev/s · naive {naive1:,.0f} ev/s · ratio {rx1 / naive1:.2f}x (target >= 2x)")
    rx2, naive2 = await throughput_fanout(n // 2 if quick else 50_000)
    print(f"2. 100 subscriptions over all kinds: rxinvoke {rx2:,.0f} deliveries/s · naive {naive2:,.0f} · ratio {rx2 / naive2:.2f}x (target >= 10x)")
    cost = await publisher_cost(n // 2 if quick else 50_000)
    print(
        f"3. publisher cost per event: rxinvoke {cost['rx_none']:.2f} µs (no subs) → {cost['rx_100']:.2f} µs "
        f"(100 non-matching) = {cost['rx_100'] / cost['rx_none']:.2f}x (target <= 1.3x) · naive "
        f"{cost['naive_none']:.2f} → {cost['naive_100']:.2f} µs = {cost['naive_100'] / cost['naive_none']:.1f}x"
    )
    lat = await latency(2000, 0.25 if quick else 3.0)
    print(
        f"4. latency at 2000 ev/s: rxinvoke p50 {lat['rx'][0]:.3f} ms p99 {lat['rx'][1]:.3f} ms "
        f"(target p99 <= 1 ms) · naive p50 {lat['naive'][0]:.3f} ms p99 {lat['naive'][1]:.3f} ms"
    )
    mem = await idle_memory(500 if quick else 10_000)
    print(
        f"5. memory per idle subscription: rxinvoke {mem['rx'] / 1024:.2f} KB (target <= 2 KB) · "
        f"naive {mem['naive'] / 1024:.2f} KB"
    )
    idx = await run_index_cost(2_000 if quick else 50_000)
    print(
        f"6. publishing an unrelated run's event: {idx['none']:.2f} µs with no run streams · "
        f"{idx['indexed']:.2f} µs with 1000 open RunStreams = {idx['indexed'] / idx['none']:.2f}x "
        f"(target <= 1.3x) · {idx['filtered']:.2f} µs with 1000 for_run filters instead"
    )




if __name__ == "__main__":
    cli(main, __doc__)
