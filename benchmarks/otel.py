"""OpenTelemetry export overhead (issue 15): sequential W1 runs (every event consumed by a
subscriber) with and without
``rxinvoke.otel.instrument`` attached (the SDK's in-memory exporter behind a batch span
processor, an in-memory metric reader): two runtimes side by side in one process, measured in
alternating rounds (``benchmarks._common.paired``: the median of the per-round ratios);
target <= 1.3x. Line 2 splits the overhead: a third runtime with the exporter on the API's
no-op tracer and meter is rxinvoke's own share (routing, the span model, the attributes); the
rest is the SDK's. Line 3 is the SDK's floor: a finished W1 run's four spans and six histogram
points handed to the SDK alone, in a loop (no run, no rxinvoke code but the calls' arguments),
as a share of a run without the exporter.

Run: ``python -m benchmarks.otel`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._common import cli, machine_line, paired
from benchmarks.runtime import W1Provider, _build, lookup
from rxinvoke import AgentRuntime, RuntimeInvocation


def _runs(inv: RuntimeInvocation) -> Callable[[int], Awaitable[None]]:
    async def block(count: int) -> None:
        for _ in range(count):
            await inv.emit(_build)

    return block


async def sdk_floor(tracer_provider: Any, meter_provider: Any, count: int) -> tuple[float, float]:
    """(µs, µs): emitting one finished W1 run's spans and points ``count`` times through the
    exporter's last step, on the SDK's providers and on the API's no-op ones — their
    difference is what the SDK's calls cost alone."""
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.trace import NoOpTracerProvider

    from rxinvoke import otel
    from rxinvoke.spans import spans

    runtime = AgentRuntime(providers=[W1Provider()], tools=[lookup])
    events: list[Any] = []
    runtime.events.subscribe(events.append)
    await RuntimeInvocation(runtime).emit(_build)
    built = spans(events)
    run = otel._Run(built[0].run_id)
    run.session = events[0].session_id
    timed = []
    for providers in ((tracer_provider, meter_provider), (NoOpTracerProvider(), NoOpMeterProvider())):
        tracing, meter = providers
        exporter = otel._Exporter(runtime, tracing, meter, capture_content=False)
        for _ in range(count // 10):  # warm up
            exporter._emit(run, built)
        started = time.perf_counter()
        for _ in range(count):
            exporter._emit(run, built)
        timed.append((time.perf_counter() - started) / count * 1e6)
    return timed[0], timed[1]


async def main(quick: bool) -> None:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.version import __version__ as sdk
    from opentelemetry.trace import NoOpTracerProvider

    from rxinvoke.otel import instrument

    runs, rounds = (20, 2) if quick else (100, 30)
    plain = RuntimeInvocation(AgentRuntime(providers=[W1Provider()], tools=[lookup]))
    traced_runtime = AgentRuntime(providers=[W1Provider()], tools=[lookup])
    seen = [0]
    for runtime in (plain.runtime, traced_runtime):  # W1: every event consumed, in both
        runtime.events.subscribe(lambda e: seen.__setitem__(0, seen[0] + 1))
    tracer_provider = TracerProvider()
    exporter = InMemorySpanExporter()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    instrument(traced_runtime, tracer_provider, meter_provider)
    traced = RuntimeInvocation(traced_runtime)
    own_runtime = AgentRuntime(providers=[W1Provider()], tools=[lookup])
    own_runtime.events.subscribe(lambda e: seen.__setitem__(0, seen[0] + 1))
    instrument(own_runtime, NoOpTracerProvider(), NoOpMeterProvider())
    variants = {
        "without": _runs(plain), "with": _runs(traced), "no-op": _runs(RuntimeInvocation(own_runtime))
    }
    for block in variants.values():  # warm up
        await block(20)
    measured = await paired(variants, runs, rounds)
    exporter.clear()
    on_sdk, on_noop = await sdk_floor(tracer_provider, meter_provider, 200 if quick else 3000)
    exporter.clear()
    tracer_provider.shutdown()
    (without, _), (with_, ratio), (own, own_ratio) = measured["without"], measured["with"], measured["no-op"]
    print("# rxinvoke OpenTelemetry export benchmark" + (" (quick)" if quick else ""))
    print(f"# machine: {machine_line(**{'opentelemetry-sdk': sdk})}")
    print(
        f"1. W1 sequential: {without:.0f} us/run without, {with_:.0f} us/run with the exporter "
        f"(medians of {rounds} paired rounds of {runs}) · ratio {ratio:.2f}x (target <= 1.3x)"
    )
    print(
        f"2. of the overhead: rxinvoke's own (the exporter on the API's no-op tracer and meter) "
        f"{own:.0f} us/run, {own_ratio:.2f}x; the SDK's the rest, ~{with_ - own:.0f} us/run"
    )
    floor = on_sdk - on_noop
    print(
        f"3. the SDK alone, a finished W1 run's 4 spans and 6 histogram points: {floor:.0f} us "
        f"= {floor / without:.2f}x of a run without the exporter (the 1.3x target leaves "
        f"{0.3 * without:.0f} us for the SDK and rxinvoke together)"
    )


if __name__ == "__main__":
    cli(main, __doc__)
