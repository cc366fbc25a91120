"""AnthropicProvider against a real HTTP server on 127.0.0.1 (aiohttp, in the test's loop)
replaying Messages API event streams with the shapes of Anthropic's public documentation:
text, one and two parallel tool_use blocks with arguments split over several
input_json_delta events, a mid-stream error event, a dropped connection, a max_tokens stop;
HTTP errors (429 with retry-after, 529 overloaded, 400/401/403), and the key kept secret."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rxinvoke import (
    INVOCATION_EVENT,
    AgentRuntime,
    ChatRequest,
    ChatTextDelta,
    ChatToolCallArgumentsDelta,
    ChatToolCallCompleted,
    ChatToolCallStarted,
    FinishReason,
    InvocationFailed,
    Message,
    ProviderConnectionError,
    ProviderContextOverflow,
    ProviderHTTPError,
    ProviderStreamError,
    RunRequest,
    RuntimePolicy,
    ToolCall,
    ToolChoice,
    ToolSpec,
    tool,
)
from rxinvoke.providers.anthropic import ANTHROPIC_VERSION, AnthropicProvider

MODEL = "claude-test"
KEY = "sk-ant-test-0123456789abcdef"
REPO_ROOT = Path(__file__).resolve().parents[1]

Event = tuple[str, dict[str, Any]]


@dataclass
class Reply:
    events: Sequence[Event]
    drop_after: int | None = None
    hold: bool = False
    """After the events, send nothing more and wait for the client to go away."""


@dataclass
class Error:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class MessagesServer:
    """``POST /v1/messages`` with ``stream: true`` from a script; records every request."""

    def __init__(self) -> None:
        self.replies: list[Reply | Error] = []
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.disconnected = asyncio.Event()
        """A held reply saw the client go away."""

    def script(self, *replies: Reply | Error) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/messages", self._handle)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.json()))
        if not self.replies:
            return web.json_response({"type": "error", "error": {"type": "api_error", "message": "script exhausted"}}, status=500)
        reply = self.replies.pop(0)
        if isinstance(reply, Error):
            return web.json_response(reply.body, status=reply.status, headers=reply.headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, (name, data) in enumerate(reply.events):
            if index == reply.drop_after:
                assert request.transport is not None
                request.transport.close()
                return response
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        if reply.hold:
            try:
                await asyncio.Event().wait()  # until the client goes away
            except asyncio.CancelledError:
                self.disconnected.set()
                raise
        await response.write_eof()
        return response


@pytest.fixture
async def server() -> AsyncIterator[MessagesServer]:
    s = MessagesServer()
    await s.start()
    yield s
    await s.stop()


# --- transcripts in the documented shapes -----------------------------------------------------


def start(input_tokens: int = 25, cache_read: int = 0) -> Event:
    usage = {"input_tokens": input_tokens, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": cache_read}
    return ("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": MODEL,
        "stop_reason": None, "stop_sequence": None, "usage": usage}})


def end(stop: str, output_tokens: int = 15) -> list[Event]:
    return [
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": output_tokens}}),
        ("message_stop", {"type": "message_stop"}),
    ]


def text_block(index: int, *parts: str) -> list[Event]:
    return [
        ("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
        *[("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": p}}) for p in parts],
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def tool_block(index: int, call_id: str, name: str, *fragments: str) -> list[Event]:
    return [
        ("content_block_start", {"type": "content_block_start", "index": index, "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": f}}) for f in fragments],
        ("content_block_stop", {"type": "content_block_stop", "index": index}),
    ]


def text_reply(*parts: str, stop: str = "end_turn") -> Reply:
    return Reply([start(), *text_block(0, *parts), *end(stop)])


def provider(server: MessagesServer, **kw: Any) -> AnthropicProvider:
    return AnthropicProvider(base_url=server.url, api_key=KEY, **kw)


async def collect(p: AnthropicProvider, request: ChatRequest) -> list[Any]:
    return [e async for e in p.stream(request)]


def chat(*messages: Message, **kw: Any) -> ChatRequest:
    return ChatRequest(provider="anthropic", model=MODEL, messages=messages or (Message(role="user", content="hi"),), **kw)


FAST = RuntimePolicy(retry_backoff=0.001, retry_backoff_max=0.005)


def runtime(p: AnthropicProvider, tools: Sequence[Any] = (), policy: RuntimePolicy = FAST) -> tuple[AgentRuntime, list[Any]]:
    rt = AgentRuntime(providers=[p], tools=tools, policy=policy)
    events: list[Any] = []
    rt.events.subscribe(events.append)
    return rt, events


def run_request(text: str = "hi", **kw: Any) -> RunRequest:
    return RunRequest(provider="anthropic", model=MODEL, input=text, **kw)


# --- the stream -------------------------------------------------------------------------------------


async def test_text_streams_as_fragments_with_usage_and_the_cache_counted(server: MessagesServer) -> None:
    server.script(Reply([start(input_tokens=20, cache_read=5), *text_block(0, "Hello", ", world"), *end("end_turn", 7)]))
    async with provider(server) as p:
        events = await collect(p, chat())

    assert [e.type for e in events] == ["chat_started", "chat_text_delta", "chat_text_delta", "chat_finished"]
    assert [e.delta for e in events if isinstance(e, ChatTextDelta)] == ["Hello", ", world"]
    finished = events[-1]
    assert finished.finish_reason is FinishReason.STOP
    assert (finished.usage.input_tokens, finished.usage.output_tokens, finished.usage.total_tokens) == (25, 7, 32)


async def test_a_tool_use_block_with_split_arguments_is_one_tool_call(server: MessagesServer) -> None:
    server.script(Reply([start(), *text_block(0, "Let me check."), *tool_block(1, "toolu_01", "get_weather", '{"loc', 'ation": "Par', 'is", "days": 3}'), *end("tool_use")]))
    async with provider(server) as p:
        events = await collect(p, chat())

    started = [e for e in events if isinstance(e, ChatToolCallStarted)]
    deltas = [e.delta for e in events if isinstance(e, ChatToolCallArgumentsDelta)]
    (completed,) = [e for e in events if isinstance(e, ChatToolCallCompleted)]
    assert [(s.id, s.name) for s in started] == [("toolu_01", "get_weather")]
    assert deltas == ['{"loc', 'ation": "Par', 'is", "days": 3}']
    assert json.loads(completed.call.arguments) == {"location": "Paris", "days": 3}
    assert events[-1].finish_reason is FinishReason.TOOL_CALLS


async def test_two_parallel_tool_use_blocks_run_and_their_results_go_back_as_one_user_turn(server: MessagesServer) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add."""
        return a + b

    @tool
    def explode() -> str:
        """Fail."""
        raise RuntimeError("kaboom")

    server.script(
        Reply([start(), *tool_block(0, "toolu_a", "add", '{"a": 2,', ' "b": 3}'), *tool_block(1, "toolu_b", "explode", ""), *end("tool_use")]),
        text_reply("2 + 3 = 5; the other failed."),
    )
    async with provider(server) as p:
        rt, events = runtime(p, tools=[add, explode])
        output = await rt.run(run_request("add and explode", system_prompt="Be terse."))

    assert output.output_text == "2 + 3 = 5; the other failed."
    _, second = server.requests[1]
    assert second["system"] == "Be terse."
    assert [t["role"] for t in second["messages"]] == ["user", "assistant", "user"]
    assistant = second["messages"][1]["content"]
    assert [(b["type"], b.get("id"), b.get("input")) for b in assistant] == [
        ("tool_use", "toolu_a", {"a": 2, "b": 3}), ("tool_use", "toolu_b", {})
    ]
    results = second["messages"][2]["content"]
    assert [(r["type"], r["tool_use_id"], r["content"], r.get("is_error", False)) for r in results] == [
        ("tool_result", "toolu_a", "5", False),
        ("tool_result", "toolu_b", results[1]["content"], True),
    ]
    assert "kaboom" in results[1]["content"]


