"""Scale-out benchmark: the Redis mirror, cross-process latency, the run queue on 4 workers.

Starts a private redis-server and PostgreSQL on 127.0.0.1 (tests/tests_support_servers.py;
Debian's packages) unless ``RXINVOKE_BENCH_REDIS`` and ``RXINVOKE_BENCH_POSTGRES`` name servers.

1. mirror throughput: envelopes of 200 runs (50-fragment bursts, as a streamed answer
   publishes them) through an ``EventMirror`` into Redis, events/s until all are written
   (target >= 50 000/s per process);
2. latency: one process publishes 2 000 events/s through a mirror, another observes the run
   with ``observe_run``: publish -> observer delay, p50 / p99 (target p99 <= 10 ms);
3. the queue: 1 000 W1 runs (10 ms model latency) submitted to 4 worker processes
   (PostgresStore) against 1 000 concurrent W1 runs in one process (MemoryStore), wall times
   (target ratio <= 1.5); and against one process on a PostgresStore as the workers' (like
   for like: the queue's cost without the durable store's);
4. the publish path: sequential W1 runs with the mirror attached against without, per run:
   two runtimes side by side in 20 alternating rounds of 150 runs, the median of the paired
   ratios (``benchmarks._common.paired``; target ratio <= 1.10); and a third runtime whose
   mirror writes to a transport that does nothing (the mirror's cost before the write).

    python -m benchmarks.scale_out            # full run
    python -m benchmarks.scale_out --quick    # smoke run with tiny counts (CI)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from benchmarks._common import cli, machine_line, paired
from benchmarks.runtime import W1Provider, lookup
from rxinvoke import AgentRuntime, EmitRequest, MemoryStore, PostgresStore, RuntimeInvocation
from rxinvoke.events import TextDelta
from rxinvoke.stores import EventEnvelope
from rxinvoke.transports.mirror import EventMirror
from rxinvoke.transports.redis import RedisTransport
from rxinvoke.transports.remote import RemoteRuns
from rxinvoke.transports.worker import Worker

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def servers() -> Iterator[tuple[str, str]]:
    redis_url = os.environ.get("RXINVOKE_BENCH_REDIS")
    dsn = os.environ.get("RXINVOKE_BENCH_POSTGRES")
    if redis_url and dsn:
        yield redis_url, dsn
        return
    sys.path.insert(0, str(ROOT / "tests"))
    import tempfile

    from tests_support_servers import postgres_server, redis_server  # type: ignore[import-not-found]

    with tempfile.TemporaryDirectory() as tmp, redis_server(Path(tmp)) as redis, postgres_server() as pg:
        yield redis.url, pg.dsn


def w1_request() -> EmitRequest:
    return EmitRequest(provider="w1", model="w1", input="look abc up")


# --- 1. mirror throughput -------------------------------------------------------------------


async def mirror_throughput(url: str, runs: int, fragments: int) -> float:
    transport = RedisTransport(url, prefix=f"b{uuid.uuid4().hex[:6]}:")
    runtime = AgentRuntime()
    mirror = EventMirror(transport)
    mirror.attach(runtime)
    session = str(uuid.uuid4())
    bursts = [
        [(f"r{r}", session, seq, TextDelta(run_id=f"r{r}", delta="word ")) for seq in range(b * 50 + 1, b * 50 + 51)]
        for b in range(fragments // 50)
        for r in range(runs)
    ]
    total = sum(len(b) for b in bursts)
    started = time.perf_counter()
    for burst in bursts:
        for entry in burst:
            mirror.add(entry)  # what runtime.log.tap hands the mirror
        await asyncio.sleep(0)  # the publisher's loop turns between bursts
    await mirror.flush()
    elapsed = time.perf_counter() - started
    assert mirror.stats.mirrored == total and mirror.stats.dropped == 0
    await transport.close()
    return total / elapsed


# --- 2. latency across processes --------------------------------------------------------------


async def observe(url: str, prefix: str, run_id: str, count: int) -> None:
    """The observer process: print the publish -> receive delays (ms) as JSON."""
    transport = RedisTransport(url, prefix=prefix, block=0.05)
    delays: list[float] = []
    done = asyncio.get_running_loop().create_future()

    def seen(envelope: EventEnvelope) -> None:
        delays.append((time.time() - envelope.event.timestamp.timestamp()) * 1000)
        if len(delays) == count and not done.done():
            done.set_result(None)

    print("ready", flush=True)
    RemoteRuns(transport).observe_run(run_id).subscribe(on_next=seen, on_error=done.set_exception)
    await done
    print(json.dumps([round(d, 3) for d in delays]), flush=True)
    await transport.close()


async def latency(url: str, rate: int, seconds: float) -> tuple[float, float, float]:
    prefix = f"l{uuid.uuid4().hex[:6]}:"
    transport = RedisTransport(url, prefix=prefix)
    runtime = AgentRuntime()
    mirror = EventMirror(transport)
    mirror.attach(runtime)
    run_id, session = str(uuid.uuid4()), str(uuid.uuid4())
    await transport.announce(run_id)
    per_tick, tick = rate // 100, 0.01
    count = int(rate * seconds)
    observer = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.scale_out", "--observe", url, prefix, run_id, str(count),
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )
    assert observer.stdout is not None
    assert (await observer.stdout.readline()).strip() == b"ready"
    await asyncio.sleep(0.3)  # its first read is waiting
    seq = 0
    start = time.perf_counter()
    while seq < count:
        for _ in range(per_tick):
            seq += 1
            mirror.add((run_id, session, seq, TextDelta(run_id=run_id, delta="w ")))
        next_tick = start + (seq // per_tick) * tick
        await asyncio.sleep(max(next_tick - time.perf_counter(), 0))
    await mirror.flush()
    delays = json.loads(await asyncio.wait_for(observer.stdout.read(), 60))  # until it exits
    await observer.wait()
    await transport.close()
    delays.sort()
    return statistics.median(delays), delays[int(len(delays) * 0.99) - 1], delays[-1]


# --- 3. the queue on 4 workers ----------------------------------------------------------------


async def serve(url: str, prefix: str, dsn: str, schema: str, concurrency: int) -> None:
    """A worker process: W1 runs with 10 ms model latency on a PostgresStore."""
    store = PostgresStore(dsn, schema=schema, max_size=10)
    transport = RedisTransport(url, prefix=prefix)
    runtime = AgentRuntime(providers=[W1Provider(latency=0.01)], tools=[lookup], store=store)
    worker = Worker(runtime, transport, concurrency=concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await store.open()
    print("ready", flush=True)
    await worker.serve(stop)
    await store.close()
    await transport.close()


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy() -> tuple[float, float]:
    """(seconds the machine's cpus were busy, seconds they existed) since boot, from
    ``/proc/stat`` (every process: the workers, the servers, this one); (0, 0) elsewhere."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(field) for field in stat.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])  # user … steal (guest time is counted in user already)
    return (total - idle) / _TICK, total / _TICK


def process_cpu(pid: int) -> float:
    """User + system cpu seconds of the live process ``pid`` (0 if it cannot be read)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


class Cpu:
    """Where the cpu time of a timed region went: the machine (busy, of what its cpus had),
    the busiest of ``pids`` and this process."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.busy = self.capacity = self.busiest = self.here = 0.0

    def __enter__(self) -> Cpu:
        self._machine = machine_busy()
        self._each = [process_cpu(pid) for pid in self.pids]
        self._here = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        busy, capacity = machine_busy()
        self.busy, self.capacity = busy - self._machine[0], capacity - self._machine[1]
        each = [process_cpu(pid) - before for pid, before in zip(self.pids, self._each, strict=True)]
        self.busiest = max(each, default=0.0)
        self.here = time.process_time() - self._here


async def queue(url: str, dsn: str, runs: int, workers: int) -> tuple[float, Cpu]:
    prefix, schema = f"q{uuid.uuid4().hex[:6]}:", f"b_{uuid.uuid4().hex[:8]}"
    async with PostgresStore(dsn, schema=schema):
        pass  # migrate once, before the workers open it
    processes = []
    for _ in range(workers):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.scale_out", "--serve", url, prefix, dsn, schema,
            str(-(-runs // workers)),
            stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        )
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 60)).strip() == b"ready"
        processes.append(process)
    transport = RedisTransport(url, prefix=prefix, max_connections=100)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    try:
        with Cpu([process.pid for process in processes]) as cpu:
            started = time.perf_counter()
            streams = [inv.submit(w1_request()) for _ in range(runs)]
            outs = await asyncio.gather(*(s.result for s in streams))
            elapsed = time.perf_counter() - started
        assert all(o.output_text.startswith("word0 ") for o in outs)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await process.wait()
        await transport.close()
    return elapsed, cpu


