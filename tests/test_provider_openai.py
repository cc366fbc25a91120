"""OpenAIProvider against a real HTTP server on 127.0.0.1 (aiohttp, in the test's loop).

The server replays scripted chat-completions transcripts (one reply per request, in order)
and records every request it receives. Faults are real: HTTP error statuses, a connection
closed mid-body, malformed chunks, a client that goes away. Runs are synchronised with
``asyncio.Event`` gates; the only waits are bounded hang guards, never timing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from rxinvoke import (
    INVOCATION_EVENT,
    AgentRuntime,
    ChatFinished,
    ChatRequest,
    ChatStreamEvent,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
    Control,
    FinishReason,
    InvocationCancelled,
    InvocationEvent,
    InvocationFailed,
    Message,
    ModelRetried,
    ProviderConnectionError,
    ProviderContextOverflow,
    ProviderHTTPError,
    ProviderStreamError,
    RunFailed,
    RunRequest,
    RuntimePolicy,
    TokenUsage,
    ToolCall,
    ToolChoice,
    ToolExecutionFinished,
    ToolFailure,
    ToolSpec,
    ToolSuccess,
    _model_call,
    tool,
)
from rxinvoke._model_call import retry_delay
from rxinvoke.cli import main
from rxinvoke.providers.openai import OpenAIProvider

MODEL = "test-model"
KEY = "sk-test-0123456789abcdef"

# --- the loopback server --------------------------------------------------------------------


@dataclass
class Stream:
    """A 200 ``text/event-stream`` reply: one ``data:`` event per chunk (dicts as JSON)."""

    chunks: Sequence[dict[str, Any] | str]
    done: bool = True
    """Send ``data: [DONE]`` after the chunks."""
    drop_after: int | None = None
    """Close the connection abruptly after this many chunks (the body is left unfinished)."""
    hold_after: int | None = None
    """After this many chunks, send nothing more and wait for the client to go away."""
    content_type: str = "text/event-stream"


@dataclass
class Error:
    """An HTTP error reply."""

    status: int
    body: dict[str, Any] | str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class ChatServer:
    """Speaks ``POST /v1/chat/completions`` streaming from a script; records requests."""

    def __init__(self) -> None:
        self.replies: list[Stream | Error] = []
        self.requests: list[Received] = []
        self.holding = asyncio.Event()
        """A ``hold_after`` reply has sent its chunks and is waiting."""
        self.disconnected = asyncio.Event()
        """A held reply saw the client disconnect."""
        self._runner: web.AppRunner | None = None
        self.url = ""

    def script(self, *replies: Stream | Error) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        # handler_cancellation: a client that goes away cancels its handler (disconnect seen)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Received(request.path, dict(request.headers), await request.json())
        )
        if not self.replies:
            return web.json_response({"error": {"message": "script exhausted"}}, status=500)
        reply = self.replies.pop(0)
        if isinstance(reply, Error):
            if isinstance(reply.body, str):
                return web.Response(status=reply.status, text=reply.body, headers=reply.headers)
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        response = web.StreamResponse(headers={"Content-Type": reply.content_type})
        await response.prepare(request)
        for index, chunk in enumerate(reply.chunks):
            if index == reply.drop_after:
                return self._drop(request, response)
            if index == reply.hold_after:
                await self._hold()
            data = chunk if isinstance(chunk, str) else json.dumps(chunk)
            await response.write(f"data: {data}\n\n".encode())
        if reply.drop_after is not None:
            return self._drop(request, response)
        if reply.hold_after is not None:
            await self._hold()
        if reply.done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _drop(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # flushes what was written, then FIN mid chunked body
        return response

    async def _hold(self) -> None:
        self.holding.set()
        try:
            await asyncio.Event().wait()  # until the client goes away
        except asyncio.CancelledError:
            self.disconnected.set()
            raise


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    chat_server = ChatServer()
    await chat_server.start()
    yield chat_server
    await chat_server.stop()


# --- transcripts ------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(prompt: int = 11, completion: int = 7) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def text_reply(text: str, *, size: int = 3, usage: bool = True) -> Stream:
    chunks: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": part}) for part in split(text, size)]
    chunks.append(chunk({}, "stop"))
    if usage:
        chunks.append(usage_chunk())
    return Stream(chunks)


def tool_reply(calls: Sequence[tuple[str, str, str]], *, size: int = 2) -> Stream:
    """Calls ``(id, name, arguments)``, sequential as OpenAI sends them, arguments in
    ``size``-character fragments; id and name only in each call's first chunk."""
    chunks: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": None})]
    for index, (call_id, name, arguments) in enumerate(calls):
        chunks.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call_id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        )
        chunks += [
            chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
            for part in split(arguments, size)
        ]
    chunks += [chunk({}, "tool_calls"), usage_chunk()]
    return Stream(chunks)


# --- helpers ----------------------------------------------------------------------------------

FAST = RuntimePolicy(retry_backoff=0.001, retry_backoff_max=0.005)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float | None]]:
    """Retries with no wait at all, recording the (attempt, retry_after) the runtime asked for."""
    calls: list[tuple[int, float | None]] = []

    def record(policy: RuntimePolicy, attempt: int, retry_after: float | None = None) -> float:
        calls.append((attempt, retry_after))
        return 0.0

    monkeypatch.setattr(_model_call, "retry_delay", record)
    return calls


