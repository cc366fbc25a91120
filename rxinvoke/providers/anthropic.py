"""AnthropicProvider: the Anthropic Messages API (``POST /v1/messages``, ``stream: true``) over
httpx and httpx-sse; no vendor SDK. Needs the ``[anthropic]`` extra.

Protocol mapping (Messages API, ``anthropic-version: 2023-06-01``):

- **Request**: system messages (the system prompt, compaction checkpoints) become the
  ``system`` parameter, in order; user text and tool results (``tool_result`` blocks, failures
  with ``is_error``) are ``user`` turns, assistant text and tool calls (``tool_use`` blocks with
  the arguments as ``input``) ``assistant`` turns; adjacent turns of one role are merged (the
  API wants them alternating). Tool specs go as ``input_schema``; ``tool_choice`` auto / any
  (``required``) / tool / none. ``max_tokens`` is the provider's (required by the API).
- **Stream**: ``message_start`` (input usage), ``content_block_start`` / ``_delta`` /
  ``_stop`` (``text_delta`` → text fragments; a ``tool_use`` block → a tool call whose
  ``input_json_delta`` fragments are its arguments; thinking blocks are skipped),
  ``message_delta`` (stop reason, output usage), ``message_stop`` (then ``chat_finished``),
  ``ping``; an in-stream ``error`` event is a :class:`~rxinvoke.errors.ProviderStreamError`
  naming its type. A stream that ends before ``message_stop`` is a broken stream.
- **Stop reasons**: ``end_turn``, ``stop_sequence``, ``pause_turn`` → stop; ``max_tokens`` →
  length; ``tool_use`` → tool_calls; ``refusal`` → content_filter.
- **Usage**: input tokens are ``input_tokens`` plus the cache's ``cache_creation_input_tokens``
  and ``cache_read_input_tokens`` (what the context cost); output tokens from
  ``message_delta``.
- **Errors**: as every HTTP provider here (``providers._http``): 429 with ``retry-after``,
  529 ``overloaded_error`` and 5xx are retryable by the runtime's retry loop, other statuses
  are not; a 400 saying the prompt is too long is a
  :class:`~rxinvoke.errors.ProviderContextOverflow` (the runtime compacts and retries).
- **Secrets**: the key (``x-api-key``) is a ``SecretStr`` checked at construction and redacted
  from every message, error and event.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from ..errors import ProviderStreamError
from ..events import (
    ChatFinished,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
)
from ..messages import ChatRequest, FinishReason, Message, TokenUsage, ToolCall
from ..policy import ModelLimits
from ._http import HttpChatProvider, error_message, resolve_key

__all__ = ("ANTHROPIC_VERSION", "DEFAULT_ANTHROPIC_URL", "AnthropicProvider")

DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
"""The ``anthropic-version`` header sent (the Messages API's stable version)."""

_STOP_REASONS: Mapping[str, FinishReason] = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "pause_turn": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.CONTENT_FILTER,
}

_CONTEXT_WINDOW = 200_000
"""The context window of the current Claude models (``model_limits``)."""


