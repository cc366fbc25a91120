"""PostgresStore: sessions, messages, runs, usage and the event log in PostgreSQL (psycopg 3).

For runtimes on several processes and machines sharing one durable store (the ``[postgres]``
extra: ``psycopg`` with its ``pool``). Everything lives in one schema (``rxinvoke`` unless
told), created on first use.

Connections: an :class:`psycopg_pool.AsyncConnectionPool` for the store's calls (concurrent:
reads and writes of different runs run side by side), and one connection of the store's own
that holds the store's **liveness lock** for its lifetime and listens for freed sessions.

Transactions: every write is one transaction, all or nothing (a batch of messages with its
envelopes, a run's terminal events with its status). A call whose connection turns out broken
before it commits is retried once on a fresh connection; a failure to reach the server within
``timeout`` seconds is a :class:`~rxinvoke.errors.StoreError`, never a hang.

Event log: one ``event_segments`` row per written batch and run (``first_seq``, ``last_seq``,
the batch's events as one JSON array), as in SqliteStore. Each run row holds its ``last_seq``:
a write moves it from ``first_seq - 1`` to ``last_seq`` in one conditional ``UPDATE``, so a
gap, a duplicate, an unknown or a finished run is refused by the database itself, whichever
process writes.

One run per session, across processes: a session row names its ``active_run``. ``begin_run``
locks the session row (``SELECT … FOR UPDATE``); when another process's run is active it writes
nothing and raises :class:`~rxinvoke.errors.SessionBusy`; the runtime then waits with
:meth:`PostgresStore.wait_session` (woken by ``NOTIFY`` when that run finishes, or after
``session_poll`` seconds) and tries again, so runs of one session never overlap.

Crash recovery: a store takes a PostgreSQL advisory lock with a random key on its own
connection and records it in the runs it owns (``owner = "host:pid:pg:<key>"``). PostgreSQL
releases the lock when that connection ends — the process exited, was killed, or its machine
went away (after the server's TCP keepalive gives up on it). A ``running`` run whose owner's
lock is free is interrupted: :meth:`PostgresStore.recover_interrupted` (also run when the
store opens unless ``recover_on_open=False``, and by ``begin_run`` for a session held by
such a run — with ``recover_on_open=False`` only after ``resume_grace`` seconds, which leave
the run to be resumed first) appends its terminal ``run_failed`` ("interrupted") with the next seq.
A worker's runs (``owner`` ending with ``/worker``: :meth:`PostgresStore.mark_as_worker`) are
left for ``resume_grace`` seconds to the workers' reapers, which settle them with
:meth:`PostgresStore.recover_run`, salvaging what the run's stream showed;
:meth:`PostgresStore.resume_run` instead takes such a run over, for this process to go on
with it. If the store's own connection breaks, it
reconnects and takes its lock again; a run recovered by another process in that window keeps
its terminal event, and the owner's later writes to it are refused.

Schema: versioned migrations (``MIGRATIONS``), recorded in the schema's ``rxinvoke_schema``
table and applied under an advisory lock, so processes opening a new database at once migrate
it once. A schema from a newer rxinvoke raises :class:`~rxinvoke.errors.MigrationError`; a
schema holding other tables but no version table raises :class:`~rxinvoke.errors.StoreError`.

The connection string's password never appears in an error, a log line or ``repr``.
"""

from __future__ import annotations

import asyncio
import copy
import os
import random
import re
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import pydantic_core

from .._futures import stopped
from ..errors import (
    MigrationError,
    RunAlreadyStored,
    SessionAwaitingApproval,
    SessionBusy,
    StoreError,
    UnknownRun,
)
from ..messages import Message, TokenUsage, utcnow
from ..request import RunOutput, RunRequest
from ._batch import BatchRefused, WriteBatcher
from ._orphans import Grace, with_mark, without_mark
from ._rows import (
    DECODE_ERRORS,
    TERMINAL_STATUS,
    continuing,
    decided,
    encode_segment,
    envelopes_of,
    lagging_error,
    message_of,
    runs_of,
    why,
)
from ._worker import Outcome
from .base import (
    EventBatch,
    EventEnvelope,
    RunOutcome,
    RunRecord,
    RunStatus,
    interrupted_envelopes,
    log_entries,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

__all__ = ("MIGRATIONS", "SCHEMA_VERSION", "PostgresStore")

_T = TypeVar("_T")

_LOCK_CLASS = 0x5258  # "RX": the first key of every advisory lock this store takes
_MIGRATION_LOCK = 0

MIGRATIONS: tuple[str, ...] = (
    # 1: sessions, messages, runs, usage, the event log in segments
    """
    CREATE TABLE sessions (
        id uuid PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now(),
        active_run text
    );
    CREATE TABLE messages (
        pk bigserial PRIMARY KEY,
        id text NOT NULL UNIQUE,
        session_id uuid NOT NULL REFERENCES sessions (id),
        run_id text,
        role text NOT NULL,
        content text NOT NULL,
        tool_calls json NOT NULL,
        tool_call_id text,
        created_at timestamptz NOT NULL
    );
    CREATE INDEX messages_by_session ON messages (session_id, pk);
    CREATE TABLE runs (
        id text PRIMARY KEY,
        session_id uuid NOT NULL REFERENCES sessions (id),
        status text NOT NULL
            CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
        request json NOT NULL,
        output json,
        error text,
        client_request_id text UNIQUE,
        owner text,
        started_at timestamptz NOT NULL,
        finished_at timestamptz,
        last_seq integer NOT NULL DEFAULT 0,
        pk bigserial NOT NULL
    );
    CREATE INDEX runs_by_start ON runs (started_at, pk);
    CREATE INDEX runs_running ON runs (status) WHERE status = 'running';
    CREATE INDEX runs_by_session ON runs (session_id, started_at, pk);
    CREATE TABLE usage (
        run_id text NOT NULL REFERENCES runs (id),
        seq integer NOT NULL,
        input_tokens integer NOT NULL,
        output_tokens integer NOT NULL,
        total_tokens integer NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE event_segments (
        run_id text NOT NULL REFERENCES runs (id),
        first_seq integer NOT NULL CHECK (first_seq >= 1),
        last_seq integer NOT NULL CHECK (last_seq >= first_seq),
        events json NOT NULL,
        PRIMARY KEY (run_id, first_seq)
    );
    """,
    # 2: checkpoint messages (context compaction) say what they summarise
    """
    ALTER TABLE messages ADD COLUMN compaction json;
    """,
    # 3: runs may pause for approval
    """
    ALTER TABLE runs DROP CONSTRAINT runs_status_check;
    ALTER TABLE runs ADD CONSTRAINT runs_status_check CHECK (
        status IN ('running', 'completed', 'failed', 'cancelled', 'awaiting_approval')
    );
    CREATE INDEX runs_awaiting ON runs (session_id) WHERE status = 'awaiting_approval';
    """,
)
"""One SQL script per schema version; version ``n`` is ``MIGRATIONS[n - 1]``. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this rxinvoke writes (the ``rxinvoke_schema`` table)."""

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")

_RUN_SELECT = (
    "SELECT r.id, r.session_id, r.status, r.request::text, r.output::text, r.error, "
    "r.client_request_id, r.owner, r.started_at, r.finished_at, "
    "u.n, u.input_tokens, u.output_tokens, u.total_tokens "
    "FROM runs r CROSS JOIN LATERAL (SELECT count(*) AS n, "
    "coalesce(sum(input_tokens), 0) AS input_tokens, "
    "coalesce(sum(output_tokens), 0) AS output_tokens, "
    "coalesce(sum(total_tokens), 0) AS total_tokens FROM usage WHERE run_id = r.id) u "
)

_INSERT_MESSAGE = (
    "INSERT INTO messages (id, session_id, run_id, role, content, tool_calls, tool_call_id, "
    "created_at, compaction) VALUES (%s, %s, %s, %s, %s, %s::json, %s, %s, %s::json)"
)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc)


