r"""What the HTTP chat providers share (OpenAI-compatible, Anthropic): one httpx client per
event loop, credentials checked and redacted, the translation of httpx failures and error
statuses, and the stream boundary every failure passes.

Needs httpx and httpx-sse (the ``[openai]`` / ``[anthropic]`` extras); imported only by those providers.

The boundary (:meth:`HttpChatProvider.stream`): foreign exceptions become
:class:`~rxinvoke.errors.ProviderError`\ s naming provider and model, and an error whose
cause chain mentions a secret is replaced by a redacted copy with no chain (raised outside the
``except`` block, so it has no ``__context__`` either): no event, error, log record or stored
run ever holds a credential.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
from httpx_sse import EventSource, ServerSentEvent, SSEError
from pydantic import SecretStr

from ..errors import (
    ProviderConnectionError,
    ProviderContextOverflow,
    ProviderError,
    ProviderHTTPError,
    ProviderStreamError,
    redacted,
)
from ..events import ChatStarted, ChatStreamEvent
from ..messages import ChatRequest

__all__ = (
    "HttpChatProvider",
    "StreamParser",
    "check_credential",
    "error_message",
    "resolve_key",
    "retry_after",
    "secrets_of",
)


def resolve_key(api_key: SecretStr | str | None, api_key_env: str | None) -> SecretStr | None:
    """The provider's key: ``api_key``, else the ``api_key_env`` variable's value (None when
    neither gives one), checked like every credential (printable ASCII, never echoed)."""
    source = "api_key"
    if api_key is None and api_key_env:
        api_key = os.environ.get(api_key_env) or None
        source = f"the environment variable {api_key_env}"
    if api_key is None:
        return None
    key = SecretStr(api_key) if isinstance(api_key, str) else api_key
    check_credential(key.get_secret_value(), f"the API key ({source})")
    return key


class StreamParser(Protocol):
    """Folds one response's server-sent events into chat events."""

    is_done: bool
    """The response is complete: read no further."""

    def feed(self, name: str, data: str) -> list[ChatStreamEvent]: ...

    def finish(self) -> list[ChatStreamEvent]:
        """The closing events once the stream ended; an error if it ended unfinished."""
        ...


class HttpChatProvider:
    """The HTTP plumbing of a streaming chat provider; subclasses build the request and parse
    the stream (:meth:`_events`)."""

    _url: str

    def __init__(
        self,
        *,
        id: str,
        models: Sequence[str],
        base_url: str,
        headers: Mapping[str, str],
        timeout: float | None,
        client: httpx.AsyncClient | None,
    ) -> None:
        for name, value in headers.items():
            check_credential(value, f"the value of header {name!r}")
        self._id = id
        self._models = tuple(models)
        self._base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._secrets = secrets_of(self._headers)
        self._timeout = httpx.Timeout(timeout)
        self._external_client = client
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

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

    async def aclose(self) -> None:
        """Close the HTTP client this provider made (never an injected one)."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> HttpChatProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _client_for_this_loop(self) -> httpx.AsyncClient:
        if self._external_client is not None:
            return self._external_client
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            # A client's pooled connections belong to the loop that opened them.
            self._client = httpx.AsyncClient(timeout=self._timeout)
            self._client_loop = loop
        return self._client

    # --- the boundary ---------------------------------------------------------------------

    async def stream(self, request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        """Stream one model response as chat events (see the module policy)."""
        failure: ProviderError | None = None
        events = self._events(request)
        try:
            async for event in events:
                yield event
        except ProviderError as exc:
            if not self._mentions_secret(exc):
                raise
            failure = self._scrubbed(exc)
        except AssertionError:
            raise  # a failed assertion (a test's guard) is nobody's response: never translated
        except Exception as exc:
            translated = ProviderStreamError(
                self._id, request.model, f"unreadable response: {type(exc).__name__}: {exc}"
            )
            if not self._mentions_secret(exc):
                raise translated from exc
            failure = self._scrubbed(translated)
        finally:
            await events.aclose()
        if failure is not None:
            raise failure

    def request_body(self, request: ChatRequest) -> dict[str, Any]:
        """The JSON body sent for ``request`` (the protocol mapping; no credentials)."""
        raise NotImplementedError  # pragma: no cover

    def _parser(self, request: ChatRequest) -> StreamParser:
        """A parser of one response's server-sent events."""
        raise NotImplementedError  # pragma: no cover

    async def _events(self, request: ChatRequest) -> AsyncGenerator[ChatStreamEvent, None]:
        """POST the request, then ``chat_started`` and the parser's events, SSE by SSE, until
        it is done; the response is closed however the stream ends (a cancel included)."""
        model = request.model
        response = await self._open(self.request_body(request), model)
        sse_events: AsyncGenerator[ServerSentEvent, None] | None = None
        try:
            yield ChatStarted(provider=self._id, model=model)
            parser = self._parser(request)
            sse_events = EventSource(response).aiter_sse()
            try:
                async for sse in sse_events:
                    for event in parser.feed(sse.event, sse.data):
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

    def _mentions_secret(self, exc: BaseException) -> bool:
        seen: set[int] = set()
        pending = [exc]
        while pending:
            current = pending.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            texts = (str(current), repr(current), *(repr(a) for a in current.args))
            if any(secret in text for text in texts for secret in self._secrets):
                return True
            pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        return False

    def _scrubbed(self, exc: ProviderError) -> ProviderError:
        return redacted(exc, self._redact)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "**********")
        return text

    # --- the response ---------------------------------------------------------------------

    async def _open(self, body: dict[str, Any], model: str) -> httpx.Response:
        """POST ``body`` and return the streaming response once its status is known to be a
        success and its type an event stream (the caller closes it)."""
        client = self._client_for_this_loop()
        http_request = client.build_request(
            "POST", self._url, json=body, headers=self._headers, timeout=self._timeout
        )
        try:
            response = await client.send(http_request, stream=True)
        except httpx.HTTPError as exc:
            raise self._translate(exc, model) from exc
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
        except BaseException:
            await response.aclose()
            raise
        return response

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
        message = error_message(response.text) or response.reason_phrase or "no details"
        overflow = response.status_code in (400, 413) and self._is_context_overflow(response.text)
        kind = ProviderContextOverflow if overflow else ProviderHTTPError
        return kind(
            self._id,
            model,
            response.status_code,
            self._redact(message),
            retry_after=retry_after(response.headers),
        )

    @staticmethod
    def _is_context_overflow(text: str) -> bool:
        """Whether an error body says the context is too long for the model."""
        return False


_CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "api-key", "x-api-key"})


def check_credential(value: str, what: str) -> None:
    """Refuse what HTTP cannot carry as a header value, without echoing it."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    for position, char in enumerate(value):
        if not " " <= char <= "~":
            kind = "a control character" if char < " " or char == "\x7f" else "a non-ASCII character"
            raise ValueError(
                f"{what} contains {kind} at position {position}: only printable ASCII is "
                "allowed (nothing is stripped; check for a trailing newline or a pasted quote)"
            )


def secrets_of(headers: Mapping[str, str]) -> tuple[str, ...]:
    """Every credential value in ``headers``: whole values and their token after a scheme."""
    found: list[str] = []
    for name, value in headers.items():
        if name.lower() not in _CREDENTIAL_HEADERS or not value.strip():
            continue
        found.append(value)
        token = value.split(" ", 1)[1].strip() if " " in value else ""
        if len(token) >= 4:
            found.append(token)
    return tuple(sorted(set(found), key=len, reverse=True))  # longest first


def error_message(text: str) -> str:
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


def retry_after(headers: httpx.Headers) -> float | None:
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