async def in_process(runs: int, dsn: str | None = None) -> tuple[float, float]:
    """(wall seconds, this process's cpu seconds) of ``runs`` concurrent W1 runs, on a
    MemoryStore — or, with ``dsn``, on a PostgresStore as the workers use (a schema of its
    own, migrated and warmed up by one run first)."""
    if dsn is None:
        return await _concurrently(MemoryStore(), runs)
    async with PostgresStore(dsn, schema=f"l_{uuid.uuid4().hex[:8]}", max_size=10) as store:
        return await _concurrently(store, runs, warm=True)


async def _concurrently(store: MemoryStore | PostgresStore, runs: int, warm: bool = False) -> tuple[float, float]:
    runtime = AgentRuntime(providers=[W1Provider(latency=0.01)], tools=[lookup], store=store)
    inv = RuntimeInvocation(runtime)
    if warm:
        await inv.emit(w1_request())
    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(inv.emit(w1_request()) for _ in range(runs)))
    return time.perf_counter() - started, time.process_time() - cpu


# --- 4. the publish path with the mirror attached ----------------------------------------------


class _Discard:
    """A transport whose writes do nothing: what the mirror costs a run before the write."""

    async def append(self, segments: object) -> None:
        return None


async def publish_path(url: str, runs: int, rounds: int) -> tuple[float, float, float, float]:
    """(µs per run without the mirror, with it, the median of the paired ratios, that ratio
    with a transport that writes nothing): runtimes side by side, measured in alternating
    blocks of ``runs`` runs (``paired``)."""
    transport = RedisTransport(url, prefix=f"p{uuid.uuid4().hex[:6]}:")

    async def variant(mirrored: bool, to: object = transport) -> Callable[[int], Awaitable[None]]:
        runtime = AgentRuntime(providers=[W1Provider()], tools=[lookup])
        mirror = EventMirror(to)  # type: ignore[arg-type]
        if mirrored:
            mirror.attach(runtime)
        inv = RuntimeInvocation(runtime)
        runtime.bus.observe("any").subscribe(lambda e: None)

        async def block(count: int) -> None:
            for _ in range(count):
                await inv.emit(w1_request())
            await mirror.flush()  # the block's envelopes are written inside its time

        await block(20)  # warm up
        return block

    measured = await paired(
        {
            "plain": await variant(False),
            "mirrored": await variant(True),
            "discarded": await variant(True, _Discard()),
        },
        runs,
        rounds,
    )
    await transport.close()
    return measured["plain"][0], measured["mirrored"][0], measured["mirrored"][1], measured["discarded"][1]


