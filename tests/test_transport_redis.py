"""Scale-out on Redis Streams: the event mirror, observe with resume, the run queue and its
workers (leases, recovery, dead letters), remote cancel. Against a real redis-server started by
the fixtures (tests/tests_support_servers.py); the XAUTOCLAIM reply parsing also without one."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from reactivex import operators as ops
from tests_support_servers import RedisServer, postgres_server, redis_server

from rxinvoke import (
    AgentRuntime,
    EmitRequest,
    InvocationCancelled,
    InvocationFailed,
    MemoryStore,
    OfflineProvider,
    PostgresStore,
    RuntimeInvocation,
    ScriptedProvider,
    SqliteStore,
    Store,
    UnknownRun,
    builtin_tools,
    tool,
)
from rxinvoke.errors import (
    ResumeGap,
    RxInvokeError,
    StoreError,
    SubscriberError,
    SubscriberOverflow,
    TransportError,
    UserError,
)
from rxinvoke.events import RunCompleted, RunStarted, TextDelta
from rxinvoke.messages import ChatRequest, FinishReason
from rxinvoke.request import RunOutput
from rxinvoke.stores import EventEnvelope, RunRecord
from rxinvoke.transports._wire import decode, segments_of
from rxinvoke.transports.base import Transport
from rxinvoke.transports.mirror import EventMirror
from rxinvoke.transports.redis import RedisTransport, parse_autoclaim
from rxinvoke.transports.remote import RemoteRuns, RemoteRunStream
from rxinvoke.transports.worker import Worker

text_turn = ScriptedProvider.text_turn
tool_call_turn = ScriptedProvider.tool_call_turn


# --- XAUTOCLAIM replies (no server) --------------------------------------------------------------


def test_interleaved_runs_are_one_segment_per_run_and_stretch_of_seqs() -> None:
    def delta(run: str, seq: int) -> Any:
        return (run, None, seq, TextDelta(run_id=run, delta=f"{run}{seq}"))

    entries = [delta("a", 1), delta("b", 7), delta("a", 2), delta("b", 8), delta("a", 3), delta("a", 5)]
    segments = [(run, seg.first_seq, seg.last_seq) for run, seg in segments_of(entries)]
    assert segments == [("a", 1, 3), ("a", 5, 5), ("b", 7, 8)]  # each run's in order
    (_, seg), *_ = segments_of(entries)
    assert [e.event.delta for e in decode("a", None, seg, 0)] == ["a1", "a2", "a3"]  # type: ignore[union-attr]


def test_a_submitted_runs_outcome_read_from_the_segments_as_sent_is_the_one_its_events_give() -> None:
    from rxinvoke.events import (
        ApprovalRequested,
        ChatTextDelta,
        CompactionFinished,
        ModelStarted,
        RunFailed,
        UsageRecorded,
    )
    from rxinvoke.messages import TokenUsage
    from rxinvoke.transports.remote import _Outcome

    run, session = "r1", uuid.uuid4()

    def answer(*words: str) -> list[Any]:
        out: list[Any] = []
        for word in words:
            chat = ChatTextDelta(run_id=run, delta=word)
            out += [chat, chat.as_agent()]  # the twin is sent as null
        return out

    usage = TokenUsage(input_tokens=3, output_tokens=4, total_tokens=7)
    body = [
        RunStarted(run_id=run, session_id=str(session), provider="p", model="m"),
        ModelStarted(run_id=run, provider="p", model="m", iteration=1),
        *answer("dropped ", "text"),
        UsageRecorded(run_id=run, usage=usage),
        CompactionFinished(
            run_id=run, reason="reactive", succeeded=True, tokens_before=9, tokens_after=2,
            messages_summarized=3, duration_ms=1.0, usage=usage,
        ),
        ApprovalRequested(run_id=run, call_id="c1", tool_name="deploy", arguments="{}"),
        ModelStarted(run_id=run, provider="p", model="m", iteration=2),
        *answer("the ", "answer", " é"),
        TextDelta(run_id=run, delta="!"),  # a twin of no fragment: spelled out
        UsageRecorded(run_id=run, usage=usage),
    ]
    for terminal in (RunCompleted(run_id=run, finish_reason=FinishReason.STOP, iterations=2),
                     RunFailed(run_id=run, error="timed out after 1s")):
        events = [*body, terminal]
        entries = [(run, None, seq, event) for seq, event in enumerate(events, 1)]
        # sent in three segments, the second one twice and overlapping the third (a resend)
        segments = [seg for _, seg in segments_of(entries[:5])]
        segments += [seg for _, seg in segments_of(entries[5:12])] * 2
        segments += [seg for _, seg in segments_of(entries[9:])]
        raw, decoded = _Outcome(), _Outcome()
        cursor = 0
        for segment in segments:
            if segment.last_seq <= cursor:
                continue
            skip = max(cursor - segment.first_seq + 1, 0)
            raw.fold(segment, skip)
            for envelope in decode(run, session, segment, cursor):
                decoded.add(envelope.event)
            cursor = segment.last_seq
        assert cursor == len(events) and raw.terminal == terminal
        got, want = raw.settle(terminal, run, session), decoded.settle(terminal, run, session)
        if isinstance(want, RunOutput):
            assert got == want and want.output_text == "the answer é!"
            assert want.total_usage.total_tokens == 21 and [p.call_id for p in want.pending] == ["c1"]
        else:
            assert type(got) is type(want) and str(got) == str(want)


def test_autoclaim_replies_of_redis_6_2_and_7_are_both_read() -> None:
    fields = [b"run_id", b"r1", b"request", b"{}"]
    six = [b"0-0", [[b"1-0", fields], [b"2-0", None]]]
    seven = [b"0-0", [[b"1-0", fields]], [b"2-0"]]
    assert parse_autoclaim(six) == ("0-0", [("1-0", {b"run_id": b"r1", b"request": b"{}"}), ("2-0", None)], [])
    assert parse_autoclaim(seven) == ("0-0", [("1-0", {b"run_id": b"r1", b"request": b"{}"})], ["2-0"])
    with pytest.raises(ValueError, match="4 elements"):
        parse_autoclaim([b"0-0", [], [], []])


def test_the_redis_extra_brings_the_c_reply_parser() -> None:
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE  # hiredis: reading run streams costs a third of the Python parser's


def test_the_redis_password_is_not_in_the_repr() -> None:
    transport = RedisTransport("redis://user:s3cret-pw@127.0.0.1:1/0")
    assert "s3cret-pw" not in repr(transport) and "***" in transport.where


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
async def transport(redis_server: RedisServer) -> AsyncIterator[RedisTransport]:
    made = RedisTransport(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}:", block=0.2)
    yield made
    await made.close()


def request(text: str = "what is 2 + 3?", **kw: Any) -> EmitRequest:
    return EmitRequest(provider="offline", model="offline", input=text, **kw)


async def collect(observable: Any) -> list[Any]:
    return list(await observable.pipe(ops.to_list()))


def shape(envelopes: list[EventEnvelope]) -> list[tuple[int, str]]:
    return [(e.seq, e.type) for e in envelopes]


# --- the mirror and observe_run ------------------------------------------------------------------


async def test_a_mirrored_run_reads_back_from_another_client_exactly_as_stored(
    transport: RedisTransport, redis_server: RedisServer
) -> None:
    runtime = AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools())
    mirror = EventMirror(transport)
    mirror.attach(runtime)
    out = await RuntimeInvocation(runtime).emit(request())
    await mirror.flush()
    stored = await runtime.store.read_events(out.run_id)
    other = RedisTransport(redis_server.url, prefix=transport.prefix)
    try:
        seen = await collect(RemoteRuns(other).observe_run(out.run_id))
    finally:
        await other.close()
    assert shape(seen) == shape(stored)
    assert [e.event for e in seen] == [e.event for e in stored]
    assert mirror.stats.mirrored == len(stored) and mirror.stats.dropped == 0
    # batched: far fewer stream entries than events (a streamed answer is one segment)
    assert await transport.client.xlen(f"{transport.prefix}run:{out.run_id}") < len(stored) / 3


async def test_an_observer_that_disconnects_resumes_at_its_seq_and_sees_each_event_once(
    transport: RedisTransport,
) -> None:
    gate = asyncio.Event()
    provider = ScriptedProvider([[*text_turn("first half ", pieces=3)[:-1], gate, *text_turn("second", pieces=3)]])
    runtime = AgentRuntime(providers=[provider])
    mirror = EventMirror(transport, interval=0.005)
    mirror.attach(runtime)
    inv = RuntimeInvocation(runtime)
    remote = RemoteRuns(transport)
    streaming = asyncio.Event()
    runtime.events.subscribe(lambda e: streaming.set() if e.type == "text_delta" else None)
    stream = inv.stream(EmitRequest(provider="scripted", model="scripted", input="hi"))
    running = asyncio.ensure_future(stream.result)
    await asyncio.wait_for(streaming.wait(), 10)
    await mirror.flush()  # the run's stream exists once its first events are mirrored
    first: list[EventEnvelope] = []
    got_some = asyncio.Event()

    def keep(envelope: EventEnvelope) -> None:
        first.append(envelope)
        if envelope.type == "text_delta":
            got_some.set()

    subscription = remote.observe_run(stream.run_id).subscribe(on_next=keep)
    await asyncio.wait_for(got_some.wait(), 10)
    subscription.dispose()  # the observer goes away mid-run
    resume_at = first[-1].seq
    gate.set()
    await running
    await mirror.flush()
    rest = await collect(remote.observe_run(stream.run_id, after_seq=resume_at))
    stored = await runtime.store.read_events(stream.run_id)
    assert [e.seq for e in first + rest] == list(range(1, len(stored) + 1))
    assert [e.event for e in first + rest] == [e.event for e in stored]


async def test_a_trimmed_stream_is_a_resume_gap_not_a_silent_jump(redis_server: RedisServer) -> None:
    # maxlen 1: XADD MAXLEN ~ trims whole nodes, so keep writing until the head is gone
    transport = RedisTransport(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}:", maxlen=1, block=0.2)
    try:
        runtime = AgentRuntime(providers=[ScriptedProvider([text_turn("x " * 400, pieces=400)])])
        mirror = EventMirror(transport, interval=0)
        runtime.bus.observe("any").subscribe(lambda e: None)
        mirror.attach(runtime)
        out = await RuntimeInvocation(runtime).emit(EmitRequest(provider="scripted", model="scripted", input="hi"))
        await mirror.flush()
        await transport.client.xtrim(f"{transport.prefix}run:{out.run_id}", maxlen=1, approximate=False)
        with pytest.raises(ResumeGap) as gap:
            await collect(RemoteRuns(transport).observe_run(out.run_id, after_seq=3))
        assert gap.value.after_seq == 3 and gap.value.first_available > 4
        # asking from what is kept works
        kept = await collect(RemoteRuns(transport).observe_run(out.run_id, after_seq=gap.value.first_available - 1))
        assert kept[-1].type == "run_completed"
        with pytest.raises(ResumeGap):  # a view needs the run from its first event
            await RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport)).view(out.run_id)
    finally:
        await transport.close()


async def test_a_segment_that_does_not_decode_ends_a_late_subscription_with_the_error(
    transport: RedisTransport,
) -> None:
    import json

    from rxinvoke.transports.base import Segment

    run, session = str(uuid.uuid4()), uuid.uuid4()
    started = RunStarted(run_id=run, session_id=str(session), provider="p", model="m")
    done = RunCompleted(run_id=run, finish_reason=FinishReason.STOP, iterations=1)
    events = [
        json.loads(started.model_dump_json()),
        {"type": "chat_text_delta", "run_id": run, "timestamp": done.timestamp.isoformat(), "delta": 5},
        json.loads(done.model_dump_json()),
    ]
    types = ("run_started", "chat_text_delta", "run_completed")
    await transport.append([(run, Segment(1, 3, types, json.dumps(events).encode()))])
    stream = RemoteRuns(transport).follow(run, session)
    out = await asyncio.wait_for(stream.result, 20)  # the outcome needs none of the bad event
    assert out.iterations == 1 and out.output_text == ""
    with pytest.raises(ValueError, match="delta"):  # the events are decoded for a subscriber
        await asyncio.wait_for(collect(stream), 20)


async def test_a_run_stream_expires_retention_after_its_end_and_is_not_refreshed_at_every_write(
    redis_server: RedisServer,
) -> None:
    transport = RedisTransport(redis_server.url, prefix=f"e{uuid.uuid4().hex[:8]}:", retention=1000)
    try:
        run, session = "run-e", uuid.uuid4()
        started = RunStarted(run_id=run, session_id=str(session), provider="p", model="m")
        entries = [(run, session, 1, started)]
        await transport.append(list(segments_of(entries)))
        stream = f"{transport.prefix}run:{run}"
        assert 900 < await transport.client.ttl(stream) <= 1000  # set by its first segment
        await transport.client.expire(stream, 950)  # as if some time had passed
        await transport.append(list(segments_of([(run, session, 2, TextDelta(run_id=run, delta="a"))])))
        assert await transport.client.ttl(stream) <= 950  # not refreshed by a middle segment
        done = RunCompleted(run_id=run, finish_reason=FinishReason.STOP, iterations=1)
        await transport.append(list(segments_of([(run, session, 3, done)])))
        assert await transport.client.ttl(stream) > 990  # its end: retention from now
    finally:
        await transport.close()


async def test_appends_of_many_runs_land_in_order_even_after_the_server_forgot_the_script(
    transport: RedisTransport,
) -> None:
    session = uuid.uuid4()
    runs = [f"run-{i}" for i in range(250)]  # more than one script call's worth
    for seq in (1, 2):
        if seq == 2:
            await transport.client.script_flush()  # as after a restart: NOSCRIPT
        entries = [(run, session, seq, TextDelta(run_id=run, delta=f"{run}/{seq}")) for run in runs]
        await transport.append(list(segments_of(entries)))
    for run in (runs[0], runs[149], runs[-1]):
        read = await transport.client.xrange(f"{transport.prefix}run:{run}")
        assert [fields[b"seq"] for _, fields in read] == [b"1", b"2"]
        assert b"/2" in read[1][1][b"json"]


async def test_an_append_the_server_refuses_raises_and_the_next_one_goes_through(
    transport: RedisTransport,
) -> None:
    session = uuid.uuid4()
    await transport.client.set(f"{transport.prefix}run:taken", "not a stream")
    bad = [("taken", session, 1, TextDelta(run_id="taken", delta="x"))]
    with pytest.raises(Exception, match="WRONGTYPE"):
        await transport.append(list(segments_of(bad)))
    good = [("fine", session, 1, TextDelta(run_id="fine", delta="y"))]
    await transport.append(list(segments_of(good)))
    assert await transport.client.xlen(f"{transport.prefix}run:fine") == 1


async def test_a_worker_warns_at_start_of_a_server_that_evicts_keys(
    transport: RedisTransport, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert await transport.warnings() == []  # the test server: no maxmemory
    client = transport.client
    before = await client.config_get("maxmemory*")
    await client.config_set("maxmemory", "512mb")
    try:
        await client.config_set("maxmemory-policy", "noeviction")
        assert await transport.warnings() == []  # full, it refuses writes: nothing is dropped
        await client.config_set("maxmemory-policy", "allkeys-lru")
        (warning,) = await transport.warnings()
        assert "maxmemory-policy allkeys-lru" in warning and "set maxmemory-policy noeviction" in warning
        assert transport.where in warning
        store = SqliteStore(tmp_path / "e.db")
        worker, stop, task = await worker_for(store, transport)
        with caplog.at_level("WARNING", logger="rxinvoke"):
            stop.set()
            await asyncio.wait_for(task, 20)
        assert any(warning in record.getMessage() for record in caplog.records)
        await store.close()
    finally:
        await client.config_set("maxmemory-policy", before["maxmemory-policy"])
        await client.config_set("maxmemory", before["maxmemory"])


async def test_observing_an_unknown_run_is_an_error(transport: RedisTransport) -> None:
    with pytest.raises(UnknownRun):
        await collect(RemoteRuns(transport).observe_run("no-such-run"))


async def test_an_unreachable_redis_never_blocks_a_run_and_the_loss_is_reported() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = RedisTransport(f"redis://127.0.0.1:{port}/0")
    runtime = AgentRuntime(providers=[ScriptedProvider([text_turn("a b c d e f", pieces=6)] * 3)])
    mirror = EventMirror(transport, interval=0.001, max_buffer=5)
    mirror.attach(runtime)
    reports: list[SubscriberError] = []
    runtime.errors.subscribe(reports.append)
    inv = RuntimeInvocation(runtime)
    for _ in range(3):
        out = await asyncio.wait_for(inv.emit(EmitRequest(provider="scripted", model="scripted", input="hi")), 10)
        assert out.output_text == "a b c d e f"
    stats = mirror.stats
    assert stats.buffered <= 5 and stats.dropped > 0 and stats.mirrored == 0
    await asyncio.sleep(0.3)  # the flusher retries (and reports the drops it met)
    assert any(isinstance(r, SubscriberOverflow) and r.subscription == "mirror" for r in reports)
    await transport.close()


async def test_an_unreachable_redis_is_a_transport_error_naming_the_server_without_its_password() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    transport = RedisTransport(f"redis://:pw-secret-7@127.0.0.1:{port}/0", timeout=1)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    with pytest.raises(TransportError) as submitted:
        await asyncio.wait_for(stream.result, 60)
    with pytest.raises(TransportError) as cancelled:
        await asyncio.wait_for(inv.cancel("r1"), 60)
    observed = asyncio.get_running_loop().create_future()
    RemoteRuns(transport).observe_run("r1").subscribe(
        on_error=lambda exc: observed.set_result(exc), on_completed=lambda: observed.set_result(None)
    )
    failures = [submitted.value, cancelled.value, await asyncio.wait_for(observed, 60)]
    for failure in failures:
        assert isinstance(failure, TransportError) and isinstance(failure, RxInvokeError)
        assert failure.where == f"redis://:***@127.0.0.1:{port}/0"
        assert str(failure).startswith("redis: ") and f"127.0.0.1:{port}" in str(failure)
        assert "pw-secret-7" not in f"{failure!s} {failure!r} {failure.__cause__!r} {failure.__context__!r}"
    await transport.close()


async def test_flush_writes_now_without_waiting_out_the_interval_between_writes() -> None:
    gate, writing = asyncio.Event(), asyncio.Event()
    writes: list[list[int]] = []

    class Slow:
        async def append(self, segments: Any) -> None:
            writes.append([segment.first_seq for _, segment in segments])
            writing.set()
            if len(writes) == 1:
                await gate.wait()

    mirror = EventMirror(Slow(), interval=3600.0)  # an hour between two writes, unless flushed
    mirror.attach(AgentRuntime(providers=[OfflineProvider()]))
    await asyncio.wait_for(mirror.flush(), 1)  # nothing buffered: at once, and pacing stays on
    assert not mirror._hurry and writes == []
    session = uuid.uuid4()
    mirror.add(("r", session, 1, TextDelta(run_id="r", delta="a")))
    flushed = asyncio.ensure_future(mirror.flush())
    await writing.wait()  # the first write is in flight
    mirror.add(("r", session, 2, TextDelta(run_id="r", delta="b")))  # arrives meanwhile
    gate.set()
    await asyncio.wait_for(flushed, 30)  # not an hour: the second write follows at once
    assert writes == [[1], [2]] and mirror.stats.mirrored == 2
    assert not mirror._hurry  # idle again: the next writes are paced


class _Flaky:
    """A transport whose first write fails (only what the mirror calls)."""

    def __init__(self) -> None:
        self.failed = asyncio.Event()
        self.written: list[tuple[str, int, int]] = []

    async def append(self, segments: Any) -> None:
        if not self.failed.is_set():
            self.failed.set()
            raise ConnectionError("down")
        self.written += [(run, segment.first_seq, segment.last_seq) for run, segment in segments]


def _fragments(mirror: EventMirror, seqs: range) -> None:
    session = uuid.uuid4()
    for seq in seqs:
        mirror.add(("r", session, seq, TextDelta(run_id="r", delta=str(seq))))


@pytest.mark.parametrize(("bound", "written", "dropped"), [(100, [("r", 1, 3), ("r", 4, 5)], 0), (4, [("r", 4, 5)], 3)])
async def test_a_failed_write_is_written_first_at_the_next_attempt_within_the_bound(
    bound: int, written: list[tuple[str, int, int]], dropped: int
) -> None:
    flaky = _Flaky()
    mirror = EventMirror(flaky, interval=0, max_buffer=bound)  # type: ignore[arg-type]
    runtime = AgentRuntime(providers=[OfflineProvider()])
    mirror.attach(runtime)
    reports: list[SubscriberError] = []
    runtime.errors.subscribe(reports.append)
    _fragments(mirror, range(1, 4))
    await asyncio.wait_for(flaky.failed.wait(), 10)  # 1-3 failed: kept, encoded, to retry
    _fragments(mirror, range(4, 6))  # past a bound of 4: the failed write's segment goes
    await asyncio.wait_for(mirror.flush(), 10)
    stats = mirror.stats
    assert flaky.written == written  # in order, each envelope once
    assert (stats.failed_writes, stats.dropped, stats.mirrored, stats.buffered) == (1, dropped, 5 - dropped, 0)
    assert [r.dropped for r in reports if isinstance(r, SubscriberOverflow)] == ([dropped] if dropped else [])


async def test_a_held_end_is_written_after_the_runs_other_events_once_released() -> None:
    flaky = _Flaky()  # its first write fails: what the held end follows is retried first
    mirror = EventMirror(flaky, interval=0)  # type: ignore[arg-type]
    mirror.attach(AgentRuntime(providers=[OfflineProvider()]))
    mirror.hold_end("r")
    _fragments(mirror, range(1, 3))
    mirror.add(("r", uuid.uuid4(), 3, RunCompleted(run_id="r", iterations=1, finish_reason=FinishReason.STOP)))
    await asyncio.wait_for(flaky.failed.wait(), 10)
    await asyncio.wait_for(mirror.flush(), 10)
    assert flaky.written == [("r", 1, 2)] and mirror.stats.buffered == 1  # the end held
    mirror.release_end("r")
    await asyncio.wait_for(mirror.flush(), 10)
    assert flaky.written == [("r", 1, 2), ("r", 3, 3)] and mirror.stats.mirrored == 3
    assert mirror.stats.buffered == 0
    # an end still held when the mirror closes is written all the same (no stream left open)
    mirror.hold_end("s")
    mirror.add(("s", uuid.uuid4(), 1, RunCompleted(run_id="s", iterations=1, finish_reason=FinishReason.STOP)))
    await asyncio.wait_for(mirror.flush(), 10)
    assert flaky.written[-1] == ("r", 3, 3)
    await asyncio.wait_for(mirror.aclose(), 10)
    assert flaky.written[-1] == ("s", 1, 1) and mirror.stats.buffered == 0


async def test_envelopes_in_a_write_that_has_not_returned_count_as_buffered() -> None:
    class Stalled:  # only what the mirror calls: a transport whose write hangs until released
        def __init__(self) -> None:
            self.release = asyncio.Event()
            self.entered = asyncio.Event()

        async def append(self, segments: Any) -> None:
            self.entered.set()
            await self.release.wait()

    transport = Stalled()
    runtime = AgentRuntime(providers=[ScriptedProvider([text_turn("a b", pieces=2)])])
    mirror = EventMirror(transport, interval=0)  # type: ignore[arg-type]
    mirror.attach(runtime)
    out = await RuntimeInvocation(runtime).emit(EmitRequest(provider="scripted", model="scripted", input="hi"))
    await asyncio.wait_for(transport.entered.wait(), 10)
    stored = len(await runtime.store.read_events(out.run_id))
    in_flight = mirror.stats
    assert in_flight.mirrored == 0 and in_flight.buffered == stored
    transport.release.set()
    await asyncio.wait_for(mirror.flush(), 10)
    assert mirror.stats.mirrored == stored and mirror.stats.buffered == 0


async def test_a_redis_restart_mid_run_loses_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    with redis_server(tmp_path_factory.mktemp("redis-restart")) as server:
        transport = RedisTransport(server.url, block=0.2)
        gate = asyncio.Event()
        runtime = AgentRuntime(providers=[ScriptedProvider([[*text_turn("one two", pieces=2)[:-1], gate, *text_turn(" three", pieces=2)]])])
        mirror = EventMirror(transport, interval=0.005)
        mirror.attach(runtime)
        streaming = asyncio.Event()
        runtime.events.subscribe(lambda e: streaming.set() if e.type == "text_delta" else None)
        stream = RuntimeInvocation(runtime).stream(EmitRequest(provider="scripted", model="scripted", input="hi"))
        running = asyncio.ensure_future(stream.result)
        await asyncio.wait_for(streaming.wait(), 10)
        await mirror.flush()
        assert mirror.stats.mirrored > 0
        server.stop()
        gate.set()
        out = await asyncio.wait_for(running, 10)  # the run never waits for Redis
        assert mirror.stats.buffered > 0
        server.start()  # same port, its append-only file kept the stream
        await asyncio.wait_for(mirror.flush(), 30)
        stored = await runtime.store.read_events(out.run_id)
        seen = await collect(RemoteRuns(transport).observe_run(out.run_id))
        assert shape(seen) == shape(stored) and mirror.stats.dropped == 0
        await transport.close()


# --- queue, workers, cancel ----------------------------------------------------------------------


def calls_then_answers(tool_name: str) -> ScriptedProvider:
    """A provider that calls ``tool_name`` (no arguments) on the user's message, then answers
    "done" once it has the tool's reply."""

    def turns(req: ChatRequest) -> Any:
        return tool_call_turn(tool_name, {}) if req.messages[-1].role == "user" else text_turn("done")

    return ScriptedProvider(turns)


