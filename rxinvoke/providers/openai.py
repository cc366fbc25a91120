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
  never part of a repr, an event, a ``ChatRequest`` or an error message (error bodies that
  echo it are redacted).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError
from pydantic import SecretStr

from ..errors import (
    ProviderConnectionError,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
)
from ..events import (
    ChatFinished,
    ChatStarted,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
)
from ..messages import ChatRequest, FinishReason, Message, TokenUsage, ToolCall, new_id

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


class OpenAIProvider:
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
        if api_key is None and api_key_env:
            from_env = os.environ.get(api_key_env)
            api_key = from_env if from_env else None
        self._api_key: SecretStr | None = (
            SecretStr(api_key) if isinstance(api_key, str) else api_key
        )
        self._id = id
        self._models = tuple(models)
        self._base_url = base_url.rstrip("/")
        self._url = f"{self._base_url}/chat/completions"
        self._headers = {"Accept": "text/event-stream", **(headers or {})}
        if self._api_key is not None:
            self._headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        self._timeout = httpx.Timeout(timeout)
        self._extra_body = dict(extra_body or {})
        self._external_client = client
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        key = "set" if self._api_key is not None else "none"
        return f"OpenAIProvider(id={self._id!r}, base_url={self._base_url!r}, api_key={key})"

    @property
    def id(self) -> str:
        return self._id

    @property
    def models(self) -> Sequence[str]:
        return self._models

    @property
    def base_url(self) -> str:
        """The API root requests go to."""
        return self._base_url

    @property
    def has_api_key(self) -> bool:
        """True when requests carry an ``Authorization`` header."""
        return self._api_key is not None

    async def aclose(self) -> None:
        """Close the HTTP client this provider made (never an injected one)."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

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

    def _client_for_this_loop(self) -> httpx.AsyncClient:
        if self._external_client is not None:
            return self._external_client
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            # A client's pooled connections belong to the loop that opened them.
            self._client = httpx.AsyncClient(timeout=self._timeout)
            self._client_loop = loop
        return self._client

    # --- the response --------------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        """Stream one chat completion as chat events (see the module policy)."""
        model = request.model
        client = self._client_for_this_loop()
        http_request = client.build_request(
            "POST",
            self._url,
            json=self.request_body(request),
            headers=self._headers,
            timeout=self._timeout,
        )
        try:
            response = await client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise self._translate(exc, model) from exc
        sse_events: AsyncGenerator[ServerSentEvent, None] | None = None
        try:
            if response.status_code >= 400:
                try:
                    await response.aread()
                except httpx.HTTPError as exc:
                    raise self._translate(exc, model) from exc
                raise self._status_error(response, model)
            content_type = response.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                raise ProviderStreamError(
                    self._id,
                    model,
                    f"expected a text/event-stream response, got {content_type or 'none'!r} "
                    "(does the server support stream=true?)",
                )
            yield ChatStarted(provider=self._id, model=model)
            parser = _ChunkParser(self._id, model)
            sse_events = EventSource(response).aiter_sse()
            try:
                async for sse in sse_events:
                    if sse.event == "error":
                        raise ProviderStreamError(
                            self._id, model, f"server error in stream: {self._redact(sse.data)}"
                        )
                    for event in parser.feed(sse.data):
                        yield event
                    if parser.is_done:
                        break
            except httpx.HTTPError as exc:
                raise self._translate(exc, model) from exc
            except SSEError as exc:
                raise ProviderStreamError(self._id, model, str(exc)) from exc
            for event in parser.finish():
                yield event
        finally:
            if sse_events is not None:
                await sse_events.aclose()
            await response.aclose()

    def _translate(self, exc: httpx.HTTPError, model: str) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            return ProviderConnectionError(
                self._id, model, f"timed out ({type(exc).__name__}) talking to {self._url}"
            )
        if isinstance(exc, httpx.TransportError):
            detail = str(exc) or type(exc).__name__
            what = "cannot connect to" if isinstance(exc, httpx.ConnectError) else "connection to"
            return ProviderConnectionError(self._id, model, f"{what} {self._url}: {detail}")
        if isinstance(exc, httpx.DecodingError):
            return ProviderStreamError(self._id, model, f"undecodable response: {exc}")
        return ProviderError(self._id, model, f"{type(exc).__name__}: {exc}")

    def _status_error(self, response: httpx.Response, model: str) -> ProviderHTTPError:
        message = _error_message(response.text) or response.reason_phrase or "no details"
        return ProviderHTTPError(
            self._id,
            model,
            response.status_code,
            self._redact(message),
            retry_after=_retry_after(response.headers),
        )

    def _redact(self, text: str) -> str:
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            if secret:
                text = text.replace(secret, "**********")
        return text


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


def _error_message(text: str) -> str:
    """The human part of an error body: OpenAI's ``error.message`` and its common variants."""
    message: Any = None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):  # Ollama, llama.cpp
            message = error
        if not isinstance(message, str):
            message = data.get("message") or data.get("detail")  # others, FastAPI (vLLM)
    if not isinstance(message, str):
        message = text
    return " ".join(message.split())  # one line, whatever the server sent


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms`` (OpenAI) or ``Retry-After``."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Call:
    __slots__ = ("arguments", "id", "name", "started")

    def __init__(self) -> None:
        self.id: str | None = None
        self.name: str | None = None
        self.arguments: list[str] = []
        self.started = False


