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


@pytest.mark.timeout(300)  # five processes on a CI machine that runs other envs at once
@pytest.mark.parametrize("policy", ["fail", "retry"])
async def test_four_workers_two_hundred_runs_one_killed_mid_run(
    redis_server: RedisServer, postgres_server: PostgresServer, env: dict[str, str], policy: str
) -> None:
    workers = [await start_worker(f"w{i}", env, "--on-worker-loss", policy) for i in range(4)]
    prefix = env["RXINVOKE_REDIS_PREFIX"]
    transport = RedisTransport(redis_server.url, prefix=prefix, block=0.2)
    store = PostgresStore(postgres_server.dsn)
    try:
        inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
        streams = [
            inv.submit(EmitRequest(provider="offline", model="offline", input="what is 2 + 3?"))
            for _ in range(200)
        ]
        # kill w0 once it runs runs that have begun (stored as running, owned by its process)
        mine = f":{workers[0].pid}:pg:"
        for _ in range(1000):
            running = [r for r in await store.list_runs(limit=1000) if r.status == "running" and mine in (r.owner or "")]
            if len(running) >= 3:
                break
            await asyncio.sleep(0.005)
        assert len(running) >= 3
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
            assert len(completed) == 200, failed  # the killed worker's runs went on elsewhere
            assert {o.iterations for o in completed} == {2}
        assert {o.output_text for o in completed} == {"2 + 3 = 5."}

        # a run the killed worker finished on its stream but not yet in the store (it died
        # between the two) is settled by the reaper a moment later, from what its stream showed
        for _ in range(600):
            if not any(r.status == "running" for r in await store.list_runs(limit=1000)):
                break
            await asyncio.sleep(0.05)
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
