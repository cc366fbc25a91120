"""SqliteStore: sessions, messages, runs, usage and the event log in one SQLite file.

Threading: the stdlib ``sqlite3`` connection belongs to one dedicated worker thread per store
(``stores._worker.GroupWorker``): reads and the file's opening and migration run there, so the
event loop never waits on reading the disk or on a sync. A write the store can
do at once — nothing else queued for the worker, no other process holding the write lock — is
done on the caller's thread instead (with ``synchronous="NORMAL"``, the default): in WAL mode
its commit appends to the log in the OS's cache and syncs nothing, while a hand-off to the
thread and back cost a run more than the write itself (the two threads contend for the GIL; a
W1 run made ~10 context switches). Automatic checkpoints are off: after every
``_CHECKPOINT_EVERY`` writes a checkpoint runs on a second connection in a thread of its own,
while writes go on (it copies ~1,100 pages and syncs twice: 6-20 ms here, which the writes
waited for when it ran on the worker); if anything was written meanwhile, a short one on the
worker, which the next write waits for, copies it, so that the log starts over. A write that
finds the database locked by another process goes to the worker, which waits for it. The
writes that follow the first of one event-loop iteration wait for its end and are then done
together, on the caller's thread (below); so do the writes called while the worker has calls,
once it has none left — else, under a steady load of concurrent runs, each write would queue
behind the one before on the worker and the writes would never come back to the caller's
thread (the two threads then contend for the GIL on every write). The store's calls run one
at a time, in call order (a read after waiting writes is done after them).

Transactions: every write is all or nothing (a batch of messages, a batch of envelopes, a run's
terminal events plus its status), so a process killed at any moment leaves whole writes only.
A write alone is one ``BEGIN IMMEDIATE`` transaction; writes that wait together (many
concurrent runs: for the end of a loop iteration, or for the worker) are committed as one
group (group commit): one transaction, each write in its own savepoint, so a write that fails
is rolled back alone and the others commit. A write's caller learns its outcome once the group
has committed. The file is in WAL mode with
``synchronous=NORMAL`` (default; ``synchronous="FULL"`` to survive power loss too): a committed
transaction survives a crash of the process. Several processes may share a file: a writer waits for another
writer up to ``busy_timeout`` seconds, and a busy error is retried.

Event log: stored in segments, one ``event_segments`` row per written batch and run
(``run_id``, ``first_seq``, ``last_seq``, ``events``: the batch's events as one JSON array),
not one row per event: a step's ~30–100 events cost one row and one JSON encoding call. An
envelope's other fields are derived when read (``event_id = "{run_id}:{seq}"``, the run's
session, the event's type, ``emitted_at`` = the event's timestamp). The worker caches each
run's last seq after a commit (dropped on a rollback, and whenever ``PRAGMA data_version``
shows that another connection wrote) and the sessions it has stored.

Schema: versioned migrations, one SQL script per version, recorded in ``PRAGMA user_version``
(and ``PRAGMA application_id`` marks the file as rxinvoke's). Opening a file from a newer
rxinvoke raises :class:`~rxinvoke.errors.MigrationError`; a file that is not an rxinvoke
database (or not SQLite at all) raises :class:`~rxinvoke.errors.StoreError`.

Crash recovery: a run records its owner (``host:pid:process start``). Opening the store
(unless ``recover_on_open=False``) and :meth:`SqliteStore.recover_interrupted` mark failed
every ``running`` run whose owner process on this host is gone, appending a terminal
``run_failed`` ("interrupted") with the next seq,
so every stored run ends with exactly one terminal event; :meth:`SqliteStore.resume_run`
instead takes such a run over, for this process to go on with it. A worker's runs (``owner``
ending with ``/worker``: :meth:`SqliteStore.mark_as_worker`) are left for ``resume_grace``
seconds to the workers' reapers, which settle them with :meth:`SqliteStore.recover_run`,
salvaging what the run's stream showed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

from .._futures import shielded
from ..errors import (
    MigrationError,
    RunAlreadyStored,
    SessionAwaitingApproval,
    StoreError,
    UnknownRun,
)
from ..messages import Message, TokenUsage, utcnow
from ..request import RunOutput, RunRequest
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
from ._worker import GroupWorker, Outcome
from .base import (
    EventEnvelope,
    RunOutcome,
    RunRecord,
    RunStatus,
    interrupted_envelopes,
)

__all__ = ("SCHEMA_VERSION", "SqliteStore", "default_db_path")

_T = TypeVar("_T")

APPLICATION_ID = 0x52584956  # "RXIV"

MIGRATIONS: tuple[str, ...] = (
    # 1: sessions, messages, runs, usage, events
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        created_at TEXT NOT NULL
    );
    CREATE TABLE messages (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        session_id TEXT NOT NULL REFERENCES sessions (id),
        run_id TEXT,
        role TEXT NOT NULL,
        content TEXT NOT NULL,
        tool_calls TEXT NOT NULL DEFAULT '[]',
        tool_call_id TEXT,
        created_at TEXT NOT NULL
    );
    CREATE INDEX messages_by_session ON messages (session_id, pk);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id),
        status TEXT NOT NULL
            CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
        request TEXT NOT NULL,
        output TEXT,
        error TEXT,
        client_request_id TEXT UNIQUE,
        owner TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX runs_by_start ON runs (started_at);
    CREATE INDEX runs_by_status ON runs (status);
    CREATE INDEX runs_by_session ON runs (session_id, started_at);
    CREATE TABLE usage (
        run_id TEXT NOT NULL REFERENCES runs (id),
        seq INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        run_id TEXT NOT NULL REFERENCES runs (id),
        seq INTEGER NOT NULL CHECK (seq >= 1),
        event_id TEXT NOT NULL,
        type TEXT NOT NULL,
        event TEXT NOT NULL,
        emitted_at REAL NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    """,
    # 2: the event log in segments (one row per written batch of a run, not one per event)
    """
    CREATE TABLE event_segments (
        run_id TEXT NOT NULL REFERENCES runs (id),
        first_seq INTEGER NOT NULL CHECK (first_seq >= 1),
        last_seq INTEGER NOT NULL CHECK (last_seq >= first_seq),
        events TEXT NOT NULL,
        PRIMARY KEY (run_id, first_seq)
    );
    INSERT INTO event_segments (run_id, first_seq, last_seq, events)
        SELECT run_id, seq, seq, json_array(json(event)) FROM events ORDER BY run_id, seq;
    DROP TABLE events;
    """,
    # 3: checkpoint messages (context compaction) say what they summarise
    """
    ALTER TABLE messages ADD COLUMN compaction TEXT;
    """,
    # 4: runs may pause for approval (a wider status CHECK: the table is rebuilt, SQLite's
    # documented procedure; the migration runs with foreign keys off)
    """
    CREATE TABLE runs_v4 (
        id TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions (id),
        status TEXT NOT NULL CHECK (
            status IN ('running', 'completed', 'failed', 'cancelled', 'awaiting_approval')
        ),
        request TEXT NOT NULL,
        output TEXT,
        error TEXT,
        client_request_id TEXT UNIQUE,
        owner TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT
    );
    INSERT INTO runs_v4 (id, session_id, status, request, output, error, client_request_id,
        owner, started_at, finished_at)
        SELECT id, session_id, status, request, output, error, client_request_id, owner,
            started_at, finished_at FROM runs ORDER BY rowid;
    DROP TABLE runs;
    ALTER TABLE runs_v4 RENAME TO runs;
    CREATE INDEX runs_by_start ON runs (started_at);
    CREATE INDEX runs_by_status ON runs (status);
    CREATE INDEX runs_by_session ON runs (session_id, started_at);
    """,
)
"""One SQL script per schema version; version ``n`` is ``MIGRATIONS[n - 1]``. Append only."""

