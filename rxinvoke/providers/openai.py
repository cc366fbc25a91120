"""OpenAIProvider: OpenAI-compatible ``/v1/chat/completions`` streaming over httpx.

Speaks the chat-completions protocol of OpenAI and of the servers that copy it (Ollama, vLLM,
llama.cpp server, LM Studio). Needs the ``[openai]`` extra (httpx, httpx-sse); this is the
only module that imports them, so ``import rxinvoke`` works without it.

Policy:

- **Errors** are translated once, here: an HTTP error status becomes
  :class:`~rxinvoke.errors.ProviderHTTPError` (the server's error message, ``retry_after``
  from ``Retry-After``/``retry-after-ms``), a connect/read failure or timeout
  :class:`~rxinvoke.errors.ProviderConnectionError`, a malformed stream
  :class:`~rxinvoke.errors.ProviderStreamError`. The status is checked *before*
  ``chat_started`` is yielded, so a failed call has published nothing and the runtime may
  retry it (``RuntimePolicy.max_retries``); this provider never retries by itself.
- **Completeness**: ``chat_finished`` is yielded only after the server sent a
  ``finish_reason`` or ``[DONE]``; a stream that ends with neither raises
  ProviderStreamError, so nothing partial is committed as complete.
- **Tool calls** are assembled by ``index`` from any number of chunks (id and name may come
  once, arguments in fragments) and completed when the response finishes. Arguments are
  passed on as the raw text the model produced: arguments that are not JSON become a tool
  failure the model is told about (the executor's job), not a provider error.
- **Cancellation**: closing the stream (the runtime does, on cancel) closes the HTTP response
  and its connection at once; the server sees the client go away.
- **Secrets**: the API key is a ``SecretStr`` sent only in the ``Authorization`` header; it is
  checked when the provider is built (printable ASCII only: a key with a newline or a
  non-ASCII character is refused with a ``ValueError`` that does not echo it; nothing is
  stripped silently). The key and every credential header value (``Authorization``,
  ``api-key``, ``x-api-key``) are redacted from every message built from what a server or
  httpx said, and an error whose cause chain mentions one is raised without that chain: no
  event, error (str, repr, args, causes), log record or stored run ever holds a secret.
- **Malformed streams**: a chunk with fields of the wrong JSON type, or anything else the
  parser cannot read, is a :class:`~rxinvoke.errors.ProviderStreamError` naming the provider
  and model; never a foreign exception.
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
from ..messages import ChatRequest, FinishReason, Message, TokenUsage, ToolCall, new_id
from ._http import HttpChatProvider, error_message, resolve_key

__all__ = ("DEFAULT_BASE_URL", "OpenAIProvider")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""OpenAI's own API; point ``base_url`` at any OpenAI-compatible server instead."""

_FINISH_REASONS: Mapping[str, FinishReason] = {
    "stop": FinishReason.STOP,
    "eos": FinishReason.STOP,  # some llama.cpp builds
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
}


