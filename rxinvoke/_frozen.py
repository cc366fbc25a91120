"""The one base of rxinvoke's frozen value models."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ("Frozen",)


class Frozen(BaseModel):
    """An immutable pydantic model that refuses unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")
