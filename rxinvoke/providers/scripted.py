"""ScriptedProvider: a deterministic chat provider for tests and notebooks.

It is a real :class:`~rxinvoke.provider.ChatProvider`, so the runtime has no test branches.
Each turn is a list of chat events replayed in order (``chat_started`` is added in front).
A turn item may also be an ``asyncio.Event`` (the stream waits for it: a gate for
cancellation tests) or an exception instance (the stream raises it: a broken stream).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Union

from ..errors import ProviderStreamError
from ..events import (
    ChatFinished,
    ChatStarted,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
)
from ..messages import ChatRequest, FinishReason, TokenUsage, ToolCall, new_id

__all__ = ("ScriptedProvider", "TurnItem")

TurnItem = Union[ChatStreamEvent, asyncio.Event, BaseException]  # noqa: UP007 (runtime alias)
"""One step of a scripted turn."""

Turn = Sequence[TurnItem]


class ScriptedProvider:
    """Replays scripted turns: a list (one turn per model call) or a function of the request."""

    __test__ = False

    def __init__(
        self,
        turns: Sequence[Turn] | Callable[[ChatRequest], Turn],
        *,
        id: str = "scripted",
        models: Sequence[str] = ("scripted",),
    ) -> None:
        self._id = id
        self._models = tuple(models)
        self._turns = turns
        self.requests: list[ChatRequest] = []
        """Every request received, in order."""

    @property
    def id(self) -> str:
        return self._id

    @property
    def models(self) -> Sequence[str]:
        return self._models

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        index = len(self.requests)
        self.requests.append(request)
        if callable(self._turns):
            turn = self._turns(request)
        elif index < len(self._turns):
            turn = self._turns[index]
        else:
            raise ProviderStreamError(
                self._id, request.model, f"script exhausted after {len(self._turns)} turn(s)"
            )
        yield ChatStarted(provider=self._id, model=request.model)
        for item in turn:
            await asyncio.sleep(0)  # a checkpoint: cancellation can land between deltas
            if isinstance(item, asyncio.Event):
                await item.wait()
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item

    # --- turn builders -------------------------------------------------------------------

    @staticmethod
    def text_turn(
        text: str, *, pieces: int = 1, usage: TokenUsage | None = None
    ) -> list[TurnItem]:
        """A turn answering ``text`` in ``pieces`` deltas, then finishing with ``stop``."""
        items: list[TurnItem] = [ChatTextDelta(delta=part) for part in _split(text, pieces)]
        items.append(ChatFinished(finish_reason=FinishReason.STOP, usage=usage or _usage(text)))
        return items

    @staticmethod
    def tool_call_turn(
        name: str,
        arguments: dict[str, Any] | str,
        *,
        call_id: str | None = None,
        pieces: int = 1,
        text: str = "",
        usage: TokenUsage | None = None,
    ) -> list[TurnItem]:
        """A turn calling tool ``name``, its JSON arguments split over ``pieces`` deltas."""
        return ScriptedProvider.tool_calls_turn(
            [(name, arguments, call_id)], pieces=pieces, text=text, usage=usage
        )

    @staticmethod
    def tool_calls_turn(
        calls: Sequence[tuple[str, dict[str, Any] | str, str | None]],
        *,
        pieces: int = 1,
        text: str = "",
        usage: TokenUsage | None = None,
    ) -> list[TurnItem]:
        """A turn with several tool calls ``(name, arguments, call_id or None)``."""
        items: list[TurnItem] = [ChatTextDelta(delta=text)] if text else []
        for name, arguments, call_id in calls:
            cid = call_id or f"call_{new_id()[:8]}"
            raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
            items.append(ChatToolCallStarted(id=cid, name=name))
            items.extend(ChatToolCallArgumentsDelta(id=cid, delta=p) for p in _split(raw, pieces))
            items.append(ChatToolCallCompleted(call=ToolCall(id=cid, name=name, arguments=raw)))
        items.append(
            ChatFinished(finish_reason=FinishReason.TOOL_CALLS, usage=usage or _usage(text))
        )
        return items


def _split(text: str, pieces: int) -> list[str]:
    if pieces <= 1 or len(text) <= 1:
        return [text]
    size = -(-len(text) // pieces)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _usage(text: str) -> TokenUsage:
    output = max(1, len(text.split()))
    return TokenUsage(input_tokens=10, output_tokens=output, total_tokens=10 + output)