async def test_max_tokens_is_a_length_stop(server: MessagesServer) -> None:
    server.script(text_reply("cut o", stop="max_tokens"))
    async with provider(server, max_tokens=5) as p:
        rt, _ = runtime(p)
        output = await rt.run(run_request())
    assert output.finish_reason is FinishReason.LENGTH
    assert server.requests[0][1]["max_tokens"] == 5


async def test_a_mid_stream_error_event_fails_the_run_naming_its_type(server: MessagesServer) -> None:
    server.script(Reply([start(), *text_block(0, "Half")[:2], ("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})]))
    async with provider(server) as p:
        rt, events = runtime(p)
        with pytest.raises(InvocationFailed) as failed:
            await rt.run(run_request())
    assert isinstance(failed.value.cause, ProviderStreamError)
    assert "overloaded_error: Overloaded" in events[-1].error
    assert len(server.requests) == 1  # it had streamed: not retried


async def test_a_dropped_connection_and_a_stream_without_message_stop_are_errors(server: MessagesServer) -> None:
    server.script(Reply([start(), *text_block(0, "a", "b", "c")], drop_after=3), Reply([start(), *text_block(0, "a")]))
    async with provider(server) as p:
        with pytest.raises(ProviderConnectionError):
            await collect(p, chat())
        with pytest.raises(ProviderStreamError, match="without message_stop"):
            await collect(p, chat())


# --- the request --------------------------------------------------------------------------------


async def test_the_request_carries_the_version_the_key_the_tools_and_the_choice(server: MessagesServer) -> None:
    spec = ToolSpec(name="lookup", description="Look up.", parameters={"type": "object", "properties": {"k": {"type": "string"}}})
    for choice, expected in (("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}), (ToolChoice.tool("lookup"), {"type": "tool", "name": "lookup"})):
        server.script(text_reply("ok"))
        async with provider(server) as p:
            await collect(p, chat(tools=(spec,), tool_choice=choice))
        headers, body = server.requests[-1]
        assert body["tool_choice"] == expected
    assert headers["x-api-key"] == KEY and headers["anthropic-version"] == ANTHROPIC_VERSION
    assert body["tools"] == [{"name": "lookup", "description": "Look up.", "input_schema": spec.parameters}]
    assert body["stream"] is True and body["model"] == MODEL and body["max_tokens"] == 4096


def test_messages_map_to_alternating_turns_with_system_apart() -> None:
    p = AnthropicProvider(api_key=KEY)
    call = ToolCall(id="toolu_1", name="f", arguments="not json")
    body = p.request_body(chat(
        Message(role="system", content="rules"),
        Message(role="user", content="q"),
        Message(role="assistant", content="thinking aloud", tool_calls=(call,)),
        Message(role="tool", content="Error: bad arguments", tool_call_id="toolu_1"),
        Message(role="user", content="and now?"),
        Message(role="system", content="Summary of earlier turns"),
    ))
    assert body["system"] == "rules\n\nSummary of earlier turns"
    assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1] == {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"_raw": "not json"}}
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Error: bad arguments", "is_error": True},
        {"type": "text", "text": "and now?"},
    ]


# --- errors and the key ---------------------------------------------------------------------------


def api_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


async def test_429_and_529_are_retried_with_the_servers_delay(server: MessagesServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from rxinvoke import _model_call

    asked: list[float | None] = []
    monkeypatch.setattr(_model_call, "retry_delay", lambda policy, attempt, retry_after=None: asked.append(retry_after) or 0.0)
    server.script(
        Error(429, api_error("rate_limit_error", "slow down"), {"retry-after": "7"}),
        Error(529, api_error("overloaded_error", "Overloaded")),
        text_reply("finally"),
    )
    async with provider(server) as p:
        rt, events = runtime(p)
        output = await rt.run(run_request())
    assert output.output_text == "finally"
    assert asked == [7.0, None] and len(server.requests) == 3
    retried = [e for e in events if e.type == "model_retried"]
    assert [(e.attempt, e.status) for e in retried] == [(1, 429), (2, 529)]
    assert retried[1].error == f"anthropic/{MODEL}: HTTP 529: Overloaded" and KEY not in repr(retried)


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_client_errors_are_not_retried_and_never_show_the_key(server: MessagesServer, status: int) -> None:
    server.script(Error(status, api_error("authentication_error", f"invalid x-api-key {KEY}")))
    async with provider(server) as p:
        rt, events = runtime(p)
        with pytest.raises(InvocationFailed) as failed:
            await rt.run(run_request())
    assert len(server.requests) == 1
    cause = failed.value.cause
    assert isinstance(cause, ProviderHTTPError) and cause.status_code == status
    text = " ".join([str(failed.value), repr(cause), cause.body, *(INVOCATION_EVENT.dump_json(e).decode() for e in events)])
    assert KEY not in text and "**********" in events[-1].error


async def test_a_prompt_too_long_is_a_context_overflow(server: MessagesServer) -> None:
    server.script(Error(400, api_error("invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")))
    async with provider(server) as p:
        with pytest.raises(ProviderContextOverflow):
            await collect(p, chat())


def test_the_key_is_required_checked_and_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ValueError, match="needs an API key"):
        AnthropicProvider()
    with pytest.raises(ValueError, match="control character") as bad:
        AnthropicProvider(api_key=KEY + "\n")
    assert KEY not in str(bad.value)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    p = AnthropicProvider()
    assert KEY not in repr(p) and p.model_limits(MODEL).context_window == 200_000


async def test_rxinvoke_run_with_provider_anthropic_against_the_loopback_server(
    server: MessagesServer, tmp_path: Path
) -> None:
    server.script(text_reply("Hello from ", "the loopback"))
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *sys.path]), "PYTHONIOENCODING": "utf-8"}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rxinvoke", "run", "hi", "--provider", "anthropic", "--model", MODEL,
        "--base-url", server.url, "--db", str(tmp_path / "runs.db"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == 0, err.decode()
    assert "Hello from the loopback" in out.decode()
    assert server.requests[0][0]["x-api-key"] == KEY