class StuckOnce:
    """A tool ``wait_here`` whose first call waits (``entered`` set as it begins) until
    ``release`` is set — or, without one, until cancelled; its calls return "ok". ``calls``
    counts them."""

    def __init__(self, release: asyncio.Event | None = None) -> None:
        self.entered = asyncio.Event()
        self.calls = 0
        gate = release or asyncio.Event()

        @tool
        async def wait_here() -> str:
            """Wait (the first call)."""
            self.calls += 1
            if self.calls == 1:
                self.entered.set()
                await gate.wait()
            return "ok"

        self.tool = wait_here


async def worker_for(store: Store, transport: Transport, runtime_tools: Any = (), provider: Any = None, **kw: Any) -> tuple[Worker, asyncio.Event, asyncio.Task[None]]:
    runtime = AgentRuntime(
        providers=[provider or OfflineProvider()], tools=runtime_tools or builtin_tools(), store=store
    )
    return await _serving(runtime, transport, **kw)


async def test_submitted_runs_execute_on_a_worker_with_the_shape_of_a_local_stream(
    transport: RedisTransport, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "w.db")
    worker, stop, task = await worker_for(store, transport, concurrency=3)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    local = await RuntimeInvocation(AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools())).emit(request())
    streams = [inv.submit(request()) for _ in range(5)]
    assert all(isinstance(s, RemoteRunStream) for s in streams)
    outs = await asyncio.wait_for(asyncio.gather(*(s.result for s in streams)), 30)
    assert {o.output_text for o in outs} == {local.output_text}
    assert all(o.total_usage == local.total_usage and o.iterations == local.iterations for o in outs)
    # decoded only now, as nobody subscribed before: from the first event, after the end too
    events = await asyncio.wait_for(collect(streams[0]), 20)
    stored = await store.read_events(streams[0].run_id)
    assert events == [e.event for e in stored]
    assert streams[0].is_finished
    watched = inv.submit(request())  # a subscriber from the start: decoded as they arrive
    live = asyncio.ensure_future(collect(watched))
    out = await asyncio.wait_for(watched.result, 30)
    assert out.output_text == local.output_text
    assert await asyncio.wait_for(live, 20) == [e.event for e in await store.read_events(watched.run_id)]
    stop.set()
    await asyncio.wait_for(task, 20)  # serve() returns once the runs it holds have ended
    assert worker.stats.executed == 6  # counted after the store commit, maybe after the stream
    await store.close()


