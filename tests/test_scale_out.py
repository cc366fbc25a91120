"""Scale-out end to end: `rxinvoke worker` processes on a real Redis and PostgreSQL, runs
submitted from this process, one worker killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests_support_procs import WorkerProcess
from tests_support_procs import start_worker as start
from tests_support_servers import PostgresServer, RedisServer

from rxinvoke import AgentRuntime, EmitRequest, InvocationFailed, PostgresStore, RuntimeInvocation
from rxinvoke.transports.redis import RedisTransport
from rxinvoke.transports.remote import RemoteRuns

TERMINAL = ("run_completed", "run_failed", "run_cancelled")


async def start_worker(name: str, env: dict[str, str], *extra: str) -> WorkerProcess:
    worker = await start(
        env, "--name", name, "--delay", "0.05", "--concurrency", "8", "--lease-ttl", "1", *extra
    )
    assert name.encode() in worker.banner, worker.banner  # it is serving
    return worker


@pytest.fixture
async def env(redis_server: RedisServer, postgres_server: PostgresServer) -> AsyncIterator[dict[str, str]]:
    yield {
        **os.environ,
        "RXINVOKE_REDIS_PREFIX": f"s{uuid.uuid4().hex[:8]}:",
        "PYTHONPATH": os.pathsep.join(sys.path),
        "RXINVOKE_REDIS": redis_server.url,
        "RXINVOKE_POSTGRES": postgres_server.dsn,
    }


def clients(
    redis_server: RedisServer, postgres_server: PostgresServer, env: dict[str, str]
) -> tuple[RedisTransport, PostgresStore, RuntimeInvocation]:
    """The submitter's transport, a store to look at the runs, and an invocation that submits."""
    transport = RedisTransport(redis_server.url, prefix=env["RXINVOKE_REDIS_PREFIX"], block=0.2)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    return transport, PostgresStore(postgres_server.dsn), inv


def submit_sums(inv: RuntimeInvocation, count: int) -> list[Any]:
    return [
        inv.submit(EmitRequest(provider="offline", model="offline", input="what is 2 + 3?"))
        for _ in range(count)
    ]


async def begun_by(worker: WorkerProcess, store: PostgresStore, count: int) -> str:
    """Wait until ``worker`` runs ``count`` runs that have begun (stored as running, owned by
    its process); returns what its runs' owner contains."""
    mine = f":{worker.pid}:pg:"
    for _ in range(1000):
        running = [r for r in await store.list_runs(limit=1000) if r.status == "running" and mine in (r.owner or "")]
        if len(running) >= count:
            return mine
        await asyncio.sleep(0.005)
    raise AssertionError(f"{worker!r} never ran {count} begun runs at once")


@pytest.mark.timeout(300)  # five processes on a CI machine that runs other envs at once
@pytest.mark.parametrize("policy", ["fail", "retry"])
async def test_four_workers_two_hundred_runs_one_killed_mid_run(
    redis_server: RedisServer, postgres_server: PostgresServer, env: dict[str, str], policy: str
) -> None:
    # w0 is slow (half a second per fragment: a run takes ~3.5 s), so the runs it has begun
    # when it is killed are surely mid-run: with fast runs that all end in the same moment
    # (a worker takes its runs together), they could all end between the look and the kill
    slow = ("--delay", "0.5")
    workers = [
        await start_worker(f"w{i}", env, "--on-worker-loss", policy, *(slow if i == 0 else ()))
        for i in range(4)
    ]
    prefix = env["RXINVOKE_REDIS_PREFIX"]
    transport, store, inv = clients(redis_server, postgres_server, env)
    try:
        streams = submit_sums(inv, 200)
        # kill w0 once it runs runs that have begun (stored as running, owned by its process)
        mine = await begun_by(workers[0], store, 3)
        workers[0].send_signal(signal.SIGKILL)
        await workers[0].wait()

        outcomes: list[Any] = await asyncio.wait_for(
            asyncio.gather(*(s.result for s in streams), return_exceptions=True), 120
        )
        completed = [o for o in outcomes if not isinstance(o, BaseException)]
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        assert all(isinstance(f, InvocationFailed) and "interrupted" in str(f) for f in failed), failed
        if policy == "fail":
            assert len(completed) + len(failed) == 200 and failed  # the killed worker's runs
        else:
            # the killed worker's runs went on elsewhere (the workers' logs say why one did not)
            assert len(completed) == 200, (failed, [w.log(20) for w in workers[1:]])
            assert {o.iterations for o in completed} == {2}
        assert {o.output_text for o in completed} == {"2 + 3 = 5."}

        # a run the killed worker finished on its stream but not yet in the store (it died
        # between the two) is settled by the reaper a moment later, from what its stream showed
        await _settled(store)
        resumed = []
        for stream in streams:
            log = await store.read_events(stream.run_id)
            types = [e.type for e in log]
            assert [e.seq for e in log] == list(range(1, len(log) + 1))
            assert types[0] == "run_started" and types.count("run_started") == 1  # begun once
            assert sum(t in TERMINAL for t in types) == 1 and types[-1] in TERMINAL
            assert types.count("run_resumed") <= 1
            if "run_resumed" in types:
                resumed.append(stream.run_id)
            streamed = [e.type for e in await _collect(stream)]
            assert streamed == types  # the stream saw what the store keeps
        ours = {stream.run_id for stream in streams}  # the server is shared with other tests
        records = [r for r in await store.list_runs(limit=2000) if r.run_id in ours]
        assert len(records) == 200
        interrupted = [r for r in records if r.error == "interrupted"]
        assert len(interrupted) == len(failed)
        if policy == "fail":
            # only w0's runs were interrupted; the rest of its runs it had completed before it died
            assert all(mine in (r.owner or "") for r in interrupted) and not resumed
            assert {r.status for r in records if mine in (r.owner or "")} <= {"completed", "failed"}
        else:
            # w0's unfinished runs were taken over (each once) by the workers that lived
            assert resumed and not interrupted
            assert not any(mine in (r.owner or "") for r in records if r.run_id in resumed)
        assert not any(r.status == "running" for r in records)
        assert await transport.client.xpending(f"{prefix}runs", "workers") == {
            "pending": 0, "min": None, "max": None, "consumers": []
        }
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            await worker.stop(60)
        await transport.close()
        await store.close()
    assert [w.returncode for w in workers[1:]] == [0, 0, 0], [w.log() for w in workers[1:]]


