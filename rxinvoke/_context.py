"""Building the model's context from stored history: checkpoints (compaction summaries),
answers for dangling tool calls, token estimates, turns, and pruning of old tool outputs.

Pure functions of messages; the runtime's compaction (``_compaction``) decides when to use
them. Nothing here changes the store: a pruned or compacted context is a view.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from .messages import Message, ToolSpec

__all__ = (
    "CHECKPOINT_PREFIX",
    "answer_dangling_calls",
    "build_context",
    "estimate_tokens",
    "prune_tool_outputs",
    "split_for_compaction",
    "spec_tokens",
)

UNANSWERED = "Error: no result: the run ended (cancelled, timed out or failed) before this tool finished"

CHECKPOINT_PREFIX = "Summary of the earlier conversation (older turns were compacted):\n\n"
"""How a checkpoint's content begins; the summary follows."""

CHARS_PER_TOKEN = 4
"""The estimate: a token per 4 characters (rounded up), plus ``MESSAGE_OVERHEAD`` per message
and per tool call."""
MESSAGE_OVERHEAD = 4
_PRUNABLE = 50
"""Tool outputs of this many tokens or fewer are never pruned (the placeholder is not smaller)."""


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


def _head_length(messages: Sequence[Message]) -> int:
    """How many leading messages are the session's own system messages (its preamble)."""
    count = 0
    for message in messages:
        if message.role != "system" or message.compaction is not None:
            break
        count += 1
    return count


def build_context(history: Sequence[Message]) -> list[Message]:
    """The model's context for ``history``: with a checkpoint, the leading system messages,
    the latest checkpoint and every message from its ``keeps_from`` on (older checkpoints
    left out); dangling tool calls answered."""
    latest = next((m for m in reversed(history) if m.compaction is not None), None)
    if latest is None or latest.compaction is None:
        return answer_dangling_calls(history)
    keep = latest.compaction.keeps_from
    start = next((i for i, m in enumerate(history) if m.id == keep), None)
    if start is None:  # the boundary is not in this history: use all of it
        return answer_dangling_calls([m for m in history if m.compaction is None])
    head = list(history[: _head_length(history)])
    rest = [m for m in history[start:] if m.compaction is None]
    return answer_dangling_calls([*head, latest, *rest])


def _message_tokens(message: Message) -> int:
    tokens = MESSAGE_OVERHEAD + math.ceil(len(message.content) / CHARS_PER_TOKEN)
    for call in message.tool_calls:
        tokens += MESSAGE_OVERHEAD + math.ceil((len(call.name) + len(call.arguments)) / CHARS_PER_TOKEN)
    return tokens


def estimate_tokens(messages: Sequence[Message]) -> int:
    """The estimated size of ``messages`` in tokens (see ``CHARS_PER_TOKEN``)."""
    return sum(_message_tokens(m) for m in messages)


def spec_tokens(specs: Sequence[ToolSpec]) -> int:
    """The estimated size of the tool specs sent with every call."""
    chars = sum(len(s.name) + len(s.description) + len(json.dumps(s.parameters)) for s in specs)
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(specs)


def _turn_starts(messages: Sequence[Message], begin: int) -> list[int]:
    return [i for i in range(begin, len(messages)) if messages[i].role == "user"]


def split_for_compaction(
    messages: Sequence[Message], tail_turns: int
) -> tuple[Message | None, list[Message], int] | None:
    """What compaction of the context ``messages`` would summarise: (the current checkpoint or
    None, the older messages to fold into the summary, the index where the kept tail begins).
    A turn is a user message and what follows it; the last ``tail_turns`` turns are kept
    whole. None when there is nothing older than the tail."""
    head = _head_length(messages)
    checkpoint = messages[head] if head < len(messages) and messages[head].compaction else None
    begin = head + (1 if checkpoint is not None else 0)
    starts = _turn_starts(messages, begin)
    if len(starts) <= tail_turns:
        return None
    keep = starts[-tail_turns]
    older = list(messages[begin:keep])
    return (checkpoint, older, keep) if older else None


def prune_tool_outputs(messages: list[Message], protect: int, minimum: int) -> list[Message]:
    """``messages`` with old tool outputs replaced by a placeholder: walking back from the
    newest turn (always kept), the most recent ``protect`` tokens of tool output are kept and
    the older ones go, when that frees at least ``minimum`` tokens. ``messages`` itself when
    nothing is pruned."""
    total = sum(len(m.content) for m in messages if m.role == "tool")
    if math.ceil(total / CHARS_PER_TOKEN) < protect + minimum:
        return messages  # cannot free enough: the common case, one pass
    starts = _turn_starts(messages, 0)
    newest = starts[-1] if starts else len(messages)
    kept = freed = 0
    prune: dict[int, int] = {}
    for i in range(newest - 1, -1, -1):
        message = messages[i]
        if message.role != "tool":
            continue
        tokens = math.ceil(len(message.content) / CHARS_PER_TOKEN)
        if kept + tokens <= protect:
            kept += tokens
            continue
        kept = protect + 1  # everything older goes
        if tokens <= _PRUNABLE:
            continue
        prune[i] = tokens
        freed += tokens
    if freed < minimum:
        return messages
    return [
        m.model_copy(
            update={
                "content": f"[rxinvoke: this tool output ({prune[i]} tokens) was pruned from the "
                "context; the full output is in the session's store]"
            }
        )
        if i in prune
        else m
        for i, m in enumerate(messages)
    ]
