"""WriteBatcher (stores/_batch.py): concurrent writes in one batch, a refused batch written one
by one, any other error failing the whole batch, reads after the writes before them. The
PostgreSQL side (one transaction for many runs' writes) is in tests/test_store_postgres.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from rxinvoke.stores._batch import BatchRefused, WriteBatcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.written: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def run(self, writes: Sequence[str]) -> None:
        self.batches.append(list(writes))
        await self.gate.wait()
        if "bad" in writes:
            if len(writes) > 1:
                raise BatchRefused
            raise ValueError("bad write")
        if "down" in writes:
            raise ConnectionError("the server went away")
        self.written.extend(writes)


async def behind(head: str, *writes: str) -> tuple[Recorder, asyncio.Future[None], list[asyncio.Future[None]]]:
    """A batcher whose write ``head`` is being written while ``writes`` queue behind it; then
    it goes on."""
    rec = Recorder()
    batcher: WriteBatcher[str] = WriteBatcher(rec.run)
    rec.gate.clear()
    first = asyncio.ensure_future(batcher.submit(head))
    await asyncio.sleep(0)  # its batch has begun
    rest = [asyncio.ensure_future(batcher.submit(w)) for w in writes]
    await asyncio.sleep(0)
    rec.gate.set()
    return rec, first, rest


async def test_writes_waiting_at_once_go_in_one_batch_in_submission_order() -> None:
    rec, first, rest = await behind("a", "b", "c", "d")
    await asyncio.gather(first, *rest)
    assert rec.batches == [["a"], ["b", "c", "d"]] and rec.written == ["a", "b", "c", "d"]


async def test_a_refused_batch_is_written_one_by_one_and_only_the_refused_write_fails() -> None:
    rec, head, (a, bad, c) = await behind("x", "a", "bad", "c")
    await head
    await asyncio.wait((a, bad, c))
    assert a.result() is None and c.result() is None
    with pytest.raises(ValueError, match="bad write"):
        bad.result()
    assert rec.batches[1:] == [["a", "bad", "c"], ["a"], ["bad"], ["c"]] and rec.written == ["x", "a", "c"]


async def test_any_other_error_fails_every_write_of_the_batch_at_once() -> None:
    rec, head, writes = await behind("x", "a", "down", "c")
    await head
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and len(rec.batches) == 2


async def test_written_waits_for_the_writes_submitted_before_it_and_a_cancelled_caller_still_writes() -> None:
    rec = Recorder()
    batcher: WriteBatcher[str] = WriteBatcher(rec.run)
    await batcher.written()  # nothing waiting: at once
    rec.gate.clear()
    caller = asyncio.ensure_future(batcher.submit("a"))
    await asyncio.sleep(0)
    caller.cancel()
    later = asyncio.ensure_future(batcher.submit("b"))
    read = asyncio.ensure_future(batcher.written())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not read.done()  # behind "a" and "b" (the batch of "a" is held)
    rec.gate.set()
    await read
    assert rec.written == ["a", "b"] and later.done() and caller.cancelled()
    await batcher.idle()