class AnthropicProvider(HttpChatProvider):
    """A chat provider for the Anthropic Messages API.

    Example::

        provider = AnthropicProvider()  # the key from ANTHROPIC_API_KEY
        runtime = AgentRuntime(providers=[provider], tools=builtin_tools())
        await runtime.run(RunRequest(provider="anthropic", model="claude-sonnet-4-5", input="hi"))

    Args:
        id: the id the provider is registered under (``RunRequest.provider``).
        models: model names accepted; empty (the default) accepts any name.
        base_url: the API root (``/v1/messages`` is under it).
        api_key: the API key; when None it is read from ``api_key_env`` (required: the API
            refuses requests without one, so a missing key is a ``ValueError`` here).
        api_key_env: the environment variable holding the key.
        max_tokens: the most tokens one response may have (the API requires a limit).
        context_window: the model's context window, for compaction (``model_limits``).
        headers: extra HTTP headers (e.g. ``anthropic-beta``).
        timeout: seconds to connect, and the longest silence between two events.
        extra_body: extra top-level request fields (``temperature``, ``metadata``, ...).
        client: an ``httpx.AsyncClient`` to use (not closed by this provider).
    """

    def __init__(
        self,
        *,
        id: str = "anthropic",
        models: Sequence[str] = (),
        base_url: str = DEFAULT_ANTHROPIC_URL,
        api_key: SecretStr | str | None = None,
        api_key_env: str | None = "ANTHROPIC_API_KEY",
        max_tokens: int = 4096,
        context_window: int = _CONTEXT_WINDOW,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 120.0,
        extra_body: Mapping[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        key = resolve_key(api_key, api_key_env)
        if key is None:
            where = f"pass api_key= or set {api_key_env}" if api_key_env else "pass api_key="
            raise ValueError(f"AnthropicProvider needs an API key: {where}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        sent = {
            "Accept": "text/event-stream",
            "anthropic-version": ANTHROPIC_VERSION,
            **(headers or {}),
            "x-api-key": key.get_secret_value(),
        }
        super().__init__(
            id=id, models=models, base_url=base_url, headers=sent, timeout=timeout, client=client
        )
        self._url = f"{self._base_url}/v1/messages"
        self._max_tokens = max_tokens
        self._limits = ModelLimits(
            context_window=context_window, max_output_tokens=min(max_tokens, context_window - 1)
        )
        self._extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        return f"AnthropicProvider(id={self._id!r}, base_url={self._base_url!r}, api_key=set)"

    def model_limits(self, model: str) -> ModelLimits:
        """The limits compaction works with (``CompactionPolicy`` can override them)."""
        return self._limits

    # --- the request ---------------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for ``request`` (the protocol mapping; no credentials)."""
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        body: dict[str, Any] = {
            "max_tokens": self._max_tokens,
            **self._extra_body,
            "model": request.model,
            "messages": _turns(request.messages),
            "stream": True,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.tools:
            body["tools"] = [
                {"name": s.name, "description": s.description, "input_schema": s.parameters}
                for s in request.tools
            ]
            choice = request.tool_choice
            body["tool_choice"] = (
                {"type": "tool", "name": choice.name}
                if choice.mode == "tool"
                else {"type": {"auto": "auto", "required": "any", "none": "none"}[choice.mode]}
            )
        return body

    # --- the response --------------------------------------------------------------------

    def _parser(self, request: ChatRequest) -> _EventParser:
        return _EventParser(self._id, request.model, self._redact, request.run_id)

    @staticmethod
    def _is_context_overflow(text: str) -> bool:
        lowered = text.lower()
        return "prompt is too long" in lowered or "context window" in lowered


def _arguments(call: ToolCall) -> dict[str, Any]:
    """A call's arguments as the ``input`` object (text that is not an object is kept under
    ``_raw``, so the model sees what it sent)."""
    try:
        parsed = json.loads(call.arguments or "{}")
    except ValueError:
        return {"_raw": call.arguments}
    return parsed if isinstance(parsed, dict) else {"_raw": call.arguments}


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        block: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id or "",
            "content": message.content,
        }
        if message.content.startswith("Error:"):
            block["is_error"] = True
        return [block]
    blocks: list[dict[str, Any]] = []
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments(call)})
    return blocks


