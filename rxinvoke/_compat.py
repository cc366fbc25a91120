"""Python-version shims; the only module with version checks."""

from __future__ import annotations

import asyncio
import sys
from typing import Any, TypeVar

__all__ = ("DeadlineExceeded", "cancel_requested", "uncancel")

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
    """A deadline of rxinvoke's own passed (never a TimeoutError the awaited code raised)."""
