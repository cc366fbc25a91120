"""Futures whose outcome is reported elsewhere (as an event, an ``on_error``, a result)."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ("retrieve",)


def retrieve(future: asyncio.Future[Any]) -> None:
    """A done callback that retrieves the exception, so asyncio never logs
    "exception was never retrieved" for an outcome that was reported another way."""
    if not future.cancelled():
        future.exception()
