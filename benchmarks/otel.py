"""OpenTelemetry export overhead (issue 15): sequential W1 runs (every event consumed by a
subscriber) with and without
``rxinvoke.otel.instrument`` attached (the SDK's in-memory exporter behind a batch span
processor, an in-memory metric reader): two runtimes side by side in one process, measured in
alternating rounds (``benchmarks._common.paired``: the median of the per-round ratios);
target <= 1.3x.

Run: ``python -m benchmarks.otel`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from benchmarks._common import cli, machine_line, paired
from benchmarks.runtime import W1Provider, _build, lookup
from rxinvoke import AgentRuntime, RuntimeInvocation


def _runs(inv: RuntimeInvocation) -> Callable[[int], Awaitable[None]]:
    async def block(count: int) -> None:
        for _ in range(count):
            await inv.emit(_build)

    return block


async def main(quick: bool) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.version import __version__ as sdk

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
    variants = {"without": _runs(plain), "with": _runs(traced)}
    for block in variants.values():  # warm up
        await block(20)
    measured = await paired(variants, runs, rounds)
    exporter.clear()
    tracer_provider.shutdown()
    (without, _), (with_, ratio) = measured["without"], measured["with"]
    print("# rxinvoke OpenTelemetry export benchmark" + (" (quick)" if quick else ""))
    print(f"# machine: {machine_line(**{'opentelemetry-sdk': sdk})}")
    print(
        f"1. W1 sequential: {without:.0f} us/run without, {with_:.0f} us/run with the exporter "
        f"(medians of {rounds} paired rounds of {runs}) · ratio {ratio:.2f}x (target <= 1.3x)"
    )


if __name__ == "__main__":
    cli(main, __doc__)