def _run_record(row: Sequence[Any]) -> RunRecord:
    try:
        status: RunStatus = row[2]
        return RunRecord(
            run_id=row[0],
            session_id=row[1],
            status=status,
            request=RunRequest.model_validate_json(row[3]),
            output=RunOutput.model_validate_json(row[4]) if row[4] is not None else None,
            error=row[5],
            client_request_id=row[6],
            owner=row[7],
            started_at=_utc(row[8]),
            finished_at=_utc(row[9]) if row[9] is not None else None,
            iterations=row[10],
            total_usage=TokenUsage(
                input_tokens=row[11], output_tokens=row[12], total_tokens=row[13]
            ),
        )
    except DECODE_ERRORS as exc:
        raise StoreError(f"run {row[0]!r}: its stored run row is corrupted ({why(exc)})") from exc


@dataclass(frozen=True)
class _Begin:
    """One ``begin_run`` for the claim batcher."""

    owned: RunRecord
    messages: tuple[Message, ...]
    preamble: tuple[Message, ...]


@dataclass(frozen=True)
class _Finish:
    """What ``finish_run`` writes besides its events."""

    run_id: str
    status: str
    error: str | None
    output_json: str | None
    messages: tuple[Message, ...]


@dataclass(frozen=True)
class _Write:
    """One write for the batcher: events, message rows, and a run's end (``finish_run``)."""

    events: Sequence[EventEnvelope]
    rows: Sequence[tuple[Any, ...]] = ()
    finish: _Finish | None = None


def _message_rows(session_id: uuid.UUID, messages: Sequence[Message]) -> list[tuple[Any, ...]]:
    return [
        (
            m.id,
            session_id,
            m.run_id,
            m.role,
            m.content,
            pydantic_core.to_json([c.model_dump() for c in m.tool_calls]).decode(),
            m.tool_call_id,
            m.created_at,
            None if m.compaction is None else m.compaction.model_dump_json(),
        )
        for m in messages
    ]


def _owner_key(owner: str | None) -> int | None:
    """The advisory lock key of a PostgresStore owner (``host:pid:pg:<key>``), else None."""
    if not owner:
        return None
    head, _, key = without_mark(owner).rpartition(":pg:")
    if not head or not key.lstrip("-").isdigit():
        return None
    return int(key)