@pytest.fixture
async def providers() -> AsyncIterator[Callable[..., OpenAIProvider]]:
    made: list[OpenAIProvider] = []

    def make(base_url: str, **kwargs: Any) -> OpenAIProvider:
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("api_key_env", None)
        provider = OpenAIProvider(base_url=base_url, **kwargs)
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


@dataclass
class Rig:
    runtime: AgentRuntime
    provider: OpenAIProvider
    events: list[InvocationEvent]

    def types(self) -> list[str]:
        return [e.type for e in self.events]

    async def run(self, text: str = "hello", **kwargs: Any) -> Any:
        kwargs.setdefault("session_id", uuid.uuid4())
        return await self.runtime.run(
            RunRequest(provider="openai", model=MODEL, input=text, **kwargs)
        )

    async def history(self, session_id: uuid.UUID) -> list[Message]:
        return list(await self.runtime.store.load_history(session_id))


@pytest.fixture
def rig(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> Callable[..., Rig]:
    def make(*, tools: Sequence[Any] = (), policy: RuntimePolicy = FAST, **kwargs: Any) -> Rig:
        provider = providers(server.url, **kwargs)
        runtime = AgentRuntime(providers=[provider], tools=tools, policy=policy)
        events: list[InvocationEvent] = []
        runtime.events.subscribe(events.append)
        return Rig(runtime, provider, events)

    return make


async def collect(provider: OpenAIProvider, request: ChatRequest) -> list[ChatStreamEvent]:
    return [event async for event in provider.stream(request)]


def chat(*messages: Message, **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        provider="openai",
        model=MODEL,
        messages=messages or (Message(role="user", content="hi"),),
        **kwargs,
    )


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


# --- the response: text, tool calls, usage ---------------------------------------------------


async def test_plain_text_streams_as_deltas_then_finishes_with_usage(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    server.script(text_reply("Hello, loopback!", size=4))
    provider = providers(server.url)

    events = await collect(provider, chat())

    assert [e.type for e in events] == [
        "chat_started",
        *["chat_text_delta"] * 4,
        "chat_finished",
    ]
    assert events[0].model_dump(include={"provider", "model"}) == {
        "provider": "openai",
        "model": MODEL,
    }
    assert "".join(e.delta for e in events if isinstance(e, ChatTextDelta)) == "Hello, loopback!"
    assert events[-1] == ChatFinished(
        finish_reason=FinishReason.STOP,
        usage=TokenUsage(input_tokens=11, output_tokens=7, total_tokens=18),
        timestamp=events[-1].timestamp,
    )
    assert server.requests[0].path == "/v1/chat/completions"
    assert {e.run_id for e in events} == {None}  # a request without a run: nothing stamped


async def test_text_fragments_carry_the_requests_run_id(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    server.script(text_reply("Hello, loopback!", size=4))
    events = await collect(providers(server.url), chat(run_id="run-7"))
    deltas = [e for e in events if isinstance(e, ChatTextDelta)]
    assert len(deltas) == 4 and {e.run_id for e in deltas} == {"run-7"}  # the runtime copies none


@pytest.mark.parametrize("count", [1, 3], ids=["one-call", "three-parallel-calls"])
async def test_tool_calls_are_assembled_from_argument_fragments(
    server: ChatServer, providers: Callable[..., OpenAIProvider], count: int
) -> None:
    calls = [
        (f"call_{i}", "add", json.dumps({"a": i, "b": 10 * i})) for i in range(count)
    ]
    server.script(tool_reply(calls, size=2))
    provider = providers(server.url)

    events = await collect(provider, chat())

    started = [e for e in events if isinstance(e, ChatToolCallStarted)]
    completed = [e.call for e in events if isinstance(e, ChatToolCallCompleted)]
    assert [(e.id, e.name) for e in started] == [(cid, name) for cid, name, _ in calls]
    assert completed == [ToolCall(id=cid, name=n, arguments=a) for cid, n, a in calls]
    for call_id, _, arguments in calls:
        fragments = [
            e.delta for e in events if isinstance(e, ChatToolCallArgumentsDelta) and e.id == call_id
        ]
        assert len(fragments) == len(split(arguments, 2)) > 5
        assert "".join(fragments) == arguments
    assert isinstance(events[-1], ChatFinished)
    assert events[-1].finish_reason is FinishReason.TOOL_CALLS
    # order: each call starts before its fragments, and all complete before chat_finished
    kinds = [e.type for e in events]
    assert kinds[0] == "chat_started"
    assert kinds[-count - 1 :] == ["chat_tool_call_completed"] * count + ["chat_finished"]


async def test_interleaved_tool_call_chunks_are_assembled_by_index(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    def part(index: int, **fields: Any) -> dict[str, Any]:
        function = {k: v for k, v in fields.items() if k in ("name", "arguments")}
        item: dict[str, Any] = {"index": index, "function": function}
        if "id" in fields:
            item["id"] = fields["id"]
        return item

    server.script(
        Stream(
            [
                chunk({"tool_calls": [part(0, id="a", name="add"), part(1, id="b", name="add")]}),
                chunk(
                    {"tool_calls": [part(1, arguments='{"a": 2,'), part(0, arguments='{"a": 1,')]}
                ),
                chunk({"tool_calls": [part(0, arguments=' "b": 1}')]}),
                chunk({"tool_calls": [part(1, arguments=' "b": 2}')]}),
                chunk({}, "tool_calls"),
            ]
        )
    )
    provider = providers(server.url)

    events = await collect(provider, chat())

    assert [e.call for e in events if isinstance(e, ChatToolCallCompleted)] == [
        ToolCall(id="a", name="add", arguments='{"a": 1, "b": 1}'),
        ToolCall(id="b", name="add", arguments='{"a": 2, "b": 2}'),
    ]


async def test_a_call_without_id_or_arguments_gets_an_id_and_empty_object(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    server.script(
        Stream(
            [
                chunk({"tool_calls": [{"index": 0, "function": {"name": "now"}}]}),
                chunk({}, "stop"),
            ]
        )
    )
    provider = providers(server.url)

    events = await collect(provider, chat())

    (call,) = [e.call for e in events if isinstance(e, ChatToolCallCompleted)]
    assert call.name == "now" and call.arguments == "{}" and call.id.startswith("call_")
    started = next(e for e in events if isinstance(e, ChatToolCallStarted))
    assert started.id == call.id
    assert events[-1].finish_reason is FinishReason.TOOL_CALLS  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", FinishReason.STOP),
        ("length", FinishReason.LENGTH),
        ("content_filter", FinishReason.CONTENT_FILTER),
        ("tool_calls", FinishReason.TOOL_CALLS),
        ("something_new", FinishReason.STOP),
    ],
)
async def test_finish_reasons_are_mapped(
    server: ChatServer,
    providers: Callable[..., OpenAIProvider],
    reason: str,
    expected: FinishReason,
) -> None:
    server.script(Stream([chunk({"content": "x"}), chunk({}, reason)]))

    events = await collect(providers(server.url), chat())

    assert events[-1] == ChatFinished(
        finish_reason=expected, usage=None, timestamp=events[-1].timestamp
    )


@pytest.mark.parametrize(
    "stream",
    [
        Stream([chunk({"content": "ok"})], done=True),  # [DONE], no finish_reason
        Stream([chunk({"content": "ok"}), chunk({}, "stop")], done=False),  # no [DONE]
    ],
    ids=["done-without-finish-reason", "finish-reason-without-done"],
)
async def test_either_a_finish_reason_or_done_completes_the_stream(
    server: ChatServer, providers: Callable[..., OpenAIProvider], stream: Stream
) -> None:
    server.script(stream)

    events = await collect(providers(server.url), chat())

    assert [e.type for e in events] == ["chat_started", "chat_text_delta", "chat_finished"]


# --- the request ------------------------------------------------------------------------------


async def test_the_request_body_follows_the_protocol_for_every_role(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    server.script(text_reply("ok"))
    provider = providers(server.url, headers={"X-Team": "rx"}, extra_body={"temperature": 0})
    spec = ToolSpec(
        name="add",
        description="Add two integers.",
        parameters={"type": "object", "properties": {"a": {"type": "integer"}}},
    )
    request = chat(
        Message(role="system", content="Be brief."),
        Message(role="user", content="2+3 and 4+5?"),
        Message(
            role="assistant",
            content="",
            tool_calls=(
                ToolCall(id="c1", name="add", arguments='{"a": 2, "b": 3}'),
                ToolCall(id="c2", name="add", arguments='{"a": 4, "b": 5}'),
            ),
        ),
        Message(role="tool", content="5", tool_call_id="c1"),
        Message(role="tool", content="9", tool_call_id="c2"),
        Message(role="assistant", content="5 and 9."),
        Message(role="user", content="thanks"),
        tools=(spec,),
    )

    await collect(provider, request)

    (received,) = server.requests
    assert received.body == {
        "temperature": 0,
        "model": MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+3 and 4+5?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 4, "b": 5}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "5"},
            {"role": "tool", "tool_call_id": "c2", "content": "9"},
            {"role": "assistant", "content": "5 and 9."},
            {"role": "user", "content": "thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "add",
                    "description": "Add two integers.",
                    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}},
                },
            }
        ],
        "tool_choice": "auto",
    }
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    assert headers["accept"] == "text/event-stream"
    assert headers["content-type"] == "application/json"
    assert headers["x-team"] == "rx"


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        (ToolChoice.auto(), "auto"),
        (ToolChoice.none(), "none"),
        (ToolChoice.required(), "required"),
        (ToolChoice.tool("add"), {"type": "function", "function": {"name": "add"}}),
    ],
    ids=["auto", "none", "required", "named"],
)
async def test_tool_choice_is_mapped(
    server: ChatServer, providers: Callable[..., OpenAIProvider], choice: ToolChoice, sent: Any
) -> None:
    server.script(text_reply("ok"))

    await collect(providers(server.url), chat(tools=(ToolSpec(name="add"),), tool_choice=choice))

    assert server.requests[0].body["tool_choice"] == sent