def _turns(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The conversation as alternating user/assistant turns (system messages go to
    ``system``; tool results are user content)."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


class _Block:
    __slots__ = ("arguments", "id", "kind", "name")

    def __init__(self, kind: str, id: str = "", name: str = "") -> None:
        self.kind = kind
        self.id = id
        self.name = name
        self.arguments: list[str] = []


class _EventParser:
    """Folds Messages API stream events into chat events."""

    def __init__(
        self, provider: str, model: str, redact: Callable[[str], str], run_id: str | None
    ) -> None:
        self._provider = provider
        self._model = model
        self._redact = redact
        self._run_id = run_id
        self._blocks: dict[int, _Block] = {}
        self._stop: str | None = None
        self._input = 0
        self._output = 0
        self._usage_seen = False
        self._events = 0
        self.is_done = False

    def _error(self, message: str) -> ProviderStreamError:
        return ProviderStreamError(self._provider, self._model, message)

    def _malformed(self, what: str, value: Any) -> ProviderStreamError:
        shown = self._redact(json.dumps(value)[:80])
        return self._error(f"malformed stream event {self._events}: {what}, got {shown}")

    def feed(self, name: str, data: str) -> list[ChatStreamEvent]:
        self._events += 1
        if name == "ping" or not data.strip():
            return []
        try:
            payload = json.loads(data)
        except ValueError as exc:
            raise self._error(f"malformed JSON in stream event {self._events}: {data[:120]!r}") from exc
        if not isinstance(payload, dict):
            raise self._malformed("an event must be a JSON object", payload)
        kind = payload.get("type", name)
        if kind == "error":
            error = payload.get("error")
            label = error.get("type", "error") if isinstance(error, dict) else "error"
            raise self._error(f"server error in stream: {label}: {self._redact(error_message(data))}")
        handler = self._HANDLERS.get(kind)
        return handler(self, payload) if handler is not None else []  # unknown: ignored

    def _message_start(self, payload: dict[str, Any]) -> list[ChatStreamEvent]:
        message = payload.get("message")
        if not isinstance(message, dict):
            raise self._malformed("message_start.message must be an object", message)
        self._count(message.get("usage"))
        return []

    def _count(self, usage: Any) -> None:
        if usage is None:
            return
        if not isinstance(usage, dict):
            raise self._malformed("usage must be an object", usage)
        values: dict[str, int] = {}
        for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
            value = usage.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self._malformed(f"usage.{key} must be a non-negative integer", value)
            values[key] = value
        if not values:
            return
        self._usage_seen = True
        inputs = [values[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens") if k in values]
        if inputs:
            self._input = sum(inputs)
        if "output_tokens" in values:
            self._output = values["output_tokens"]  # cumulative

    def _index(self, payload: dict[str, Any]) -> int:
        index = payload.get("index")
        if isinstance(index, bool) or not isinstance(index, int):
            raise self._malformed("index must be an integer", index)
        return index

    def _block_start(self, payload: dict[str, Any]) -> list[ChatStreamEvent]:
        index = self._index(payload)
        block = payload.get("content_block")
        if not isinstance(block, dict):
            raise self._malformed("content_block must be an object", block)
        kind = block.get("type")
        if kind == "tool_use":
            call_id, name = block.get("id"), block.get("name")
            if not isinstance(call_id, str) or not isinstance(name, str):
                raise self._malformed("a tool_use block needs a string id and name", block)
            started = self._blocks[index] = _Block("tool_use", call_id, name)
            initial = block.get("input")
            if isinstance(initial, dict) and initial:
                started.arguments.append(json.dumps(initial))
            return [ChatToolCallStarted(id=call_id, name=name)]
        self._blocks[index] = _Block(str(kind))
        text = block.get("text") if kind == "text" else None
        if isinstance(text, str) and text:
            return [ChatTextDelta(delta=text, run_id=self._run_id)]
        return []

    def _block_delta(self, payload: dict[str, Any]) -> list[ChatStreamEvent]:
        index = self._index(payload)
        delta = payload.get("delta")
        if not isinstance(delta, dict):
            raise self._malformed("delta must be an object", delta)
        block = self._blocks.get(index)
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if not isinstance(text, str):
                raise self._malformed("text_delta.text must be a string", text)
            return [ChatTextDelta(delta=text, run_id=self._run_id)] if text else []
        if kind == "input_json_delta":
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str):
                raise self._malformed("input_json_delta.partial_json must be a string", fragment)
            if block is None or block.kind != "tool_use":
                raise self._error(f"input_json_delta for block {index}, which is not a tool_use block")
            if not fragment:
                return []
            block.arguments.append(fragment)
            return [ChatToolCallArgumentsDelta(id=block.id, delta=fragment)]
        return []  # thinking, signatures, citations: not part of the answer

    def _block_stop(self, payload: dict[str, Any]) -> list[ChatStreamEvent]:
        block = self._blocks.get(self._index(payload))
        if block is None or block.kind != "tool_use":
            return []
        arguments = "".join(block.arguments) or "{}"
        completed = ChatToolCallCompleted(call=ToolCall(id=block.id, name=block.name, arguments=arguments))
        block.kind = "done"
        return [completed]

    def _message_delta(self, payload: dict[str, Any]) -> list[ChatStreamEvent]:
        delta = payload.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise self._malformed("message_delta.delta must be an object", delta)
        stop = (delta or {}).get("stop_reason")
        if stop is not None and not isinstance(stop, str):
            raise self._malformed("stop_reason must be a string", stop)
        if stop:
            self._stop = stop
        self._count(payload.get("usage"))
        return []

    def _message_stop(self, payload: dict[str, Any]) -> list[ChatStreamEvent]:
        self.is_done = True
        return []

    _HANDLERS: Mapping[str, Callable[[_EventParser, dict[str, Any]], list[ChatStreamEvent]]] = {
        "message_start": _message_start,
        "content_block_start": _block_start,
        "content_block_delta": _block_delta,
        "content_block_stop": _block_stop,
        "message_delta": _message_delta,
        "message_stop": _message_stop,
    }

    def finish(self) -> list[ChatStreamEvent]:
        """The closing events once the stream ended; an error if it ended unfinished."""
        if not self.is_done:
            raise self._error(f"stream ended after {self._events} event(s) without message_stop")
        events: list[ChatStreamEvent] = []
        for index in sorted(self._blocks):  # a tool_use block the server never stopped
            events += self._block_stop({"index": index})
        reason = _STOP_REASONS.get(self._stop or "", FinishReason.STOP)
        if reason is FinishReason.STOP and any(b.kind == "done" for b in self._blocks.values()):
            reason = FinishReason.TOOL_CALLS
        usage = (
            TokenUsage(
                input_tokens=self._input,
                output_tokens=self._output,
                total_tokens=self._input + self._output,
            )
            if self._usage_seen
            else None
        )
        events.append(ChatFinished(finish_reason=reason, usage=usage))
        return events