class _ChunkParser:
    """Folds ``chat.completion.chunk`` payloads into chat events (choice 0 only)."""

    def __init__(self, provider: str, model: str) -> None:
        self._provider = provider
        self._model = model
        self._calls: dict[int, _Call] = {}
        self._finish: str | None = None
        self._usage: TokenUsage | None = None
        self._chunks = 0
        self.is_done = False
        """``[DONE]`` was received: read no further."""

    def _error(self, message: str) -> ProviderStreamError:
        return ProviderStreamError(self._provider, self._model, message)

    def feed(self, data: str) -> list[ChatStreamEvent]:
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
            raise self._error(f"server error in stream: {_error_message(data)}")
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self._usage = _token_usage(usage)
        choices = chunk.get("choices")
        if not choices:
            return []  # the usage chunk, keep-alives
        choice = choices[0]
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            return []
        events: list[ChatStreamEvent] = []
        delta = choice.get("delta")
        if delta:
            if self._finish is not None:
                if delta.get("content") or delta.get("tool_calls"):
                    raise self._error("content received after finish_reason")
            else:
                content = delta.get("content")
                if content:
                    events.append(ChatTextDelta(delta=content))
                tool_calls = delta.get("tool_calls")
                if tool_calls:
                    self._fold_tool_calls(tool_calls, events)
        finish = choice.get("finish_reason")
        if finish and self._finish is None:
            self._finish = finish
            self._complete_calls(events)
        return events

    def _fold_tool_calls(self, deltas: list[Any], events: list[ChatStreamEvent]) -> None:
        for position, item in enumerate(deltas):
            index = item.get("index", position)
            call = self._calls.get(index)
            if call is None:
                call = self._calls[index] = _Call()
            if call.id is None and item.get("id"):
                call.id = item["id"]
            function = item.get("function") or {}
            if call.name is None and function.get("name"):
                call.name = function["name"]
            fragment = function.get("arguments")
            if not call.started and call.name is not None and (call.id or fragment):
                self._start(call, events)
            if fragment:
                call.arguments.append(fragment)
                if call.started:
                    events.append(ChatToolCallArgumentsDelta(id=call.id or "", delta=fragment))

    def _start(self, call: _Call, events: list[ChatStreamEvent]) -> None:
        call.id = call.id or f"call_{new_id().replace('-', '')[:24]}"
        call.started = True
        events.append(ChatToolCallStarted(id=call.id, name=call.name or ""))
        if call.arguments:  # fragments that came before the call could be announced
            events.append(ChatToolCallArgumentsDelta(id=call.id, delta="".join(call.arguments)))

    def _complete_calls(self, events: list[ChatStreamEvent]) -> None:
        for index in sorted(self._calls):
            call = self._calls[index]
            if call.name is None:
                raise self._error(f"tool call at index {index} has no function name")
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


def _token_usage(usage: Mapping[str, Any]) -> TokenUsage:
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    total = usage.get("total_tokens") or prompt + completion
    return TokenUsage(input_tokens=prompt, output_tokens=completion, total_tokens=total)