async def test_without_tools_no_tools_or_tool_choice_are_sent(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    server.script(text_reply("ok"))

    await collect(providers(server.url), chat(tool_choice=ToolChoice.required()))

    assert "tools" not in server.requests[0].body
    assert "tool_choice" not in server.requests[0].body


# --- through the runtime ----------------------------------------------------------------------


async def test_a_tool_round_trip_sends_the_tool_result_in_the_second_request(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(
        tool_reply([("call_1", "add", '{"a": 2, "b": 3}')], size=3),
        text_reply("2 + 3 = 5."),
    )
    r = rig(tools=[add])
    session = uuid.uuid4()

    output = await r.run("what is 2 + 3?", session_id=session, system_prompt="Be brief.")

    assert output.output_text == "2 + 3 = 5."
    assert output.finish_reason is FinishReason.STOP
    assert output.total_usage == TokenUsage(input_tokens=22, output_tokens=14, total_tokens=36)
    first, second = (received.body["messages"] for received in server.requests)
    assert first == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "what is 2 + 3?"},
    ]
    assert second == [
        *first,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]
    assert server.requests[0].body["tools"][0]["function"]["name"] == "add"
    kinds = r.types()
    assert kinds[0] == "run_started" and kinds[-1] == "run_completed"
    assert kinds.count("chat_started") == 2
    for kind in ("tool_call_started", "tool_call_completed", "tool_execution_finished"):
        assert kinds.count(kind) == 1
    assert kinds.index("tool_call_started") < kinds.index("tool_call_completed")
    assert kinds.index("tool_call_completed") < kinds.index("tool_execution_started")
    (finished,) = [e for e in r.events if isinstance(e, ToolExecutionFinished)]
    assert finished.result == ToolSuccess(output="5")
    assert [m.role for m in await r.history(session)] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]