class PostgresStore:
    """A :class:`~rxinvoke.stores.Store` in PostgreSQL, shared by processes on many machines.

    Opened on first use (or by :meth:`open`); use ``async with PostgresStore(dsn)`` or call
    :meth:`close` when done.

    Args:
        dsn: a libpq connection string or URL (``postgresql://user:password@host/db``).
        schema: the schema holding the tables (created if missing); lowercase letters, digits
            and ``_``.
        min_size, max_size: the connection pool's bounds.
        timeout: seconds a call waits for a connection (the server unreachable, the pool
            exhausted) before it fails with a :class:`~rxinvoke.errors.StoreError`.
        session_poll: the longest :meth:`wait_session` waits for a ``NOTIFY`` before the
            runtime tries the session again (it also notices a dead owner that way).
        recover_on_open: fail the runs of dead processes when the store opens (False: leave
            them to :meth:`resume_run` or a later :meth:`recover_interrupted`); a dead worker's
            runs are left to the workers either way, for ``resume_grace``.
        resume_grace: the seconds a dead worker's run (or, with ``recover_on_open=False``,
            any dead process's run) is left to be settled or resumed elsewhere, from when
            this store first finds it so: :meth:`recover_interrupted` passes it over, and a
            new run of its session waits (as for a live owner) for it to finish; only after
            that does this store fail it as interrupted (a dead non-worker's run with
            ``recover_on_open=True``: at once).
    """

    ordered_calls = True
    """This process's calls take effect in call order: writes go through one batcher (the
    writes waiting at once in one transaction, batches in order) and every other call waits
    for the writes handed over before it; the runtime's event log hands writes over without
    waiting for the previous one, so concurrent runs' writes are committed together."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "rxinvoke",
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 10.0,
        session_poll: float = 1.0,
        recover_on_open: bool = True,
        resume_grace: float = 60.0,
    ) -> None:
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema must be lowercase letters, digits and '_' (at most 48), got {schema!r}"
            )
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        if resume_grace < 0:
            raise ValueError(f"resume_grace must be >= 0, got {resume_grace!r}")
        try:
            from psycopg.conninfo import conninfo_to_dict
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise ImportError(
                "PostgresStore needs psycopg: pip install 'rxinvoke[postgres]'"
            ) from exc
        try:
            params = conninfo_to_dict(dsn)
        except Exception:
            raise ValueError("dsn is not a valid PostgreSQL connection string") from None
        self._secret = str(params.get("password") or "")
        self.where = (
            f"postgresql://{params.get('user') or ''}@{params.get('host') or 'localhost'}:"
            f"{params.get('port') or 5432}/{params.get('dbname') or ''}#{schema}"
        )
        """Where the store is, for messages: no password."""
        self._dsn = dsn
        self.schema = schema
        self._min_size, self._max_size = min_size, max_size
        self._timeout = timeout
        self._session_poll = session_poll
        self._batcher: WriteBatcher[_Write] = WriteBatcher(self._write_batch)
        self._begins: WriteBatcher[_Begin] = WriteBatcher(self._begin_batch)
        self.recover_on_open = recover_on_open
        self.resume_grace = resume_grace
        self._grace = Grace()
        self._for_worker = False
        self._key = random.randint(1, 2**31 - 1)
        self._owner = self._owner_name()
        self._pool: AsyncConnectionPool[Any] | None = None
        self._own: psycopg.AsyncConnection[Any] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._opening: asyncio.Future[None] | None = None
        self._waiters: dict[uuid.UUID, list[asyncio.Future[None]]] = {}
        self._closed = False
        self.recovered: tuple[str, ...] = ()
        """Runs marked failed ("interrupted") when this store opened."""

    def __repr__(self) -> str:
        return f"PostgresStore({self.where!r})"

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def schema_version(self) -> int:
        """The schema version this store writes."""
        return SCHEMA_VERSION

    @property
    def owner(self) -> str:
        """What this store records as the owner of the runs it begins."""
        return self._owner

    def _owner_name(self) -> str:
        return with_mark(f"{socket.gethostname()}:{os.getpid()}:pg:{self._key}", self._for_worker)

    def mark_as_worker(self) -> None:
        """Tag the runs this store begins from now on as a worker's (``owner`` ends with
        ``/worker``; :class:`~rxinvoke.transports.worker.Worker` calls it): when this process
        dies, no store settles them for ``resume_grace`` seconds — a worker's reaper does, with
        what the run's stream showed beyond the stored log."""
        self._for_worker = True
        self._owner = self._owner_name()

    # --- opening and closing ----------------------------------------------------------------

    async def open(self) -> PostgresStore:
        """Connect, migrate and recover now rather than on first use.

        Raises:
            StoreError: the server is unreachable, refuses the login, or the schema is not
                rxinvoke's.
            MigrationError: the schema is from a newer rxinvoke.
        """
        if self._closed:
            raise StoreError(f"{self.where}: the store is closed")
        if self._pool is not None:
            return self
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        try:
            await asyncio.shield(self._opening)
        except BaseException:
            if self._opening.done():
                self._opening = None  # a failed open may be tried again
            raise
        return self

    async def _open(self) -> None:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        try:
            self._own = await self._connect_own(migrate=True)
        except psycopg.Error as exc:
            raise self._error(exc) from None
        self._listener = asyncio.ensure_future(self._listen())
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            timeout=self._timeout,
            open=False,
            kwargs={
                "autocommit": True,
                "options": f"-c search_path={self.schema} -c timezone=UTC",
            },
        )
        try:
            await pool.open(wait=True, timeout=self._timeout)
        except (psycopg.Error, asyncio.TimeoutError) as exc:
            await pool.close()
            await self._close_own()
            raise self._error(exc) from None
        self._pool = pool
        if self.recover_on_open:
            self.recovered = tuple(await self.recover_interrupted())

    async def _connect_own(self, *, migrate: bool) -> psycopg.AsyncConnection[Any]:
        """The store's own connection: migrated (on open), holding the liveness lock and
        listening for freed sessions. Closed again if anything before that fails or is
        cancelled (a store closed while its connection reconnects leaks nothing)."""
        import psycopg

        own = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=max(1, int(self._timeout))
        )
        try:
            if migrate:
                await self._migrate(own)
            await self._lock_owner(own)
            await own.execute(f'LISTEN "rxinvoke_{self.schema}"')
        except BaseException:
            await own.close()
            raise
        return own

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        schema = self.schema
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_CLASS, _MIGRATION_LOCK))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(f"SET LOCAL search_path = {schema}")
            cur = await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE tablename = 'rxinvoke_schema') "
                "FROM pg_tables WHERE schemaname = %s",
                (schema,),
            )
            tables, marked = (await cur.fetchone()) or (0, 0)
            if tables and not marked:
                raise StoreError(
                    f"{self.where}: not an rxinvoke schema (it has other tables and no "
                    "rxinvoke_schema table)"
                )
            version = 0
            if marked:
                cur = await conn.execute("SELECT version FROM rxinvoke_schema")
                row = await cur.fetchone()
                version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise MigrationError(
                    f"{self.where}: database schema version {version} is newer than this "
                    f"rxinvoke supports ({SCHEMA_VERSION}); upgrade rxinvoke to open it"
                )
            if not marked:
                await conn.execute("CREATE TABLE rxinvoke_schema (version integer NOT NULL)")
                await conn.execute("INSERT INTO rxinvoke_schema (version) VALUES (0)")
            for number in range(version + 1, SCHEMA_VERSION + 1):
                await conn.execute(MIGRATIONS[number - 1])
                await conn.execute("UPDATE rxinvoke_schema SET version = %s", (number,))

    async def _lock_owner(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Take this store's liveness lock (a new key if another store holds this one)."""
        for _ in range(100):
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_CLASS, self._key)
            )
            row = await cur.fetchone()
            if row and row[0]:
                return
            if self._pool is not None:  # reconnecting: our runs are recorded under this key
                raise StoreError(f"{self.where}: the store's liveness lock is taken")
            self._key = random.randint(1, 2**31 - 1)
            self._owner = self._owner_name()
        raise StoreError(f"{self.where}: no free advisory lock key")  # pragma: no cover

    async def _listen(self) -> None:
        """Wake waiters of freed sessions; reconnect (with backoff) if the connection breaks."""
        import psycopg

        delay = 0.05
        while not self._closed:
            own = self._own
            try:
                if own is None or own.closed:
                    own = self._own = await self._connect_own(migrate=False)
                    self._wake_all()  # a notice may have been missed
                delay = 0.05
                async for notice in own.notifies():
                    self._wake(notice.payload)
            except (psycopg.Error, StoreError):
                if own is not None and not own.closed:
                    await own.close()
                self._own = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _wake(self, payload: str) -> None:
        try:
            session_id = uuid.UUID(payload)
        except ValueError:
            return
        for waiter in self._waiters.pop(session_id, ()):
            if not waiter.done():
                waiter.set_result(None)

    def _wake_all(self) -> None:
        for session_id in list(self._waiters):
            self._wake(str(session_id))

    async def _close_own(self) -> None:
        if self._listener is not None:
            await stopped(self._listener)  # a cancel of the close itself is raised, not swallowed
            self._listener = None
        if self._own is not None:
            await self._own.close()
            self._own = None

    async def close(self) -> None:
        """Close the pool and the store's own connection (idempotent); the liveness lock is
        released with it."""
        if self._closed:
            return
        await self._begins.idle()  # the claims and writes handed over are written first
        await self._batcher.idle()
        self._closed = True
        if self._opening is not None and not self._opening.done():
            try:
                await self._opening
            except Exception:
                pass
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self._close_own()
        self._wake_all()

    # --- plumbing -----------------------------------------------------------------------------

    def _error(self, exc: BaseException) -> StoreError:
        """``exc`` as a StoreError naming the store, with the password scrubbed."""
        if isinstance(exc, UnknownRun):
            return exc
        if isinstance(exc, StoreError):
            if self.where in exc.message:
                return exc
            named = copy.copy(exc)  # its structured attributes (a run_id …) kept
            named.message = f"{self.where}: {exc.message}"
            named.args = (named.message,)
            return named
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._secret:
            text = text.replace(self._secret, "***")
        return StoreError(f"{self.where}: {text}")

    async def _after_writes(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``fn(conn)`` as :meth:`_call`, once the writes handed over before it are written
        (``ordered_calls``: this process's calls take effect in call order)."""
        await self._batcher.written()
        return await self._call(fn)

    async def _call(self, fn: Callable[[psycopg.AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        """``fn(conn)`` in one transaction; retried once on a fresh connection if the one it
        got was broken before the commit."""
        import psycopg

        if self._closed:
            raise StoreError(f"{self.where}: the store is closed")
        if self._pool is None:
            await self.open()
        pool = self._pool
        assert pool is not None
        for attempt in (1, 2):
            committing = False
            try:
                async with pool.connection() as conn:
                    try:
                        async with conn.transaction():
                            result = await fn(conn)
                            committing = True
                    except psycopg.OperationalError:
                        if conn.broken and not committing and attempt == 1:
                            continue  # the pool drops the broken connection
                        raise
                return result
            except (SessionBusy, SessionAwaitingApproval):
                raise  # structured: the runtime reads their fields
            except (StoreError, psycopg.Error) as exc:
                error = self._error(exc)
            except DECODE_ERRORS as exc:
                error = StoreError(f"{self.where}: unreadable stored data ({why(exc)})")
            raise error from None
        raise AssertionError("unreachable")  # pragma: no cover

    # --- sessions and messages ------------------------------------------------------------------

    async def load_history(self, session_id: uuid.UUID) -> list[Message]:
        return await self._after_writes(lambda conn: self._history(conn, session_id))

    @staticmethod
    async def _history(conn: psycopg.AsyncConnection[Any], session_id: uuid.UUID) -> list[Message]:
        cur = await conn.execute(
            "SELECT id, run_id, role, content, tool_calls::text, tool_call_id, created_at, "
            "compaction::text "
            "FROM messages WHERE session_id = %s ORDER BY pk",
            (session_id,),
        )
        return [message_of(row, session_id, _utc) for row in await cur.fetchall()]

    async def append_messages(
        self,
        session_id: uuid.UUID,
        messages: Sequence[Message],
        *,
        events: Sequence[EventEnvelope] = (),
    ) -> None:
        await self._write(_Write(events, _message_rows(session_id, messages)))

    @staticmethod
    async def _insert_messages(conn: psycopg.AsyncConnection[Any], rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert message rows (of any sessions, in order; their sessions created)."""
        if not rows:
            return
        sessions = list(dict.fromkeys(row[1] for row in rows))
        await conn.execute(
            "INSERT INTO sessions (id) SELECT unnest(%s::uuid[]) ON CONFLICT DO NOTHING", (sessions,)
        )
        async with conn.cursor() as cur:
            await cur.executemany(_INSERT_MESSAGE, rows)

    async def wait_session(self, session_id: uuid.UUID) -> None:
        """Wait until the session's active run (another process's) may have finished: its
        ``NOTIFY``, or ``session_poll`` seconds. Cancelling the wait writes nothing."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(session_id, []).append(waiter)
        try:
            await asyncio.wait_for(waiter, self._session_poll)
        except asyncio.TimeoutError:
            pass
        finally:
            left = [w for w in self._waiters.get(session_id, ()) if w is not waiter]
            if left:
                self._waiters[session_id] = left
            else:
                self._waiters.pop(session_id, None)

    # --- runs -----------------------------------------------------------------------------------

    async def begin_run(
        self,
        record: RunRecord,
        messages: Sequence[Message],
        *,
        preamble: Sequence[Message] = (),
    ) -> tuple[RunRecord, list[Message]]:
        owned = record.model_copy(update={"owner": self._owner, "status": "running"})
        if self._closed:
            raise StoreError(f"{self.where}: the store is closed")
        # not behind the writes waiting: the session's earlier writes are written (its previous
        # run's end was awaited before the runtime's session gate let this run in)
        claimed: tuple[RunRecord, list[Message]] = await self._begins.submit(
            _Begin(owned, tuple(messages), tuple(preamble))
        )
        return claimed

    async def _begin_batch(self, begins: Sequence[_Begin]) -> list[Outcome]:
        """The claims waiting at once: the plain ones (no idempotency key, not continuing a
        paused run, one per session) in one transaction, set-based; the others — and any the
        batch leaves (a session held by a dead owner, to recover first) — each on its own, at
        once."""
        outcomes: list[Outcome | None] = [None] * len(begins)
        plain: list[int] = []
        sessions: set[uuid.UUID] = set()
        for i, begin in enumerate(begins):
            run = begin.owned
            if run.client_request_id is None and run.request.resumes is None and run.session_id not in sessions:
                plain.append(i)
                sessions.add(run.session_id)
        if len(plain) < 2:
            plain = []
        batched = set(plain)
        alone = [i for i in range(len(begins)) if i not in batched]
        if plain:
            try:
                done, left = await self._call(lambda conn: self._begin_many(conn, [begins[i] for i in plain]))
            except Exception:
                alone.extend(plain)  # the batch refused as a whole: each on its own
            else:
                for j, i in enumerate(plain):
                    outcomes[i] = done[j]
                alone.extend(plain[j] for j in left)

        async def one(i: int) -> None:
            try:
                outcomes[i] = (True, await self._begin_one(begins[i]))
            except Exception as exc:
                outcomes[i] = (False, exc)

        await asyncio.gather(*(one(i) for i in alone))
        claimed = [outcome for outcome in outcomes if outcome is not None]
        assert len(claimed) == len(begins)  # each claim in the batch or alone
        return claimed

    async def _begin_many(
        self, conn: psycopg.AsyncConnection[Any], begins: Sequence[_Begin]
    ) -> tuple[list[Outcome | None], list[int]]:
        """Claim plain runs of distinct sessions in one transaction: their outcomes (None for
        the ones left to claim alone) and the indexes of those."""
        sessions = [b.owned.session_id for b in begins]
        await conn.execute(
            "INSERT INTO sessions (id) SELECT unnest(%s::uuid[]) ON CONFLICT DO NOTHING", (sessions,)
        )
        cur = await conn.execute(
            "SELECT s.id, s.active_run, r.status, r.owner FROM sessions s "
            "LEFT JOIN runs r ON r.id = s.active_run WHERE s.id = ANY(%s) FOR UPDATE OF s",
            (sessions,),
        )
        active = {row[0]: row for row in await cur.fetchall()}
        cur = await conn.execute(
            "SELECT session_id, min(id) FROM runs WHERE session_id = ANY(%s) "
            "AND status = 'awaiting_approval' GROUP BY session_id",
            (sessions,),
        )
        paused = {row[0]: row[1] for row in await cur.fetchall()}
        outcomes: list[Outcome | None] = [None] * len(begins)
        left: list[int] = []
        accepted: list[int] = []
        for j, begin in enumerate(begins):
            session_id = begin.owned.session_id
            row = active.get(session_id)
            if row is not None and row[2] == "running" and row[3] != self._owner:
                if await self._owner_is_gone(conn, row[3]):
                    left.append(j)  # its claim alone recovers the dead owner's run first
                else:
                    outcomes[j] = (False, SessionBusy(str(session_id), row[1]))
            elif session_id in paused:
                outcomes[j] = (False, SessionAwaitingApproval(str(session_id), paused[session_id]))
            else:
                accepted.append(j)
        if not accepted:
            return outcomes, left
        runs = [begins[j].owned for j in accepted]
        cur = await conn.execute(
            "INSERT INTO runs (id, session_id, status, request, owner, started_at) "
            "SELECT v.id, v.sid, 'running', v.request::json, v.owner, v.started "
            "FROM unnest(%s::text[], %s::uuid[], %s::text[], %s::text[], %s::timestamptz[]) "
            "AS v(id, sid, request, owner, started) ON CONFLICT DO NOTHING RETURNING id",
            (
                [r.run_id for r in runs],
                [r.session_id for r in runs],
                [r.request.model_dump_json() for r in runs],
                [r.owner for r in runs],
                [r.started_at for r in runs],
            ),
        )
        if len(await cur.fetchall()) != len(runs):
            raise StoreError("a run of the batch is already stored")  # each alone says which
        await conn.execute(
            "UPDATE sessions s SET active_run = v.rid FROM unnest(%s::uuid[], %s::text[]) AS v(sid, rid) "
            "WHERE s.id = v.sid",
            ([r.session_id for r in runs], [r.run_id for r in runs]),
        )
        cur = await conn.execute(
            "SELECT session_id, id, run_id, role, content, tool_calls::text, tool_call_id, "
            "created_at, compaction::text FROM messages WHERE session_id = ANY(%s) ORDER BY pk",
            ([r.session_id for r in runs],),
        )
        histories: dict[uuid.UUID, list[Message]] = {}
        for row in await cur.fetchall():
            histories.setdefault(row[0], []).append(message_of(row[1:], row[0], _utc))
        rows: list[tuple[Any, ...]] = []
        for j in accepted:
            begin = begins[j]
            session_id = begin.owned.session_id
            history = histories.get(session_id, [])
            opening = [*begin.preamble, *begin.messages] if not history else list(begin.messages)
            rows.extend(_message_rows(session_id, opening))
            outcomes[j] = (True, (begin.owned, [*history, *opening]))
        await self._insert_messages(conn, rows)
        return outcomes, left

    async def _begin_one(self, claim: _Begin) -> tuple[RunRecord, list[Message]]:
        """One claim in its own transaction (what every claim was before batching)."""
        owned, messages, preamble = claim.owned, claim.messages, claim.preamble
        session_id = owned.session_id
        key = owned.client_request_id

        async def begin(conn: psycopg.AsyncConnection[Any]) -> tuple[RunRecord, list[Message]]:
            if key is not None:
                existing = await self._find(conn, "r.client_request_id = %s", key)
                if existing is not None:
                    return existing, []
            await conn.execute(
                "INSERT INTO sessions (id) VALUES (%s) ON CONFLICT DO NOTHING", (session_id,)
            )
            cur = await conn.execute(
                "SELECT s.active_run, r.status, r.owner FROM sessions s "
                "LEFT JOIN runs r ON r.id = s.active_run WHERE s.id = %s FOR UPDATE OF s",
                (session_id,),
            )
            active = await cur.fetchone()
            if active is not None and active[1] == "running" and active[2] != self._owner:
                # this process's own runs of the session are ordered by its runtime's gate
                if not await self._owner_is_gone(conn, active[2]) or self._left_elsewhere(
                    active[0], active[2]
                ):
                    raise SessionBusy(str(session_id), active[0])
                await self._recover_run(conn, active[0])
            await self._resume_or_refuse(conn, owned)
            cur = await conn.execute(
                "INSERT INTO runs (id, session_id, status, request, client_request_id, owner, "
                "started_at) VALUES (%s, %s, 'running', %s::json, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                (
                    owned.run_id,
                    session_id,
                    owned.request.model_dump_json(),
                    key,
                    owned.owner,
                    owned.started_at,
                ),
            )
            if cur.rowcount != 1:
                # another process claimed this client_request_id a moment ago: its run
                existing = None
                if key is not None:
                    existing = await self._find(conn, "r.client_request_id = %s", key)
                if existing is None or existing.run_id == owned.run_id:
                    raise RunAlreadyStored(owned.run_id)
                return existing, []
            await conn.execute(
                "UPDATE sessions SET active_run = %s WHERE id = %s", (owned.run_id, session_id)
            )
            history = await self._history(conn, session_id)
            opening = [*preamble, *messages] if not history else list(messages)
            await self._insert_messages(conn, _message_rows(session_id, opening))
            history.extend(opening)
            return owned, history

        return await self._call(begin)

    @staticmethod
    async def _resume_or_refuse(conn: psycopg.AsyncConnection[Any], owned: RunRecord) -> None:
        """A continuation moves the run it resumes from ``awaiting_approval`` to
        ``completed``; any other run is refused while a run of its session awaits approval
        (inside the claim's transaction, under the session's row lock)."""
        resumes = owned.request.resumes
        if resumes is not None:
            cur = await conn.execute(
                "UPDATE runs SET status = 'completed' WHERE id = %s AND status = 'awaiting_approval'",
                (resumes,),
            )
            if cur.rowcount != 1:
                cur = await conn.execute("SELECT status FROM runs WHERE id = %s", (resumes,))
                row = await cur.fetchone()
                status = row[0] if row else "unknown"
                raise StoreError(f"run {resumes!r} is {status}, not awaiting approval")
            return
        cur = await conn.execute(
            "SELECT id FROM runs WHERE session_id = %s AND status = 'awaiting_approval' LIMIT 1",
            (owned.session_id,),
        )
        paused = await cur.fetchone()
        if paused is not None:
            raise SessionAwaitingApproval(str(owned.session_id), paused[0])

    async def decide(
        self, run_id: str, call_id: str, *, approved: bool, reason: str | None = None
    ) -> tuple[RunRecord, bool]:
        async def decide(conn: psycopg.AsyncConnection[Any]) -> tuple[RunRecord, bool]:
            await conn.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (run_id,))
            record = await self._find(conn, "r.id = %s", run_id)
            if record is None:
                raise UnknownRun(run_id)
            output, changed, ready = decided(record, call_id, approved, reason)
            if changed:
                await conn.execute(
                    "UPDATE runs SET output = %s::json WHERE id = %s",
                    (output.model_dump_json(), run_id),
                )
                record = record.model_copy(update={"output": output})
            return record, ready

        return await self._after_writes(decide)

    async def finish_run(
        self,
        run_id: str,
        outcome: RunOutcome,
        *,
        events: Sequence[EventEnvelope] = (),
        messages: Sequence[Message] = (),
    ) -> None:
        output_json = outcome.output.model_dump_json() if outcome.output is not None else None
        finish = _Finish(run_id, outcome.status, outcome.error, output_json, tuple(messages))
        await self._write(_Write(events, finish=finish))

    @staticmethod
    async def _settle_all(
        conn: psycopg.AsyncConnection[Any],
        ends: Sequence[tuple[str, uuid.UUID, str, str | None, str | None]],
    ) -> None:
        """Record runs' terminal ``(run_id, session_id, status, error, output_json)`` and free
        their sessions (waiters hear it on commit), set-based: three statements for any number."""
        runs, sessions, statuses, errors, outputs = (list(c) for c in zip(*ends, strict=True))
        await conn.execute(
            "UPDATE runs r SET status = v.status, output = v.output::json, error = v.error, "
            "finished_at = %s "
            "FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[]) AS v(id, status, error, output) "
            "WHERE r.id = v.id",
            (utcnow(), runs, statuses, errors, outputs),
        )
        cur = await conn.execute(
            "UPDATE sessions s SET active_run = NULL FROM unnest(%s::uuid[], %s::text[]) AS v(sid, rid) "
            "WHERE s.id = v.sid AND s.active_run = v.rid RETURNING s.id",
            (sessions, runs),
        )
        freed = [str(row[0]) for row in await cur.fetchall()]
        if freed:
            await conn.execute(
                "SELECT pg_notify('rxinvoke_' || current_schema(), f) FROM unnest(%s::text[]) AS f",
                (freed,),
            )

    # --- writes, batched --------------------------------------------------------------------

    async def _write(self, write: _Write) -> None:
        if self._closed:
            raise StoreError(f"{self.where}: the store is closed")
        await self._batcher.submit(write)

    async def _write_batch(self, writes: Sequence[_Write]) -> None:
        """Every write of ``writes`` in one transaction: the events of all (in order), the
        message rows of all, the terminal statuses of the finishing runs, set-based."""
        import psycopg

        async def batch(conn: psycopg.AsyncConnection[Any]) -> None:
            try:
                await self._apply(conn, writes)
            except (StoreError, psycopg.IntegrityError, psycopg.DataError,
                    psycopg.errors.TransactionRollback) as exc:
                if len(writes) > 1:
                    raise BatchRefused from exc  # each again on its own: it fails alone
                raise

        await self._call(batch)

    async def _apply(self, conn: psycopg.AsyncConnection[Any], writes: Sequence[_Write]) -> None:
        finishing = [w.finish for w in writes if w.finish is not None]
        sessions: dict[str, uuid.UUID] = {}
        if finishing:
            ids = [f.run_id for f in finishing]
            cur = await conn.execute(
                "SELECT id, status, session_id FROM runs WHERE id = ANY(%s) FOR UPDATE", (ids,)
            )
            found = {row[0]: (row[1], row[2]) for row in await cur.fetchall()}
            for run_id in ids:
                row = found.get(run_id)
                if row is None:
                    raise UnknownRun(run_id)
                if row[0] != "running" or run_id in sessions:  # (twice in one batch: refused)
                    raise StoreError(f"run {run_id!r} is already {row[0]}")
                sessions[run_id] = row[1]
        # the plain entries of all, no envelope built per event
        await self._insert_events(
            conn, EventBatch([entry for w in writes for entry in log_entries(w.events)])
        )
        rows: list[tuple[Any, ...]] = []
        for w in writes:
            rows.extend(w.rows)
            if w.finish is not None and w.finish.messages:
                session_id = sessions[w.finish.run_id]
                rows.extend(_message_rows(session_id, w.finish.messages))
        await self._insert_messages(conn, rows)
        if finishing:
            await self._settle_all(
                conn,
                [(f.run_id, sessions[f.run_id], f.status, f.error, f.output_json) for f in finishing],
            )

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._after_writes(lambda conn: self._find(conn, "r.id = %s", run_id))

    async def list_runs(
        self, *, limit: int = 20, session_id: uuid.UUID | None = None
    ) -> list[RunRecord]:
        where, args = ("WHERE r.session_id = %s ", (session_id,)) if session_id else ("", ())

        async def runs(conn: psycopg.AsyncConnection[Any]) -> list[RunRecord]:
            cur = await conn.execute(
                f"{_RUN_SELECT}{where}ORDER BY r.started_at DESC, r.pk DESC LIMIT %s",
                (*args, max(limit, 0)),
            )
            return [_run_record(row) for row in await cur.fetchall()]

        return await self._after_writes(runs)

    @staticmethod
    async def _find(
        conn: psycopg.AsyncConnection[Any], condition: str, value: str
    ) -> RunRecord | None:
        cur = await conn.execute(f"{_RUN_SELECT}WHERE {condition}", (value,))
        row = await cur.fetchone()
        return _run_record(row) if row is not None else None

    # --- the event log ----------------------------------------------------------------------

    async def append_events(self, events: Sequence[EventEnvelope]) -> None:
        if not events:
            return
        await self._write(_Write(events))

    async def read_events(self, run_id: str, *, after_seq: int | None = None) -> list[EventEnvelope]:
        after = max(after_seq or 0, 0)

        async def read(conn: psycopg.AsyncConnection[Any]) -> list[EventEnvelope]:
            cur = await conn.execute("SELECT session_id FROM runs WHERE id = %s", (run_id,))
            run = await cur.fetchone()
            if run is None:
                raise UnknownRun(run_id)
            cur = await conn.execute(
                "SELECT first_seq, events::text FROM event_segments "
                "WHERE run_id = %s AND last_seq > %s ORDER BY first_seq",
                (run_id, after),
            )
            return envelopes_of(run_id, run[0], await cur.fetchall(), after)

        return await self._after_writes(read)

    async def _insert_events(
        self, conn: psycopg.AsyncConnection[Any], events: Sequence[EventEnvelope]
    ) -> None:
        """One segment per run of the batch, each run's ``last_seq`` moved forward only if it
        is where the batch starts; call inside a transaction."""
        if not events:
            return
        by_run, usage = runs_of(events)
        # set-based: one statement each for the runs' seqs, the segments and the usage rows,
        # whatever the number of runs in the batch (round trips, not rows, cost here)
        runs = list(by_run)
        cur = await conn.execute(
            "UPDATE runs r SET last_seq = v.last_seq "
            "FROM unnest(%s::text[], %s::int[], %s::int[]) AS v(id, first_seq, last_seq) "
            "WHERE r.id = v.id AND r.last_seq = v.first_seq - 1 AND r.status = 'running' "
            "RETURNING r.id",
            (runs, [by_run[r][0] for r in runs], [by_run[r][1] for r in runs]),
        )
        moved = {row[0] for row in await cur.fetchall()}
        for run_id in runs:
            if run_id not in moved:
                await self._refuse(conn, run_id, by_run[run_id][0])
        async with conn.cursor() as cur:  # executemany: pipelined, and no array escaping
            await cur.executemany(
                "INSERT INTO event_segments (run_id, first_seq, last_seq, events) "
                "VALUES (%s, %s, %s, %s::json)",
                [
                    (r, first, last, encode_segment(items).decode())
                    for r, (first, last, items) in by_run.items()
                ],
            )
        if usage:
            columns = list(zip(*usage, strict=True))
            await conn.execute(
                "INSERT INTO usage (run_id, seq, input_tokens, output_tokens, total_tokens) "
                "SELECT * FROM unnest(%s::text[], %s::int[], %s::int[], %s::int[], %s::int[])",
                tuple(list(c) for c in columns),
            )

    @staticmethod
    async def _refuse(conn: psycopg.AsyncConnection[Any], run_id: str, start: int) -> None:
        cur = await conn.execute("SELECT status, last_seq FROM runs WHERE id = %s", (run_id,))
        row = await cur.fetchone()
        if row is None:
            raise UnknownRun(run_id)
        if row[0] != "running":
            raise StoreError(f"run {run_id!r} is finished: its log takes no more events")
        raise StoreError(f"run {run_id!r}: event seq {start} does not follow {row[1]}")

    # --- crash recovery ---------------------------------------------------------------------

    def _left_elsewhere(self, run_id: str, owner: str | None) -> bool:
        """True while the dead owner's run ``run_id`` is left to be settled or resumed
        elsewhere: a worker's run (by the workers' reapers, which salvage its stream) or,
        with ``recover_on_open=False``, any run; for ``resume_grace`` seconds from when this
        store first found it orphaned."""
        if not self.recover_on_open:
            return self._grace.waiting(run_id, self.resume_grace)
        return self._grace.left_to_workers(run_id, owner, self.resume_grace)

    async def _owner_is_gone(self, conn: psycopg.AsyncConnection[Any], owner: str | None) -> bool:
        """True if ``owner`` is a PostgresStore whose liveness lock is free (its connection
        ended). The probe takes the lock shared, for this transaction only: probes of one
        owner at once (the reapers of several workers taking its runs over) all see it free,
        where an exclusive probe would see the lock held by another probe, its owner alive."""
        key = _owner_key(owner)
        if key is None or owner == self._owner:
            return False
        cur = await conn.execute(
            "SELECT pg_try_advisory_xact_lock_shared(%s, %s)", (_LOCK_CLASS, key)
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    async def recover_interrupted(self) -> list[str]:
        async def candidates(conn: psycopg.AsyncConnection[Any]) -> list[tuple[str, str]]:
            cur = await conn.execute("SELECT id, owner FROM runs WHERE status = 'running'")
            return [(row[0], row[1]) for row in await cur.fetchall()]

        recovered: list[str] = []
        for run_id, owner in await self._call(candidates):
            if _owner_key(owner) is None or owner == self._owner:
                continue

            async def recover(conn: psycopg.AsyncConnection[Any], run_id: str = run_id) -> bool:
                dead = await self._dead_owner(conn, run_id)
                if dead is None:
                    return False  # finished, recovered by another process, or alive
                if self._grace.left_to_workers(run_id, dead, self.resume_grace):
                    return False  # a dead worker's: the workers' reapers settle it, salvaging
                await self._recover_run(conn, run_id)
                return True

            if await self._call(recover):
                recovered.append(run_id)
        return recovered

    async def recover_run(
        self, run_id: str, salvage: Sequence[EventEnvelope] = (), *, mine: bool = False
    ) -> bool:
        """Recover the one run ``run_id`` if it is ``running`` and its owner is gone: first
        append the envelopes of ``salvage`` that continue its stored log (what observers saw
        of it elsewhere, a run stream, say), then settle it as :meth:`recover_interrupted`
        does. Returns False, writing nothing, if the run is not running or its owner lives.

        With ``mine``, a run of this store's own :attr:`owner` is recovered too: the caller
        vouches that nothing in this process runs it (a claim committed whose reply was lost,
        its run never begun)."""

        async def recover(conn: psycopg.AsyncConnection[Any]) -> bool:
            if not await self._orphaned(conn, run_id, mine):
                return False
            await self._recover_run(conn, run_id, salvage)
            return True

        return await self._call(recover)

    async def resume_run(
        self, run_id: str, salvage: Sequence[EventEnvelope] = ()
    ) -> tuple[RunRecord, list[Message], int] | None:
        """Take over the ``running`` run ``run_id`` whose owner is gone, to go on with it here
        (the ``resume_run`` of the Store contract): returns its record, its session's history
        and the seq of its log's last envelope, or None if it is not running, its owner lives
        or its log (with ``salvage``) ends with its terminal event (the status then settled).
        The session stays taken by the run (its ``active_run``) throughout."""

        async def resume(conn: psycopg.AsyncConnection[Any]) -> tuple[RunRecord, list[Message], int] | None:
            if not await self._orphaned(conn, run_id):
                return None
            record = await self._find(conn, "r.id = %s", run_id)
            assert record is not None
            last_seq, last_type, last_error = await self._continue_log(conn, run_id, salvage)
            if last_type in TERMINAL_STATUS:
                await self._settle_lagging(conn, record, last_type, last_error)
                return None
            await conn.execute("UPDATE runs SET owner = %s WHERE id = %s", (self._owner, run_id))
            owned = record.model_copy(update={"owner": self._owner})
            return owned, await self._history(conn, record.session_id), last_seq

        return await self._call(resume)

    async def _orphaned(
        self, conn: psycopg.AsyncConnection[Any], run_id: str, mine: bool = False
    ) -> bool:
        """Lock the run ``run_id`` if it is ``running``; True if its owner is gone (or, with
        ``mine``, is this store). Inside a transaction."""
        return await self._dead_owner(conn, run_id, mine) is not None

    async def _dead_owner(
        self, conn: psycopg.AsyncConnection[Any], run_id: str, mine: bool = False
    ) -> str | None:
        """Lock the run ``run_id`` if it is ``running``; its owner if that is gone (or, with
        ``mine``, is this store), else None. Inside a transaction."""
        cur = await conn.execute(
            "SELECT owner FROM runs WHERE id = %s AND status = 'running' FOR UPDATE", (run_id,)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        if (mine and row[0] == self._owner) or await self._owner_is_gone(conn, row[0]):
            return str(row[0])
        return None

    async def _recover_run(
        self,
        conn: psycopg.AsyncConnection[Any],
        run_id: str,
        salvage: Sequence[EventEnvelope] = (),
    ) -> None:
        """Give the running run ``run_id`` (its owner is gone) its terminal event and status,
        after the envelopes of ``salvage`` that continue its log; call inside a transaction."""
        record = await self._find(conn, "r.id = %s", run_id)
        assert record is not None
        last_seq, last_type, last_error = await self._continue_log(conn, run_id, salvage)
        if last_type in TERMINAL_STATUS:
            await self._settle_lagging(conn, record, last_type, last_error)
            return
        await self._insert_events(conn, interrupted_envelopes(record, last_seq))
        await self._settle_all(conn, [(run_id, record.session_id, "failed", "interrupted", None)])

    async def _continue_log(
        self, conn: psycopg.AsyncConnection[Any], run_id: str, salvage: Sequence[EventEnvelope]
    ) -> tuple[int, str | None, object]:
        """Append the envelopes of ``salvage`` that continue the run's stored log; the seq,
        type and ``error`` field of its last envelope then (0, None, None: an empty log).
        Inside a transaction."""
        cur = await conn.execute(
            "SELECT r.last_seq, s.events -> -1 ->> 'type', s.events -> -1 ->> 'error' "
            "FROM runs r LEFT JOIN event_segments s "
            "ON s.run_id = r.id AND s.last_seq = r.last_seq WHERE r.id = %s",
            (run_id,),
        )
        row = await cur.fetchone()
        last_seq, last_type, last_error = (row[0], row[1], row[2]) if row else (0, None, None)
        kept = continuing(salvage, last_seq)
        if kept:
            await self._insert_events(conn, kept)
            last_seq, last_type = kept[-1].seq, kept[-1].type
            last_error = getattr(kept[-1].event, "error", None)
        return last_seq, last_type, last_error

    async def _settle_lagging(
        self, conn: psycopg.AsyncConnection[Any], record: RunRecord, last_type: str, last_error: object
    ) -> None:
        """The run's log ends with its terminal event (``last_type``): only its status lagged
        (set with the event's error)."""
        status = TERMINAL_STATUS[last_type]
        error = lagging_error(status, last_error)
        await self._settle_all(conn, [(record.run_id, record.session_id, status, error, None)])
