"""Python-version shims; the only module with version checks."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ("uncancel", "wait_with_timeout")

_T = TypeVar("_T")


def uncancel(task: asyncio.Task[Any]) -> None:
    """Undo one ``task.cancel()`` that was handled (3.11+ counts them; 3.10 does not)."""
    if sys.version_info >= (3, 11):
        task.uncancel()


if sys.version_info >= (3, 11):

    async def wait_with_timeout(awaitable: Awaitable[_T], timeout: float) -> _T:
        """Await within ``timeout`` seconds (TimeoutError), without a task per call."""
        async with asyncio.timeout(timeout):
            return await awaitable

else:  # pragma: no cover - 3.10

    async def wait_with_timeout(awaitable: Awaitable[_T], timeout: float) -> _T:
        """Await within ``timeout`` seconds (asyncio.TimeoutError).

        Not ``asyncio.wait_for``: it swallows a cancellation that races the awaitable's
        completion (bpo-42130), so a cancelled run could go on. Here cancelling the caller
        always cancels the awaitable and propagates.
        """
        task: asyncio.Future[_T] = asyncio.ensure_future(awaitable)
        try:
            done, _ = await asyncio.wait({task}, timeout=timeout)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            raise
        if not done:
            task.cancel()
            await asyncio.wait({task})
            raise asyncio.TimeoutError
        return task.result()
