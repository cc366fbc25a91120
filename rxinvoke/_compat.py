"""Python-version shims; the only module with version checks."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ("DeadlineExceeded", "cancel_requested", "uncancel", "wait_with_timeout")

_T = TypeVar("_T")


def uncancel(task: asyncio.Task[Any]) -> None:
    """Undo one ``task.cancel()`` that was handled (3.11+ counts them; 3.10 does not)."""
    if sys.version_info >= (3, 11):
        task.uncancel()


def cancel_requested(task: asyncio.Task[Any]) -> bool:
    """True while a ``task.cancel()`` is pending or being handled (3.11+ counts them).

    3.10 cannot tell: False there, so a caller that cannot tell its own cancellation from
    another's treats it as the other's (documented where it matters).
    """
    if sys.version_info >= (3, 11):
        return task.cancelling() > 0
    return False


class DeadlineExceeded(asyncio.TimeoutError):
    """:func:`wait_with_timeout`'s own deadline passed (never the awaitable's TimeoutError)."""


if sys.version_info >= (3, 11):

    async def wait_with_timeout(awaitable: Awaitable[_T], timeout: float) -> _T:
        """Await within ``timeout`` seconds (DeadlineExceeded), without a task per call.

        A TimeoutError the awaitable raises itself propagates as it is.
        """
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                return await awaitable
        except TimeoutError:
            if scope.expired():
                raise DeadlineExceeded from None
            raise

else:  # pragma: no cover - 3.10

    async def wait_with_timeout(awaitable: Awaitable[_T], timeout: float) -> _T:
        """Await within ``timeout`` seconds (DeadlineExceeded).

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
            raise DeadlineExceeded
        return task.result()
