"""OpenTelemetry export overhead (issue 15): sequential W1 runs (every event consumed by a
subscriber) with and without
``rxinvoke.otel.instrument`` attached (the SDK's in-memory exporter behind a batch span
processor, an in-memory metric reader), interleaved in one process; target <= 1.3x.

Run: ``python -m benchmarks.otel`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import time

from benchmarks._common import cli, machine_line
from benchmarks.runtime import W1Provider, _build, lookup
from rxinvoke import AgentRuntime, RuntimeInvocation


async def _per_run(inv: RuntimeInvocation, runs: int) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        await inv.emit(_build)
    return (time.perf_counter() - start) / runs * 1e6


async def main(quick: bool) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.version import __version__ as sdk

    from rxinvoke.otel import instrument

    runs, rounds = (50, 2) if quick else (500, 5)
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
    for inv in (plain, traced):  # warm up
        await _per_run(inv, 20)
    without, with_ = [], []
    for _ in range(rounds):  # interleaved: drift on a shared machine hits both alike
        without.append(await _per_run(plain, runs))
        with_.append(await _per_run(traced, runs))
        exporter.clear()
    best_without, best_with = min(without), min(with_)
    tracer_provider.shutdown()
    print("# rxinvoke OpenTelemetry export benchmark" + (" (quick)" if quick else ""))
    print(f"# machine: {machine_line(**{'opentelemetry-sdk': sdk})}")
    print(
        f"1. W1 sequential: {best_without:.0f} us/run without, {best_with:.0f} us/run with the "
        f"exporter (best of {rounds} x {runs}) · ratio {best_with / best_without:.2f}x (target <= 1.3x)"
    )


if __name__ == "__main__":
    cli(main, __doc__)
