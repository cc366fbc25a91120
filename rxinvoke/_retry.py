"""Which provider failures the runtime retries.

A model call is retried only when it failed before its stream yielded anything (the
accumulator of the attempt is still empty): a retry after published deltas would publish
them twice.
"""

from __future__ import annotations

from .errors import ProviderConnectionError, ProviderError, ProviderHTTPError

__all__ = ("is_retryable",)

RETRYABLE_STATUS = frozenset({408, 429})
"""Retryable 4xx statuses; every 5xx is retryable too."""


def is_retryable(error: ProviderError) -> bool:
    """True for HTTP 408/429/5xx and connection failures (timeouts included)."""
    if isinstance(error, ProviderHTTPError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    return isinstance(error, ProviderConnectionError)
