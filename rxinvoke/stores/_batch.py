"""WriteBatcher: writes submitted concurrently run together, in one transaction (group commit).

A store whose writes cost round trips (a server) hands each write to the batcher
(:meth:`WriteBatcher.submit`) and awaits it. One drain task takes every write waiting at that
moment and runs them with the store's ``run_batch`` (one transaction for all: the round trips of
a transaction, not of each write); writes submitted meanwhile wait for the next batch. Under no
load a batch is one write, exactly as a write on its own. Batches run in submission order, one
at a time; a call that must see the writes submitted before it (a read) awaits
:meth:`WriteBatcher.written` first, so the store's calls take effect in call order.

A batch refused because of one of its writes (``run_batch`` raises :class:`BatchRefused`: a run
already finished, a seq that does not follow) is run again write by write, each in its own
transaction, so that only the refused write fails and the others are written. Any other error
(the server unreachable) fails every write of the batch with it, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from .._futures import retrieve
from ._worker import Outcome

__all__ = ("BatchRefused", "WriteBatcher")

_W = TypeVar("_W")


class BatchRefused(Exception):
    """Raised by ``run_batch`` (of two or more writes) when one write's own check refused it."""


class WriteBatcher(Generic[_W]):
    """Runs the writes waiting at once with ``run_batch`` (see the module docstring)."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[_W]], Awaitable[Sequence[Outcome] | None]],
        *,
        max_batch: int = 500,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: list[tuple[_W, asyncio.Future[Any]]] = []
        self._writing: list[tuple[_W, asyncio.Future[Any]]] = []
        self._drain: asyncio.Task[None] | None = None

    async def submit(self, write: _W) -> Any:
        """Write ``write`` with the others waiting; returns once its transaction committed,
        with the write's value (``run_batch`` returns one ``(True, value)`` or
        ``(False, exception)`` per write — a write refused on its own wrote nothing — or None:
        every write done, value None)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(retrieve)  # its caller may have been cancelled meanwhile
        self._pending.append((write, future))
        if self._drain is None:
            self._drain = loop.create_task(self._drain_loop())
        return await asyncio.shield(future)  # a cancelled caller's write still completes

    async def written(self) -> None:
        """Wait until every write submitted so far is written (or failed): what a call that
        must see them (a read) awaits first. Batches run in submission order, so that is the
        last write submitted."""
        last = self._pending[-1][1] if self._pending else self._writing[-1][1] if self._writing else None
        if last is not None and not last.done():
            await asyncio.wait((last,))

    async def idle(self) -> None:
        """Wait until no write is waiting or being written."""
        while self._drain is not None:
            await asyncio.shield(self._drain)

    async def _drain_loop(self) -> None:
        try:
            while self._pending:
                batch = self._writing = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._write(batch)
        finally:
            self._writing = []
            self._drain = None

    async def _write(self, batch: list[tuple[_W, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._run_batch([write for write, _ in batch])
        except BatchRefused as refused:
            if len(batch) == 1:  # not run_batch's contract, but never a loop
                batch[0][1].set_exception(refused.__cause__ or refused)
                return
            for write, future in batch:  # one by one: the refused write fails alone
                await self._write([(write, future)])
            return
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for i, (_, future) in enumerate(batch):
            if future.done():
                continue
            ok, value = outcomes[i] if outcomes is not None else (True, None)
            if ok or not isinstance(value, BaseException):
                future.set_result(value)
            else:
                future.set_exception(value)
