"""Runtime limits and behaviour switches: the numbers (the rules that use them live with the
runtime parts: retries in ``_model_call``, tool limits in ``_execute``)."""

from __future__ import annotations

from collections.abc import Set
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ._frozen import Frozen

__all__ = ("ApprovalPolicy", "CompactionPolicy", "DoomLoopPolicy", "ModelLimits", "RuntimePolicy")


class ApprovalPolicy(Frozen):
    """Which tool calls wait for a person, and for how long.

    A call needs approval when its tool says so (``@tool(requires_approval=...)``) or its name
    is in ``tools``. The run then pauses (``finish_reason=awaiting_approval``) until every such
    call of the batch is approved or denied.
    """

    tools: frozenset[str] = frozenset()
    """Tool names whose every call needs approval."""
    timeout: float | None = Field(default=None, gt=0)
    """Seconds a decision may take (None: wait forever). Enforced by the runtime that paused
    the run while it lives, and by any ``approve``/``deny`` that comes later."""
    on_timeout: Literal["deny", "fail"] = "deny"
    """``"deny"``: the undecided calls are denied ("approval timed out") and the run goes on;
    ``"fail"``: the run that continues it fails with ``run_failed``."""

    if TYPE_CHECKING:  # what validation takes: any set, list or tuple of names for tools

        def __init__(
            self,
            *,
            tools: Set[str] | list[str] | tuple[str, ...] = frozenset(),
            timeout: float | None = None,
            on_timeout: Literal["deny", "fail"] = "deny",
        ) -> None: ...


class ModelLimits(Frozen):
    """A model's context window and the part of it kept for the answer (tokens)."""

    context_window: int = Field(gt=0)
    max_output_tokens: int = Field(default=4096, ge=0)
    """The output budget: the usable window for the context is ``context_window`` minus this."""

    @model_validator(mode="after")
    def _room_left(self) -> ModelLimits:
        if self.max_output_tokens >= self.context_window:
            raise ValueError(
                f"max_output_tokens ({self.max_output_tokens}) leaves no room in a "
                f"{self.context_window}-token context window"
            )
        return self

    @property
    def usable(self) -> int:
        """Tokens the context may take."""
        return self.context_window - self.max_output_tokens


class CompactionPolicy(Frozen):
    """When a session's context is compacted, by which model, and when it stops trying.

    Tokens are estimated (about 4 characters per token plus 4 per message and per tool call)
    unless the provider counts them (``count_tokens``). The model's limits come from
    ``limits_by_model[model]``, else the provider (``model_limits(model)``), else ``limits``; with
    none known, only reactive compaction (the provider said the context is too long) happens.
    """

    enabled: bool = True
    limits: ModelLimits | None = None
    """Limits of every model nothing more specific names."""
    limits_by_model: dict[str, ModelLimits] = Field(default_factory=dict)
    """Limits per model name (over the provider's and ``limits``)."""
    trigger_ratio: float = Field(default=0.9, gt=0, le=1)
    """Compact before a model call whose context would exceed this share of the usable window
    (the estimate is rough: the rest is the margin)."""
    tail_turns: int = Field(default=2, ge=1)
    """Newest turns (a user message and what follows it) kept verbatim; the newest is always
    kept whole."""
    provider: str | None = None
    """The provider of the summarising call (default: the run's)."""
    model: str | None = None
    """The model of the summarising call (default: the run's, or the provider's only model)."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds one summarising call may take (the runtime's retries apply too)."""
    max_summary_chars: int = Field(default=8000, ge=100)
    """A longer summary is clipped."""
    circuit_breaker_threshold: int = Field(default=3, ge=1)
    """Consecutive failed compactions of one session that open its breaker: proactive
    compaction is skipped until ``cooldown`` has passed, then one attempt is let through
    (half-open); a success closes it."""
    cooldown: float = Field(default=300.0, ge=0)
    """Seconds an open breaker waits before it half-opens."""
    prune: bool = True
    """Replace old tool outputs in the context (never in the store) by a placeholder when that
    frees at least ``prune_minimum_tokens``; the newest turn and the most recent
    ``prune_protect_tokens`` of tool output stay."""
    prune_protect_tokens: int = Field(default=40_000, ge=0)
    prune_minimum_tokens: int = Field(default=20_000, ge=1)


class DoomLoopPolicy(Frozen):
    """When a run's tool calls count as a doom loop, and what happens then.

    Calls are compared by tool name and arguments (object keys sorted, arrays in order). Every
    call of a batch is checked before any of them runs.
    """

    enabled: bool = True
    consecutive_threshold: int = Field(default=3, ge=2)
    """The identical call this many times in a row (across turns and within one batch) trips."""
    min_cycle: int = Field(default=2, ge=2)
    """Shortest repeating pattern of different calls checked (``A, B``)."""
    max_cycle: int = Field(default=4, ge=2)
    """Longest repeating pattern checked."""
    repetitions: int = Field(default=2, ge=1)
    """A pattern followed by this many repeats of itself trips: ``A, B, A, B, A, B`` with 2;
    a pattern of 3 calls needs 9."""
    action: Literal["stop", "warn"] = "stop"
    """``"stop"``: none of the tripping batch runs; its calls are answered "not run" in the
    history and the run ends with ``finish_reason=doom_loop``. ``"warn"``: the batch runs, the
    tool message of the call that tripped tells the model it is looping, the run goes on."""

    @model_validator(mode="after")
    def _cycles_ordered(self) -> DoomLoopPolicy:
        if self.max_cycle < self.min_cycle:
            raise ValueError(
                f"max_cycle ({self.max_cycle}) must not be below min_cycle ({self.min_cycle})"
            )
        return self


class RuntimePolicy(Frozen):
    """Limits the runtime enforces on every run."""

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
    doom_loop: DoomLoopPolicy = DoomLoopPolicy()
    """Doom-loop detection (repeated and cycling tool calls)."""
    compaction: CompactionPolicy = CompactionPolicy()
    """Context compaction (summaries of old turns, pruning of old tool outputs)."""
    approval: ApprovalPolicy = ApprovalPolicy()
    """Human approval of tool calls."""
    max_tool_output_chars: int = Field(default=20_000, ge=1)
    """Tool output longer than this is truncated before it reaches the model."""
    max_retries: int = Field(default=2, ge=0)
    """Retries of one model call that failed before its stream began, with a retryable error
    (HTTP 408, 429, 5xx, connection failures); 0 disables. A call that already streamed
    events is never retried (its deltas are published)."""
    retry_backoff: float = Field(default=0.5, ge=0)
    """Base of the exponential backoff: retry ``n`` (0-based) waits a random time in
    ``[0, retry_backoff * 2**n]`` (full jitter)."""
    retry_backoff_max: float = Field(default=20.0, ge=0)
    """Longest wait before one retry, a server's ``Retry-After`` included."""