class OpenAIProvider(HttpChatProvider):
    """A chat provider for OpenAI and OpenAI-compatible ``/chat/completions`` servers.

    Example::

        provider = OpenAIProvider(base_url="http://localhost:11434/v1")  # Ollama, no key
        runtime = AgentRuntime(providers=[provider], tools=builtin_tools())
        await runtime.run(RunRequest(provider="openai", model="llama3.2", input="hi"))

    Args:
        id: the id the provider is registered under (``RunRequest.provider``).
        models: model names accepted; empty (the default) accepts any name.
        base_url: the API root the server serves ``/chat/completions`` under.
        api_key: the API key; when None it is read from the ``api_key_env`` variable, and
            when that is unset too no ``Authorization`` header is sent (local servers).
        api_key_env: the environment variable holding the key (None: do not look).
        headers: extra HTTP headers sent with every request.
        timeout: seconds to connect, and the longest silence between two chunks of a
            response (None: no limit). ``RuntimePolicy.provider_timeout`` bounds a whole call.
        extra_body: extra top-level fields of every request body (``temperature``, ...).
        client: an ``httpx.AsyncClient`` to use (not closed by this provider); by default
            the provider makes its own, per event loop, closed by :meth:`aclose`.
    """

    def __init__(
        self,
        *,
        id: str = "openai",
        models: Sequence[str] = (),
        base_url: str = DEFAULT_BASE_URL,
        api_key: SecretStr | str | None = None,
        api_key_env: str | None = "OPENAI_API_KEY",
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 120.0,
        extra_body: Mapping[str, Any] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._api_key = resolve_key(api_key, api_key_env)
        sent = {"Accept": "text/event-stream", **(headers or {})}
        if self._api_key is not None:
            sent["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        super().__init__(
            id=id, models=models, base_url=base_url, headers=sent, timeout=timeout, client=client
        )
        self._url = f"{self._base_url}/chat/completions"
        self._extra_body = dict(extra_body or {})

    def __repr__(self) -> str:
        key = "set" if self._api_key is not None else "none"
        return f"OpenAIProvider(id={self._id!r}, base_url={self._base_url!r}, api_key={key})"

    @property
    def has_api_key(self) -> bool:
        """True when requests carry an ``Authorization`` header."""
        return self._api_key is not None

    # --- the request ---------------------------------------------------------------------

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for ``request`` (the protocol mapping; no credentials)."""
        body: dict[str, Any] = {
            **self._extra_body,
            "model": request.model,
            "messages": [_message(m) for m in request.messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": spec.name,
                        "description": spec.description,
                        "parameters": spec.parameters,
                    },
                }
                for spec in request.tools
            ]
            choice = request.tool_choice
            body["tool_choice"] = (
                {"type": "function", "function": {"name": choice.name}}
                if choice.mode == "tool"
                else choice.mode
            )
        return body

    # --- the response --------------------------------------------------------------------

    def _parser(self, request: ChatRequest) -> _ChunkParser:
        return _ChunkParser(self._id, request.model, self._redact, request.run_id)

    @staticmethod
    def _is_context_overflow(text: str) -> bool:
        """OpenAI's ``context_length_exceeded`` code, or the message vLLM, Ollama and others
        send for a prompt longer than the model's context."""
        lowered = text.lower()
        return "context_length_exceeded" in lowered or "maximum context length" in lowered


def _message(message: Message) -> dict[str, Any]:
    if message.role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": message.content or None}
        if message.tool_calls:
            out["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in message.tool_calls
            ]
        return out
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    return {"role": message.role, "content": message.content}


class _Call:
    __slots__ = ("arguments", "id", "name", "started")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []
        self.started = False


class _ChunkParser:
    """Folds ``chat.completion.chunk`` payloads into chat events (choice 0 only)."""

    def __init__(
        self,
        provider: str,
        model: str,
        redact: Callable[[str], str],
        run_id: str | None = None,
    ) -> None:
        self._provider = provider
        self._model = model
        self._redact = redact
        self._run_id = run_id  # stamped on text fragments: the runtime need not copy them
        self._calls: dict[int, _Call] = {}
        self._ids: set[str] = set()
        self._finish: str | None = None
        self._usage: TokenUsage | None = None
        self._chunks = 0
        self.is_done = False
        """``[DONE]`` was received: read no further."""

    def _error(self, message: str) -> ProviderStreamError:
        return ProviderStreamError(self._provider, self._model, message)

    def feed(self, name: str, data: str) -> list[ChatStreamEvent]:
        if name == "error":
            raise self._error(f"server error in stream: {self._redact(data)}")
        if data == "[DONE]":
            self.is_done = True
            return []
        self._chunks += 1
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise self._error(
                f"malformed JSON in stream chunk {self._chunks}: {data[:120]!r}"
            ) from exc
        if not isinstance(chunk, dict):
            raise self._error(f"stream chunk {self._chunks} is not a JSON object: {data[:120]!r}")
        if "error" in chunk:
            raise self._error(f"server error in stream: {self._redact(error_message(data))}")
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = self._token_usage(usage)
        choices = chunk.get("choices")
        if not choices:
            return []  # the usage chunk, keep-alives
        if not isinstance(choices, list):
            raise self._malformed("choices", "an array", choices)
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return []
        events: list[ChatStreamEvent] = []
        delta = choice.get("delta")
        if delta is not None and not isinstance(delta, dict):
            raise self._malformed("delta", "an object", delta)
        if delta:
            content = delta.get("content")
            if content is not None and not isinstance(content, str):
                raise self._malformed("delta.content", "a string", content)
            tool_calls = delta.get("tool_calls")
            if tool_calls is not None and not isinstance(tool_calls, list):
                raise self._malformed("delta.tool_calls", "an array", tool_calls)
            if self._finish is not None:
                if content or tool_calls:
                    raise self._error("content received after finish_reason")
            else:
                if content:
                    events.append(ChatTextDelta(delta=content, run_id=self._run_id))
                if tool_calls:
                    self._fold_tool_calls(tool_calls, events)
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise self._malformed("finish_reason", "a string", finish)
        if finish and self._finish is None:
            self._finish = finish
            self._complete_calls(events)
        return events

    def _malformed(self, field: str, expected: str, value: Any) -> ProviderStreamError:
        shown = self._redact(json.dumps(value)[:80])
        return self._error(
            f"malformed stream chunk {self._chunks}: {field} must be {expected}, got {shown}"
        )

    def _token_usage(self, usage: Any) -> TokenUsage:
        if not isinstance(usage, dict):
            raise self._malformed("usage", "an object", usage)
        counts: dict[str, int] = {}
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            value = usage.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise self._malformed(f"usage.{key}", "a non-negative integer", value)
            counts[key] = value
        prompt = counts.get("prompt_tokens", 0)
        completion = counts.get("completion_tokens", 0)
        total = counts.get("total_tokens") or prompt + completion
        return TokenUsage(input_tokens=prompt, output_tokens=completion, total_tokens=total)

    def _fold_tool_calls(self, deltas: list[Any], events: list[ChatStreamEvent]) -> None:
        for position, item in enumerate(deltas):
            if not isinstance(item, dict):
                raise self._malformed("delta.tool_calls[]", "an object", item)
            index = item.get("index", position)
            if isinstance(index, bool) or not isinstance(index, int):
                raise self._malformed("tool_calls[].index", "an integer", index)
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = _Call()
            raw_id = item.get("id")
            if raw_id is not None and not isinstance(raw_id, str):
                raise self._malformed("tool_calls[].id", "a string", raw_id)
            if call.id is None and raw_id:
                call.id = raw_id
            function = item.get("function")
            if function is None:
                function = {}
            if not isinstance(function, dict):
                raise self._malformed("tool_calls[].function", "an object", function)
            name = function.get("name")
            if name is not None and not isinstance(name, str):
                raise self._malformed("tool_calls[].function.name", "a string", name)
            if call.name is None and name:
                call.name = name
            fragment = function.get("arguments")
            if fragment is not None and not isinstance(fragment, str):
                raise self._malformed("tool_calls[].function.arguments", "a string", fragment)
            if not call.started and call.name is not None and (call.id or fragment):
                self._start(call, events)
            if fragment:
                call.arguments.append(fragment)
                if call.started:
                    events.append(ChatToolCallArgumentsDelta(id=call.id or "", delta=fragment))

    def _start(self, call: _Call, events: list[ChatStreamEvent]) -> None:
        call.id = call.id or f"call_{new_id().replace('-', '')[:24]}"
        if call.id in self._ids:  # two calls of one response with one id: both are answered
            call.id = f"{call.id}_{len(self._ids) + 1}"
        self._ids.add(call.id)
        call.started = True
        events.append(ChatToolCallStarted(id=call.id, name=call.name or ""))
        if call.arguments:  # fragments that came before the call could be announced
            events.append(ChatToolCallArgumentsDelta(id=call.id, delta="".join(call.arguments)))

    def _complete_calls(self, events: list[ChatStreamEvent]) -> None:
        for index in sorted(self._calls):
            call = self._calls[index]
            if call.name is None:
                # not the provider's failure: the model gets a failed tool result to react to
                call.name = ""
            if not call.started:
                self._start(call, events)
            arguments = "".join(call.arguments) or "{}"
            events.append(
                ChatToolCallCompleted(
                    call=ToolCall(id=call.id or "", name=call.name, arguments=arguments)
                )
            )

    def finish(self) -> list[ChatStreamEvent]:
        """The closing events once the stream ended; an error if it ended unfinished."""
        events: list[ChatStreamEvent] = []
        if self._finish is None:
            if not self.is_done:
                raise self._error(
                    f"stream ended after {self._chunks} chunk(s) without a finish_reason "
                    "or [DONE]"
                )
            self._complete_calls(events)  # [DONE] without a finish_reason: still complete
        reason = _FINISH_REASONS.get(self._finish or "")
        if self._calls and reason in (None, FinishReason.STOP):
            reason = FinishReason.TOOL_CALLS
        events.append(ChatFinished(finish_reason=reason or FinishReason.STOP, usage=self._usage))
        return events
