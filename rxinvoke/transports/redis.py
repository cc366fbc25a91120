"""RedisTransport: the transport seam on Redis Streams (redis-py's asyncio client; ``[redis]``).

Keys (``prefix`` ``rx:`` unless told):

- ``rx:run:{run_id}``: the run's event stream, one entry per :class:`Segment` (fields ``seq``,
  ``last``, ``types``, ``json``; ``seq`` is rxinvoke's own per-run sequence, the dedup key),
  ``XADD … MAXLEN ~ maxlen``, expiring ``retention`` seconds after its last write (its TTL is
  refreshed by a run's first and terminal segments and at most every tenth of ``retention``
  in between: never less than 0.9 × ``retention`` after its last write);
  ``rx:run:{run_id}:meta`` (a hash, as long) says a submitted run exists before its first
  segment.
- ``rx:runs``: the run queue, a stream read by the consumer group ``workers``; ``rx:urgent``:
  the jobs queued ``urgent`` (a decision on a paused run, an approval timeout's continuation),
  a stream read by the same group, ahead of the queue: a take reads both in one round trip
  (up to its count from each, waiting on both when both are empty; what is past the count is
  handed out by that worker's next take, its idle time reset by the worker's heartbeats
  meanwhile; a worker that stops before that leaves it to the reapers, as a dead worker's
  jobs). Their job ids are their entry ids after ``u``. A job acknowledged (its run
  ended) or dead-lettered is deleted from its stream (``XACK`` and ``XDEL`` in one script
  call): the queues keep what is queued or running, not every run ever
  submitted. ``rx:dead``: jobs delivered too often (dead letters; the newest ``maxlen``
  kept).
- ``rx:lease:{run_id}``: a worker's lease (``SET NX PX``), holding a fencing token; refreshed
  and released only by a script that checks the token.
- ``rx:cancel:{run_id}`` (a marker, ``EX cancel_ttl``) and the channel ``rx:cancel``: a cancel
  request sets the marker *before* it publishes the notice, so a worker that subscribes late
  still finds it.
- ``rx:reply:{key}``: a list holding a worker's answer to a job that asked for one (``RPUSH``,
  expiring after ``cancel_ttl``), taken by the waiting submitter with ``BLPOP`` (one for all
  the keys waited for in a process, on a connection of its own).

Reclaiming a dead worker's jobs: a live worker ``XCLAIM``s its own jobs every heartbeat
(``JUSTID``: idle time reset, delivery count untouched); :meth:`RedisTransport.reclaim`
``XAUTOCLAIM``s jobs idle longer than ``min_idle`` and keeps only those whose lease key is
gone — never idle time alone. ``XAUTOCLAIM`` answers ``[cursor, entries]`` on Redis 6.2 and
``[cursor, entries, deleted ids]`` on 7.0+; both are handled (:func:`parse_autoclaim`).

The mirror's appends (:meth:`RedisTransport.append`) are calls of one Lua script (``XADD`` and,
when due, ``EXPIRE`` per segment; up to 100 segments a call), pre-packed and pipelined on a
connection of their own: redis-py's pipeline objects cost the run's loop more than the write
(measured: ``benchmarks/scale_out.py`` line 4). A server that has not seen the script (or
restarted) gets it in full (``EVAL``) on ``NOSCRIPT``. The streams of one call must live on
one server (no Redis Cluster).

Connection failures are retried by redis-py with exponential backoff; what still fails raises
``redis.exceptions.ConnectionError`` to the caller (the mirror and the worker retry on their
own). The URL's password never appears in ``repr`` or in an error this module raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit, urlunsplit

from .._futures import stopped
from ..errors import TransportError, UnknownRun
from ..stores._batch import WriteBatcher
from ._wire import TERMINAL
from .base import Job, Lease, Segment

__all__ = ("RedisTransport", "parse_autoclaim")

_T = TypeVar("_T")

_TERMINAL = frozenset({"run_completed", "run_failed", "run_cancelled"})
_GROUP = "workers"

_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_APPEND = """
-- KEYS: run streams; ARGV: maxlen, ttl, then five per key: seq, last, types, json, expire?
local maxlen, ttl = ARGV[1], ARGV[2]
for k = 1, #KEYS do
    local i = 3 + (k - 1) * 5
    redis.call('xadd', KEYS[k], 'MAXLEN', '~', maxlen, '*',
        'seq', ARGV[i], 'last', ARGV[i + 1], 'types', ARGV[i + 2], 'json', ARGV[i + 3])
    if ARGV[i + 4] == '1' then
        redis.call('expire', KEYS[k], ttl)
    end
