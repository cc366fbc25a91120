"""Runtime limits and behaviour switches."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ("RuntimePolicy",)


class RuntimePolicy(BaseModel):
    """Limits the runtime enforces on every run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_iterations: int = Field(default=10, ge=1)
    """Model calls per run; the run ends with ``finish_reason=max_iterations`` after that."""
    tool_timeout: float | None = Field(default=30.0, gt=0)
    """Seconds a tool may run before it fails with a timeout (None: no limit)."""
    provider_timeout: float | None = Field(default=300.0, gt=0)
    """Seconds one model call may stream before the run fails (None: no limit)."""
    max_tool_concurrency: int = Field(default=8, ge=1)
    """Tools of one model turn executing at once."""
    continue_on_tool_failure: bool = True
    """When False, a failed tool ends the run with ``run_failed``."""
    doom_loop_threshold: int = Field(default=3, ge=2)
    """Identical tool-call turns in a row that count as a doom loop."""
    max_tool_output_chars: int = Field(default=20_000, ge=1)
    """Tool output longer than this is truncated before it reaches the model."""