async def main(quick: bool) -> None:
    import psycopg
    import redis

    print(machine_line(redis=redis.__version__, psycopg=psycopg.__version__))
    with servers() as (url, dsn):
        rate = await mirror_throughput(url, 20 if quick else 200, 100 if quick else 500)
        print(f"1. mirror throughput: {rate:,.0f} events/s per process (target >= 50,000)")
        p50, p99, worst = await latency(url, 2000, 0.5 if quick else 5.0)
        print(
            f"2. publish -> observer in another process at 2,000 events/s: p50 {p50:.2f} ms, "
            f"p99 {p99:.2f} ms, max {worst:.2f} ms (target p99 <= 10 ms)"
        )
        runs = 40 if quick else 1000
        local, local_cpu = await in_process(runs)
        durable, _ = await in_process(runs, dsn)
        remote, cpu = await queue(url, dsn, runs, 4)
        print(
            f"3. {runs} W1 runs, 10 ms model latency: 4 workers via the queue {remote:.2f} s, "
            f"one process {local:.2f} s: {remote / local:.2f}x (target <= 1.5x)"
        )
        print(
            f"   like for like, one process on a PostgresStore as the workers': {durable:.2f} s, "
            f"the queue {remote / durable:.2f}x of it (what the queue and the workers cost, "
            f"durability aside)"
        )
        if cpu.capacity:
            print(
                f"   cpu while queued: the machine busy {cpu.busy:.2f} of {cpu.capacity:.2f} "
                f"cpu-s ({cpu.busy / cpu.capacity:.0%}; {os.cpu_count()} cpus), the busiest "
                f"worker {cpu.busiest:.2f} s, the submitter {cpu.here:.2f} s; one process "
                f"{local_cpu:.2f} cpu-s (the wall time on enough cpus is at least the "
                f"busiest process's: {max(cpu.busiest, cpu.here) / local:.2f}x)"
            )
        block, rounds = (20, 2) if quick else (150, 20)
        plain, mirrored, ratio, discarded = await publish_path(url, block, rounds)
        print(
            f"4. sequential W1 per run (medians of {rounds} paired rounds): {plain:.0f} µs, "
            f"with the Redis mirror {mirrored:.0f} µs: {ratio:.2f}x (target <= 1.10x)"
        )
        print(
            f"   with a transport that writes nothing: {discarded:.2f}x (the buffer and the "
            f"encoding, on the run's loop); the Redis write the rest"
        )


def _entry() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--observe"]:
        url, prefix, run_id, count = args[1:5]
        asyncio.run(observe(url, prefix, run_id, int(count)))
    elif args[:1] == ["--serve"]:
        url, prefix, dsn, schema, concurrency = args[1:6]
        asyncio.run(serve(url, prefix, dsn, schema, int(concurrency)))
    else:
        cli(main, __doc__)


if __name__ == "__main__":
    _entry()
