"""Provider benchmark: client-side cost of OpenAIProvider per streamed chunk.

A loopback server in a separate process (plain asyncio, no dependencies) streams N
``chat.completion.chunk`` events as fast as it can: a pre-rendered body, one HTTP chunk per
SSE event (as a token-streaming server frames them). The client, on one core, reads the same
stream four ways and reports chunks/s by wall clock and the client's CPU µs per chunk:

1. ``raw``: httpx only (``aiter_raw``), the floor;
2. ``sse``: httpx-sse line parsing (``aiter_sse``), the baseline;
3. ``provider``: ``OpenAIProvider.stream`` — SSE + JSON + chat events;
4. ``runtime``: a whole ``AgentRuntime.run`` over the provider (events published on the bus).

The target: the provider is never the bottleneck below 20 000 chunks/s on one core, i.e. it
spends less than 50 µs of client CPU per chunk.

    python -m benchmarks.provider            # full run (about a minute)
    python -m benchmarks.provider --quick    # smoke run with tiny counts (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import httpx
from httpx_sse import EventSource

from benchmarks._common import machine_line
from rxinvoke import AgentRuntime, RunRequest, RuntimePolicy
from rxinvoke.messages import ChatRequest, Message
from rxinvoke.providers.openai import OpenAIProvider

TARGET_CHUNKS_PER_SECOND = 20_000
MODEL = "bench"

# --- the server (its own process) ---------------------------------------------------------------


def _body(chunks: int) -> bytes:
    """A chunked-encoded SSE body: role chunk, ``chunks`` text deltas, finish, usage, [DONE]."""

    def event(payload: dict[str, object] | str) -> bytes:
        data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
        sse = f"data: {data}\n\n".encode()
        return f"{len(sse):x}\r\n".encode() + sse + b"\r\n"

    def chunk(delta: dict[str, object], finish: str | None = None) -> dict[str, object]:
        return {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    parts = [event(chunk({"role": "assistant", "content": ""}))]
    words = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog.")
    parts += [event(chunk({"content": words[i % len(words)]})) for i in range(chunks)]
    parts.append(event(chunk({}, "stop")))
    usage = {"prompt_tokens": 10, "completion_tokens": chunks, "total_tokens": 10 + chunks}
    parts.append(event({**chunk({}), "choices": [], "usage": usage}))
    parts.append(event("[DONE]"))
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


async def _serve() -> None:
    bodies: dict[int, bytes] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                headers = {}
                for line in head.decode("latin-1").split("\r\n")[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                chunks = int(headers.get("x-bench-chunks", "100"))
                body = bodies.get(chunks)
                if body is None:
                    body = bodies[chunks] = _body(chunks)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                view = memoryview(body)
                for start in range(0, len(body), 1 << 16):
                    writer.write(view[start : start + (1 << 16)])
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until EOF
    server.close()


# --- the client ----------------------------------------------------------------------------------


async def _raw(client: httpx.AsyncClient, url: str, chunks: int) -> int:
    async with client.stream("POST", url, json={}, headers=_headers(chunks)) as response:
        return sum([1 async for _ in response.aiter_raw()])  # count of reads, not chunks


async def _sse(client: httpx.AsyncClient, url: str, chunks: int) -> int:
    async with client.stream("POST", url, json={}, headers=_headers(chunks)) as response:
        return sum([1 async for _ in EventSource(response).aiter_sse()])


def _headers(chunks: int) -> dict[str, str]:
    return {"x-bench-chunks": str(chunks), "accept": "text/event-stream"}


async def _measure(run: Callable[[], Awaitable[object]], chunks: int, repeats: int) -> tuple[float, float]:
    """(median chunks/s by wall clock, median client CPU µs per chunk)."""
    await run()  # warm up: connection, caches
    rates, costs = [], []
    for _ in range(repeats):
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        await run()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(chunks / wall)
        costs.append(cpu / chunks * 1e6)
    return statistics.median(rates), statistics.median(costs)


async def main(quick: bool) -> None:
    chunks, repeats = (2_000, 2) if quick else (100_000, 5)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.provider", "--serve",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert server.stdout is not None and server.stdin is not None
    port = int(await server.stdout.readline())
    base_url = f"http://127.0.0.1:{port}/v1"
    url = f"{base_url}/chat/completions"
    print(f"# rxinvoke provider benchmark ({'quick' if quick else 'full'})")
    print(f"# machine: {machine_line(httpx=httpx.__version__)}")
    print(f"# {chunks:,} chunks per stream, median of {repeats}; server in its own process")
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            provider = OpenAIProvider(
                base_url=base_url, api_key_env=None, client=client, headers=_headers(chunks)
            )
            request = ChatRequest(
                provider="openai", model=MODEL, messages=(Message(role="user", content="go"),)
            )

            async def through_provider() -> int:
                return sum([1 async for _ in provider.stream(request)])

            runtime = AgentRuntime(providers=[provider], policy=RuntimePolicy())
            run_request = RunRequest(provider="openai", model=MODEL, input="go")
            # a subscriber, so events are really delivered
            received = []
            runtime.events.subscribe(lambda event: received.append(1))

            async def through_runtime() -> None:
                received.clear()
                await runtime.run(run_request)

            results = {
                "raw": await _measure(lambda: _raw(client, url, chunks), chunks, repeats),
                "sse": await _measure(lambda: _sse(client, url, chunks), chunks, repeats),
                "provider": await _measure(through_provider, chunks, repeats),
                "runtime": await _measure(through_runtime, chunks, repeats),
            }
    finally:
        server.stdin.close()
        await server.wait()
    for name, (rate, cost) in results.items():
        print(f"{name:>9}: {rate:>9,.0f} chunks/s wall · {cost:6.2f} µs client CPU/chunk")
    provider_rate, provider_cost = results["provider"]
    sse_rate, sse_cost = results["sse"]
    print(
        f"provider / sse baseline: {provider_rate / sse_rate:.2f}x throughput · "
        f"+{provider_cost - sse_cost:.2f} µs/chunk for JSON + chat events"
    )
    one_core = 1e6 / provider_cost
    verdict = "PASS" if one_core >= TARGET_CHUNKS_PER_SECOND else "FAIL"
    print(
        f"target: provider CPU-bound rate {one_core:,.0f} chunks/s on one core "
        f">= {TARGET_CHUNKS_PER_SECOND:,}: {verdict}"
    )




if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(_serve() if args.serve else main(args.quick))