async def test_submitted_runs_are_in_inv_runs_and_watching_them_there_never_cancels(
    transport: RedisTransport, tmp_path: Path
) -> None:
    from rxinvoke import of_kind

    store = SqliteStore(tmp_path / "runs.db")
    worker_runtime = AgentRuntime(name="east", providers=[OfflineProvider()], tools=builtin_tools(), store=store)
    _, stop, task = await _serving(worker_runtime, transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    counted: list[tuple[str, int, str | None]] = []
    # README recipe 1's shape: a pipeline per run over inv.runs(), completing with each run
    inv.runs().pipe(ops.flat_map(lambda run: run.pipe(
        of_kind("text_delta"), ops.count(), ops.map(lambda n: (run.run_id, n, run.runtime)),
    ))).subscribe(counted.append)
    firsts: list[Any] = []  # an onlooker that leaves at each run's first event
    inv.runs().pipe(ops.flat_map(lambda run: run.pipe(ops.take(1)))).subscribe(firsts.append)
    streams = [inv.submit(request()) for _ in range(3)]
    outs = await asyncio.wait_for(asyncio.gather(*(s.result for s in streams)), 30)
    assert all(o.finish_reason == FinishReason.STOP for o in outs)  # none was cancelled
    for _ in range(200):
        if len(counted) == 3:
            break
        await asyncio.sleep(0.01)
    stored = {
        s.run_id: sum(e.type == "text_delta" for e in await store.read_events(s.run_id)) for s in streams
    }
    assert sorted(counted) == sorted((run_id, n, "east") for run_id, n in stored.items())
    assert all(n > 0 for n in stored.values())
    assert [e.type for e in firsts] == ["run_started"] * 3
    stop.set()
    await asyncio.wait_for(task, 20)
    await store.close()


async def test_runs_submitted_at_once_are_queued_in_one_round_trip(
    transport: RedisTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipelines: list[int] = []
    made = transport.client.pipeline

    def counted(*args: Any, **kw: Any) -> Any:
        pipelines.append(1)
        return made(*args, **kw)

    monkeypatch.setattr(transport.client, "pipeline", counted)
    ids = await asyncio.gather(*(transport.enqueue(f"run-{i}", b"{}") for i in range(20)))
    assert len(pipelines) == 1
    assert len(set(ids)) == 20
    entries = await transport.client.xrange(f"{transport.prefix}runs")
    assert [(e[0].decode(), e[1][b"run_id"].decode()) for e in entries] == [(id_, f"run-{i}") for i, id_ in enumerate(ids)]
    for i in (0, 19):  # each announced (observers may wait on it)
        assert await transport.client.exists(f"{transport.prefix}run:run-{i}:meta") == 1


async def test_the_queues_keep_only_the_jobs_not_done(transport: RedisTransport, tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    worker, stop, task, inv, paused = await _paused_on_a_worker(transport, store)
    (pending,) = paused.pending
    assert await asyncio.wait_for(inv.approve(paused.run_id, pending.call_id), 20) is not None
    for out in [await asyncio.wait_for(inv.submit(request(f"what is {i} + 1?")).result, 20) for i in range(2)]:
        assert out.finish_reason == FinishReason.AWAITING_APPROVAL
    for _ in range(500):  # every job acknowledged: both queues empty (not every run ever queued)
        lengths = [await transport.client.xlen(key) for key in (transport._queue, transport._urgent)]
        if lengths == [0, 0]:
            break
        await asyncio.sleep(0.02)
    assert lengths == [0, 0]
    read = [(await transport.client.xinfo_groups(key))[0]["entries-read"] for key in (transport._queue, transport._urgent)]
    assert read == [3, 1] and worker.stats.executed == 4
    stop.set()
    await asyncio.wait_for(task, 20)
    await store.close()


@pytest.mark.parametrize("apart", [False, True])
async def test_a_run_queued_twice_runs_once_and_both_jobs_are_acknowledged(
    transport: RedisTransport, tmp_path: Path, apart: bool
) -> None:
    # a retried enqueue (the connection broke after the server took it) queues the job twice
    store = SqliteStore(tmp_path / "twice.db")
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    entries: list[Any] = []
    while not entries:  # submit() queues it from its task
        entries = await transport.client.xrange(f"{transport.prefix}runs")
        await asyncio.sleep(0.01)
    queued = entries[0][1]
    if not apart:  # taken in one batch, or (apart) the second after the first run ended
        await transport.enqueue(stream.run_id, queued[b"request"])
    # (taken together, the second waits for the run's lease: it is reclaimed once idle)
    worker, stop, task = await worker_for(store, transport, concurrency=2, lease_ttl=0.5)
    out = await asyncio.wait_for(stream.result, 20)
    if apart:
        await transport.enqueue(stream.run_id, queued[b"request"])
    for _ in range(500):
        pending = await transport.client.xpending(f"{transport.prefix}runs", "workers")
        if pending["pending"] == 0 and await transport.client.xlen(f"{transport.prefix}runs") == 0:
            info = await transport.client.xinfo_groups(f"{transport.prefix}runs")
            if info[0]["entries-read"] == 2:
                break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the second job was never acknowledged")
    stop.set()
    await asyncio.wait_for(task, 20)
    types = [e.type for e in await store.read_events(stream.run_id)]
    assert types.count("run_started") == 1 and types[-1] == "run_completed"
    streamed = [e.type for e in await asyncio.wait_for(collect(inv.remote.follow(stream.run_id, stream.session_id)), 20)]  # type: ignore[union-attr]
    assert streamed == types  # one terminal event on the stream too
    assert out.output_text and worker.stats.executed == 1
    await store.close()


async def test_a_remote_cancel_during_a_tool_lands(transport: RedisTransport, tmp_path: Path) -> None:
    stuck = StuckOnce()
    store = SqliteStore(tmp_path / "c.db")
    worker, stop, task = await worker_for(store, transport, [stuck.tool], calls_then_answers("wait_here"))
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
    await asyncio.wait_for(stuck.entered.wait(), 20)
    assert await inv.cancel(stream.run_id)
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(stream.result, 20)
    types = [e.type for e in await collect(stream)]
    assert types[-1] == "run_cancelled" and types.count("run_cancelled") == 1
    record = await store.get_run(stream.run_id)
    assert record is not None and record.status == "cancelled" and stuck.calls == 1
    stop.set()
    await task
    await store.close()


async def test_a_submitted_run_is_viewed_from_its_stream_where_the_store_here_does_not_have_it(
    transport: RedisTransport, tmp_path: Path
) -> None:
    release = asyncio.Event()
    stuck = StuckOnce(release)
    store = SqliteStore(tmp_path / "v.db")
    worker, stop, task = await worker_for(store, transport, [stuck.tool], calls_then_answers("wait_here"))
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))  # its MemoryStore never has it
    stream = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
    started = asyncio.Event()  # the tool's start has come through its stream, so the view has it
    stream.subscribe(lambda e: started.set() if e.type == "tool_execution_started" else None)
    await asyncio.wait_for(asyncio.gather(stuck.entered.wait(), started.wait()), 20)
    # a snapshot of the live run: what its stream holds now, never waiting for the rest
    running = await asyncio.wait_for(inv.view(stream.run_id), 10)
    assert running.status == "running" and running.run_id == stream.run_id
    assert "tool_execution_started" in [e.type for e in running.events]
    release.set()
    out = await asyncio.wait_for(stream.result, 20)
    final = await inv.view(out.run_id)
    stored = [e.event for e in await store.read_events(out.run_id)]
    assert list(final.events) == stored and list(running.events) == stored[: len(running.events)]
    assert final.status == "completed" and final.text == out.output_text == "done"
    assert [s.kind for s in final.spans] == ["run", "model_call", "tool_execution", "model_call"]
    assert "wait_here" in (final._repr_html_() or "")
    with pytest.raises(UnknownRun):
        await inv.view("no-such-run")
    stop.set()
    await task
    await store.close()


async def test_a_submitted_run_shows_live_in_a_notebook_as_a_local_one(
    transport: RedisTransport, tmp_path: Path
) -> None:
    from rxinvoke.notebook import RunView, live

    shown: dict[str, list[Any]] = {}
    completed = asyncio.Event()  # a run view showing a completed run was displayed

    def display(obj: Any, *, display_id: str) -> None:
        shown.setdefault(display_id, []).append(obj)
        if getattr(obj, "status", None) == "completed":
            completed.set()

    def update(obj: Any, *, display_id: str) -> None:
        assert display_id in shown, "update before display"
        display(obj, display_id=display_id)

    store = SqliteStore(tmp_path / "l.db")
    worker, stop, task = await worker_for(store, transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    with live(stream, display=display, update=update):
        out = await asyncio.wait_for(stream.result, 20)
        await asyncio.wait_for(collect(stream), 20)  # its events delivered here too
    (outputs,) = shown.values()  # one output for the run, ending on its final state
    final = outputs[-1]
    assert isinstance(final, RunView) and final.run_id == out.run_id
    assert final.status == "completed" and final.text == out.output_text
    assert list(final.events) == [e.event for e in await store.read_events(out.run_id)]
    # followed by id from its stream, as observe_run gives it (envelopes)
    shown.clear()
    completed.clear()
    with live(RemoteRuns(transport).observe_run(out.run_id), display=display, update=update):
        await asyncio.wait_for(completed.wait(), 20)
    (outputs,) = shown.values()
    assert isinstance(outputs[-1], RunView) and list(outputs[-1].events) == list(final.events)
    stop.set()
    await task
    await store.close()


async def test_a_submitted_streams_last_subscriber_leaving_early_cancels_the_run_as_a_local_one(
    transport: RedisTransport, tmp_path: Path
) -> None:
    stuck = StuckOnce()
    store = SqliteStore(tmp_path / "d.db")
    worker, stop, task = await worker_for(store, transport, [stuck.tool], calls_then_answers("wait_here"))
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
    first, second = stream.subscribe(lambda e: None), stream.subscribe(lambda e: None)
    follower = RemoteRuns(transport).follow(stream.run_id, stream.session_id)
    follower.subscribe(lambda e: None).dispose()  # a stream of a run submitted elsewhere: not its to cancel
    await asyncio.wait_for(stuck.entered.wait(), 20)
    first.dispose()  # another subscriber is left: the run goes on
    assert await transport.cancel_requested([stream.run_id]) == [False]
    second.dispose()  # the last one left before the end: the run is not wanted
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(stream.result, 20)
    record = await store.get_run(stream.run_id)
    assert record is not None and record.status == "cancelled"
    # one that leaves at the terminal event does not ask for a cancel of a run that ended
    done = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
    left = done.pipe(ops.take_while(lambda e: e.type != "run_completed", inclusive=True)).subscribe(lambda e: None)
    await asyncio.wait_for(done.result, 20)
    left.dispose()
    assert await transport.cancel_requested([done.run_id]) == [False]
    stop.set()
    await task
    await store.close()


async def test_recipe_5_on_a_submitted_run_cancels_it_on_its_worker(transport: RedisTransport, tmp_path: Path) -> None:
    import reactivex
    from reactivex.testing import TestScheduler

    from rxinvoke import text_of

    stuck = StuckOnce()
    store = SqliteStore(tmp_path / "r5.db")
    worker, stop, task = await worker_for(store, transport, [stuck.tool], calls_then_answers("wait_here"))
    clock = TestScheduler()  # the recipe's inv.scheduler, driven here by hand
    inv = RuntimeInvocation(AgentRuntime(scheduler=clock), remote=RemoteRuns(transport))
    # --- the README's recipe 5, with submit for stream ---
    stream = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
    shown = stream.pipe(ops.take_until(reactivex.timer(2.0, scheduler=inv.scheduler)), text_of())
    shown.subscribe(print)
    # --- end ---
    await asyncio.wait_for(stuck.entered.wait(), 20)
    clock.advance_by(2.0)  # the timer fires: the only subscription is disposed
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(stream.result, 20)
    record = await store.get_run(stream.run_id)
    assert record is not None and record.status == "cancelled"
    stop.set()
    await task
    await store.close()


async def test_a_submitted_stream_left_from_another_thread_cancels_its_run_all_the_same(
    transport: RedisTransport, tmp_path: Path
) -> None:
    stuck = StuckOnce()
    store = SqliteStore(tmp_path / "t.db")
    worker, stop, task = await worker_for(store, transport, [stuck.tool], calls_then_answers("wait_here"))
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
    subscription = stream.subscribe(lambda e: None)
    await asyncio.wait_for(stuck.entered.wait(), 20)
    # as a time operator on a timer thread disposes it (take_until(timer(2.0)) without a scheduler)
    await asyncio.to_thread(subscription.dispose)
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(stream.result, 20)
    stop.set()
    await task
    await store.close()


def _approving_runtime(store: Store, *tools: Any, provider: Any = None) -> AgentRuntime:
    from rxinvoke import ApprovalPolicy, RuntimePolicy

    return AgentRuntime(
        providers=[provider or OfflineProvider()], tools=[*builtin_tools(), *tools], store=store,
        policy=RuntimePolicy(approval=ApprovalPolicy(tools=frozenset({"calculate", "wait_here"}))),
    )


def _scripted(text: str = "go") -> EmitRequest:
    return EmitRequest(provider="scripted", model="scripted", input=text)


async def _serving(runtime: AgentRuntime, transport: Transport, **kw: Any) -> tuple[Worker, asyncio.Event, asyncio.Task[None]]:
    worker = Worker(runtime, transport, **kw)
    stop = asyncio.Event()
    return worker, stop, asyncio.ensure_future(worker.serve(stop))


async def _paused_on_a_worker(
    transport: Transport, store: Store, **kw: Any
) -> tuple[Worker, asyncio.Event, asyncio.Task[None], RuntimeInvocation, RunOutput]:
    """A worker (pausing calls of calculate), a submitter, and a run of it paused on the worker
    for its one call."""
    worker, stop, task = await _serving(_approving_runtime(store), transport, **kw)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    paused = await asyncio.wait_for(inv.submit(request()).result, 20)
    assert paused.finish_reason == FinishReason.AWAITING_APPROVAL and len(paused.pending) == 1
    return worker, stop, task, inv, paused


async def test_a_run_paused_on_the_workers_is_approved_here_and_continued_on_a_worker(
    transport: RedisTransport, tmp_path: Path
) -> None:
    from rxinvoke import InvalidRequest

    store = SqliteStore(tmp_path / "a.db")
    worker, stop, task, inv, paused = await _paused_on_a_worker(transport, store)
    (pending,) = paused.pending
    # as a local approve: the last decision continues the run and returns its output
    out = await asyncio.wait_for(inv.approve(paused.run_id, pending.call_id), 20)
    assert out is not None and "5" in out.output_text and out.run_id != paused.run_id
    assert out.session_id == paused.session_id
    continued = await store.get_run(out.run_id)  # on the workers' store, run by the worker
    assert continued is not None and continued.status == "completed"
    assert continued.request.resumes == paused.run_id
    assert await inv.runtime.store.get_run(out.run_id) is None  # nothing ran here
    decided = [e.event for e in await store.read_events(out.run_id) if e.type == "approval_decided"]
    assert [(d.call_id, d.approved) for d in decided] == [(pending.call_id, True)]
    assert [e.type for e in await inv.remote.events(out.run_id)][-1] == "run_completed"  # type: ignore[union-attr]
    # the workers' refusals are this process's errors, as the runtime's own are
    with pytest.raises(InvalidRequest, match="not awaiting approval"):
        await asyncio.wait_for(inv.approve(paused.run_id, pending.call_id), 20)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert worker.stats.executed == 2
    await store.close()


def _deploys_twice() -> tuple[ScriptedProvider, Any, list[str]]:
    """A provider that deploys to prod and test at once, then answers with what the tools
    said; the deploy tool (needing approval) and the envs it deployed to."""
    ran: list[str] = []

    @tool(requires_approval=True)
    def deploy(env: str) -> str:
        """Deploy."""
        ran.append(env)
        return f"deployed to {env}"

    def turns(req: ChatRequest) -> Any:
        if req.messages[-1].role == "user":
            return ScriptedProvider.tool_calls_turn(
                [("deploy", {"env": "prod"}, "c_prod"), ("deploy", {"env": "test"}, "c_test")]
            )
        return ScriptedProvider.text_turn(" | ".join(m.content for m in req.messages if m.role == "tool"))

    return ScriptedProvider(turns), deploy, ran


async def test_decisions_on_a_batch_paused_on_the_workers_wait_for_the_last_one(
    transport: RedisTransport, tmp_path: Path
) -> None:
    from rxinvoke import InvalidRequest

    provider, deploy, ran = _deploys_twice()
    store = SqliteStore(tmp_path / "b.db")
    worker, stop, task = await _serving(_approving_runtime(store, deploy, provider=provider), transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    paused = await asyncio.wait_for(inv.submit(_scripted()).result, 20)
    assert {p.call_id for p in paused.pending} == {"c_prod", "c_test"}
    assert await asyncio.wait_for(inv.deny(paused.run_id, "c_test", "not today"), 20) is None
    with pytest.raises(InvalidRequest, match="no call 'c_nope'"):
        await asyncio.wait_for(inv.approve(paused.run_id, "c_nope"), 20)
    with pytest.raises(InvalidRequest, match="already denied"):
        await asyncio.wait_for(inv.approve(paused.run_id, "c_test"), 20)
    record = await store.get_run(paused.run_id)
    assert record is not None and record.output is not None
    assert {p.call_id: p.approved for p in record.output.pending} == {"c_prod": None, "c_test": False}
    out = await asyncio.wait_for(inv.approve(paused.run_id, "c_prod"), 20)
    assert out is not None and "deployed to prod" in out.output_text and "not today" in out.output_text
    assert ran == ["prod"]
    stop.set()
    await asyncio.wait_for(task, 20)
    await store.close()


async def _continuation_of(store: Store, paused: str) -> RunRecord:
    """The run that continues ``paused`` on ``store`` (waiting for it to begin)."""
    for _ in range(400):
        for record in await store.list_runs():
            if record.request.resumes == paused:
                return record
        await asyncio.sleep(0.025)
    raise AssertionError(f"no continuation of {paused}")


async def test_a_continuation_on_a_worker_runs_under_the_deciders_control(
    transport: RedisTransport, tmp_path: Path
) -> None:
    from rxinvoke import Control, InvocationTimedOut

    store = SqliteStore(tmp_path / "c.db")
    held = StuckOnce()

    def turns(req: ChatRequest) -> Any:
        if req.messages[-1].role == "user":
            return ScriptedProvider.tool_call_turn("wait_here", {}, call_id="c1")
        return ScriptedProvider.text_turn("done")

    worker, stop, task = await _serving(
        _approving_runtime(store, held.tool, provider=ScriptedProvider(turns)), transport
    )
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    first = await asyncio.wait_for(inv.submit(_scripted()).result, 20)
    # the continuation's deadline is the decider's, enforced where it runs
    with pytest.raises(InvocationTimedOut):
        await asyncio.wait_for(inv.approve(first.run_id, "c1", Control(timeout=0.3)), 20)
    assert held.calls == 1
    # the decider gives up (its task cancelled): the continuation is cancelled on its worker
    held.calls = 0
    held.entered.clear()
    second = await asyncio.wait_for(inv.submit(_scripted()).result, 20)
    approving = asyncio.ensure_future(inv.approve(second.run_id, "c1"))
    await asyncio.wait_for(held.entered.wait(), 20)
    approving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await approving
    continuation = await _continuation_of(store, second.run_id)
    stream = RemoteRuns(transport).follow(continuation.run_id, second.session_id)
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(stream.result, 20)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert worker.stats.cancelled_remotely == 1
    await store.close()


@pytest.mark.parametrize("apart", [False, True], ids=["together", "apart"])
async def test_a_decision_queued_twice_is_decided_once_and_continued_once(
    transport: RedisTransport, tmp_path: Path, apart: bool
) -> None:
    from rxinvoke.transports._decisions import Answer, Decision

    store = SqliteStore(tmp_path / "d.db")
    # (taken together, the second waits for the continuation's lease: reclaimed once idle)
    worker, stop, task, inv, paused = await _paused_on_a_worker(transport, store, lease_ttl=0.5)
    (pending,) = paused.pending
    continuation = str(uuid.uuid4())
    decision = Decision(decide=paused.run_id, call_id=pending.call_id, approved=True, run_id=continuation)
    # as a retried enqueue may queue it: in one batch, or (apart) after the first ended
    await transport.enqueue(continuation, decision.wire())
    if not apart:
        await transport.enqueue(continuation, decision.wire())
    answer = await transport.replied(continuation, 20)
    assert answer is not None and Answer.model_validate_json(answer).outcome == "continues"
    out = await asyncio.wait_for(RemoteRuns(transport).follow(continuation, paused.session_id).result, 20)
    assert "5" in out.output_text
    if apart:
        await transport.enqueue(continuation, decision.wire())
    for _ in range(500):  # both jobs are done: nothing pending for the workers
        pending_jobs = await transport.client.xpending(transport._urgent, "workers")
        info = await transport.client.xinfo_groups(transport._urgent)
        if pending_jobs["pending"] == 0 and info[0]["entries-read"] == 2:
            break
        await asyncio.sleep(0.02)
    assert (await transport.client.xpending(transport._urgent, "workers"))["pending"] == 0
    assert (await transport.client.xpending(transport._queue, "workers"))["pending"] == 0
    assert await transport.replied(continuation, 0.1) is None  # answered once
    assert [r.run_id for r in await store.list_runs() if r.request.resumes == paused.run_id] == [continuation]
    assert [e.type for e in await inv.remote.events(continuation)].count("run_completed") == 1  # type: ignore[union-attr]
    stop.set()
    await asyncio.wait_for(task, 20)
    await store.close()


async def test_a_decision_given_up_before_a_worker_takes_it_is_not_recorded(
    transport: RedisTransport, tmp_path: Path
) -> None:
    from rxinvoke import InvalidRequest

    store = SqliteStore(tmp_path / "e.db")
    _, stop, task, inv, paused = await _paused_on_a_worker(transport, store)
    (pending,) = paused.pending
    stop.set()
    await asyncio.wait_for(task, 20)  # no worker now: the decision waits in the queue
    with pytest.raises(asyncio.TimeoutError):  # (not the builtin TimeoutError on 3.10)
        await asyncio.wait_for(inv.approve(paused.run_id, pending.call_id), 0.5)
    ((_, job),) = await transport.client.xrevrange(transport._urgent, count=1)
    continuation = job[b"run_id"].decode()
    for _ in range(100):  # the cancel request is sent as the approve is given up
        if (await transport.cancel_requested([continuation]))[0]:
            break
        await asyncio.sleep(0.02)
    assert (await transport.cancel_requested([continuation]))[0]
    worker, stop, task = await _serving(_approving_runtime(store), transport)
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(RemoteRuns(transport).follow(continuation, paused.session_id).result, 20)
    record = await store.get_run(paused.run_id)
    assert record is not None and record.status == "awaiting_approval" and record.output is not None
    assert [p.approved for p in record.output.pending] == [None]  # not recorded
    out = await asyncio.wait_for(inv.approve(paused.run_id, pending.call_id), 20)  # decided now
    assert out is not None and "5" in out.output_text
    with pytest.raises(InvalidRequest):
        await asyncio.wait_for(inv.deny(paused.run_id, pending.call_id), 20)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert worker.stats.cancelled_remotely == 1
    await store.close()


async def test_a_decision_goes_before_the_runs_queued_ahead_of_it(
    transport: RedisTransport, tmp_path: Path
) -> None:
    """A busy worker takes a decision (and so the paused run's continuation) before runs queued
    earlier: an approval does not wait for the backlog, as a local approve does not."""
    store = SqliteStore(tmp_path / "p.db")
    release = asyncio.Event()
    held = StuckOnce(release)

    def turns(req: ChatRequest) -> Any:
        if req.messages[-1].role == "user" and req.messages[-1].content == "hold":
            return ScriptedProvider.tool_call_turn("wait_here", {}, call_id="h1")
        return ScriptedProvider.text_turn("fine")

    from rxinvoke import ApprovalPolicy, RuntimePolicy

    runtime = AgentRuntime(
        providers=[OfflineProvider(), ScriptedProvider(turns)], tools=[*builtin_tools(), held.tool],
        store=store, policy=RuntimePolicy(approval=ApprovalPolicy(tools=frozenset({"calculate"}))),
    )
    worker, stop, task = await _serving(runtime, transport, concurrency=1)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    paused = await asyncio.wait_for(inv.submit(request()).result, 20)
    (pending,) = paused.pending
    holding = inv.submit(_scripted("hold"))  # the worker's one slot, until released
    await asyncio.wait_for(held.entered.wait(), 20)
    queued = [inv.submit(_scripted(f"run {i}")) for i in range(3)]
    approving = asyncio.ensure_future(inv.approve(paused.run_id, pending.call_id))
    for _ in range(500):  # every job queued, the decision last (the paused run's job is done)
        if await _queued(transport) == (5, 1):
            break
        await asyncio.sleep(0.02)
    assert await _queued(transport) == (5, 1)
    release.set()
    out = await asyncio.wait_for(approving, 20)
    assert out is not None and "5" in out.output_text
    await asyncio.wait_for(holding.result, 20)
    later = [await asyncio.wait_for(s.result, 20) for s in queued]
    continued = await store.get_run(out.run_id)
    assert continued is not None
    for run in later:
        record = await store.get_run(run.run_id)
        assert record is not None and continued.started_at < record.started_at
    stop.set()
    await asyncio.wait_for(task, 20)
    await store.close()


async def _queued(transport: RedisTransport) -> tuple[int, int]:
    """(jobs in either of the transport's queues — queued or running —, of which decisions on
    paused runs)."""
    jobs = decisions = 0
    for key in (transport._queue, transport._urgent):
        for _, fields in await transport.client.xrange(key):
            jobs += 1
            decisions += fields[b"request"].startswith(b'{"decide":')
    return jobs, decisions


async def test_an_approval_timeout_on_a_worker_queues_the_continuation_as_a_job(
    transport: RedisTransport, tmp_path: Path
) -> None:
    from reactivex.testing import TestScheduler

    from rxinvoke import ApprovalPolicy, RuntimePolicy

    clock = TestScheduler()  # the approval deadline in virtual time
    store = SqliteStore(tmp_path / "t.db")
    runtime = AgentRuntime(
        providers=[OfflineProvider()], tools=builtin_tools(), store=store, scheduler=clock,
        policy=RuntimePolicy(approval=ApprovalPolicy(tools=frozenset({"calculate"}), timeout=60)),
    )
    worker, stop, task = await _serving(runtime, transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    paused = await asyncio.wait_for(inv.submit(request()).result, 20)
    assert paused.finish_reason == FinishReason.AWAITING_APPROVAL
    clock.advance_by(61.0)  # the worker's runtime denies the call at its deadline
    continuation = await _continuation_of(store, paused.run_id)
    out = await asyncio.wait_for(RemoteRuns(transport).follow(continuation.run_id, paused.session_id).result, 20)
    assert out.finish_reason == FinishReason.STOP
    decided = [e.event for e in await store.read_events(continuation.run_id) if e.type == "approval_decided"]
    assert [(d.approved, d.reason) for d in decided] == [(False, "approval timed out")]
    # it ran as a job (under a lease, cancellable, recovered), not beside them; urgent: before
    # the runs not begun yet
    added = [(await transport.client.xinfo_stream(key))["entries-added"] for key in (transport._queue, transport._urgent)]
    assert added == [1, 1]
    stop.set()
    await asyncio.wait_for(task, 20)
    assert worker.stats.executed == 2
    await store.close()


async def test_a_submitted_runs_control_is_enforced_on_its_worker(transport: RedisTransport, tmp_path: Path) -> None:
    from rxinvoke import Control, InvocationTimedOut

    # two parallel calls of a tool that waits: the concurrency limit runs them one at a time
    running, most, hold = [0], [0], [False]
    entered = asyncio.Event()

    @tool
    async def slow() -> str:
        """Take a while (with ``hold``: until cancelled)."""
        running[0] += 1
        most[0] = max(most[0], running[0])
        entered.set()
        await (asyncio.Event().wait() if hold[0] else asyncio.sleep(0.05))
        running[0] -= 1
        return "ok"

    def turns(req: ChatRequest) -> Any:
        if req.messages[-1].role == "user":
            return ScriptedProvider.tool_calls_turn([("slow", {}, "c1"), ("slow", {}, "c2")])
        return text_turn("done")

    store = SqliteStore(tmp_path / "ctl.db")
    runtime = AgentRuntime(providers=[ScriptedProvider(turns)], tools=[slow], store=store)
    worker = Worker(runtime, transport)
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.serve(stop))
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    scripted = EmitRequest(provider="scripted", model="scripted", input="go")

    out = await asyncio.wait_for(inv.submit(scripted, Control(concurrency_limit=1)).result, 20)
    assert out.output_text == "done" and most[0] == 1  # (two at once without the limit)

    entered.clear()
    hold[0] = True
    timed = inv.submit(scripted, Control(timeout=0.3))  # its tool waits for ever: the deadline ends it
    with pytest.raises(InvocationTimedOut, match="timed out after 0.3s"):
        await asyncio.wait_for(timed.result, 20)

    control = Control()
    entered.clear()
    cancelled = inv.submit(scripted, control)
    await asyncio.wait_for(entered.wait(), 20)
    control.cancel()  # as a local run's Control: cancelled where it runs
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(cancelled.result, 20)
    stop.set()
    await task
    await store.close()


async def test_a_run_cancelled_before_a_worker_takes_it_ends_cancelled_on_its_stream(
    transport: RedisTransport, tmp_path: Path
) -> None:
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    await asyncio.sleep(0.05)  # queued
    await inv.cancel(stream.run_id)
    store = SqliteStore(tmp_path / "q.db")
    worker, stop, task = await worker_for(store, transport)
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(stream.result, 20)
    assert [e.type for e in await collect(stream)] == ["run_started", "run_cancelled"]
    assert await store.get_run(stream.run_id) is None  # it never began
    stop.set()
    await task
    await store.close()


class _ClaimFails(SqliteStore):
    """A SqliteStore whose next claim fails as a server gone at that moment does (nothing
    written)."""

    failures = 1

    async def begin_run(self, record: Any, messages: Any, **kw: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise StoreError("connection refused")
        return await super().begin_run(record, messages, **kw)


async def test_a_run_whose_claim_the_store_refused_fails_on_its_stream_as_it_would_here(
    transport: RedisTransport, tmp_path: Path
) -> None:
    store = _ClaimFails(tmp_path / "claim.db")
    worker, stop, task = await worker_for(store, transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    with pytest.raises(InvocationFailed, match="the store failed: connection refused"):
        await asyncio.wait_for(stream.result, 20)  # never a hang: the job is not left silent
    assert [e.type for e in await collect(stream)] == ["run_started", "run_failed"]
    assert await store.get_run(stream.run_id) is None  # it never began
    again = inv.submit(request())  # the store answers again: the next run runs
    assert (await asyncio.wait_for(again.result, 20)).output_text
    for _ in range(500):
        if (await transport.client.xpending(f"{transport.prefix}runs", "workers"))["pending"] == 0:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the failed run's job was never acknowledged")
    stop.set()
    await task
    await store.close()


async def test_a_submit_with_the_client_request_id_of_an_earlier_run_gets_that_runs_outcome(
    transport: RedisTransport, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "key.db")
    worker, stop, task = await worker_for(store, transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    first = inv.submit(request(client_request_id="order-17"))
    out = await asyncio.wait_for(first.result, 20)
    again = inv.submit(request(client_request_id="order-17"))  # a retried submit, say
    assert again.run_id != first.run_id
    assert await asyncio.wait_for(again.result, 20) == out  # as a local emit: the earlier run's
    assert await collect(again) == await collect(first)  # its events, on the new run's stream
    assert [r.run_id for r in await store.list_runs()] == [first.run_id]  # it ran once
    failed = inv.submit(EmitRequest(provider="nope", model="x", input="hi", client_request_id="bad"))
    with pytest.raises(InvocationFailed, match="invalid request"):
        await asyncio.wait_for(failed.result, 20)
    stop.set()
    await task
    await store.close()


class _LostReplyStoreAway(SqliteStore):
    """A SqliteStore whose next claim commits but whose reply is lost, and which then fails
    the next ``away`` lookups (a failover: the server gone a while after the commit)."""

    lose_reply = True
    away = 0

    async def begin_run(self, record: Any, messages: Any, **kw: Any) -> Any:
        claimed = await super().begin_run(record, messages, **kw)
        if self.lose_reply:
            self.lose_reply, self.away = False, 2
            raise StoreError("server closed the connection unexpectedly")
        return claimed

    async def get_run(self, run_id: str) -> Any:
        if self.away:
            self.away -= 1
            raise StoreError("connection refused")
        return await super().get_run(run_id)


async def test_a_claim_committed_whose_reply_was_lost_while_the_store_was_away_is_settled(
    transport: RedisTransport, tmp_path: Path
) -> None:
    # the runtime could not ask the store whether its claim landed, nor the worker whether the
    # run began: the job stays pending; its owner lives (this worker), so only it can settle it
    store = _LostReplyStoreAway(tmp_path / "away.db")
    worker, stop, task = await worker_for(store, transport, lease_ttl=0.5)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    for _ in range(500):
        if not store.lose_reply and not store.away and not worker.active:
            break  # both lookups failed, the job was left for later
        await asyncio.sleep(0.01)
    record = await store.get_run(stream.run_id)
    assert record is not None and record.status == "running" and record.owner == store.owner
    for _ in range(100):  # no job idle long enough: it settles its own abandoned run
        await worker.reap(min_idle=3600)
        if stream.is_finished:
            break
        await asyncio.sleep(0.05)
    with pytest.raises(InvocationFailed, match="interrupted"):
        await asyncio.wait_for(stream.result, 20)
    record = await store.get_run(stream.run_id)
    assert record is not None and (record.status, record.error) == ("failed", "interrupted")
    assert [e.type for e in await store.read_events(stream.run_id)] == ["run_started", "run_failed"]
    assert [e.type for e in await collect(stream)] == ["run_started", "run_failed"]
    assert worker.stats.recovered == 1
    stop.set()
    await task
    await store.close()


class _EndNotRecorded(SqliteStore):
    """A SqliteStore that cannot record any run's end (its disk failing at that moment)."""

    async def finish_run(self, run_id: str, outcome: Any, **kw: Any) -> None:
        raise StoreError("disk I/O error")


async def test_a_run_whose_end_the_store_could_not_record_is_settled_from_its_stream(
    transport: RedisTransport, tmp_path: Path
) -> None:
    store = _EndNotRecorded(tmp_path / "end.db")
    worker, stop, task = await worker_for(store, transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    out = await asyncio.wait_for(stream.result, 30)  # its stream has its end
    for _ in range(500):  # and so, once its worker settled it, has the store
        record = await store.get_run(stream.run_id)
        if record is not None and record.is_finished:
            break
        await asyncio.sleep(0.02)
    assert record is not None and record.status == "completed"
    types = [e.type for e in await store.read_events(stream.run_id)]
    assert types == [e.type for e in await collect(stream)] and types[-1] == "run_completed"
    assert sum(t in ("run_completed", "run_failed", "run_cancelled") for t in types) == 1
    assert out.output_text and worker.stats.recovered == 1
    stop.set()
    await task
    await store.close()


@pytest.mark.timeout(300)  # a cluster of its own, stopped and started: slow on CI
async def test_a_workers_postgres_gone_mid_run_never_hangs_the_run_and_it_is_settled_once_back(
    transport: RedisTransport,
) -> None:
    gate = asyncio.Event()
    stuck = StuckOnce(gate)
    with postgres_server() as server:
        store = PostgresStore(server.dsn, timeout=2)
        worker, stop, task = await worker_for(
            store, transport, [stuck.tool], calls_then_answers("wait_here"), lease_ttl=1
        )
        inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
        stream = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
        await asyncio.wait_for(stuck.entered.wait(), 30)
        server.stop("fast")  # mid-run (its connections dropped): nothing more can be committed
        gate.set()
        # the tool's reply cannot be committed: the run fails with the store's error, on its
        # stream (its worker could not record even that): never a hang
        with pytest.raises(InvocationFailed, match="couldn't get a connection") as failed:
            await asyncio.wait_for(stream.result, 120)
        assert server.password not in str(failed.value)
        for _ in range(600):  # its worker gives up recording it, and leaves the job for later
            if stream.run_id not in worker.active:
                break
            await asyncio.sleep(0.1)
        assert stream.run_id not in worker.active
        record = None
        server.start_again()
        for _ in range(300):  # its worker settles it from the stream at its next reaping
            await worker.reap(min_idle=3600)
            with contextlib.suppress(StoreError):
                record = await store.get_run(stream.run_id)
                if record is not None and record.is_finished:
                    break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the run was never settled in the store")
        assert record.status == "failed" and "couldn't get a connection" in (record.error or "")
        stored = [e.type for e in await store.read_events(stream.run_id)]
        assert stored == [e.type for e in await collect(stream)]
        assert sum(t in ("run_completed", "run_failed", "run_cancelled") for t in stored) == 1
        stop.set()
        await asyncio.wait_for(task, 60)
        await store.close()


async def test_a_run_queued_longer_than_the_followers_quiet_check_is_still_followed(
    transport: RedisTransport, tmp_path: Path
) -> None:
    # one worker slot, busy for 3 s: the second run waits in the queue with no stream yet,
    # past the live tail's check for expired streams (10 quiet blocking reads, 2 s here)
    go = asyncio.Event()

    @tool
    async def slow() -> str:
        """Take a while."""
        await asyncio.sleep(3)
        go.set()
        return "slept"

    def turns(req: ChatRequest) -> Any:
        return tool_call_turn("slow", {}) if req.messages[-1].content == "first" else text_turn("done")

    store = SqliteStore(tmp_path / "queued.db")
    worker, stop, task = await worker_for(store, transport, [slow], ScriptedProvider(turns), concurrency=1)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    first = inv.submit(EmitRequest(provider="scripted", model="scripted", input="first"))
    second = inv.submit(EmitRequest(provider="scripted", model="scripted", input="second"))
    assert (await asyncio.wait_for(second.result, 30)).output_text == "done"
    assert go.is_set() and (await asyncio.wait_for(first.result, 30)).output_text == "done"
    stop.set()
    await task
    await store.close()


async def test_a_remote_cancel_of_a_run_waiting_for_its_session_lands(
    transport: RedisTransport, tmp_path: Path
) -> None:
    stuck = StuckOnce()  # the first run holds the session
    store = SqliteStore(tmp_path / "gate.db")
    worker, stop, task = await worker_for(store, transport, [stuck.tool], calls_then_answers("wait_here"), concurrency=2)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    session = uuid.uuid4()
    first = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go", session_id=session))
    await asyncio.wait_for(stuck.entered.wait(), 20)
    second = inv.submit(EmitRequest(provider="scripted", model="scripted", input="next", session_id=session))
    for _ in range(500):  # taken, and waiting for the session behind the first
        if second.run_id in worker.active:
            break
        await asyncio.sleep(0.01)
    assert second.run_id in worker.active  # (else this would test a cancel before the take)
    await inv.cancel(second.run_id)
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(second.result, 20)
    assert [e.type for e in await collect(second)] == ["run_started", "run_cancelled"]
    assert await store.get_run(second.run_id) is None  # it never began
    await inv.cancel(first.run_id)
    with pytest.raises(InvocationCancelled):
        await asyncio.wait_for(first.result, 20)
    stop.set()
    await task
    await store.close()


async def test_an_invalid_request_fails_on_its_stream(transport: RedisTransport, tmp_path: Path) -> None:
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(EmitRequest(provider="nope", model="x", input="hi"))
    store = SqliteStore(tmp_path / "i.db")
    worker, stop, task = await worker_for(store, transport)
    with pytest.raises(InvocationFailed, match="invalid request"):
        await asyncio.wait_for(stream.result, 20)
    stop.set()
    await task
    await store.close()


class _PausedHolder:
    """Worker "a" running a submitted run inside a tool that waits for ``go``, whose lease
    then expires (a GC pause, a frozen VM): the heartbeats of these tests are called by hand."""

    def __init__(self, transport: RedisTransport, path: Path) -> None:
        self.transport, self.path = transport, path
        self.go = asyncio.Event()
        self.calls: list[str] = []

    async def __aenter__(self) -> _PausedHolder:
        entered = asyncio.Event()

        @tool
        async def slow() -> str:
            """Take a while."""
            self.calls.append("slow")
            entered.set()
            await self.go.wait()
            return "slept"

        self.store = SqliteStore(self.path)
        self.worker, self.stop, self.task = await worker_for(
            self.store, self.transport, [slow], calls_then_answers("slow"), lease_ttl=600, name="a"
        )
        inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(self.transport))
        self.stream = inv.submit(EmitRequest(provider="scripted", model="scripted", input="go"))
        await asyncio.wait_for(entered.wait(), 20)
        self.lease_key = f"{self.transport.prefix}lease:{self.stream.run_id}"
        await self.transport.client.delete(self.lease_key)  # a's lease expires
        return self

    async def terminals(self) -> int:
        """The terminal events of the run in the store, once it is settled there (the stream
        shows its end as soon as it is published; the store write may land a moment later)."""
        for _ in range(500):
            record = await self.store.get_run(self.stream.run_id)
            if record is not None and record.is_finished:
                break
            await asyncio.sleep(0.01)
        types = [e.type for e in await self.store.read_events(self.stream.run_id)]
        return sum(t in ("run_completed", "run_failed", "run_cancelled") for t in types)

    async def __aexit__(self, *exc: object) -> None:
        self.go.set()
        self.stop.set()
        await self.task
        await self.store.close()


async def test_a_worker_whose_lease_another_holds_now_stops_and_the_run_never_runs_twice(
    transport: RedisTransport, tmp_path: Path
) -> None:
    async with _PausedHolder(transport, tmp_path / "fence.db") as a:
        rival = await transport.acquire(a.stream.run_id, 600)  # a reaper took the lease meanwhile
        assert rival is not None
        await a.worker.beat()  # a's refresh fails and the lease is not free: fenced out
        with pytest.raises(InvocationCancelled):
            await asyncio.wait_for(a.stream.result, 20)
        assert a.worker.stats.lease_lost == 1 and a.worker.stats.leases_retaken == 0
        assert a.calls == ["slow"] and await a.terminals() == 1
        assert await transport.client.get(a.lease_key) == rival.token.encode()  # the rival's still


async def test_a_paused_worker_takes_its_expired_lease_again_when_no_one_took_the_run(
    transport: RedisTransport, tmp_path: Path
) -> None:
    async with _PausedHolder(transport, tmp_path / "pause.db") as a:
        await a.worker.beat()  # the lease is free and the store says the run is a's
        assert a.worker.stats.leases_retaken == 1 and a.worker.stats.lease_lost == 0
        assert await transport.client.exists(a.lease_key) == 1
        a.go.set()
        out = await asyncio.wait_for(a.stream.result, 20)
        assert out.output_text == "done" and a.calls == ["slow"] and await a.terminals() == 1
        for _ in range(200):  # the lease taken again is the one given back
            if not await transport.client.exists(a.lease_key):
                break
            await asyncio.sleep(0.01)
        assert not await transport.client.exists(a.lease_key)


async def test_a_paused_worker_whose_store_fails_does_not_take_its_lease_again(
    transport: RedisTransport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _PausedHolder(transport, tmp_path / "down.db") as a:
        async def failing(run_id: str) -> None:
            raise StoreError("the store is away")

        monkeypatch.setattr(a.store, "get_run", failing)
        await a.worker.beat()  # whose the run is cannot be told: stopped, as a lost lease
        monkeypatch.undo()
        with pytest.raises(InvocationCancelled):
            await asyncio.wait_for(a.stream.result, 20)
        assert a.worker.stats.lease_lost == 1 and a.worker.stats.leases_retaken == 0
        assert not await transport.client.exists(a.lease_key)  # the lease taken for the look


async def test_a_paused_worker_does_not_take_a_lease_again_for_a_run_taken_over(
    transport: RedisTransport, tmp_path: Path
) -> None:
    async with _PausedHolder(transport, tmp_path / "over.db") as a:
        with sqlite3.connect(a.path) as conn:  # another process took the run over meanwhile
            conn.execute("UPDATE runs SET owner = 'elsewhere:1:1' WHERE id = ?", (a.stream.run_id,))
        conn.close()
        await a.worker.beat()
        with pytest.raises(InvocationCancelled):
            await asyncio.wait_for(a.stream.result, 20)
        assert a.worker.stats.lease_lost == 1 and a.worker.stats.leases_retaken == 0
        assert not await transport.client.exists(a.lease_key)  # taken for the look, given back


async def test_a_run_that_ends_while_a_heartbeat_is_away_is_not_a_lost_lease(
    transport: RedisTransport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _PausedHolder(transport, tmp_path / "ends.db") as a:
        refresh = transport.refresh

        async def slow_refresh(leases: Any, ttl: float) -> list[bool]:
            a.go.set()  # the run ends (and gives its lease back) before the refresh lands
            await asyncio.wait_for(a.stream.result, 20)
            for _ in range(500):
                if not a.worker._held:
                    break
                await asyncio.sleep(0.01)
            return await refresh(leases, ttl)  # False: the lease is gone

        monkeypatch.setattr(transport, "refresh", slow_refresh)
        await a.worker.beat()
        assert a.worker.stats.lease_lost == 0 and a.worker.stats.leases_retaken == 0
        assert await a.terminals() == 1


async def test_a_job_delivered_too_often_goes_to_the_dead_letters(transport: RedisTransport, tmp_path: Path) -> None:
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    stream = inv.submit(request())
    await asyncio.sleep(0.05)
    # three workers took it and died without a trace (no lease, no store row)
    for name in ("x", "y", "z"):
        taken = await transport.take(name, 1, wait=0.1) or await transport.reclaim(name, 0, 1)
        assert [j.run_id for j in taken] == [stream.run_id]
    store = SqliteStore(tmp_path / "d.db")
    worker, stop, task = await worker_for(store, transport, max_deliveries=2)
    assert await worker.reap(min_idle=0) == 1
    with pytest.raises(InvocationFailed, match="dead letter"):
        await asyncio.wait_for(stream.result, 20)
    letters = await transport.dead_letters()
    assert [(d["run_id"], d["deliveries"]) for d in letters] == [(stream.run_id, "4")]
    assert await transport.client.xlen(transport._queue) == 0  # moved, not copied
    stop.set()
    await task
    await store.close()


async def test_urgent_jobs_are_taken_reclaimed_acknowledged_and_dead_lettered_from_their_own_stream(
    transport: RedisTransport,
) -> None:
    normal = [await transport.enqueue(f"n{i}", b"{}") for i in range(3)]
    urgent = await transport.enqueue("u0", b"{}", urgent=True)
    assert urgent.startswith("u") and urgent != normal[0] and not normal[0].startswith("u")
    # urgent first, though queued last; then the queue in order. Both streams are read at
    # once (each up to the count): what is past the count is the next take's, kept fresh
    assert [j.run_id for j in await transport.take("a", 2, wait=0.1)] == ["u0", "n0"]
    await asyncio.sleep(0.2)

    async def idle() -> int:  # ms since the surplus job was delivered (or claimed) to a
        [pending] = await transport.client.xpending_range(transport._queue, "workers", "-", "+", 10, "a")
        return int(pending["time_since_delivered"])

    xpending = await transport.client.xpending_range(transport._queue, "workers", "-", "+", 10, "a")
    assert [p["message_id"].decode() for p in xpending] == [normal[0], normal[1]]
    await transport.ack(normal[0])
    before = await idle()
    await transport.heartbeat("a", [])  # the surplus job's idle time too
    # (it idled through the sleep — a margin for the server's millisecond clock — and the
    # heartbeat reset it)
    assert before >= 150 and await idle() < before
    # the surplus alone (no read: n2 waits for the take after)
    assert [j.run_id for j in await transport.take("a", 5, wait=0.1)] == ["n1"]
    assert [j.run_id for j in await transport.take("a", 5, wait=0.1)] == ["n2"]
    # with both empty, a take waits for whichever stream has a job first
    later = asyncio.ensure_future(transport.take("b", 1, wait=5))
    await asyncio.sleep(0.1)
    await transport.enqueue("u1", b"{}", urgent=True)
    first = await asyncio.wait_for(later, 5)
    assert [j.run_id for j in first] == ["u1"]
    # a dead worker's urgent job is reclaimed before its queued ones
    [u0] = await transport.reclaim("c", 0, 1)
    assert u0.run_id == "u0" and u0.deliveries == 2
    await transport.dead_letter(u0, "test")  # acknowledged on its own stream
    assert [d["run_id"] for d in await transport.dead_letters()] == ["u0"]
    [u1] = first
    await transport.ack(u1.job_id)
    assert (await transport.client.xpending(transport._urgent, "workers"))["pending"] == 0
    assert [j.run_id for j in await transport.reclaim("d", 0, 10)] == ["n1", "n2"]


async def test_the_dead_letters_keep_the_newest_maxlen(redis_server: RedisServer) -> None:
    transport = RedisTransport(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}:", maxlen=2)
    try:
        for i in range(3):
            await transport.enqueue(f"poison-{i}", b"{}")
        for job in await transport.take("w", 3, wait=0.1):
            await transport.dead_letter(job, "test")
        assert [d["run_id"] for d in await transport.dead_letters()] == ["poison-1", "poison-2"]
    finally:
        await transport.close()


async def test_a_job_delivered_too_often_whose_owner_lives_is_left_to_it(
    transport: RedisTransport, tmp_path: Path
) -> None:
    async with _PausedHolder(transport, tmp_path / "live.db") as a:
        store_b = SqliteStore(a.path)
        b = Worker(AgentRuntime(providers=[OfflineProvider()], store=store_b), transport, name="b", max_deliveries=1)
        [job] = await transport.reclaim("b", 0, 1)  # a's jobs idle while it is paused
        assert job.deliveries == 2
        await b._handle(job)  # delivered too often, but its owner (a) lives: not a dead letter
        assert await transport.dead_letters() == [] and not a.stream.is_finished
        a.go.set()
        out = await asyncio.wait_for(a.stream.result, 20)  # a goes on and ends it
        assert out.output_text == "done" and await a.terminals() == 1
        await store_b.close()


def test_a_worker_refuses_a_store_it_cannot_share() -> None:
    with pytest.raises(UserError, match="shared"):
        Worker(AgentRuntime(store=MemoryStore()), RedisTransport("redis://127.0.0.1:1/0"))


def test_a_worker_marks_its_stores_runs_so_other_recoveries_leave_them_to_its_reapers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "m.db")
    assert not store.owner.endswith("/worker")
    Worker(AgentRuntime(store=store), RedisTransport("redis://127.0.0.1:1/0"))
    assert store.owner.endswith("/worker")


def test_a_retrying_worker_needs_a_store_that_leaves_dead_runs_to_it(tmp_path: Path) -> None:
    transport = RedisTransport("redis://127.0.0.1:1/0")

    class Unmarked(SqliteStore):  # a store of its own that cannot tag a worker's runs
        mark_as_worker = None

    class Unresumable(SqliteStore):
        resume_run = None

    with pytest.raises(UserError, match="mark_as_worker, or recover_on_open=False"):
        Worker(AgentRuntime(store=Unmarked(tmp_path / "a.db")), transport, on_worker_loss="retry")
    with pytest.raises(UserError, match="resume_run"):
        Worker(AgentRuntime(store=Unresumable(tmp_path / "a.db", recover_on_open=False)), transport, on_worker_loss="retry")
    for store in (Unmarked(tmp_path / "b.db", recover_on_open=False), SqliteStore(tmp_path / "c.db")):
        worker = Worker(AgentRuntime(store=store), transport, on_worker_loss="retry")
        assert worker.on_worker_loss == "retry"
    with pytest.raises(ValueError, match="'fail' or 'retry'"):
        Worker(AgentRuntime(store=SqliteStore(tmp_path / "c.db")), transport, on_worker_loss="later")  # type: ignore[arg-type]


def test_a_transport_not_of_this_seam_is_refused_when_the_client_or_worker_is_made(tmp_path: Path) -> None:
    class Older(RedisTransport):  # written against the seam before decisions became urgent
        async def enqueue(self, run_id: str, request: bytes) -> str:  # type: ignore[override]
            return await super().enqueue(run_id, request)

    class Keywords(RedisTransport):  # forwards whatever it is given: fine
        async def enqueue(self, run_id: str, request: bytes, **options: Any) -> str:
            return await super().enqueue(run_id, request, **options)

    older = Older("redis://127.0.0.1:1/0")
    runtime = AgentRuntime(store=SqliteStore(tmp_path / "a.db"))
    with pytest.raises(TypeError, match=r"Older.enqueue must accept the keyword urgent"):
        RemoteRuns(older)
    with pytest.raises(TypeError, match=r"Older.enqueue must accept the keyword urgent"):
        Worker(runtime, older)
    with pytest.raises(TypeError, match=r"object is not a Transport: it lacks append, read, .*close"):
        RemoteRuns(object())  # type: ignore[arg-type]
    forwarding = Keywords("redis://127.0.0.1:1/0")
    assert RemoteRuns(forwarding).transport is forwarding
    assert Worker(runtime, forwarding).transport is forwarding


def test_submit_without_workers_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="submit needs workers"):
        RuntimeInvocation(AgentRuntime()).submit(request())


async def test_closing_a_transport_ends_its_live_followers(redis_server: RedisServer) -> None:
    transport = RedisTransport(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}:", block=0.2)
    await transport.announce("endless")  # a run that never ends
    ended = asyncio.Event()
    RemoteRuns(transport).observe_run("endless").subscribe(on_completed=ended.set, on_error=lambda e: ended.set())
    await asyncio.sleep(0.3)  # its live tail is blocked in XREAD
    await asyncio.wait_for(transport.close(), 10)
    await asyncio.wait_for(ended.wait(), 10)


async def test_a_close_that_is_cancelled_is_cancelled_not_finished(redis_server: RedisServer) -> None:
    # close() stops its live tail and waits for it: a cancel of close() itself while it
    # waits is the caller's, and must reach the caller (not be taken for the tail's own end)
    transport = RedisTransport(redis_server.url, prefix=f"t{uuid.uuid4().hex[:10]}:", block=0.2)
    await transport.announce("endless")
    RemoteRuns(transport).observe_run("endless").subscribe(on_error=lambda e: None)
    for _ in range(100):
        if transport._tail is not None:
            break
        await asyncio.sleep(0.01)
    assert transport._tail is not None  # its live tail runs
    closing = asyncio.ensure_future(transport.close())
    await asyncio.sleep(0)  # close() cancelled the tail and waits for it
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    await asyncio.wait_for(transport.close(), 10)  # closing again finishes the job


async def test_a_redis_restart_mid_run_the_worker_reconnects_and_nothing_is_lost(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    gate = asyncio.Event()

    def turns(req: ChatRequest) -> Any:
        if req.messages[-1].content == "first":
            return [*text_turn("one two", pieces=2)[:-1], gate, *text_turn(" three", pieces=2)]
        return text_turn("again")

    with redis_server(tmp_path_factory.mktemp("redis-worker")) as server:
        transport = RedisTransport(server.url, block=0.2)
        submitter = RedisTransport(server.url, block=0.2)
        store = SqliteStore(tmp_path / "restart.db")
        worker, stop, task = await worker_for(store, transport, provider=ScriptedProvider(turns), lease_ttl=5)
        inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(submitter))
        first = inv.submit(EmitRequest(provider="scripted", model="scripted", input="first"))
        streaming = asyncio.Event()
        first.subscribe(lambda e: streaming.set() if e.type == "text_delta" else None)
        await asyncio.wait_for(streaming.wait(), 20)  # the run streams through Redis
        server.stop()
        gate.set()  # the run finishes while Redis is away: the store has all of it
        for _ in range(200):
            record = await store.get_run(first.run_id)
            if record is not None and record.is_finished:
                break
            await asyncio.sleep(0.02)
        assert record is not None and record.status == "completed"
        server.start()  # same port; its append-only file kept the queue and the streams
        out = await asyncio.wait_for(first.result, 60)  # the mirror wrote the rest, the reader reconnected
        assert out.output_text == "one two three"
        again = await asyncio.wait_for(
            inv.submit(EmitRequest(provider="scripted", model="scripted", input="second")).result, 60
        )  # the worker takes jobs again
        assert again.output_text == "again"
        stored = [e.type for e in await store.read_events(first.run_id)]
        assert [e.type for e in await collect(first)] == stored
        stop.set()
        await task
        await store.close()
        await transport.close()
        await submitter.close()


class _SlowEnd(SqliteStore):
    """A store whose commit of a run's end takes a while (a loaded PostgreSQL, say)."""

    async def finish_run(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await super().finish_run(*args, **kwargs)


async def test_a_submitted_runs_result_comes_once_the_workers_store_has_its_end(
    transport: RedisTransport, tmp_path: Path
) -> None:
    store = _SlowEnd(tmp_path / "slow.db")
    _, stop, task = await worker_for(store, transport)
    inv = RuntimeInvocation(AgentRuntime(), remote=RemoteRuns(transport))
    streams = [inv.submit(request()) for _ in range(3)]
    for stream in streams:
        out = await asyncio.wait_for(stream.result, 20)
        record = await store.get_run(out.run_id)  # as after a local emit: the end is durable
        assert record is not None and record.status == "completed"
        types = [e.type for e in await store.read_events(out.run_id)]
        assert types[-1] == "run_completed"
        streamed = [e.type for e in await asyncio.wait_for(collect(stream), 20)]
        assert streamed == types  # the terminal once, last, on the stream too
    stop.set()
    await asyncio.wait_for(task, 20)
    await store.close()


async def test_waiting_deciders_share_one_connection_and_no_answer_is_lost(redis_server: RedisServer) -> None:
    # a pool of 2: twenty deciders waiting for their answers must not take it from the others
    transport = RedisTransport(redis_server.url, prefix=f"w{uuid.uuid4().hex[:8]}:", max_connections=2, timeout=2.0)
    waits = [asyncio.ensure_future(transport.replied(f"k{i}", 10)) for i in range(20)]
    await asyncio.sleep(0.3)  # all waiting
    await asyncio.wait_for(transport.announce("still-served"), 2)  # the pool is free
    for i in range(20):
        await transport.reply(f"k{i}", f"answer {i}".encode())
    assert await asyncio.wait_for(asyncio.gather(*waits), 10) == [f"answer {i}".encode() for i in range(20)]
    # an answer that comes after its waiter left is kept for the next one, taken once
    assert await transport.replied("late", 0.3) is None
    await transport.reply("late", b"kept")
    await asyncio.sleep(0.5)
    assert await transport.replied("late", 2) == b"kept"
    assert await transport.replied("late", 0.3) is None
    await transport.close()
    with pytest.raises(TransportError, match="closed"):
        await transport.replied("after", 0.1)
