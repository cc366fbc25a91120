"""`rxinvoke worker` processes for the scale-out tests: started with their banner awaited,
their stderr read all along (a pipe nobody drains fills up at 64 KiB and blocks the worker on
its next log line — a worker that warns a lot under load would hang), stopped with SIGTERM.
A worker that does not stop in time is killed and the test fails with the tail of its log."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field

import pytest


@dataclass
class WorkerProcess:
    process: asyncio.subprocess.Process
    banner: bytes
    lines: list[bytes] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None
    terminated: bool = False
    """SIGTERM was sent (once: a second one may land after the worker's loop removed its
    handler, and kill it)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log(self, last: int = 60) -> str:
        return b"".join(self.lines[-last:]).decode(errors="replace")

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line)

    async def wait(self) -> int:
        code = await self.process.wait()
        if self.reader is not None:
            await self.reader
        return code

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGTERM:
            if self.terminated:
                return
            self.terminated = True
        self.process.send_signal(sig)

    async def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then its exit status; a worker still running after ``timeout`` seconds is
        killed and the test fails with its log."""
        if self.process.returncode is None:
            self.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.wait(), timeout)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.wait()
            pytest.fail(
                f"worker {self.pid} did not stop within {timeout:g} s of SIGTERM; its log:\n{self.log()}"
            )


async def start_worker(env: dict[str, str], *args: str) -> WorkerProcess:
    """``python -m rxinvoke worker *args``, once its banner says it is serving."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", "worker", *args,
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    banner = await asyncio.wait_for(process.stderr.readline(), 30)
    worker = WorkerProcess(process, banner, [banner])
    worker.reader = asyncio.ensure_future(worker._read())
    return worker
