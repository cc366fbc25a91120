"""Shared event builders for the span and notebook tests."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rxinvoke import InvocationEvent
from rxinvoke.events import (
    ModelStarted,
    RunCompleted,
    RunStarted,
    TextDelta,
    ToolExecutionFinished,
    ToolExecutionStarted,
    ToolFailure,
    ToolSuccess,
    UsageRecorded,
)
from rxinvoke.messages import FinishReason, TokenUsage

T0 = datetime(2026, 12, 1, 18, 30, 20, tzinfo=timezone.utc)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def one_run_with_overlapping_tools() -> list[InvocationEvent]:
    r = "run-1"
    return [
        RunStarted(run_id=r, session_id="s", provider="p", model="m", timestamp=at(0)),
        ModelStarted(run_id=r, provider="p", model="m", iteration=1, timestamp=at(1)),
        TextDelta(run_id=r, delta="thinking", timestamp=at(21)),
        UsageRecorded(run_id=r, usage=TokenUsage(input_tokens=5, output_tokens=7, total_tokens=12), timestamp=at(41)),
        ToolExecutionStarted(run_id=r, call_id="a", tool_name="search", timestamp=at(42)),
        ToolExecutionStarted(run_id=r, call_id="b", tool_name="open", timestamp=at(43)),
        ToolExecutionFinished(run_id=r, call_id="b", tool_name="open", result=ToolFailure(error="404"), duration_ms=10, timestamp=at(53)),
        ToolExecutionFinished(run_id=r, call_id="a", tool_name="search", result=ToolSuccess(output="x"), duration_ms=20, timestamp=at(62)),
        ToolExecutionStarted(run_id=r, call_id="c", tool_name="open", timestamp=at(63)),
        ToolExecutionFinished(run_id=r, call_id="c", tool_name="open", result=ToolSuccess(output="y"), duration_ms=5, timestamp=at(68)),
        ModelStarted(run_id=r, provider="p", model="m", iteration=2, timestamp=at(70)),
        UsageRecorded(run_id=r, usage=TokenUsage(total_tokens=3), timestamp=at(90)),
        RunCompleted(run_id=r, finish_reason=FinishReason.STOP, iterations=2, timestamp=at(91)),
    ]
