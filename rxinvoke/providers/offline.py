"""OfflineProvider: the embedded default model. No network, no key, deterministic.

A small rule-based "model": when the latest user message asks for arithmetic it calls the
``calculate`` tool, when it asks for the time or date it calls ``now`` (if those tools are on
offer), and once the tool results are in it answers with them; otherwise it explains what it
can do. Answers stream word by word, tool arguments in several fragments, like a real model.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence

from ..events import (
    ChatFinished,
    ChatStarted,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
)
from ..messages import ChatRequest, FinishReason, Message, TokenUsage, ToolCall

__all__ = ("OfflineProvider",)

_EXPRESSION = re.compile(r"[-+(]*\s*\d[\d.\s]*(?:(?:\*\*|//|[-+*/%^x×÷])\s*[-+(]*\s*\d[\d.\s)]*)+")
_TIME_WORDS = re.compile(r"\b(time|date|today|clock|day is it)\b", re.IGNORECASE)


class OfflineProvider:
    """The embedded rule-based model (provider id ``offline``, model ``offline``).

    Args:
        delay: seconds between streamed fragments (0 streams as fast as possible).
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        self._delay = delay
        self._calls = 0

    @property
    def id(self) -> str:
        return "offline"

    @property
    def models(self) -> Sequence[str]:
        return ("offline",)

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        yield ChatStarted(provider=self.id, model=request.model)
        messages = request.messages
        last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
        question = messages[last_user].content if last_user >= 0 else ""
        since = messages[last_user + 1 :]
        tools = {spec.name for spec in request.tools} if request.tool_choice.mode != "none" else set()
        input_tokens = sum(len(m.content.split()) for m in messages)
        call = None if any(m.role == "tool" for m in since) else self._plan(question, tools)
        if call is not None:
            self._calls += 1
            call_id = f"call_offline_{self._calls}"
            yield ChatToolCallStarted(id=call_id, name=call[0])
            for piece in _fragments(call[1]):
                await self._pause()
                yield ChatToolCallArgumentsDelta(id=call_id, delta=piece)
            yield ChatToolCallCompleted(call=ToolCall(id=call_id, name=call[0], arguments=call[1]))
            usage = TokenUsage(input_tokens=input_tokens, output_tokens=8, total_tokens=input_tokens + 8)
            yield ChatFinished(finish_reason=FinishReason.TOOL_CALLS, usage=usage)
            return
        answer = _answer(question, since)
        words = re.findall(r"\S+\s*", answer)
        for word in words:
            await self._pause()
            yield ChatTextDelta(delta=word, run_id=request.run_id)
        output = len(words)
        yield ChatFinished(
            finish_reason=FinishReason.STOP,
            usage=TokenUsage(
                input_tokens=input_tokens, output_tokens=output, total_tokens=input_tokens + output
            ),
        )

    async def _pause(self) -> None:
        await asyncio.sleep(self._delay)

    @staticmethod
    def _plan(question: str, tools: set[str]) -> tuple[str, str] | None:
        match = _EXPRESSION.search(question)
        if match and "calculate" in tools:
            expression = match.group(0).strip().replace("×", "*").replace("÷", "/").replace("x", "*")
            return "calculate", json.dumps({"expression": expression})
        if _TIME_WORDS.search(question) and "now" in tools:
            return "now", "{}"
        return None


def _fragments(arguments: str) -> list[str]:
    size = max(1, -(-len(arguments) // 3))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)]


def _answer(question: str, since: Sequence[Message]) -> str:
    calls = {c.id: c for m in since if m.role == "assistant" for c in m.tool_calls}
    results = [(calls.get(m.tool_call_id or ""), m.content) for m in since if m.role == "tool"]
    if not results:
        return (
            "I am the offline rxinvoke model: I run without a network or an API key. "
            "Ask me to calculate something, like 'what is 2 + 3?', or ask me the time."
        )
    parts = []
    for call, content in results:
        if content.startswith("Error:"):
            parts.append(f"I could not do that: {content[len('Error:'):].strip()}")
        elif call is not None and call.name == "calculate":
            expression = json.loads(call.arguments).get("expression", "")
            parts.append(f"{expression} = {content}.")
        elif call is not None and call.name == "now":
            parts.append(f"It is {content} (UTC).")
        else:
            parts.append(f"The result is {content}.")
    return " ".join(parts)