end
return #KEYS
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()
_REPLY_BLOCK = 0.2
"""Seconds the shared ``BLPOP`` of the waited answers blocks (a key waited for meanwhile joins
the next one)."""
_URGENT = "u"
"""What begins the job id of an urgent job (the rest: its entry id in ``rx:urgent``)."""
_APPEND_CHUNK = 100
"""Segments one script call appends at most (a script holds the server while it runs)."""
_ACK = """
redis.call('xack', KEYS[1], ARGV[1], ARGV[2])
return redis.call('xdel', KEYS[1], ARGV[2])
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_autoclaim(reply: Sequence[Any]) -> tuple[str, list[tuple[str, dict[bytes, bytes] | None]], list[str]]:
    """``XAUTOCLAIM``'s raw reply as ``(cursor, [(id, fields or None)], deleted ids)``.

    Redis 6.2 answers ``[cursor, entries]`` (an entry whose data was trimmed comes back with
    nil fields); Redis 7.0+ answers ``[cursor, entries, deleted ids]``.
    """
    if len(reply) not in (2, 3):
        raise ValueError(f"unexpected XAUTOCLAIM reply of {len(reply)} elements")
    cursor = _text(reply[0])
    entries: list[tuple[str, dict[bytes, bytes] | None]] = []
    for entry in reply[1] or ():
        if entry is None:
            continue
        entry_id, raw = entry[0], entry[1]
        if raw is None:
            entries.append((_text(entry_id), None))
        elif isinstance(raw, dict):
            entries.append((_text(entry_id), raw))
        else:
            pairs = list(raw)
            entries.append((_text(entry_id), dict(zip(pairs[::2], pairs[1::2], strict=True))))
    deleted = [_text(d) for d in reply[2]] if len(reply) == 3 and reply[2] else []
    return cursor, entries, deleted


def _entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class _Follower:
    """One reader of a run's live tail: its stream, its meta key (a submitted run has one
    before its stream exists), the last entry it has, its inbox."""

    __slots__ = ("cursor", "key", "meta", "queue")

    def __init__(self, key: str, meta: str, cursor: str) -> None:
        self.key = key
        self.meta = meta
        self.cursor = cursor
        self.queue: asyncio.Queue[dict[bytes, bytes] | None] = asyncio.Queue()


def _segment(fields: dict[bytes, bytes]) -> Segment:
    types = _text(fields[b"types"])
    return Segment(
        int(fields[b"seq"]),
        int(fields[b"last"]),
        tuple(types.split(",")) if types else (),
        fields[b"json"],
    )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_Method = TypeVar("_Method", bound=Callable[..., Coroutine[Any, Any, Any]])


def _translated(method: _Method) -> _Method:
    """``method`` raising :class:`~rxinvoke.errors.TransportError` for redis-py's errors (the
    server away, a command refused), at the transport's boundary. Its type is the method's
    own, as declared (so ``RedisTransport`` is a ``Transport`` to every type checker)."""

    @functools.wraps(method)
    async def call(self: RedisTransport, /, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except self._redis_errors as exc:
            raise self._failure(exc) from None

    return cast(_Method, call)


class RedisTransport:
    """The :class:`~rxinvoke.transports.base.Transport` on one Redis server (6.2 or newer; not
    Redis Cluster: an append writes the streams of many runs in one script).

    Its methods raise :class:`~rxinvoke.errors.TransportError` when the server cannot be
    reached (after the retries a command gets) or refuses a command.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: the prefix of every key and channel (several deployments can share a server).
        maxlen: entries each run stream keeps at least (``MAXLEN ~``); older ones are trimmed
            and a reader asking for them gets :class:`~rxinvoke.errors.ResumeGap`. The dead
            letters keep the newest ``maxlen`` too.
        retention: seconds a run stream (and its meta key) lives after its last write.
        cancel_ttl: seconds a cancel marker lives.
        block: seconds one blocking read waits before it looks again.
        max_connections: connections to the server at most (commands wait for a free one).
        timeout: seconds a command waits for a free connection.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rx:",
        maxlen: int = 10_000,
        retention: float = 24 * 3600.0,
        cancel_ttl: float = 3600.0,
        block: float = 1.0,
        max_connections: int = 50,
        timeout: float = 20.0,
    ) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.exceptions import NoScriptError, RedisError
            from redis.exceptions import TimeoutError as RedisTimeoutError
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ImportError("RedisTransport needs redis: pip install 'rxinvoke[redis]'") from exc
        self._redis_errors: tuple[type[BaseException], ...] = (RedisError,)
        self._password = unquote(urlsplit(url).password or "")
        if min(maxlen, retention, cancel_ttl, block, max_connections, timeout) <= 0:
            raise ValueError(
                "maxlen, retention, cancel_ttl, block, max_connections and timeout must be positive"
            )
        self.where = _without_password(url)
        """The server's URL, for messages: no password."""
        self.prefix = prefix
        self.maxlen = maxlen
        self.retention = retention
        self._expires: dict[str, float] = {}  # run id -> when its stream's TTL was last set
        self.cancel_ttl = cancel_ttl
        self.block = block
        # Any: redis-py types replies as unions of every protocol shape; they are parsed here.
        # A blocking pool: past max_connections a command waits for a free connection (up to
        # `timeout` seconds) instead of failing.
        pool: Any = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        self._client: Any = aioredis.Redis(
            connection_pool=pool,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), 6),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        # the shared live tail blocks on a connection of its own
        self._tail_client: Any = aioredis.Redis.from_url(
            url, socket_connect_timeout=5, health_check_interval=30
        )
        self._followers: set[_Follower] = set()
        # decisions' waiters share one blocking read of their answers, on a connection of its own
        self._reply_client: Any = aioredis.Redis.from_url(
            url, socket_connect_timeout=5, health_check_interval=30
        )
        self._answers: dict[str, asyncio.Future[bytes]] = {}
        self._answering: asyncio.Task[None] | None = None
        self._tail: asyncio.Future[None] | None = None
        # the mirror's appends go over a connection of their own, as pre-packed script calls:
        # redis-py's pipeline costs the run's loop more than the write itself
        self._appender: Any = None
        self._append_lock = asyncio.Lock()
        self._no_script = NoScriptError
        self._refresh = self._client.register_script(_REFRESH)
        self._release = self._client.register_script(_RELEASE)
        self._ack = self._client.register_script(_ACK)
        self._queue = f"{prefix}runs"
        self._urgent = f"{prefix}urgent"
        # jobs a read delivered to a worker past the count it asked for (both streams had
        # some), handed out by its next take, kept fresh by its heartbeats meanwhile
        self._surplus: dict[str, list[Job]] = {}
        self._dead = f"{prefix}dead"
        self._channel = f"{prefix}cancel"
        self._group_ready = False
        self._closed = False
        # runs submitted at once (a burst of submit() calls) queued in one pipeline
        self._enqueues: WriteBatcher[tuple[str, bytes, bool]] = WriteBatcher(self._enqueue_batch)

    def __repr__(self) -> str:
        return f"RedisTransport({self.where!r}, prefix={self.prefix!r})"

    def _failure(self, exc: BaseException) -> TransportError:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return TransportError(f"redis: {text} (at {self.where})", where=self.where)

    @property
    def client(self) -> Any:
        """The ``redis.asyncio.Redis`` client (for inspection and tests)."""
        return self._client

    def _stream(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def _meta(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}:meta"

    def _lease(self, run_id: str) -> str:
        return f"{self.prefix}lease:{run_id}"

    def _marker(self, run_id: str) -> str:
        return f"{self.prefix}cancel:{run_id}"

    def _reply(self, key: str) -> str:
        return f"{self.prefix}reply:{key}"

    async def close(self) -> None:
        # redis-py may finish a blocking read it was cancelled in: the tail loop also stops
        # when it sees the flag, and its followers end
        self._closed = True
        for follower in self._followers:
            follower.queue.put_nowait(None)
        if self._tail is not None:
            await stopped(self._tail)  # a cancel of close() itself is raised, not swallowed
        await self._tail_client.aclose()
        if self._answering is not None:
            await stopped(self._answering)
        await self._reply_client.aclose()
        if self._appender is not None:
            await self._appender.disconnect()
        await self._client.aclose(close_connection_pool=True)

    # --- run event streams --------------------------------------------------------------------

    @_translated
    async def append(self, segments: Sequence[tuple[str, Segment]]) -> None:
        """Append each ``(run_id, segment)`` to its run's stream, in one round trip: script
        calls of up to ``_APPEND_CHUNK`` segments each, pipelined on the appends' own
        connection (reconnected at the next call after a failure; a failed call may have
        appended some segments: readers drop seqs they have)."""
        if not segments:
            return
        ttl = int(self.retention)
        now = time.monotonic()
        expires = self._expires
        if len(expires) > 100_000:  # runs whose end this process never wrote
            expires.clear()
        touched: list[str] = []
        calls = []
        for start in range(0, len(segments), _APPEND_CHUNK):
            chunk = segments[start : start + _APPEND_CHUNK]
            keys: list[str] = []
            argv: list[Any] = [self.maxlen, ttl]
            for run_id, segment in chunk:
                keys.append(self._stream(run_id))
                if segment.types[-1] in TERMINAL:  # a run's terminal event is its last
                    expires.pop(run_id, None)
                    touched.append(run_id)
                    expire = 1
                elif now - expires.get(run_id, -ttl) >= ttl / 10:
                    expires[run_id] = now
                    touched.append(run_id)
                    expire = 1
                else:
                    expire = 0
                argv += (segment.first_seq, segment.last_seq, ",".join(segment.types), segment.events, expire)
            calls.append((len(keys), *keys, *argv))
        try:
            async with self._append_lock:
                await self._send_appends(calls)
        except BaseException:
            for run_id in touched:  # not set after all: the retry sets it
                expires.pop(run_id, None)
            raise

    async def _send_appends(self, calls: list[tuple[Any, ...]]) -> None:
        if self._appender is None:
            self._appender = self._client.connection_pool.make_connection()
        connection = self._appender
        try:
            await connection.send_packed_command(
                connection.pack_commands([("EVALSHA", _APPEND_SHA, *call) for call in calls])
            )
            missing = []
            failure: Exception | None = None
            for call in calls:
                try:
                    await connection.read_response()
                except self._no_script:  # a server that has not seen the script (or restarted)
                    missing.append(call)
                except Exception as exc:  # an error reply: the other calls still ran
                    failure = failure or exc
            if missing:
                await connection.send_packed_command(
                    connection.pack_commands([("EVAL", _APPEND, *call) for call in missing])
                )
                for _ in missing:
                    await connection.read_response()
            if failure is not None:
                raise failure
        except BaseException:
            await connection.disconnect()  # a reply may be unread: the next call reconnects
            raise

    def _announce(self, pipe: Any, run_id: str) -> None:
        pipe.hsetnx(self._meta(run_id), "state", "queued")
        pipe.expire(self._meta(run_id), int(self.retention))

    @_translated
    async def announce(self, run_id: str) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            self._announce(pipe, run_id)
            await pipe.execute()

    @_translated
    async def warnings(self) -> list[str]:
        """A server that evicts keys when full (``maxmemory`` set and a ``maxmemory-policy``
        other than ``noeviction``) may drop leases, cancel markers, queued runs and run
        streams: runs would then run twice, never, or unseen. Read from ``INFO memory``
        (allowed where ``CONFIG`` is not, as on managed servers)."""
        info = await self._client.info("memory")
        policy = str(info.get("maxmemory_policy", "noeviction"))
        limit = int(info.get("maxmemory", 0) or 0)
        if policy == "noeviction" or not limit:
            return []
        return [
            f"the Redis server at {self.where} evicts keys when full (maxmemory-policy {policy}, "
            f"maxmemory {limit} bytes): it may drop leases, cancel markers, queued runs and run "
            "streams, so runs could run twice or be lost; set maxmemory-policy noeviction"
        ]

    @_translated
    async def tail(self, run_id: str) -> Segment | None:
        """The last segment the run's stream holds (None if none)."""
        entries = await self._client.xrevrange(self._stream(run_id), count=1)
        return _segment(entries[0][1]) if entries else None

    async def read(self, run_id: str, after_seq: int) -> AsyncIterator[Segment]:
        """The run's segments in stream order from its first kept entry, then live ones.

        The caller skips seqs it has (``after_seq``) and detects gaps; this only reads. What
        is kept is read with ``XRANGE`` pages; the live tail of every run followed through this
        transport shares one blocking ``XREAD`` over all their streams (one connection, not
        one per follower).
        """
        async with contextlib.aclosing(self._read(run_id)) as segments:
            try:
                async for segment in segments:
                    yield segment
            except self._redis_errors as exc:
                raise self._failure(exc) from None

    async def _read(self, run_id: str) -> AsyncGenerator[Segment, None]:
        key = self._stream(run_id)
        async with self._client.pipeline(transaction=False) as pipe:  # one round trip
            pipe.exists(key, self._meta(run_id))
            pipe.xrange(key, min="-", count=500)
            known, entries = await pipe.execute()
        if not known:
            raise UnknownRun(run_id)
        cursor = "0-0"
        while True:  # what is kept, page by page (an exclusive start: Redis >= 6.2)
            for entry_id, fields in entries:
                cursor = _text(entry_id)
                yield _segment(fields)
            if len(entries) < 500:
                break
            entries = await self._client.xrange(key, min=f"({cursor}", count=500)
        follower = _Follower(key, self._meta(run_id), cursor)
        self._followers.add(follower)
        if self._tail is None or self._tail.done():
            self._tail = asyncio.ensure_future(self._follow_all())
        try:
            while True:
                fields = await follower.queue.get()
                if fields is None:
                    return  # the stream expired while followed: nothing more will come
                yield _segment(fields)
        finally:
            self._followers.discard(follower)

    async def _follow_all(self) -> None:
        """One blocking XREAD for every follower's stream, handing each its new entries."""
        block = int(self.block * 1000)
        idle = 0
        delay = 0.05
        while self._followers and not self._closed:
            followers = list(self._followers)
            streams: dict[str, str] = {}
            for f in followers:
                known = streams.get(f.key)
                streams[f.key] = f.cursor if known is None else min(known, f.cursor, key=_entry_key)
            try:
                reply = await self._tail_client.xread(streams, count=500, block=block)
            except Exception:  # the server is away: followers wait for it
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            for raw_key, entries in reply or ():
                stream_key = _text(raw_key)
                for f in followers:
                    if f.key != stream_key:
                        continue
                    for entry_id, fields in entries:
                        text_id = _text(entry_id)
                        if _entry_key(text_id) > _entry_key(f.cursor):
                            f.cursor = text_id
                            f.queue.put_nowait(fields)
            idle = idle + 1 if not reply else 0
            if idle >= 10:  # quiet for a while: has a followed stream expired?
                idle = 0
                for f in followers:
                    # (a submitted run still queued has no stream yet, only its meta key)
                    if not await self._tail_client.exists(f.key, f.meta):
                        f.queue.put_nowait(None)
                        self._followers.discard(f)

    # --- the run queue --------------------------------------------------------------------------

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        from redis.exceptions import ResponseError

        for stream in (self._urgent, self._queue):
            try:
                await self._client.xgroup_create(stream, _GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    async def _again(self, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """``attempt()``, tried again (up to 4 times, 50 ms doubling) when the connection it
        got was broken, a server restart say. For calls that may repeat: a run queued twice
        is run once (workers go by its run id), a marker set twice is one marker."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        delay = 0.05
        for _ in range(3):
            try:
                return await attempt()
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.sleep(delay)
                delay *= 2
        return await attempt()

    @_translated
    async def enqueue(self, run_id: str, request: bytes, *, urgent: bool = False) -> str:
        """Queue the run (announced first) on ``rx:runs``, or ``rx:urgent`` (taken first);
        runs queued at once share one round trip."""
        return str(await self._enqueues.submit((run_id, request, urgent)))

    async def _enqueue_batch(self, jobs: Sequence[tuple[str, bytes, bool]]) -> list[tuple[bool, Any]]:
        async def attempt() -> Any:
            await self._ensure_group()
            async with self._client.pipeline(transaction=False) as pipe:
                for run_id, request, urgent in jobs:
                    self._announce(pipe, run_id)
                    pipe.xadd(self._urgent if urgent else self._queue, {"run_id": run_id, "request": request})
                return await pipe.execute()

        replies = await self._again(attempt)
        per_job = len(replies) // len(jobs)  # the announcement's replies, then the XADD's
        return [
            (True, self._job_id(urgent, entry_id))
            for (_, _, urgent), entry_id in zip(jobs, replies[per_job - 1 :: per_job], strict=True)
        ]

    def _job_id(self, urgent: bool, entry_id: Any) -> str:
        return f"{_URGENT}{_text(entry_id)}" if urgent else _text(entry_id)

    def _entry(self, job_id: str) -> tuple[str, str]:
        """(the stream, the entry id) of a job id."""
        if job_id.startswith(_URGENT):
            return self._urgent, job_id[len(_URGENT) :]
        return self._queue, job_id

    def _job(self, stream: Any, entry_id: Any, fields: dict[bytes, bytes], deliveries: int = 1) -> Job:
        urgent = _text(stream) == self._urgent
        return Job(self._job_id(urgent, entry_id), _text(fields[b"run_id"]), fields[b"request"], deliveries)

    @_translated
    async def take(self, worker: str, count: int, wait: float) -> list[Job]:
        from redis.exceptions import ResponseError

        surplus = self._surplus.get(worker)
        if surplus:
            jobs = surplus[:count]
            del surplus[:count]
            return jobs
        await self._ensure_group()
        try:
            # both streams in one read (the urgent jobs first), waiting for whichever has a
            # job first if neither has one
            reply = await self._client.xreadgroup(
                _GROUP, worker, {self._urgent: ">", self._queue: ">"}, count=count,
                block=max(1, int(wait * 1000)),
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False  # the server lost the group (a restart without data)
            return []
        jobs = [
            self._job(stream, entry_id, fields)
            for stream, entries in sorted(reply or (), key=lambda s: _text(s[0]) != self._urgent)
            for entry_id, fields in entries
        ]
        if len(jobs) > count:  # both streams answered (each up to the count)
            self._surplus.setdefault(worker, []).extend(jobs[count:])
            del jobs[count:]
        return jobs

    @_translated
    async def reclaim(self, worker: str, min_idle: float, count: int) -> list[Job]:
        await self._ensure_group()
        jobs = await self._reclaim(self._urgent, worker, min_idle, count)
        if len(jobs) < count:
            jobs += await self._reclaim(self._queue, worker, min_idle, count - len(jobs))
        return jobs

    async def _reclaim(self, stream: str, worker: str, min_idle: float, count: int) -> list[Job]:
        reply = await self._client.execute_command(
            "XAUTOCLAIM", stream, _GROUP, worker, int(min_idle * 1000), "0-0", "COUNT", count
        )
        _cursor, entries, _deleted = parse_autoclaim(reply)
        if not entries:
            return []
        live = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
        for entry_id, fields in entries:
            if fields is None:  # trimmed from the queue: nothing to run
                await self._client.xack(stream, _GROUP, entry_id)
        async with self._client.pipeline(transaction=False) as pipe:
            for _entry_id, fields in live:
                pipe.exists(self._lease(_text(fields[b"run_id"])))
            for entry_id, _fields in live:
                pipe.xpending_range(stream, _GROUP, min=entry_id, max=entry_id, count=1)
            replies = await pipe.execute()
        held, pending = replies[: len(live)], replies[len(live) :]
        jobs: list[Job] = []
        for (entry_id, fields), has_lease, info in zip(live, held, pending, strict=True):
            if has_lease:
                continue  # its worker is alive (its lease says so): not ours to run
            # a claim is at least its second delivery (the entry acknowledged meanwhile: no info)
            deliveries = int(info[0]["times_delivered"]) if info else 2
            jobs.append(self._job(stream, entry_id, fields, deliveries))
        return jobs

    @_translated
    async def heartbeat(self, worker: str, job_ids: Sequence[str]) -> None:
        per_stream: dict[str, list[str]] = {}
        for job_id in [*job_ids, *(job.job_id for job in self._surplus.get(worker, ()))]:
            stream, entry_id = self._entry(job_id)
            per_stream.setdefault(stream, []).append(entry_id)
        if not per_stream:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for stream, entry_ids in per_stream.items():
                pipe.xclaim(stream, _GROUP, worker, 0, entry_ids, justid=True)
            await pipe.execute()

    @_translated
    async def ack(self, job_id: str) -> None:
        stream, entry_id = self._entry(job_id)
        # done: acknowledged and deleted at once (the queue keeps only what is not)
        await self._again(lambda: self._ack(keys=[stream], args=[_GROUP, entry_id]))

    @_translated
    async def dead_letter(self, job: Job, reason: str) -> None:
        stream, entry_id = self._entry(job.job_id)
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self._dead,
                {
                    "run_id": job.run_id,
                    "request": job.request,
                    "job_id": job.job_id,
                    "deliveries": job.deliveries,
                    "reason": reason,
                },
                maxlen=self.maxlen,  # the newest kept (exactly: dead letters are rare)
                approximate=False,
            )
            await self._ack(keys=[stream], args=[_GROUP, entry_id], client=pipe)  # as ack()
            await pipe.execute()

    @_translated
    async def dead_letters(self) -> list[dict[str, str]]:
        """The dead-letter stream's entries (run id, job id, deliveries, reason)."""
        entries = await self._client.xrange(self._dead)
        return [
            {_text(k): _text(v) for k, v in fields.items() if k != b"request"}
            for _entry_id, fields in entries
        ]

    @_translated
    async def acquire(self, run_id: str, ttl: float) -> Lease | None:
        token = uuid.uuid4().hex
        taken = await self._client.set(self._lease(run_id), token, nx=True, px=int(ttl * 1000))
        return Lease(run_id, token) if taken else None

    @_translated
    async def refresh(self, leases: Sequence[Lease], ttl: float) -> list[bool]:
        if not leases:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for lease in leases:
                await self._refresh(
                    keys=[self._lease(lease.run_id)], args=[lease.token, int(ttl * 1000)], client=pipe
                )
            return [bool(done) for done in await pipe.execute()]

    @_translated
    async def release(self, lease: Lease) -> None:
        await self._release(keys=[self._lease(lease.run_id)], args=[lease.token])

    # --- cancel requests --------------------------------------------------------------------------

    @_translated
    async def request_cancel(self, run_id: str) -> None:
        await self._again(lambda: self._client.set(self._marker(run_id), "1", ex=int(self.cancel_ttl)))
        await self._again(lambda: self._client.publish(self._channel, run_id))

    @_translated
    async def cancel_requested(self, run_ids: Sequence[str]) -> list[bool]:
        if not run_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.exists(self._marker(run_id))
            return [bool(n) for n in await pipe.execute()]

    # --- replies --------------------------------------------------------------------------------

    @_translated
    async def reply(self, key: str, answer: bytes) -> None:
        async def attempt() -> Any:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.rpush(self._reply(key), answer)
                pipe.expire(self._reply(key), int(self.cancel_ttl))
                return await pipe.execute()

        await self._again(attempt)

    async def replied(self, key: str, wait: float) -> bytes | None:
        """The answer under ``key``, waiting up to ``wait`` seconds. Every waiter of this
        transport shares one blocking ``BLPOP`` of all their keys, on a connection of its own:
        many waiting deciders hold no pooled connection (a new key joins the next ``BLPOP``,
        within ``_REPLY_BLOCK``). While the server is away it waits, and answers None."""
        if self._closed:
            raise TransportError(f"redis: the transport is closed (at {self.where})", where=self.where)
        loop = asyncio.get_running_loop()
        future = self._answers.get(key)
        if future is None:
            future = self._answers[key] = loop.create_future()
        if self._answering is None or self._answering.done():
            self._answering = loop.create_task(self._answer_all())
        try:
            return await asyncio.wait_for(asyncio.shield(future), max(wait, 0.0))
        except asyncio.TimeoutError:
            if future.done():  # answered as the wait ended
                return future.result()
            return None
        finally:
            if self._answers.get(key) is future and not future.done():
                del self._answers[key]  # no one waits: an answer coming now is kept for the next

    async def _answer_all(self) -> None:
        """One blocking ``BLPOP`` of every waited key, handing each answer to its waiter (an
        answer whose waiter left goes back to its list, for the next)."""
        client = self._reply_client
        prefix = self._reply("")
        delay = 0.05
        while self._answers and not self._closed:
            try:
                got = await client.blpop([prefix + key for key in self._answers], timeout=_REPLY_BLOCK)
                if got:
                    raw_key, value = got
                    future = self._answers.pop(_text(raw_key)[len(prefix):], None)
                    if future is not None and not future.done():
                        future.set_result(bytes(value))
                    else:
                        await client.lpush(raw_key, value)
            except Exception:  # the server is away: the waiters wait for it
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05

    async def cancel_notices(self) -> AsyncIterator[str]:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        delay = 0.05
        while True:
            pubsub: Any = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                delay = 0.05
                while True:
                    message = await pubsub.get_message(timeout=self.block)
                    if message is not None and message.get("type") == "message":
                        yield _text(message["data"])
            except (RedisConnectionError, RedisTimeoutError, OSError):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            finally:
                await pubsub.aclose()