async def test_invalid_tool_argument_json_becomes_a_tool_failure_the_model_is_told_about(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(
        tool_reply([("call_1", "add", '{"a": 2, "b": ')]),  # cut-off JSON from the model
        text_reply("Sorry."),
    )
    r = rig(tools=[add])

    output = await r.run("what is 2 + 3?")

    assert output.output_text == "Sorry."
    (finished,) = [e for e in r.events if isinstance(e, ToolExecutionFinished)]
    assert isinstance(finished.result, ToolFailure)
    assert finished.result.error_type == "ToolArgumentsError"
    tool_message = server.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert tool_message["content"].startswith("Error: ")


# --- errors and retries -----------------------------------------------------------------------


async def test_a_500_is_retried_and_the_run_succeeds(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(Error(500, {"error": {"message": "upstream hiccup"}}), text_reply("fine"))
    r = rig()

    output = await r.run()

    assert output.output_text == "fine"
    assert len(server.requests) == 2
    assert server.requests[0].body == server.requests[1].body
    assert r.types().count("chat_started") == 1  # the failed attempt published nothing
    assert r.types().count("model_started") == 1


async def test_a_429_waits_the_retry_after_the_server_asked_for(
    server: ChatServer, rig: Callable[..., Rig], asked: list[tuple[int, float | None]]
) -> None:
    server.script(
        Error(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "7"}),
        Error(503, "overloaded"),
        text_reply("done"),
    )
    r = rig(policy=RuntimePolicy(max_retries=3))

    output = await r.run()

    assert output.output_text == "done"
    assert asked == [(0, 7.0), (1, None)]
    assert len(server.requests) == 3
    # each failed attempt is an event: what failed, and when the call is made again
    retried = [e for e in r.events if isinstance(e, ModelRetried)]
    assert [(e.attempt, e.status, e.delay_ms) for e in retried] == [(1, 429, 0.0), (2, 503, 0.0)]
    assert retried[0].error == f"openai/{MODEL}: HTTP 429: slow down" and "HTTP 503" in retried[1].error
    types = r.types()
    assert types.index("model_started") < types.index("model_retried") < types.index("chat_started")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "3"}, 3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "1"}, 0.25),
        ({"Retry-After": "not a date"}, None),
        ({}, None),
    ],
)
async def test_retry_after_is_read_from_the_headers(
    server: ChatServer,
    providers: Callable[..., OpenAIProvider],
    headers: dict[str, str],
    expected: float | None,
) -> None:
    server.script(Error(429, {"error": {"message": "rate limited"}}, headers=headers))

    with pytest.raises(ProviderHTTPError) as caught:
        await collect(providers(server.url), chat())

    assert caught.value.status_code == 429
    assert caught.value.retry_after == expected


