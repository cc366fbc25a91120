"""Building the model's context from stored history."""

from __future__ import annotations

from collections.abc import Sequence

from .messages import Message

__all__ = ("answer_dangling_calls",)

UNANSWERED = "Error: no result: the run ended (cancelled, timed out or failed) before this tool finished"


def answer_dangling_calls(history: Sequence[Message]) -> list[Message]:
    """History where every assistant tool call has a tool reply.

    A run cancelled while its tools ran leaves tool calls without replies; chat APIs reject
    such a context. Each missing reply is supplied (in the context only, not the store) right
    after the assistant message, saying the tool did not finish.
    """
    answered = {m.tool_call_id for m in history if m.role == "tool"}
    if all(c.id in answered for m in history for c in m.tool_calls):
        return list(history)
    repaired: list[Message] = []
    for message in history:
        repaired.append(message)
        for call in message.tool_calls:
            if call.id not in answered:
                repaired.append(
                    Message(
                        role="tool",
                        content=UNANSWERED,
                        tool_call_id=call.id,
                        run_id=message.run_id,
                        created_at=message.created_at,
                    )
                )
    return repaired
