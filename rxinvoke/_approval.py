"""Human approval of tool calls: which calls wait, and how a paused batch is answered.

A batch with a call that needs approval (``@tool(requires_approval=...)`` or
``ApprovalPolicy.tools``) pauses its run after the other calls of the batch ran: the run ends
with ``finish_reason=awaiting_approval`` and its ``pending`` calls (status
``awaiting_approval`` in the store; no other run of the session may start). Decisions are
recorded one by one (``Store.decide``); once every call is decided, a *continuation* run of the
session (``RunRequest.resumes``) answers the paused batch — approved calls execute, denied
ones get a tool message saying so, the others get the results they had before the pause (read
back from the paused run's event log) — in call order, and the loop goes on. Exactly one run
continues a paused one (the store moves it to ``completed`` when the continuation claims it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from .events import ToolExecutionFinished, ToolFailure, ToolResult
from .messages import ToolCall
from .policy import ApprovalPolicy
from .request import PendingApproval
from .stores.base import EventEnvelope
from .tools import ToolRegistry

__all__ = (
    "APPROVAL_TIMED_OUT",
    "NO_RESULT",
    "denied_reply",
    "needs_approval",
    "pending_of",
    "reply_of",
    "stored_results",
)

APPROVAL_TIMED_OUT = "approval timed out"
"""The reason of a call the approval timeout denied."""

NO_RESULT = "Error: no result: the paused run's record of this call was not found"


def needs_approval(tools: ToolRegistry, policy: ApprovalPolicy, call: ToolCall) -> bool:
    """Whether ``call`` waits for a person (policy list, or the tool's own rule)."""
    if call.name in policy.tools:
        return True
    tool = tools.get(call.name)
    return tool is not None and tool.needs_approval(call.arguments)


def pending_of(
    calls: Sequence[ToolCall], policy: ApprovalPolicy, now: datetime
) -> tuple[PendingApproval, ...]:
    """The pending approvals of ``calls``, expiring per the policy's timeout."""
    expires = now + timedelta(seconds=policy.timeout) if policy.timeout is not None else None
    return tuple(
        PendingApproval(call_id=c.id, tool_name=c.name, arguments=c.arguments, expires_at=expires)
        for c in calls
    )


def reply_of(result: ToolResult) -> str:
    """The tool message content of a tool result (what the model reads)."""
    return f"Error: {result.error}" if isinstance(result, ToolFailure) else result.output


def denied_reply(pending: PendingApproval) -> str:
    """The tool message of a denied call."""
    if pending.reason == APPROVAL_TIMED_OUT:
        return "Error: not run: nobody approved this call in time (approval timed out)"
    reason = pending.reason or "no reason given"
    return f"Error: not run: a person denied this call: {reason}"


def stored_results(envelopes: Sequence[EventEnvelope]) -> dict[str, str]:
    """Call id → reply content, for the calls the paused run executed before it paused."""
    return {
        e.event.call_id: reply_of(e.event.result)
        for e in envelopes
        if isinstance(e.event, ToolExecutionFinished)
    }
