"""The scale-out commands as a user runs them: `rxinvoke worker`, `submit`, `cancel` and
`events --follow`, as subprocesses against a real redis-server (tests/tests_support_servers.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests_support_procs import WorkerProcess, start_worker
from tests_support_servers import RedisServer

PROMPT = "what is 2 + 3?"

# every test starts processes (a worker, the commands): slow on a loaded CI machine
pytestmark = pytest.mark.timeout(300)


async def rxinvoke(env: dict[str, str], *argv: str, timeout: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
def env(redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "RXINVOKE_REDIS": redis_server.url,
        "RXINVOKE_REDIS_PREFIX": f"c{uuid.uuid4().hex[:8]}:",
        "RXINVOKE_DB": str(tmp_path / "shared.db"),
    }


@pytest.fixture
async def worker(env: dict[str, str]) -> AsyncIterator[WorkerProcess]:
    """`rxinvoke worker` on the offline model (0.2 s between fragments: runs last seconds)."""
    process = await start_worker(env, "--delay", "0.2")
    assert b"rxinvoke worker" in process.banner and b"concurrency 4" in process.banner
    yield process
    assert await process.stop(60) == 0, process.log()


async def test_submit_streams_the_answer_from_a_worker(env: dict[str, str], worker: WorkerProcess) -> None:
    code, out, err = await rxinvoke(env, "submit", PROMPT)
    assert code == 0, err
    assert '→ calculate({"expression": "2 + 3"})' in out and "2 + 3 = 5." in out
    assert "[stop · 2 iteration(s)" in out


async def test_a_detached_run_is_followed_from_redis_and_from_the_store(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    code, out, err = await rxinvoke(env, "submit", "--detach", PROMPT)
    assert code == 0, err
    run_id = out.strip()
    uuid.UUID(run_id)
    code, live, err = await rxinvoke(env, "events", run_id, "--follow", "--redis", env["RXINVOKE_REDIS"])
    assert code == 0, err
    lines = live.splitlines()
    assert lines[0].split()[:3] == ["1", lines[0].split()[1], "run_started"]
    assert "run_completed" in lines[-1]
    code, stored, err = await rxinvoke(env, "events", run_id, "--follow")  # the shared store
    assert code == 0, err
    assert [line.split()[2] for line in stored.splitlines()] == [line.split()[2] for line in lines]
    code, after, err = await rxinvoke(env, "events", run_id, "--follow", "--redis", env["RXINVOKE_REDIS"], "--after", "5")
    assert code == 0 and after.splitlines() == lines[5:]


async def test_cancel_reaches_the_worker_and_the_submitter_sees_it(
    env: dict[str, str], worker: WorkerProcess
) -> None:
    submit = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", "submit", "--json", "tell me something long", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert submit.stdout is not None
    first = await asyncio.wait_for(submit.stdout.readline(), 30)  # run_started: it runs
    run_id = json.loads(first)["run_id"]
    code, out, err = await rxinvoke(env, "cancel", run_id)
    assert (code, out.strip()) == (0, f"run {run_id}: run_cancelled"), err
    rest, err_submit = await asyncio.wait_for(submit.communicate(), 30)
    assert submit.returncode == 1 and "cancelled" in err_submit.decode()
    assert '"type":"run_cancelled"' in rest.decode().splitlines()[-1]


async def test_ctrl_c_on_submit_cancels_the_run_on_its_worker(env: dict[str, str], worker: WorkerProcess) -> None:
    submit = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", "submit", "--json", "tell me something long", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert submit.stdout is not None
    run_id = json.loads(await asyncio.wait_for(submit.stdout.readline(), 30))["run_id"]  # it runs
    submit.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(submit.communicate(), 30)
    assert submit.returncode == 130
    assert err.decode().splitlines()[-2:] == [
        f"rxinvoke: cancelling run {run_id} on its worker (rxinvoke events {run_id} --follow --redis URL shows how it ends)",
        "rxinvoke: interrupted",
    ]
    code, out, err = await rxinvoke(env, "events", run_id, "--follow", "--redis", env["RXINVOKE_REDIS"])
    assert code == 0, err
    assert out.splitlines()[-1].split()[2] == "run_cancelled"


async def test_a_worker_with_otel_exports_the_runs_it_executes(env: dict[str, str], tmp_path: Path) -> None:
    from test_cli import otel_env

    traced = {**otel_env(tmp_path), **{k: v for k, v in env.items() if k.startswith("RXINVOKE_")}}
    worker = await start_worker(traced, "--otel")
    code, out, err = await rxinvoke(env, "submit", PROMPT)  # the submitter: no OpenTelemetry
    assert code == 0, err
    assert await worker.stop(60) == 0, worker.log()
    text = await asyncio.to_thread(Path(traced["SPANS_FILE"]).read_text)
    for name in ("invoke_agent rxinvoke", "chat offline", "execute_tool calculate"):
        assert f'"name": "{name}"' in text, text[:500]


async def test_scale_out_commands_fail_in_one_line(env: dict[str, str]) -> None:
    bare = {k: v for k, v in env.items() if k != "RXINVOKE_REDIS"}
    code, _, err = await rxinvoke(bare, "submit", PROMPT)
    assert code == 1 and err == "rxinvoke: error: submit needs --redis URL (or $RXINVOKE_REDIS)\n"
    code, _, err = await rxinvoke(env, "events", "no-such-run", "--follow", "--redis", env["RXINVOKE_REDIS"])
    assert code == 1 and err == "rxinvoke: error: unknown run 'no-such-run'\n"
    dead = {**env, "RXINVOKE_REDIS": "redis://:pw-secret-1@127.0.0.1:1/0"}
    code, _, err = await rxinvoke(dead, "cancel", "r1", timeout=120)
    assert code == 1 and err.startswith("rxinvoke: error: redis:") and err.count("\n") == 1
    assert "pw-secret-1" not in err


async def test_a_second_signal_stops_a_worker_at_once_and_its_run_is_left_to_the_others(
    env: dict[str, str],
) -> None:
    first = await start_worker(env, "--delay", "0.2", "--lease-ttl", "1")
    submit = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", "submit", "--json", "tell me something long", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert submit.stdout is not None
    await asyncio.wait_for(submit.stdout.readline(), 30)  # run_started: the worker runs it
    first.send_signal(signal.SIGTERM)  # stop once it ends...
    for _ in range(300):
        if b"signal again to stop at once" in b"".join(first.lines):
            break
        await asyncio.sleep(0.05)
    assert first.returncode is None  # ...finishing the run it holds
    first.process.send_signal(signal.SIGINT)  # ...no: now
    assert await asyncio.wait_for(first.wait(), 30) == 130
    assert b"stopped at once; its 1 run(s) are left to the other workers' reapers" in b"".join(first.lines)
    second = await start_worker(env, "--lease-ttl", "1")  # its reaper settles the run (fail)
    rest, err = await asyncio.wait_for(submit.communicate(), 60)
    assert submit.returncode == 1 and "interrupted" in err.decode()
    assert '"type":"run_failed"' in rest.decode().splitlines()[-1]
    assert await second.stop(60) == 0, second.log()


async def test_submit_says_when_no_worker_has_taken_the_run_yet(env: dict[str, str]) -> None:
    submit = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", "submit", PROMPT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert submit.stderr is not None
    line = await asyncio.wait_for(submit.stderr.readline(), 30)  # no worker: it waits, and says so
    assert b"is queued; no worker has taken it yet (start one: rxinvoke worker)" in line
    worker = await start_worker(env)
    out, err = await asyncio.wait_for(submit.communicate(), 60)
    assert submit.returncode == 0 and "2 + 3 = 5." in out.decode(), err
    assert await worker.stop(60) == 0, worker.log()


async def test_cancel_of_a_queued_run_says_it_waits_for_a_worker_then_lands(env: dict[str, str]) -> None:
    code, out, err = await rxinvoke(env, "submit", "--detach", PROMPT)  # no worker yet
    assert code == 0, err
    run_id = out.strip()
    cancel = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", "cancel", run_id, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    assert cancel.stderr is not None
    line = await asyncio.wait_for(cancel.stderr.readline(), 30)
    assert f"cancel of run {run_id} requested; waiting for the worker".encode() in line
    worker = await start_worker(env)  # takes the run, finds its cancel: it never runs
    done, _ = await asyncio.wait_for(cancel.communicate(), 60)
    assert cancel.returncode == 0 and done.decode().strip() == f"run {run_id}: run_cancelled"
    assert await worker.stop(60) == 0, worker.log()


async def test_a_run_paused_on_a_worker_is_approved_from_the_command_line_and_continued_there(
    env: dict[str, str], tmp_path: Path
) -> None:
    worker = await start_worker(env, "--delay", "0", "--approve-tool", "calculate")
    code, out, err = await rxinvoke(env, "submit", "--json", PROMPT)
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    (asked,) = [e for e in events if e["type"] == "approval_requested"]
    assert events[-1]["finish_reason"] == "awaiting_approval"
    # from a machine without the workers' store: --db of its own, the workers by --redis
    elsewhere = {**env, "RXINVOKE_DB": str(tmp_path / "elsewhere.db")}
    code, out, err = await rxinvoke(elsewhere, "approve", asked["run_id"], asked["call_id"])
    assert code == 0, err
    assert "← calculate: 5" in out and "2 + 3 = 5." in out and "[stop · " in out
    code, out, err = await rxinvoke(elsewhere, "deny", asked["run_id"], asked["call_id"])
    assert code == 1 and "not awaiting approval" in err and len(err.strip().splitlines()) == 1
    # the hint a paused run prints names what deciding it needs
    code, out, err = await rxinvoke(env, "submit", PROMPT)
    assert code == 0 and "awaiting approval: calculate" in out and "--redis" not in out, err
    explicit = {k: v for k, v in env.items() if k != "RXINVOKE_REDIS"}
    code, out, err = await rxinvoke(explicit, "submit", PROMPT, "--redis", env["RXINVOKE_REDIS"])
    assert code == 0 and "--reason TEXT --redis URL)" in out, err
    (hint,) = [line for line in out.splitlines() if line.startswith("awaiting approval")]
    assert hint.split(" · ", 1)[1].startswith("rxinvoke approve ") and " --redis URL  (or:" in hint
    assert await worker.stop(60) == 0, worker.log()
    code, out, err = await rxinvoke(env, "runs", "--json")  # on the workers' store: continued
    runs = [json.loads(line) for line in out.splitlines()]
    continued = [r for r in runs if r["request"]["resumes"] == asked["run_id"]]
    assert [r["status"] for r in continued] == ["completed"], runs