async def _settled(store: PostgresStore) -> None:
    """Wait (30 s at most) until the store records no run as running: a run's stream shows its
    end as it is published, a moment before its worker's store commits it (or, for a run
    whose end that store could not record, before the worker settles it from the stream)."""
    for _ in range(600):
        if not any(r.status == "running" for r in await store.list_runs(limit=1000)):
            return
        await asyncio.sleep(0.05)


async def _collect(stream: Any) -> list[Any]:
    items: list[Any] = []
    done = asyncio.get_running_loop().create_future()
    stream.subscribe(
        on_next=items.append,
        on_completed=lambda: done.done() or done.set_result(None),
        on_error=lambda exc: done.done() or done.set_result(None),
    )
    await done
    return items


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["fail", "retry"])
async def test_a_worker_paused_past_its_leases_goes_on_with_its_runs(
    redis_server: RedisServer, postgres_server: PostgresServer, env: dict[str, str], policy: str
) -> None:
    # w0 stopped (SIGSTOP: a frozen VM, a long GC pause) for 3.5 lease lifetimes: its leases
    # expire, w1's reaper reclaims its idle jobs and leaves them to their live owner (its
    # PostgreSQL session lives on); w0 continued takes its leases again and ends its runs
    workers = [
        await start_worker("w0", env, "--on-worker-loss", policy, "--delay", "0.3"),
        await start_worker("w1", env, "--on-worker-loss", policy),
    ]
    transport, store, inv = clients(redis_server, postgres_server, env)
    try:
        streams = submit_sums(inv, 40)
        mine = await begun_by(workers[0], store, 3)
        workers[0].send_signal(signal.SIGSTOP)
        await asyncio.sleep(3.5)
        workers[0].send_signal(signal.SIGCONT)
        outcomes = await asyncio.wait_for(asyncio.gather(*(s.result for s in streams)), 120)
        assert {o.output_text for o in outcomes} == {"2 + 3 = 5."}  # none cancelled or failed
        await _settled(store)
        records = {r.run_id: r for r in await store.list_runs(limit=2000)}
        paused = [s.run_id for s in streams if mine in (records[s.run_id].owner or "")]
        assert len(paused) >= 3  # w0's runs stayed w0's
        for stream in streams:
            types = [e.type for e in await store.read_events(stream.run_id)]
            assert types.count("run_started") == 1 and "run_resumed" not in types
            assert sum(t in TERMINAL for t in types) == 1 and types[-1] == "run_completed"
            assert [e.type for e in await _collect(stream)] == types
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            await worker.stop(60)
        await transport.close()
        await store.close()
    assert "taken again, the run goes on" in workers[0].log(1000), workers[0].log()
    assert [w.returncode for w in workers] == [0, 0], [w.log() for w in workers]