async def test_retry_after_as_an_http_date(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    server.script(Error(429, "busy", headers={"Retry-After": format_datetime(when, usegmt=True)}))

    with pytest.raises(ProviderHTTPError) as caught:
        await collect(providers(server.url), chat())

    assert caught.value.retry_after is not None and 100 < caught.value.retry_after <= 120


async def test_retries_are_bounded_by_the_policy(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(*[Error(503, {"error": {"message": "overloaded"}})] * 3)
    r = rig(policy=FAST.model_copy(update={"max_retries": 2}))

    with pytest.raises(InvocationFailed) as caught:
        await r.run()

    assert len(server.requests) == 3
    assert r.types().count("model_retried") == 2  # the third failure is the run's
    cause = caught.value.cause
    assert isinstance(cause, ProviderHTTPError) and cause.status_code == 503
    failed = r.events[-1]
    assert isinstance(failed, RunFailed)
    assert failed.error == f"openai/{MODEL}: HTTP 503: overloaded"
    assert "chat_started" not in r.types()


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_client_errors_are_not_retried_and_carry_the_servers_message(
    server: ChatServer, rig: Callable[..., Rig], status: int
) -> None:
    server.script(
        Error(
            status,
            {
                "error": {
                    "message": f"Incorrect API key provided: {KEY}.\nSee the docs.",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )
    )
    r = rig()

    with pytest.raises(InvocationFailed) as caught:
        await r.run()

    assert len(server.requests) == 1
    cause = caught.value.cause
    assert isinstance(cause, ProviderHTTPError) and cause.status_code == status
    assert r.types() == ["run_started", "context_built", "model_started", "run_failed"]
    assert r.events[-1].error == (  # type: ignore[union-attr]
        f"openai/{MODEL}: HTTP {status}: Incorrect API key provided: **********. See the docs."
    )


async def test_a_context_too_long_for_the_model_is_a_context_overflow(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(
        Error(
            400,
            {
                "error": {
                    "message": "This model's maximum context length is 128000 tokens. However, "
                    "your messages resulted in 131000 tokens.",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
        )
    )
    r = rig()

    with pytest.raises(InvocationFailed) as caught:
        await r.run()  # one turn: nothing older to compact, so the refusal ends the run

    assert isinstance(caught.value.cause, ProviderContextOverflow)
    assert caught.value.cause.status_code == 400
    assert "maximum context length is 128000" in r.events[-1].error  # type: ignore[union-attr]


async def test_a_connection_dropped_mid_stream_fails_the_run_and_commits_nothing(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    reply = text_reply("This answer is cut off half way", size=4)
    reply.drop_after = 4
    server.script(reply, text_reply("never sent"))
    r = rig()
    session = uuid.uuid4()

    with pytest.raises(InvocationFailed) as caught:
        await r.run("question", session_id=session)

    assert isinstance(caught.value.cause, ProviderConnectionError)
    assert r.events[-1].error.startswith(  # type: ignore[union-attr]
        f"openai/{MODEL}: connection to {server.url}/chat/completions: "
    )
    assert len(server.requests) == 1  # deltas were published: never retried
    kinds = r.types()
    assert kinds.count("chat_text_delta") == 3 and kinds[-1] == "run_failed"
    for never in ("chat_finished", "assistant_message_committed", "usage_recorded"):
        assert never not in kinds
    assert [m.role for m in await r.history(session)] == ["user"]


async def test_a_stream_that_ends_without_finish_reason_or_done_is_a_stream_error(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(Stream([chunk({"content": "half"})], done=False))
    r = rig()

    with pytest.raises(InvocationFailed) as caught:
        await r.run()

    assert isinstance(caught.value.cause, ProviderStreamError)
    assert "without a finish_reason or [DONE]" in r.events[-1].error  # type: ignore[union-attr]
    assert "assistant_message_committed" not in r.types()


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ('{"choices": [{"index": 0, "delta": {"content": "x"', "malformed JSON in stream chunk 2"),
        ('["not", "an", "object"]', "not a JSON object"),
        ('{"error": {"message": "model crashed"}}', "server error in stream: model crashed"),
    ],
    ids=["malformed-json", "not-an-object", "error-payload"],
)
async def test_a_bad_chunk_fails_the_run_and_commits_nothing(
    server: ChatServer, rig: Callable[..., Rig], bad: str, message: str
) -> None:
    server.script(Stream([chunk({"content": "fine so far"}), bad, chunk({}, "stop")]))
    r = rig()
    session = uuid.uuid4()

    with pytest.raises(InvocationFailed) as caught:
        await r.run(session_id=session)

    assert isinstance(caught.value.cause, ProviderStreamError)
    assert message in r.events[-1].error  # type: ignore[union-attr]
    assert "assistant_message_committed" not in r.types()
    assert [m.role for m in await r.history(session)] == ["user"]


async def test_a_response_that_is_not_an_event_stream_is_a_stream_error(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    server.script(Stream([chunk({"content": "x"})], content_type="application/json"))

    with pytest.raises(ProviderStreamError, match="expected a text/event-stream response"):
        await collect(providers(server.url), chat())


async def test_connection_refused_is_retried_then_fails_the_run(
    providers: Callable[..., OpenAIProvider],
    asked: list[tuple[int, float | None]],
) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = providers(f"http://127.0.0.1:{port}/v1")
    runtime = AgentRuntime(providers=[provider], policy=RuntimePolicy(max_retries=1))

    with pytest.raises(InvocationFailed) as caught:
        await runtime.run(RunRequest(provider="openai", model=MODEL, input="hi"))

    assert isinstance(caught.value.cause, ProviderConnectionError)
    assert asked == [(0, None)]


async def test_cancelling_the_run_mid_stream_closes_the_connection(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    reply = text_reply("a long answer that never ends", size=5)
    reply.hold_after = 3
    server.script(reply)
    r = rig()
    got_text = asyncio.Event()
    r.runtime.events.subscribe(lambda e: got_text.set() if e.type == "text_delta" else None)
    control = Control()
    session = uuid.uuid4()

    task = asyncio.ensure_future(
        r.runtime.run(
            RunRequest(provider="openai", model=MODEL, input="go", session_id=session), control
        )
    )
    await asyncio.wait_for(got_text.wait(), 5)  # hang guards only, not synchronisation
    await asyncio.wait_for(server.holding.wait(), 5)
    control.cancel()

    with pytest.raises(InvocationCancelled):
        await task
    await asyncio.wait_for(server.disconnected.wait(), 5)

    assert r.types()[-1] == "run_cancelled"
    assert "assistant_message_committed" not in r.types()
    assert [m.role for m in await r.history(session)] == ["user"]


# --- secrets, clients, the outbound guard -----------------------------------------------------


async def test_the_api_key_is_never_in_reprs_events_or_requests(
    server: ChatServer,
    providers: Callable[..., OpenAIProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RXINVOKE_TEST_KEY", KEY)
    server.script(tool_reply([("c1", "add", '{"a": 1, "b": 2}')]), text_reply("3"))
    provider = providers(server.url, api_key=None, api_key_env="RXINVOKE_TEST_KEY")
    seen: list[ChatRequest] = []
    real_stream = provider.stream

    def spy(request: ChatRequest) -> AsyncIterator[ChatStreamEvent]:
        seen.append(request)
        return real_stream(request)

    monkeypatch.setattr(provider, "stream", spy)
    runtime = AgentRuntime(providers=[provider], tools=[add], policy=FAST)
    events: list[InvocationEvent] = []
    runtime.events.subscribe(events.append)

    await runtime.run(RunRequest(provider="openai", model=MODEL, input="1+2?"))

    assert provider.has_api_key
    assert server.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(provider) and KEY not in str(provider)
    assert len(seen) == 2
    for request in seen:
        assert KEY not in request.model_dump_json()
        assert KEY not in json.dumps(provider.request_body(request))
    assert events
    for event in events:
        assert KEY not in INVOCATION_EVENT.dump_json(event).decode()


async def test_without_a_key_no_authorization_header_is_sent(
    server: ChatServer,
    providers: Callable[..., OpenAIProvider],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.script(text_reply("ok"))
    provider = providers(server.url, api_key=None, api_key_env="OPENAI_API_KEY")

    await collect(provider, chat())

    assert not provider.has_api_key
    assert "Authorization" not in server.requests[0].headers
    assert repr(provider) == f"OpenAIProvider(id='openai', base_url={server.url!r}, api_key=none)"


async def test_an_injected_client_is_used_and_left_open(
    server: ChatServer, providers: Callable[..., OpenAIProvider]
) -> None:
    server.script(text_reply("one"), text_reply("two"))
    async with httpx.AsyncClient() as client:
        provider = providers(server.url, client=client)
        await collect(provider, chat())
        await provider.aclose()
        await collect(provider, chat())
        assert not client.is_closed
    assert len(server.requests) == 2


async def test_the_conftest_guard_refuses_a_non_loopback_server(
    providers: Callable[..., OpenAIProvider],
) -> None:
    provider = providers("http://api.example.com/v1")

    with pytest.raises(AssertionError, match="tests may only call loopback servers"):
        await collect(provider, chat())


# --- the retry policy -------------------------------------------------------------------------


def test_retry_delay_is_full_jitter_capped_and_honours_retry_after() -> None:
    policy = RuntimePolicy(retry_backoff=0.5, retry_backoff_max=3.0)

    for attempt, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (50, 3.0), (5000, 3.0)]:
        delays = [retry_delay(policy, attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jitter spreads over the range
    assert retry_delay(policy, 0, retry_after=2.5) == 2.5
    assert retry_delay(policy, 4, retry_after=60.0) == 3.0  # capped
    assert retry_delay(policy, 0, retry_after=-1.0) == 0.0


# --- the command line -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _cli_database_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's durable store goes to a temporary file, never the user's default."""
    monkeypatch.setenv("RXINVOKE_DB", str(tmp_path / "rxinvoke.db"))



async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``rxinvoke run ...`` in-process, in a worker thread (it runs its own event loop)
    while the loopback server keeps serving on the test's loop."""
    code = await asyncio.to_thread(main, ["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def openai_args(server: ChatServer, *extra: str) -> list[str]:
    return ["--provider", "openai", "--model", MODEL, "--base-url", server.url, *extra]


async def test_cli_streams_an_openai_compatible_server(
    server: ChatServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    server.script(
        tool_reply([("call_1", "calculate", '{"expression": "2 + 3"}')]), text_reply("2 + 3 = 5.")
    )

    code, out, err = await cli(
        capsys, "what is 2 + 3?", *openai_args(server, "--api-key-env", "MY_KEY")
    )

    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == '→ calculate({"expression": "2 + 3"})'
    assert lines[1].startswith("← calculate: 5 (")
    assert lines[2] == "2 + 3 = 5."
    assert lines[3].startswith("[stop · 2 iteration(s) · tokens in 22 / out 14 / total 36 ·")
    assert server.requests[0].headers["Authorization"] == f"Bearer {KEY}"
    assert server.requests[0].body["model"] == MODEL


async def test_cli_json_output_with_a_keyless_local_server(
    server: ChatServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server.script(text_reply("hi there"))

    code, out, err = await cli(capsys, "hello", *openai_args(server, "--json"))

    assert (code, err) == (0, "")
    events = [INVOCATION_EVENT.validate_json(line) for line in out.splitlines()]
    assert events[0].type == "run_started" and events[-1].type == "run_completed"
    assert events[0].provider == "openai"  # type: ignore[union-attr]
    assert "Authorization" not in server.requests[0].headers


async def test_cli_reports_an_http_error_on_one_line(
    server: ChatServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KEY", KEY)
    server.script(Error(401, {"error": {"message": "Incorrect API key provided."}}))

    code, _, err = await cli(capsys, "hi", *openai_args(server, "--api-key-env", "MY_KEY"))

    assert code == 1
    assert err == f"rxinvoke: error: openai/{MODEL}: HTTP 401: Incorrect API key provided.\n"


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["--provider", "openai", "--model", MODEL, "--api-key-env", "RXINVOKE_UNSET_KEY"],
            1,
            "rxinvoke: error: no API key: the environment variable RXINVOKE_UNSET_KEY is not set\n",
        ),
        (
            ["--provider", "openai", "--model", MODEL],  # OpenAI itself needs a key
            1,
            "rxinvoke: error: no API key: the environment variable OPENAI_API_KEY is not set\n",
        ),
        (
            ["--provider", "openai"],
            2,
            "rxinvoke: error: --provider openai needs --model NAME\n",
        ),
    ],
    ids=["named-variable-unset", "openai-without-key", "no-model"],
)
def test_cli_rejects_a_missing_key_or_model_before_any_request(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    code: int,
    message: str,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("RXINVOKE_UNSET_KEY", raising=False)

    assert main(["run", "hi", *argv]) == code
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", message)


# --- secrets: a canary key never leaves the provider (issue 9) --------------------------------

CANARY = "sk-canary-7f3a9c0e51d24b68"


def _exception_texts(exc: BaseException) -> list[str]:
    """str, repr and args of ``exc`` and everything on its cause/context chain, and the
    formatted traceback."""
    import traceback

    texts = ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    pending, seen = [exc], set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *(repr(a) for a in current.args)]
        texts += [repr(v) for v in vars(current).values()] if hasattr(current, "__dict__") else []
        pending += [e for e in (current.__cause__, current.__context__) if e is not None]
    return texts


async def _run_and_grep(
    provider: OpenAIProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture, secret: str
) -> InvocationFailed:
    """Run once on a SqliteStore file; assert ``secret`` is in no event, error, log or byte
    of the store; return the run's error."""
    import logging

    from rxinvoke import SqliteStore

    caplog.set_level(logging.DEBUG)
    path = tmp_path / "runs.db"
    async with SqliteStore(path) as store:
        runtime = AgentRuntime(providers=[provider], store=store, policy=FAST)
        events: list[InvocationEvent] = []
        runtime.events.subscribe(events.append)
        with pytest.raises(InvocationFailed) as caught:
            await runtime.run(RunRequest(provider="openai", model=MODEL, input="hi"))
        assert events[-1].type == "run_failed"
        stored = await store.read_events(caught.value.run_id or "")
        assert stored[-1].event.type == "run_failed"
    for event in events:
        assert secret not in INVOCATION_EVENT.dump_json(event).decode()
        assert secret not in repr(event)
    for text in _exception_texts(caught.value):
        assert secret not in text
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in repr(record.args)
        if record.exc_info and record.exc_info[1] is not None:
            for text in _exception_texts(record.exc_info[1]):
                assert secret not in text
    assert secret.encode() not in _bytes_under(tmp_path)  # the database, its WAL and shm
    return caught.value


def _bytes_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file())


async def test_an_error_chunk_echoing_the_key_is_redacted_everywhere(
    server: ChatServer, providers: Callable[..., OpenAIProvider], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.script(Stream([chunk({"content": "a"}), {"error": {"message": f"bad key {CANARY} here"}}]))
    error = await _run_and_grep(providers(server.url, api_key=CANARY), tmp_path, caplog, CANARY)
    assert "bad key ********** here" in error.message
    assert isinstance(error.cause, ProviderStreamError)


async def test_an_sse_error_event_echoing_the_key_is_redacted(
    server: ChatServer, providers: Callable[..., OpenAIProvider], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.script(Stream([chunk({"content": "a"}), f"key={CANARY}"], done=False))
    # a chunk that is not JSON and holds the key: the malformed-JSON message must not echo it
    await _run_and_grep(providers(server.url, api_key=CANARY), tmp_path, caplog, CANARY)


async def test_a_credential_header_is_redacted_like_the_key(
    server: ChatServer, providers: Callable[..., OpenAIProvider], tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.script(Stream([{"error": {"message": f"who is {CANARY}?"}}]))
    provider = providers(
        server.url, api_key=None, api_key_env=None, headers={"X-Api-Key": CANARY}
    )
    error = await _run_and_grep(provider, tmp_path, caplog, CANARY)
    assert "who is **********?" in error.message


async def test_a_transport_error_holding_the_header_loses_its_chain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx/httpcore errors that quote the Authorization header (as httpcore's "Illegal
    header value" does) are redacted and raised without their cause chain."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError(f"Illegal header value {request.headers['authorization']!r}")

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        provider = OpenAIProvider(
            base_url="http://127.0.0.1:9/v1", api_key=CANARY, api_key_env=None, client=client
        )
        error = await _run_and_grep(provider, tmp_path, caplog, CANARY)
    assert isinstance(error.cause, ProviderConnectionError)
    assert "Illegal header value" in error.message and "**********" in error.message
    assert error.cause.__cause__ is None and error.cause.__context__ is None


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (CANARY + "\n", "a control character"),
        ("\t" + CANARY, "a control character"),
        (CANARY[:5] + "\x7f" + CANARY[5:], "a control character"),
        (CANARY + "é", "a non-ASCII character"),
        ("“" + CANARY + "”", "a non-ASCII character"),
    ],
)
def test_a_key_http_cannot_carry_is_refused_without_echoing_it(
    key: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for make in (
        lambda: OpenAIProvider(api_key=key, api_key_env=None),
        lambda: OpenAIProvider(api_key=SecretStr(key), api_key_env=None),
        lambda: OpenAIProvider(api_key=None, api_key_env="RXINVOKE_CANARY_KEY"),
        lambda: OpenAIProvider(api_key_env=None, headers={"Authorization": f"Bearer {key}"}),
    ):
        monkeypatch.setenv("RXINVOKE_CANARY_KEY", key)
        with pytest.raises(ValueError, match=kind) as caught:
            make()
        for text in _exception_texts(caught.value):
            assert CANARY not in text and CANARY[5:] not in text
    with pytest.raises(ValueError, match="RXINVOKE_CANARY_KEY"):  # says where the key came from
        OpenAIProvider(api_key=None, api_key_env="RXINVOKE_CANARY_KEY")


def test_a_clean_key_is_kept_exactly() -> None:
    provider = OpenAIProvider(api_key=" " + CANARY, api_key_env=None)  # nothing stripped
    assert provider.has_api_key
    assert CANARY not in repr(provider)


# --- malformed streams are provider errors; odd tool calls are answered (issue 9) -------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"choices": [{"index": 0, "delta": "text", "finish_reason": None}]}, "delta"),
        ({"choices": [{"index": 0, "delta": ["x"], "finish_reason": None}]}, "delta"),
        (chunk({"content": 42}), "delta.content"),
        (chunk({"content": {"text": "x"}}), "delta.content"),
        (chunk({"tool_calls": {"index": 0}}), "delta.tool_calls"),
        (chunk({"tool_calls": ["call"]}), "delta.tool_calls[]"),
        (chunk({"tool_calls": [{"index": "0", "id": "c"}]}), "tool_calls[].index"),
        (chunk({"tool_calls": [{"index": 0, "id": 7}]}), "tool_calls[].id"),
        (chunk({"tool_calls": [{"index": 0, "id": "c", "function": "f"}]}), "tool_calls[].function"),
        (chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": 1}}]}), "tool_calls[].function.name"),
        (chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": {}}}]}), "tool_calls[].function.arguments"),
        ({"choices": "all", "usage": None}, "choices"),
        ({"choices": [], "usage": {"prompt_tokens": -1}}, "usage.prompt_tokens"),
        ({"choices": [], "usage": {"completion_tokens": "7"}}, "usage.completion_tokens"),
        ({"choices": [], "usage": [1, 2]}, "usage"),
        ({"choices": [{"index": 0, "delta": {}, "finish_reason": 3}]}, "finish_reason"),
    ],
)
async def test_a_chunk_of_the_wrong_shape_is_a_stream_error_naming_the_provider(
    server: ChatServer, rig: Callable[..., Rig], bad: dict[str, Any], field: str
) -> None:
    server.script(Stream([chunk({"content": "ok"}), bad]))
    r = rig()
    with pytest.raises(InvocationFailed) as caught:
        await r.run()
    cause = caught.value.cause
    assert isinstance(cause, ProviderStreamError)
    assert (cause.provider, cause.model) == ("openai", MODEL)
    assert f"{field} must be" in cause.message
    assert [t for t in r.types() if t in ("run_completed", "run_failed", "run_cancelled")] == ["run_failed"]
    assert r.events[-1].type == "run_failed"


async def test_a_tool_call_without_a_name_is_a_failed_result_the_model_sees(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(
        Stream([
            chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"arguments": "{}"}}]}),
            chunk({}, "tool_calls"),
        ]),
        text_reply("sorry"),
    )
    r = rig(tools=[add])
    output = await r.run()
    assert output.output_text == "sorry"
    finished = [e for e in r.events if isinstance(e, ToolExecutionFinished)]
    assert isinstance(finished[0].result, ToolFailure)
    assert "a tool call without a name" in finished[0].result.error
    tool_message = server.requests[1].body["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "c1"
    assert tool_message["content"].startswith("Error: a tool call without a name")


async def test_two_streamed_tool_calls_with_one_id_are_both_answered(
    server: ChatServer, rig: Callable[..., Rig]
) -> None:
    server.script(tool_reply([("dup", "add", '{"a": 1, "b": 2}'), ("dup", "add", '{"a": 3, "b": 4}')]), text_reply("3 and 7"))
    r = rig(tools=[add])
    await r.run()
    sent = server.requests[1].body["messages"]
    call_ids = [c["id"] for c in sent[-3]["tool_calls"]]
    assert len(set(call_ids)) == 2 and call_ids[0] == "dup"
    assert [(m["tool_call_id"], m["content"]) for m in sent[-2:]] == [(call_ids[0], "3"), (call_ids[1], "7")]


async def test_http_408_is_retried(
    server: ChatServer, rig: Callable[..., Rig], asked: list[tuple[int, float | None]]
) -> None:
    server.script(Error(408, {"error": {"message": "request timeout"}}), text_reply("fine"))
    r = rig(policy=RuntimePolicy(max_retries=1))
    output = await r.run()
    assert output.output_text == "fine"
    assert asked == [(0, None)] and len(server.requests) == 2


async def test_an_emoji_split_into_surrogate_escapes_over_two_chunks_is_joined(
    server: ChatServer, rig: Callable[..., Rig], tmp_path: Path
) -> None:
    # JSON lets a server escape an astral character as two \\u escapes, and split them
    server.script(Stream([
        '{"choices": [{"index": 0, "delta": {"content": "hi \\ud83d"}, "finish_reason": null}]}',
        '{"choices": [{"index": 0, "delta": {"content": "\\ude00!"}, "finish_reason": "stop"}]}',
    ]))
    from rxinvoke import SqliteStore

    async with SqliteStore(tmp_path / "s.db") as store:
        r = rig()
        runtime = AgentRuntime(providers=[r.provider], store=store)
        out = await runtime.run(RunRequest(provider="openai", model=MODEL, input="hi"))
        assert out.output_text == "hi \U0001f600!"
        record = await store.get_run(out.run_id)
        assert record is not None and record.status == "completed"
