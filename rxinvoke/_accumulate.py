"""Accumulator: folds one provider stream into the assistant message it describes."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ProviderStreamError
from .events import (
    ChatFinished,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
)
from .messages import FinishReason, Message, TokenUsage, ToolCall, new_message

__all__ = ("Accumulator",)


@dataclass
class _PartialCall:
    name: str
    arguments: list[str] = field(default_factory=list)
    done: ToolCall | None = None


class Accumulator:
    """Text, tool calls (by id, in first-seen order), finish reason and usage of one response.

    Two calls of one response with the same id are both kept: the later one gets the id
    ``"{id}_{n}"``, so each is executed and answered (chat APIs require one answer per id).
    """

    def __init__(self, provider: str, model: str) -> None:
        self._provider = provider
        self._model = model
        self._text: list[str] = []
        self._calls: dict[str, _PartialCall] = {}
        self._current: dict[str, str] = {}  # a provider's id -> the key of its latest call
        self.finish_reason: FinishReason | None = None
        self.usage: TokenUsage | None = None
        self.has_events = False
        """True once the stream yielded anything (its events are published: no retry)."""

    def add_text(self, delta: str) -> None:
        """Fold one text fragment in (what :meth:`add` does with a ``chat_text_delta``)."""
        self.has_events = True
        if self.finish_reason is not None:
            raise ProviderStreamError(
                self._provider, self._model, "chat_text_delta received after chat_finished"
            )
        self._text.append(delta)

    def add(self, event: ChatStreamEvent) -> None:
        """Fold one chat event in; events after ``chat_finished`` are a stream error."""
        self.has_events = True
        if self.finish_reason is not None:
            raise ProviderStreamError(
                self._provider, self._model, f"{event.type} received after chat_finished"
            )
        if isinstance(event, ChatTextDelta):
            self._text.append(event.delta)
        elif isinstance(event, ChatToolCallStarted):
            key = self._current.get(event.id)
            if key is None or self._calls[key].done is not None:
                key = self._new_key(event.id)
                self._calls[key] = _PartialCall(event.name)
        elif isinstance(event, ChatToolCallArgumentsDelta):
            partial = self._calls.get(self._current.get(event.id, event.id))
            if partial is None:
                raise ProviderStreamError(
                    self._provider, self._model, f"arguments for unknown tool call {event.id!r}"
                )
            partial.arguments.append(event.delta)
        elif isinstance(event, ChatToolCallCompleted):
            raw = event.call.id
            key = self._current.get(raw)
            if key is None or self._calls[key].done is not None:
                key = self._new_key(raw)
                self._calls[key] = _PartialCall(event.call.name)
            partial = self._calls[key]
            partial.done = event.call if key == raw else event.call.model_copy(update={"id": key})
        elif isinstance(event, ChatFinished):
            self.finish_reason = event.finish_reason
            self.usage = event.usage

    def _new_key(self, raw: str) -> str:
        key, n = raw, 1
        while key in self._calls:
            n += 1
            key = f"{raw}_{n}"
        self._current[raw] = key
        return key

    @property
    def text(self) -> str:
        """The text so far."""
        return "".join(self._text)

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        """Tool calls, completed ones as the provider stated them, others from their deltas."""
        return tuple(
            p.done or ToolCall(id=cid, name=p.name, arguments="".join(p.arguments))
            for cid, p in self._calls.items()
        )

    def pending_calls(self) -> tuple[ToolCall, ...]:
        """Calls started but never completed by the provider."""
        return tuple(c for c in self.tool_calls if self._calls[c.id].done is None)

    def message(self, run_id: str) -> Message:
        """The complete assistant message; a stream without ``chat_finished`` is an error."""
        if self.finish_reason is None:
            raise ProviderStreamError(
                self._provider, self._model, "stream ended without chat_finished"
            )
        return new_message("assistant", self.text, run_id, tool_calls=self.tool_calls)
