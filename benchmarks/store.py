"""Store benchmark: the W1 run on SqliteStore against MemoryStore, and raw event-log appends.

W1 is one agent run with one tool call and a 50-delta streamed answer (ScriptedProvider, a
cheap inline tool, no model latency): what the store adds per run is the whole difference.
Both stores run in the same process, alternating rounds; the ratio (SqliteStore runs/s /
MemoryStore runs/s, target >= 0.5) is what to read. The append figure is
``SqliteStore.append_events`` in batches of 1000 envelopes (WAL, ``synchronous=NORMAL``),
JSON encoding and the worker-thread hand-off included (target >= 50 000 events/s); the
event log is stored in segments, so a batch of one run is one row of 1000 events.

Line 3 is the memory a long-lived process keeps: the default runtime (MemoryStore with its
default bounds: 1000 finished runs, 1000 sessions) serves N offline runs, each in a new
session; the bytes (tracemalloc) and GC-tracked objects still alive afterwards, per run.

    python -m benchmarks.store            # full run
    python -m benchmarks.store --quick    # smoke run with tiny counts (CI)
"""

from __future__ import annotations

import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import NamedTuple

from benchmarks._common import cli, machine_line
from rxinvoke import (
    AgentRuntime,
    ChatRequest,
    EmitRequest,
    MemoryStore,
    RunRecord,
    RunRequest,
    RuntimeInvocation,
    ScriptedProvider,
    SqliteStore,
    Store,
    TextDelta,
    tool,
)
from rxinvoke.messages import utcnow
from rxinvoke.providers.scripted import TurnItem
from rxinvoke.stores import EventEnvelope

ANSWER = " ".join(f"word{i}" for i in range(50))


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return key.upper()


def w1_turn(request: ChatRequest) -> list[TurnItem]:
    if request.messages[-1].role == "tool":
        return ScriptedProvider.text_turn(ANSWER, pieces=50)
    return ScriptedProvider.tool_call_turn("lookup", {"key": "abc"}, pieces=3)


async def runs_per_second(store: Store, runs: int) -> float:
    runtime = AgentRuntime(providers=[ScriptedProvider(w1_turn)], tools=[lookup], store=store)
    inv = RuntimeInvocation(runtime)
    seen = [0]
    inv.observe().subscribe(lambda e: seen.__setitem__(0, seen[0] + 1))  # a consumer of every event

    def build(ctx: object, control: object) -> EmitRequest:
        return EmitRequest(provider="scripted", model="scripted", input="look abc up")

    await inv.emit(build)  # warm-up
    start = time.perf_counter()
    for _ in range(runs):
        await inv.emit(build)
    return runs / (time.perf_counter() - start)


async def w1(directory: Path, runs: int, rounds: int) -> tuple[float, float]:
    memory_rates, sqlite_rates = [], []
    for n in range(rounds):
        memory_rates.append(await runs_per_second(MemoryStore(), runs))
        async with SqliteStore(directory / f"w1-{n}.db") as store:
            sqlite_rates.append(await runs_per_second(store, runs))
    return statistics.median(memory_rates), statistics.median(sqlite_rates)


async def append_throughput(directory: Path, events: int, batch: int) -> float:
    async with SqliteStore(directory / "append.db") as store:
        session = uuid.uuid4()
        run_id = str(uuid.uuid4())
        request = RunRequest(provider="p", model="m", input="x", run_id=run_id, session_id=session)
        await store.begin_run(RunRecord(run_id=run_id, session_id=session, request=request), [])
        now = utcnow()
        envelopes = [  # as the EventLog numbers them
            EventEnvelope.of(TextDelta(run_id=run_id, delta=f"word{seq} ", timestamp=now), run_id, session, seq)
            for seq in range(1, events + 1)
        ]
        start = time.perf_counter()
        for i in range(0, events, batch):
            await store.append_events(envelopes[i : i + batch])
        return events / (time.perf_counter() - start)


class Retained(NamedTuple):
    bytes_per_kept_run: float
    """tracemalloc bytes still allocated, per run the store keeps (the last 1000)."""
    tracked_bytes_per_kept_run: float
    """sys.getsizeof of the GC-tracked objects still alive, per kept run."""
    tracked_objects_per_kept_run: float
    total_mb: float


async def retained(runs: int) -> Retained:
    """What ``runs`` runs in new sessions leave alive (default MemoryStore bounds)."""
    from rxinvoke import OfflineProvider, builtin_tools

    runtime = AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools())
    inv = RuntimeInvocation(runtime)
    request = EmitRequest(provider="offline", model="offline", input="what is 2 + 3?")

    def build(ctx: object, control: object) -> EmitRequest:
        return request

    for _ in range(20):  # warm caches (pydantic, reactivex) before measuring
        await inv.emit(build)
    gc.collect()
    tracemalloc.start()
    bytes_before = tracemalloc.get_traced_memory()[0]
    before = {id(o) for o in gc.get_objects()}
    for _ in range(runs):
        await inv.emit(build)  # no session id: a new session each run
    gc.collect()
    gc.collect()  # a tuple of plain values is untracked by a collection after it was made
    bytes_after = tracemalloc.get_traced_memory()[0]
    new = [o for o in gc.get_objects() if id(o) not in before and o is not before]
    tracked_bytes = sum(sys.getsizeof(o) for o in new)
    tracemalloc.stop()
    kept_runs = min(runs, 1000)  # MemoryStore(max_finished_runs=1000), the default
    kept = bytes_after - bytes_before
    return Retained(kept / kept_runs, tracked_bytes / kept_runs, len(new) / kept_runs, kept / 1e6)


async def main(quick: bool) -> None:
    runs, rounds = (20, 1) if quick else (300, 5)
    events = 5_000 if quick else 200_000
    print(f"# rxinvoke store benchmark ({'quick' if quick else 'full'})")
    print(f"# machine: {machine_line()}")
    with tempfile.TemporaryDirectory(prefix="rxinvoke-bench-") as tmp:
        directory = Path(tmp)
        memory, sqlite = await w1(directory, runs, rounds)
        print(
            f"1. W1 run (1 tool call, 50 text deltas): MemoryStore {memory:,.0f} runs/s "
            f"({1000 / memory:.2f} ms/run) · SqliteStore {sqlite:,.0f} runs/s "
            f"({1000 / sqlite:.2f} ms/run) · SqliteStore time {memory / sqlite:.2f}x "
            "MemoryStore's (target <= 1.3x)"
        )
        rate = await append_throughput(directory, events, 1000)
        print(
            f"2. event-log append, batches of 1000 (WAL, synchronous=NORMAL): "
            f"{rate:,.0f} events/s (target >= 50,000)"
        )
    count = 300 if quick else 10_000
    kept = await retained(count)
    print(
        f"3. retained after {count:,} runs in new sessions (default MemoryStore bounds: the "
        f"last 1000 runs and 1000 sessions): {kept.total_mb:.1f} MB in all; per kept run "
        f"{kept.bytes_per_kept_run:,.0f} bytes, of which GC-tracked "
        f"{kept.tracked_bytes_per_kept_run:,.0f} bytes in {kept.tracked_objects_per_kept_run:,.1f} "
        "objects (target <= 1 KB)"
    )


if __name__ == "__main__":
    cli(main, __doc__)
