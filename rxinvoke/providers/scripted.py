"""ScriptedProvider: a deterministic chat provider for tests and notebooks.

It is a real :class:`~rxinvoke.providers.ChatProvider`, so the runtime has no test branches.
Each turn is a list of chat events replayed in order (``chat_started`` is added in front).
A turn item may also be an ``asyncio.Event`` (the stream waits for it: a gate for
cancellation tests), an exception instance (the stream raises it: a broken stream) or a
:class:`Pause` (the stream waits that long on the provider's scheduler: model latency); a :class:`Refuse`
first item fails the call before ``chat_started`` (retryable errors are retried).

``delay=`` waits before every item (a model's streaming pace), timed on ``scheduler=`` (a
``reactivex.testing.TestScheduler`` in virtual-time tests; default: the loop). With
``checkpoints=True`` the stream yields to the loop before every item (``sleep(0)``), so
cancellation and other runs can interleave between fragments; by default it does not.
The last ``max_requests`` requests are kept in :attr:`ScriptedProvider.requests`.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

from reactivex import abc

from .._clock import sleep, stamp
from .._frozen import trusted
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

__all__ = ("Pause", "Refuse", "ScriptedProvider", "TurnItem")


@dataclass(frozen=True)
class Pause:
    """A turn item: wait ``seconds`` (on the provider's scheduler) before the next item."""

    seconds: float


@dataclass(frozen=True)
class Refuse:
    """A turn's first item: the call fails with ``error`` before it streams anything (as a
    server answering 429 or refusing the connection does), so the runtime may retry it."""

    error: BaseException


TurnItem = Union[ChatStreamEvent, asyncio.Event, BaseException, Pause, Refuse]  # noqa: UP007 (runtime alias)
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
        delay: float = 0.0,
        scheduler: abc.SchedulerBase | None = None,
        checkpoints: bool = False,
        max_requests: int | None = 1000,
    ) -> None:
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        self._id = id
        self._models = tuple(models)
        self._turns = turns
        self._delay = delay
        self._scheduler = scheduler
        self._checkpoints = checkpoints
        self._calls = 0
        self._requests: deque[ChatRequest] = deque(maxlen=max_requests)

    @property
    def id(self) -> str:
        return self._id

    @property
    def models(self) -> Sequence[str]:
        return self._models

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        index = self._calls
        self._calls += 1
        self._requests.append(request)
        if callable(self._turns):
            turn = self._turns(request)
        elif index < len(self._turns):
            turn = self._turns[index]
        else:
            raise ProviderStreamError(
                self._id, request.model, f"script exhausted after {len(self._turns)} turn(s)"
            )
        items: list[TurnItem] = list(turn)
        while items:
            first = items[0]
            if isinstance(first, Refuse):
                raise first.error
            if not isinstance(first, Pause):
                break
            items.pop(0)
            await sleep(self._scheduler, first.seconds)  # latency before the first byte
        yield ChatStarted(provider=self._id, model=request.model)
        for item in items:
            if self._delay:
                await sleep(self._scheduler, self._delay)
            elif self._checkpoints:
                await asyncio.sleep(0)  # cancellation and other runs can land between items
            if isinstance(item, asyncio.Event):
                await item.wait()
            elif isinstance(item, BaseException):
                raise item
            elif isinstance(item, Pause):
                await sleep(self._scheduler, item.seconds)
            elif isinstance(item, Refuse):
                raise item.error
            else:
                # stamped now, as a real provider's events are (the script was built earlier)
                yield trusted(type(item), {**item.__dict__, "timestamp": stamp()})

    @property
    def requests(self) -> list[ChatRequest]:
        """The requests received, in order (the last ``max_requests`` of them)."""
        return list(self._requests)

    @property
    def calls(self) -> int:
        """How many model calls were made (every one, however many requests are kept)."""
        return self._calls

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
