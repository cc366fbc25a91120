"""Resumption: where a run interrupted by the death of its process goes on from.

A run taken over by another process (``AgentRuntime.resume_interrupted``, used by
``Worker(on_worker_loss="retry")``) continues from the session's last committed step: its
stored log (with what its stream showed beyond it) says what it has spent and which attempt
this is; its session's history says what is done. A model call cut short is made again; the
tool calls of a committed assistant message whose replies were not committed run again (at
least once: a tool with side effects sees them twice).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .events import CompactionFinished, RunResumed, UsageRecorded
from .messages import Message, TokenUsage, ToolCall
from .stores.base import EventEnvelope

__all__ = ("Resumption", "resumption_of")


@dataclass(frozen=True)
class Resumption:
    """What an interrupted run's next attempt starts from."""

    after_seq: int
    """The seq of the stored log's last envelope (the next attempt numbers from here)."""
    attempt: int
    """The next attempt's number (2 for the first resumption)."""
    usage: TokenUsage
    """What the earlier attempts spent (their ``usage_recorded`` and compactions)."""
    iterations: int
    """Iterations whose assistant message was committed."""
    dangling: tuple[ToolCall, ...]
    """Calls of the run's last committed assistant message that have no committed reply."""
    paused_unanswered: bool
    """The run continues a paused run and has not committed its answers to the paused calls."""


def resumption_of(
    run_id: str,
    resumes: str | None,
    history: Sequence[Message],
    stored: Sequence[EventEnvelope],
) -> Resumption:
    """The resumption of run ``run_id`` (continuing the paused run ``resumes``, if set) from its
    session's ``history`` and its ``stored`` log."""
    usage = TokenUsage()
    attempts = 1
    for envelope in stored:
        event = envelope.event
        if isinstance(event, UsageRecorded):
            usage = usage + event.usage
        elif isinstance(event, CompactionFinished) and event.usage is not None:
            usage = usage + event.usage
        elif isinstance(event, RunResumed):
            attempts += 1
    iterations = sum(1 for m in history if m.role == "assistant" and m.run_id == run_id)
    last = next((m for m in reversed(history) if m.compaction is None), None)
    dangling: tuple[ToolCall, ...] = ()
    paused_unanswered = False
    if last is not None and last.role == "assistant" and last.tool_calls:
        if last.run_id == run_id:
            dangling = last.tool_calls
        elif resumes is not None and last.run_id == resumes:
            paused_unanswered = True
    return Resumption(
        after_seq=stored[-1].seq if stored else 0,
        attempt=attempts + 1,
        usage=usage,
        iterations=iterations,
        dangling=dangling,
        paused_unanswered=paused_unanswered,
    )
