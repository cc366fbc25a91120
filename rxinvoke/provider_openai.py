"""Deprecated alias of :mod:`rxinvoke.providers.openai` (kept for one release).

Use ``rxinvoke.OpenAIProvider`` or ``from rxinvoke.providers.openai import OpenAIProvider``.
"""

from __future__ import annotations

import warnings

from .providers.openai import DEFAULT_BASE_URL as DEFAULT_BASE_URL
from .providers.openai import OpenAIProvider as OpenAIProvider

__all__ = ("DEFAULT_BASE_URL", "OpenAIProvider")

warnings.warn(
    "rxinvoke.provider_openai is deprecated: use rxinvoke.OpenAIProvider "
    "(or rxinvoke.providers.openai.OpenAIProvider)",
    DeprecationWarning,
    stacklevel=2,
)