SCHEMA_VERSION = len(MIGRATIONS)
"""The schema version this rxinvoke writes (``PRAGMA user_version``)."""

_BUSY_RETRIES = 5

_log = logging.getLogger("rxinvoke")

_SESSION_CACHE = 10_000

_CHECKPOINT_EVERY = 100
"""Writes between two checkpoints (a W1 run's write appends ~11 pages to the log: ~1,100 pages
a checkpoint, about SQLite's own automatic threshold)."""


def default_db_path() -> Path:
    """``$RXINVOKE_DB``, else ``$XDG_DATA_HOME/rxinvoke/rxinvoke.db``, else
    ``~/.local/share/rxinvoke/rxinvoke.db``."""
    explicit = os.environ.get("RXINVOKE_DB")
    if explicit:
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME")
    base = Path(data_home).expanduser() if data_home else Path.home() / ".local" / "share"
    return base / "rxinvoke" / "rxinvoke.db"


def _ts(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")  # fixed width: sorts as text


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _process_start(pid: int) -> str:
    """The start time of process ``pid`` (Linux ``/proc``), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]  # field 22, starttime


def _pass_on(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    """When ``source`` is done, ``target`` gets its outcome."""

    def done(future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            target.cancel()
        elif future.exception() is not None:
            target.set_exception(future.exception())  # type: ignore[arg-type]
        else:
            target.set_result(future.result())

    source.add_done_callback(done)


def _this_owner() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _owner_is_gone(owner: str | None) -> bool:
    """True if ``owner`` is a process of this host that no longer runs."""
    if not owner:
        return False
    host, _, rest = without_mark(owner).partition(":")
    pid_text, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or sys.platform == "win32":
        return False  # another host, or no reliable way to tell: never steal a run
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    return bool(started) and _process_start(pid) not in ("", started)


def _statements(script: str) -> Iterator[str]:
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    if buffer.strip():
        raise MigrationError(f"incomplete SQL statement in a migration: {buffer.strip()[:80]}")


class _Busy(Exception):
    """The database was busy (another process writes): the call may be retried."""

    def __init__(self, error: sqlite3.Error) -> None:
        super().__init__(str(error))
        self.error = error


def _checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the write-ahead log into the database (what SQLite's automatic checkpoint does).
    Passive: it waits for no reader or writer. True if every frame of the log was copied (the
    next write then starts the log over); False if some were written meanwhile (or busy)."""
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return bool(busy == 0 and frames == copied)


def _after(aside: concurrent.futures.Future[bool], conn: sqlite3.Connection) -> bool:
    """On the worker: wait for the checkpoint aside, then copy what it left (``_checkpoint``)."""
    if aside.exception() is not None:  # waits for it
        _log.warning("rxinvoke: SQLite checkpoint failed: %s", aside.exception())
    return _checkpoint(conn)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        _log.warning("rxinvoke: SQLite checkpoint failed: %s", future.exception())


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


_RUN_COLUMNS = (
    "r.id, r.session_id, r.status, r.request, r.output, r.error, r.client_request_id, "
    "r.owner, r.started_at, r.finished_at, "
    "(SELECT COUNT(*) FROM usage u WHERE u.run_id = r.id), "
    "(SELECT COALESCE(SUM(input_tokens), 0) FROM usage u WHERE u.run_id = r.id), "
    "(SELECT COALESCE(SUM(output_tokens), 0) FROM usage u WHERE u.run_id = r.id), "
    "(SELECT COALESCE(SUM(total_tokens), 0) FROM usage u WHERE u.run_id = r.id)"
)


def _message_rows(session_id: uuid.UUID, messages: Sequence[Message]) -> list[tuple[Any, ...]]:
    return [
        (
            m.id,
            str(session_id),
            m.run_id,
            m.role,
            m.content,
            json.dumps([c.model_dump() for c in m.tool_calls]),
            m.tool_call_id,
            _ts(m.created_at),
            None if m.compaction is None else m.compaction.model_dump_json(),
        )
        for m in messages
    ]


def _run_record(row: Sequence[Any]) -> RunRecord:
    try:
        return _decode_run_record(row)
    except DECODE_ERRORS as exc:
        raise StoreError(f"run {row[0]!r}: its stored run row is corrupted ({why(exc)})") from exc


def _decode_run_record(row: Sequence[Any]) -> RunRecord:
    status: RunStatus = row[2]
    return RunRecord(
        run_id=row[0],
        session_id=uuid.UUID(row[1]),
        status=status,
        request=RunRequest.model_validate_json(row[3]),
        output=RunOutput.model_validate_json(row[4]) if row[4] is not None else None,
        error=row[5],
        client_request_id=row[6],
        owner=row[7],
        started_at=_dt(row[8]),
        finished_at=_dt(row[9]) if row[9] is not None else None,
        iterations=row[10],
        total_usage=TokenUsage(input_tokens=row[11], output_tokens=row[12], total_tokens=row[13]),
    )


class SqliteStore:
    """A :class:`~rxinvoke.store.Store` in a SQLite file (WAL, versioned migrations).

    The file is opened on first use (or by :meth:`open`); use ``async with SqliteStore(path)``
    or call :meth:`close` when done.

    Args:
        path: the database file.
        create: create the file (and its directory) if missing; when False a missing file
            is a :class:`~rxinvoke.errors.StoreError`.
        busy_timeout: seconds a write waits for another process's write to end.
        synchronous: ``"NORMAL"`` (a commit survives a process crash) or ``"FULL"`` (it
            survives power loss as well, at a cost per commit).
        recover_on_open: fail the runs of dead processes when the file is opened (False: leave
            them to :meth:`resume_run` or a later :meth:`recover_interrupted`); a dead worker's
            runs are left to the workers either way, for ``resume_grace``.
        resume_grace: the seconds a dead worker's run is left to the workers' reapers (which
            settle it with :meth:`recover_run`, salvaging what its stream showed), from when
            this store first finds it so: until then :meth:`recover_interrupted` (and the
            recovery on open) passes it over.
    """

    ordered_calls = True
    """Calls run one at a time in call order (a write is done on the caller's thread only when
    nothing is queued for the worker): the runtime's event log hands it writes without waiting
    for the previous one, and concurrent runs' writes that queue for the worker are committed
    together."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        busy_timeout: float = 30.0,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        recover_on_open: bool = True,
        resume_grace: float = 60.0,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be 'NORMAL' or 'FULL', got {synchronous!r}")
        if resume_grace < 0:
            raise ValueError(f"resume_grace must be >= 0, got {resume_grace!r}")
        self.path = Path(path)
        self._create = create
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self.recover_on_open = recover_on_open
        self.resume_grace = resume_grace
        self._grace = Grace()  # used on the worker thread only
        self._worker: GroupWorker[Callable[[sqlite3.Connection], Any]] = GroupWorker(
            self._locked(self._run), self._locked(self._run_group), name="rxinvoke-sqlite"
        )
        self._in_group = False  # a group's transaction is open: writes take savepoints
        self._conn: sqlite3.Connection | None = None
        # the connection is used by one thread at a time: the worker holds this lock while it
        # runs calls, a write done on the caller's thread takes it without waiting (or goes
        # to the worker)
        self._using = threading.Lock()
        # whether the connection waits busy_timeout for another process's lock (the worker's
        # calls) or not at all (the writes on the caller's thread): switched only on a change
        # of hands, not around every write
        self._waits = True
        self._inline = synchronous == "NORMAL"  # a FULL commit syncs: never on the caller's thread
        self._queued = 0  # calls handed to the worker and not settled (later ones queue behind)
        # writes waiting to be done together on the caller's thread: those after the first of
        # a loop iteration (done at its end), or those called while the worker had calls
        # (done when it has none left): None when no write waits and none was done here in
        # this loop iteration
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] | None = None
        self._batch_loop: asyncio.AbstractEventLoop | None = None
        self._writes = 0  # since the last checkpoint
        # checkpoints on a connection and thread of their own, so writes go on meanwhile
        self._aside: sqlite3.Connection | None = None
        self._aside_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._checkpointing: concurrent.futures.Future[bool] | None = None
        self._uses = 0  # times the connection was taken (read by the checkpoint thread)
        self._owner = _this_owner()
        self._closed = False
        # Worker-thread caches, valid for committed data only (cleared on any rollback):
        self._last_seq: dict[str, int] = {}
        """The last stored seq of runs this store wrote (dropped if another connection wrote)."""
        self._sessions: set[str] = set()
        """Sessions known to be stored (sessions are never deleted)."""
        self._data_version: int | None = None
        self.recovered: tuple[str, ...] = ()
        """Runs marked failed ("interrupted") when this store opened the file."""

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"

    def mark_as_worker(self) -> None:
        """Tag the runs this store begins from now on as a worker's (``owner`` ends with
        ``/worker``; :class:`~rxinvoke.transports.worker.Worker` calls it): when this process
        dies, no store settles them for ``resume_grace`` seconds — a worker's reaper does, with
        what the run's stream showed beyond the stored log."""
        self._owner = with_mark(_this_owner(), True)

    async def __aenter__(self) -> SqliteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> SqliteStore:
        """Open (create, migrate, recover) the file now rather than on first use.

        Raises:
            StoreError: the file is missing (``create=False``), not SQLite, or not rxinvoke's.
            MigrationError: the file's schema is from a newer rxinvoke.
        """
        await self._call(lambda conn: None)
        return self

    async def close(self) -> None:
        """Close the connection and stop the worker thread (idempotent)."""
        if self._closed:
            return
        if self._batch and self._batch_loop is asyncio.get_running_loop():
            self._write_batch()  # writes called before close() are done
        self._closed = True
        self._checkpointing = None
        if self._aside_thread is not None:  # wait for a checkpoint aside still running
            await asyncio.to_thread(self._aside_thread.shutdown)
            self._aside_thread = None
        if self._aside is not None:  # first: the worker's connection is then the last
            self._aside.close()  # (closing the last connection checkpoints and drops the log)
            self._aside = None
        await self._worker.close(self._close_connection)

    @property
    def schema_version(self) -> int:
        """The schema version this store writes."""
        return SCHEMA_VERSION

    @property
    def owner(self) -> str:
        """What this store records as the owner of the runs it begins (``host:pid:start``)."""
        return self._owner

    # --- plumbing (worker thread) ---------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], _T], *, write: bool = False) -> _T:
        if self._closed:
            raise StoreError(f"{self.path}: the store is closed")
        if write:
            self._writes += 1
            if self._checkpointing is not None and self._checkpointing.done():
                self._checkpointed(self._checkpointing)
            if self._inline and self._conn is not None:
                loop = asyncio.get_running_loop()
                if self._batch is None:
                    if self._queued:  # the worker has calls: done here once it has none
                        self._batch, self._batch_loop = [], loop
                    else:
                        done, result = self._write_here(fn)
                        if done:  # the writes that follow in this loop iteration wait for its end
                            self._batch, self._batch_loop = [], loop
                            loop.call_soon(self._end_iteration)
                            self._checkpoint_due()  # after the write: the checkpoint copies it too
                            return result  # type: ignore[return-value]
                if self._batch is not None and self._batch_loop is loop:
                    waiting: asyncio.Future[_T] = loop.create_future()
                    self._batch.append((fn, waiting))
                    return await shielded(waiting)
            self._checkpoint_due()
        future: asyncio.Future[_T] = self._submit(fn, write=write)
        # a cancelled caller leaves the call queued (the worker runs it anyway): it counts as
        # queued until the worker is done with it, so no later write overtakes it
        return await shielded(future)

    def _checkpoint_due(self) -> None:
        if self._writes < _CHECKPOINT_EVERY or not self._inline or self._conn is None:
            return  # (not before the worker has opened the file: the first writes wait for it)
        if self._checkpointing is None:
            self._writes = 0
            self._checkpoint_aside()
        elif self._writes >= 2 * _CHECKPOINT_EVERY:
            # the writes outrun the checkpoint aside: from here they wait behind the worker,
            # which waits for it and copies the rest (the log holds 200 writes at most)
            aside, self._checkpointing = self._checkpointing, None
            self._catch_up(functools.partial(_after, aside))

    def _checkpoint_aside(self) -> None:
        """Checkpoint on the side connection, in a thread of its own: writes on the caller's
        thread go on meanwhile (a checkpoint of ~1,100 pages takes 8-20 ms here, two syncs
        included, which the writes waited for when it ran on the worker)."""
        if self._aside_thread is None:
            self._aside_thread = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="rxinvoke-sqlite-checkpoint"
            )
        self._checkpointing = self._aside_thread.submit(self._run_aside)

    def _run_aside(self) -> bool:
        if self._aside is None:
            self._aside = sqlite3.connect(
                f"file:{quote(str(self.path.resolve()))}?mode=rw",
                uri=True,
                isolation_level=None,
                check_same_thread=False,  # closed by close(), on the loop's thread
            )
        uses = self._uses
        quiet = not self._using.locked()
        # every frame copied and no write meanwhile: the log starts over at the next write
        return _checkpoint(self._aside) and quiet and self._uses == uses

    def _checkpointed(self, done: concurrent.futures.Future[bool]) -> None:
        """After a checkpoint aside (seen by the next write): unless it copied every frame
        with no write meanwhile, a short checkpoint on the worker, before that write (it
        waits), copies the frames written meanwhile. Without it, under a steady load, a write
        would always be under way while the checkpoint ends: the log would never be copied
        whole, never start over, and grow without bound."""
        self._checkpointing = None
        try:
            complete = done.result()
        except Exception as exc:  # the next checkpoint tries again
            _log.warning("rxinvoke: SQLite checkpoint failed: %s", exc)
            return
        if not complete:
            self._catch_up(_checkpoint)

    def _catch_up(self, checkpoint: Callable[[sqlite3.Connection], bool]) -> None:
        """Finish a round on the worker (the writes after it wait): the log starts over."""
        self._writes = 0
        self._submit(checkpoint, write=False).add_done_callback(_retrieve)

    def _submit(self, fn: Callable[[sqlite3.Connection], Any], *, write: bool) -> asyncio.Future[Any]:
        if self._batch and self._batch_loop is asyncio.get_running_loop():
            self._write_batch()  # the writes called before this call are done before it
        self._queued += 1
        future = self._worker.submit(fn, write=write)
        future.add_done_callback(self._settled)
        return future

    def _settled(self, future: asyncio.Future[Any]) -> None:
        self._queued -= 1
        loop = self._batch_loop
        if not self._queued and self._batch and loop is not None:
            # the writes that waited for the worker to be done (on their own loop's thread)
            if loop is asyncio.get_running_loop():
                self._end_iteration()
            else:
                loop.call_soon_threadsafe(self._end_iteration)

    def _end_iteration(self) -> None:
        """At the end of a loop iteration with a write done on the caller's thread, and when
        the worker has no calls left: the writes waiting, in one transaction (unless the worker
        has calls: then when it has none)."""
        if not (self._queued and self._batch):
            self._write_batch()

    def _write_batch(self) -> None:
        """The waiting writes, in call order, in one transaction on this thread (each in a
        savepoint: a write that fails is rolled back alone); handed to the worker, in order,
        if the connection or the database is busy."""
        batch = self._batch or []
        self._batch = self._batch_loop = None
        if not batch:
            return
        try:
            done, outcomes = self._write_here(
                functools.partial(self._group_here, fns=[fn for fn, _ in batch])
            )
        except Exception as exc:  # the group's transaction could not begin: none is written
            done, outcomes = True, [(False, exc)] * len(batch)
        if not done or outcomes is None:
            for fn, waiting in batch:
                _pass_on(self._submit(fn, write=True), waiting)
            return
        for (_fn, waiting), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                waiting.set_result(value)
            else:
                waiting.set_exception(value)
        self._checkpoint_due()

    def _write_here(self, fn: Callable[[sqlite3.Connection], _T]) -> tuple[bool, _T | None]:
        """Run the write ``fn`` (or a group of writes) on this thread if the connection is
        free and no other process holds the write lock: ``(True, result)``; ``(False, None)``
        to hand it to the worker. Its failures are raised as the worker's would be."""
        if not self._using.acquire(blocking=False):
            return False, None  # the worker is running a call (from another loop's thread)
        self._uses += 1
        try:
            conn = self._conn
            if conn is None or self._closed:
                return False, None
            if self._waits:  # never wait here for another process (the worker sets it back)
                conn.execute("PRAGMA busy_timeout = 0")
                self._waits = False
            try:
                return True, self._attempt(functools.partial(fn, conn))
            except _Busy:
                return False, None  # nothing written (BEGIN IMMEDIATE refused): the worker waits
        finally:
            self._using.release()

    def _locked(self, fn: Callable[[Any], _T]) -> Callable[[Any], _T]:
        """``fn`` holding the connection (on the worker thread)."""

        def locked(arg: Any) -> _T:
            with self._using:
                self._uses += 1
                if not self._waits and self._conn is not None:  # set to 0 by a write here
                    self._conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                    self._waits = True
                return fn(arg)

        return locked

    def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run one call (retrying a busy database)."""
        for attempt in range(_BUSY_RETRIES + 1):
            try:
                return self._attempt(lambda: fn(self._connection()))
            except _Busy as busy:
                if attempt < _BUSY_RETRIES:
                    time.sleep(0.05 * 2**attempt)  # on the worker thread, never the loop
                    continue
                raise self._translate(busy.error) from busy.error
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_group(self, fns: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[Outcome]:
        """Run writes in one transaction, each in a savepoint (its ``_transaction``)."""
        conn = self._run(lambda conn: conn)  # opened (and migrated) outside the group
        self._run(self._begin)
        return self._group(conn, fns)

    def _group_here(
        self, conn: sqlite3.Connection, fns: Sequence[Callable[[sqlite3.Connection], Any]]
    ) -> list[Outcome]:
        """:meth:`_run_group` on the caller's thread (``_Busy``, before anything is written,
        if another process holds the write lock)."""
        self._attempt(lambda: self._begin(conn))
        return self._group(conn, fns)

    def _group(
        self, conn: sqlite3.Connection, fns: Sequence[Callable[[sqlite3.Connection], Any]]
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        self._in_group = True
        try:
            for fn in fns:
                try:
                    outcomes.append((True, self._attempt(functools.partial(fn, conn))))
                except _Busy as busy:
                    outcomes.append((False, self._translate(busy.error)))
                except Exception as exc:
                    outcomes.append((False, exc))
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (a full disk, an I/O error):
                    # nothing of the group is written, and nothing more may run in it
                    self._drop_caches()
                    error = outcomes[-1][1] if not outcomes[-1][0] else StoreError(
                        f"{self.path}: the group's transaction ended early"
                    )
                    return [(False, error)] * len(fns)
        finally:
            self._in_group = False
        try:
            self._attempt(lambda: conn.execute("COMMIT"))
        except (_Busy, StoreError) as exc:
            self._drop_caches()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = self._translate(exc.error) if isinstance(exc, _Busy) else exc
            return [(False, error)] * len(fns)  # nothing of the group was committed
        return outcomes

    def _attempt(self, fn: Callable[[], _T]) -> _T:
        """``fn()`` with every failure as a StoreError naming the file (_Busy: retry)."""
        try:
            return fn()
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise _Busy(exc) from exc
            raise self._translate(exc) from exc
        except StoreError as exc:
            if type(exc) is not StoreError or str(self.path) in exc.message:
                raise
            raise StoreError(f"{self.path}: {exc.message}") from exc.__cause__
        except DECODE_ERRORS as exc:  # stored data this version cannot read
            raise StoreError(f"{self.path}: unreadable stored data ({why(exc)})") from exc
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror or exc}") from exc

    def _translate(self, exc: sqlite3.Error) -> StoreError:
        text = str(exc)
        if isinstance(exc, sqlite3.DatabaseError) and (
            "not a database" in text or "malformed" in text
        ):
            return StoreError(f"{self.path}: not a readable SQLite database ({text})")
        return StoreError(f"{self.path}: {text}")

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (a savepoint inside a group's transaction); a
        failure rolls back (to the savepoint) and drops the caches."""
        if self._in_group:
            conn.execute("SAVEPOINT write")
            try:
                yield
                conn.execute("RELEASE write")
            except BaseException:
                self._drop_caches()
                if conn.in_transaction:  # else SQLite rolled the whole group back already
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                raise
            return
        self._begin(conn)
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            self._drop_caches()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _begin(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        # Another connection (process) committed since our last transaction: the cached
        # last seqs may be stale. Our own commits leave data_version unchanged.
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version != self._data_version:
            self._last_seq.clear()
            self._data_version = version

    def _drop_caches(self) -> None:
        self._last_seq.clear()
        self._sessions.clear()

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is not None:
            return self._conn
        path = self.path
        if path.is_dir():
            raise StoreError(f"{path}: is a directory, not a database file")
        if not path.exists():
            if not self._create:
                raise StoreError(f"{path}: no such database")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"{path}: cannot create its directory: {exc}") from exc
        mode = "rwc" if self._create else "rw"
        conn = sqlite3.connect(
            f"file:{quote(str(path.resolve()))}?mode={mode}",
            uri=True,
            timeout=self._busy_timeout,
            isolation_level=None,  # explicit BEGIN IMMEDIATE / COMMIT only
            check_same_thread=False,  # one thread at a time, under self._using
        )
        try:
            self._check(conn)
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if self._inline:  # no sync inside a commit on the caller's thread: the worker checkpoints
                conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            if self.recover_on_open:
                self.recovered = tuple(self._recover(conn))
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _check(self, conn: sqlite3.Connection) -> None:
        # One read snapshot: another process may be migrating a new file at this moment, and
        # its mark, version and tables must be seen all before or all after its commit.
        conn.execute("BEGIN")
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute(
                "SELECT COUNT(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
        finally:
            conn.execute("COMMIT")  # a read transaction: nothing is written
        if app_id not in (0, APPLICATION_ID):
            raise StoreError(f"{self.path}: not an rxinvoke database (application_id {app_id})")
        if app_id == 0:
            # Not marked as ours: only an empty, unversioned file may become an rxinvoke
            # database (every migration marks the file). Checked before anything is written
            # (the WAL switch included), so another application's file stays as it was.
            if tables:
                raise StoreError(f"{self.path}: not an rxinvoke database (it has other tables)")
            if version != 0:
                raise StoreError(
                    f"{self.path}: not an rxinvoke database (user_version {version}, unmarked)"
                )
        self._check_version(version)

    def _check_version(self, version: int) -> None:
        if version > len(MIGRATIONS):
            raise MigrationError(
                f"{self.path}: database schema version {version} is newer than this rxinvoke "
                f"supports ({len(MIGRATIONS)}); upgrade rxinvoke to open it"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        latest = len(MIGRATIONS)
        if conn.execute("PRAGMA user_version").fetchone()[0] == latest:
            return
        conn.execute("PRAGMA foreign_keys = OFF")  # a rebuilt table keeps its references
        try:
            with self._transaction(conn):
                version = conn.execute("PRAGMA user_version").fetchone()[0]  # re-read, locked
                self._check_version(version)
                for number in range(version + 1, latest + 1):
                    for statement in _statements(MIGRATIONS[number - 1]):
                        conn.execute(statement)
                    conn.execute(f"PRAGMA user_version = {number}")
                broken = conn.execute("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise MigrationError(
                        f"{self.path}: the migrated database breaks {len(broken)} foreign keys "
                        f"(first: {tuple(broken[0])}); nothing was changed"
                    )
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        finally:
            conn.execute("PRAGMA foreign_keys = ON")

    # --- sessions and messages ------------------------------------------------------------

    async def load_history(self, session_id: uuid.UUID) -> list[Message]:
        return await self._call(lambda conn: self._history(conn, session_id))

    @staticmethod
    def _history(conn: sqlite3.Connection, session_id: uuid.UUID) -> list[Message]:
        rows = conn.execute(
            "SELECT id, run_id, role, content, tool_calls, tool_call_id, created_at, compaction "
            "FROM messages WHERE session_id = ? ORDER BY pk",
            (str(session_id),),
        ).fetchall()
        return [message_of(row, session_id, _dt) for row in rows]

    async def append_messages(
        self,
        session_id: uuid.UUID,
        messages: Sequence[Message],
        *,
        events: Sequence[EventEnvelope] = (),
    ) -> None:
        rows = _message_rows(session_id, messages)

        def append(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                self._insert_events(conn, events)
                self._insert_messages(conn, session_id, rows)

        await self._call(append, write=True)

    def _insert_messages(
        self, conn: sqlite3.Connection, session_id: uuid.UUID, rows: list[tuple[Any, ...]]
    ) -> None:
        self._touch_session(conn, session_id)
        if not rows:
            return
        conn.executemany(
            "INSERT INTO messages (id, session_id, run_id, role, content, tool_calls, "
            "tool_call_id, created_at, compaction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )

    def _touch_session(self, conn: sqlite3.Connection, session_id: uuid.UUID) -> None:
        key = str(session_id)
        if key in self._sessions:
            return
        conn.execute(  # a read, not a write, once the session exists
            "INSERT OR IGNORE INTO sessions (id, created_at) VALUES (?, ?)",
            (key, _ts(utcnow())),
        )
        if len(self._sessions) >= _SESSION_CACHE:
            self._sessions.clear()
        self._sessions.add(key)

    # --- runs -----------------------------------------------------------------------------

    async def begin_run(
        self,
        record: RunRecord,
        messages: Sequence[Message],
        *,
        preamble: Sequence[Message] = (),
    ) -> tuple[RunRecord, list[Message]]:
        owned = record.model_copy(update={"owner": self._owner, "status": "running"})
        session_id = owned.session_id

        def begin(conn: sqlite3.Connection) -> tuple[RunRecord, list[Message]]:
            with self._transaction(conn):
                existing = self._claim(conn, owned)
                if existing is not None:
                    return existing, []
                self._resume_or_refuse(conn, owned)
                history = self._history(conn, session_id)
                opening = [*preamble, *messages] if not history else list(messages)
                self._insert_messages(conn, session_id, _message_rows(session_id, opening))
                history.extend(opening)
                return owned, history

        return await self._call(begin, write=True)

    def _claim(self, conn: sqlite3.Connection, owned: RunRecord) -> RunRecord | None:
        """Insert the running run ``owned``, or return the stored run with its
        ``client_request_id`` (writing nothing); call inside a transaction."""
        key = owned.client_request_id
        if key is not None:
            existing = self._find(conn, "r.client_request_id = ?", key)
            if existing is not None:
                return existing
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (owned.run_id,)).fetchone():
            raise RunAlreadyStored(owned.run_id)
        self._touch_session(conn, owned.session_id)
        conn.execute(
            "INSERT INTO runs (id, session_id, status, request, client_request_id, "
            "owner, started_at) VALUES (?, ?, 'running', ?, ?, ?, ?)",
            (
                owned.run_id,
                str(owned.session_id),
                owned.request.model_dump_json(),
                key,
                owned.owner,
                _ts(owned.started_at),
            ),
        )
        self._last_seq[owned.run_id] = 0
        return None

    @staticmethod
    def _resume_or_refuse(conn: sqlite3.Connection, owned: RunRecord) -> None:
        """A continuation moves the run it resumes from ``awaiting_approval`` to
        ``completed``; any other run is refused while a run of its session awaits approval.
        Call inside the claim's transaction (a refusal rolls the claim back)."""
        resumes = owned.request.resumes
        if resumes is not None:
            moved = conn.execute(
                "UPDATE runs SET status = 'completed' WHERE id = ? AND status = 'awaiting_approval'",
                (resumes,),
            ).rowcount
            if moved != 1:
                row = conn.execute("SELECT status FROM runs WHERE id = ?", (resumes,)).fetchone()
                status = row[0] if row else "unknown"
                raise StoreError(f"run {resumes!r} is {status}, not awaiting approval")
            return
        paused = conn.execute(
            "SELECT id FROM runs WHERE session_id = ? AND status = 'awaiting_approval' LIMIT 1",
            (str(owned.session_id),),
        ).fetchone()
        if paused is not None:
            raise SessionAwaitingApproval(str(owned.session_id), paused[0])

    async def decide(
        self, run_id: str, call_id: str, *, approved: bool, reason: str | None = None
    ) -> tuple[RunRecord, bool]:
        def decide(conn: sqlite3.Connection) -> tuple[RunRecord, bool]:
            with self._transaction(conn):
                record = self._find(conn, "r.id = ?", run_id)
                if record is None:
                    raise UnknownRun(run_id)
                output, changed, ready = decided(record, call_id, approved, reason)
                if changed:
                    conn.execute(
                        "UPDATE runs SET output = ? WHERE id = ?", (output.model_dump_json(), run_id)
                    )
                    record = record.model_copy(update={"output": output})
                return record, ready

        return await self._call(decide, write=True)

    async def finish_run(
        self,
        run_id: str,
        outcome: RunOutcome,
        *,
        events: Sequence[EventEnvelope] = (),
        messages: Sequence[Message] = (),
    ) -> None:
        status, error = outcome.status, outcome.error
        output_json = outcome.output.model_dump_json() if outcome.output is not None else None

        def finish(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                row = conn.execute(
                    "SELECT status, session_id FROM runs WHERE id = ?", (run_id,)
                ).fetchone()
                if row is None:
                    raise UnknownRun(run_id)
                if row[0] != "running":
                    raise StoreError(f"run {run_id!r} is already {row[0]}")
                self._insert_events(conn, events)
                if messages:
                    session = uuid.UUID(row[1])
                    self._insert_messages(conn, session, _message_rows(session, messages))
                conn.execute(
                    "UPDATE runs SET status = ?, output = ?, error = ?, finished_at = ? "
                    "WHERE id = ?",
                    (status, output_json, error, _ts(utcnow()), run_id),
                )
                self._last_seq.pop(run_id, None)  # a finished run takes no more events

        await self._call(finish, write=True)

    async def get_run(self, run_id: str) -> RunRecord | None:
        return await self._call(lambda conn: self._find(conn, "r.id = ?", run_id))

    async def list_runs(
        self, *, limit: int = 20, session_id: uuid.UUID | None = None
    ) -> list[RunRecord]:
        where, args = ("WHERE r.session_id = ?", (str(session_id),)) if session_id else ("", ())

        def runs(conn: sqlite3.Connection) -> list[RunRecord]:
            rows = conn.execute(
                f"SELECT {_RUN_COLUMNS} FROM runs r {where} "
                "ORDER BY r.started_at DESC, r.rowid DESC LIMIT ?",
                (*args, max(limit, 0)),
            ).fetchall()
            return [_run_record(row) for row in rows]

        return await self._call(runs)

    @staticmethod
    def _find(conn: sqlite3.Connection, condition: str, value: str) -> RunRecord | None:
        row = conn.execute(f"SELECT {_RUN_COLUMNS} FROM runs r WHERE {condition}", (value,)).fetchone()
        return _run_record(row) if row is not None else None

    # --- the event log --------------------------------------------------------------------

    async def append_events(self, events: Sequence[EventEnvelope]) -> None:
        if not events:
            return

        def append(conn: sqlite3.Connection) -> None:
            with self._transaction(conn):
                self._insert_events(conn, events)

        await self._call(append, write=True)

    async def read_events(self, run_id: str, *, after_seq: int | None = None) -> list[EventEnvelope]:
        after = max(after_seq or 0, 0)

        def read(conn: sqlite3.Connection) -> list[EventEnvelope]:
            run = conn.execute("SELECT session_id FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:
                raise UnknownRun(run_id)
            rows = conn.execute(
                "SELECT first_seq, events FROM event_segments "
                "WHERE run_id = ? AND last_seq > ? ORDER BY first_seq",
                (run_id, after),
            ).fetchall()
            # the envelopes' session is the run's
            return envelopes_of(run_id, uuid.UUID(run[0]), rows, after)

        return await self._call(read)

    def _stored_last_seq(self, conn: sqlite3.Connection, run_id: str) -> int:
        row = conn.execute(
            "SELECT (SELECT status FROM runs WHERE id = ?), (SELECT last_seq FROM event_segments "
            "WHERE run_id = ? ORDER BY first_seq DESC LIMIT 1)",
            (run_id, run_id),
        ).fetchone()
        if row[0] is None:
            raise UnknownRun(run_id)
        if row[0] != "running":
            raise StoreError(f"run {run_id!r} is finished: its log takes no more events")
        return int(row[1] or 0)

    def _insert_events(self, conn: sqlite3.Connection, events: Sequence[EventEnvelope]) -> None:
        """One segment per run of the batch; call inside a transaction."""
        if not events:
            return
        cached = self._last_seq
        runs, usage = runs_of(events)
        for run_id, (first, _last, _items) in runs.items():
            previous = cached.get(run_id)
            if previous is None:
                previous = self._stored_last_seq(conn, run_id)
            if first != previous + 1:
                raise StoreError(f"run {run_id!r}: event seq {first} does not follow {previous}")
        conn.executemany(
            "INSERT INTO event_segments (run_id, first_seq, last_seq, events) VALUES (?, ?, ?, ?)",
            [
                (run_id, first, last, encode_segment(items).decode())
                for run_id, (first, last, items) in runs.items()
            ],
        )
        if usage:
            conn.executemany(
                "INSERT INTO usage (run_id, seq, input_tokens, output_tokens, total_tokens) "
                "VALUES (?, ?, ?, ?, ?)",
                usage,
            )
        cached.update((run_id, last) for run_id, (_, last, _) in runs.items())  # dropped again on a rollback

    # --- crash recovery -------------------------------------------------------------------

    async def recover_interrupted(self) -> list[str]:
        return await self._call(self._recover, write=True)

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

        def recover(conn: sqlite3.Connection) -> bool:
            return self._recover_one(conn, run_id, salvage, mine)

        return await self._call(recover, write=True)

    def _recover(self, conn: sqlite3.Connection) -> list[str]:
        candidates = conn.execute(
            "SELECT id, owner FROM runs WHERE status = 'running'"
        ).fetchall()
        gone = [
            run_id
            for run_id, owner in candidates
            if _owner_is_gone(owner)
            and not self._grace.left_to_workers(run_id, owner, self.resume_grace)
        ]
        return [run_id for run_id in gone if self._recover_one(conn, run_id, ())]

    def _recover_one(
        self,
        conn: sqlite3.Connection,
        run_id: str,
        salvage: Sequence[EventEnvelope],
        mine: bool = False,
    ) -> bool:
        with self._transaction(conn):
            record = self._find(conn, "r.id = ? AND r.status = 'running'", run_id)
            if record is None or not (
                _owner_is_gone(record.owner) or (mine and record.owner == self._owner)
            ):
                return False  # finished (recovered by another process meanwhile), or alive
            last_seq, last_type, last_error = self._continue_log(conn, run_id, salvage)
            if not self._settle_lagging(conn, run_id, last_type, last_error):
                self._insert_events(conn, interrupted_envelopes(record, last_seq))
                self._set_status(conn, run_id, "failed", "interrupted")
            return True

    async def resume_run(
        self, run_id: str, salvage: Sequence[EventEnvelope] = ()
    ) -> tuple[RunRecord, list[Message], int] | None:
        """Take over the ``running`` run ``run_id`` whose owner is gone, to go on with it here
        (the ``resume_run`` of the Store contract): returns its record, its session's history
        and the seq of its log's last envelope, or None if it is not running, its owner lives
        or its log (with ``salvage``) ends with its terminal event (the status then settled)."""

        def resume(conn: sqlite3.Connection) -> tuple[RunRecord, list[Message], int] | None:
            with self._transaction(conn):
                record = self._find(conn, "r.id = ? AND r.status = 'running'", run_id)
                if record is None or not _owner_is_gone(record.owner):
                    return None
                last_seq, last_type, last_error = self._continue_log(conn, run_id, salvage)
                if self._settle_lagging(conn, run_id, last_type, last_error):
                    return None
                conn.execute("UPDATE runs SET owner = ? WHERE id = ?", (self._owner, run_id))
                self._last_seq[run_id] = last_seq
                owned = record.model_copy(update={"owner": self._owner})
                return owned, self._history(conn, record.session_id), last_seq

        return await self._call(resume, write=True)

    def _continue_log(
        self, conn: sqlite3.Connection, run_id: str, salvage: Sequence[EventEnvelope]
    ) -> tuple[int, str | None, object]:
        """Append the envelopes of ``salvage`` that continue the run's stored log; the seq,
        type and ``error`` field of its last envelope then (0, None, None: an empty log).
        Inside a transaction."""
        segment = conn.execute(
            "SELECT last_seq, events FROM event_segments WHERE run_id = ? "
            "ORDER BY first_seq DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        last_seq, last_type, last_error = 0, None, None
        if segment:
            last = json.loads(segment[1])[-1]
            last_seq, last_type, last_error = segment[0], last["type"], last.get("error")
        kept = continuing(salvage, last_seq)
        if kept:
            self._insert_events(conn, kept)
            last_seq, last_type = kept[-1].seq, kept[-1].type
            last_error = getattr(kept[-1].event, "error", None)
        return last_seq, last_type, last_error

    def _settle_lagging(
        self, conn: sqlite3.Connection, run_id: str, last_type: str | None, last_error: object
    ) -> bool:
        """If the run's log ends with its terminal event (``last_type``) only its status lagged:
        set it (with the event's error) and say so. Inside a transaction."""
        if last_type not in TERMINAL_STATUS:
            return False
        status: RunStatus = TERMINAL_STATUS[last_type]  # type: ignore[assignment]
        self._set_status(conn, run_id, status, lagging_error(status, last_error))
        return True

    @staticmethod
    def _set_status(conn: sqlite3.Connection, run_id: str, status: RunStatus, error: str | None) -> None:
        conn.execute(
            "UPDATE runs SET status = ?, error = ?, finished_at = ? WHERE id = ?",
            (status, error, _ts(utcnow()), run_id),
        )
