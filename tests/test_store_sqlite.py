"""SqliteStore specifics: the file, migrations, bad files, crash recovery and two processes.

The subprocess tests run the real CLI (``python -m rxinvoke``) against a tmp_path database:
one is killed with SIGKILL mid-run (it blocks deterministically in the offline model's long
``--delay`` once it has printed ``tool_call_started``), two others write one file at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rxinvoke import (
    AgentRuntime,
    EmitRequest,
    MigrationError,
    OfflineProvider,
    RunRecord,
    RunRequest,
    RuntimeInvocation,
    SqliteStore,
    StoreError,
    builtin_tools,
)
from rxinvoke.events import (
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    TextDelta,
    UsageRecorded,
)
from rxinvoke.messages import Compaction, FinishReason, Message, TokenUsage
from rxinvoke.stores import EventEnvelope, RunOutcome
from rxinvoke.stores import sqlite as store_sqlite
from rxinvoke.stores.sqlite import SCHEMA_VERSION, default_db_path

REPO_ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"run_completed", "run_failed", "run_cancelled"}


def cli(*argv: str) -> list[str]:
    return [sys.executable, "-m", "rxinvoke", *argv]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def record(session: uuid.UUID | None = None, run_id: str | None = None) -> RunRecord:
    run_id, session = run_id or str(uuid.uuid4()), session or uuid.uuid4()
    request = RunRequest(provider="p", model="m", input="hi", run_id=run_id, session_id=session)
    return RunRecord(run_id=run_id, session_id=session, request=request)


@contextlib.contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection that commits and is closed (``with sqlite3.connect()`` only commits:
    Python 3.13 warns about connections left to the garbage collector)."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def pragma(path: Path, name: str) -> object:
    with connect(path) as conn:
        return conn.execute(f"PRAGMA {name}").fetchone()[0]


# --- the file ----------------------------------------------------------------------------------


async def test_a_new_file_is_created_in_wal_mode_at_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "r.db"
    async with SqliteStore(path) as store:
        assert store.recovered == ()
    assert path.exists()
    assert pragma(path, "journal_mode") == "wal"
    assert pragma(path, "user_version") == SCHEMA_VERSION
    assert pragma(path, "application_id") == store_sqlite.APPLICATION_ID


async def test_data_outlives_the_store_object(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path) as store:
        runtime = AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools(), store=store)
        out = await RuntimeInvocation(runtime).emit(
            lambda ctx, c: EmitRequest(provider="offline", model="offline", input="what is 2 + 3?")
        )
    async with SqliteStore(path, create=False) as store:
        history = await store.load_history(out.session_id)
        assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
        stored = await store.get_run(out.run_id)
        assert stored is not None and stored.output == out and stored.status == "completed"
        events = await store.read_events(out.run_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert events[0].type == "run_started" and events[-1].type == "run_completed"
        assert stored.total_usage == out.total_usage and stored.iterations == out.iterations


async def test_migrations_upgrade_an_older_file_step_by_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path) as store:
        await store.begin_run(record(), [])
    upgrade = "CREATE TABLE notes (id INTEGER PRIMARY KEY);\nALTER TABLE runs ADD COLUMN note TEXT;"
    monkeypatch.setattr(store_sqlite, "MIGRATIONS", (*store_sqlite.MIGRATIONS, upgrade))
    async with SqliteStore(path) as store:
        assert len(await store.list_runs()) == 1
    assert pragma(path, "user_version") == SCHEMA_VERSION + 1
    with connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM notes").fetchone() == (0,)


async def test_a_version_1_event_log_is_migrated_to_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v1.db"
    rec = record()
    monkeypatch.setattr(store_sqlite, "MIGRATIONS", store_sqlite.MIGRATIONS[:1])
    # this session has no messages (and version 1 has no compaction column to read)
    monkeypatch.setattr(store_sqlite.SqliteStore, "_history", staticmethod(lambda conn, session_id: []))
    async with SqliteStore(path) as store:  # a version-1 file
        await store.begin_run(rec, [])
    assert pragma(path, "user_version") == 1
    run_id = rec.run_id
    events = [
        RunStarted(run_id=run_id, session_id=str(rec.session_id), provider="p", model="m"),
        TextDelta(run_id=run_id, delta="a \"quoted\" é"),
        TextDelta(run_id=run_id, delta="b"),
        UsageRecorded(run_id=run_id, usage=TokenUsage(input_tokens=1, output_tokens=2, total_tokens=3)),
    ]
    envelopes = [EventEnvelope.of(e, run_id, rec.session_id, n) for n, e in enumerate(events, 1)]
    with connect(path) as conn:  # the rows version 1 wrote, one per event
        conn.executemany(
            "INSERT INTO events (run_id, seq, event_id, type, event, emitted_at) VALUES (?, ?, ?, ?, ?, ?)",
            [(run_id, e.seq, e.event_id, e.type, e.event.model_dump_json(), e.emitted_at.timestamp()) for e in envelopes],
        )
        conn.execute("INSERT INTO usage VALUES (?, 4, 1, 2, 3)", (run_id,))
    monkeypatch.undo()
    async with SqliteStore(path) as store:
        assert await store.read_events(run_id) == envelopes
        assert await store.read_events(run_id, after_seq=2) == envelopes[2:]
        terminal = EventEnvelope.of(RunCompleted(run_id=run_id, finish_reason=FinishReason.STOP, iterations=1), run_id, rec.session_id, 5)
        with pytest.raises(StoreError, match="does not follow 4"):
            await store.append_events([EventEnvelope.of(TextDelta(run_id=run_id, delta="x"), run_id, rec.session_id, 4)])
        await store.finish_run(run_id, RunOutcome(status="completed"), events=[terminal])
        assert await store.read_events(run_id) == [*envelopes, terminal]
        got = await store.get_run(run_id)
        assert got is not None and got.iterations == 1 and got.total_usage.total_tokens == 3
    assert pragma(path, "user_version") == SCHEMA_VERSION == 4
    with connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'events'").fetchall() == []
        rows = conn.execute("SELECT first_seq, last_seq FROM event_segments ORDER BY first_seq").fetchall()
        assert rows == [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)]


async def test_a_version_2_file_keeps_its_messages_and_gains_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v2.db"
    session = uuid.uuid4()
    monkeypatch.setattr(store_sqlite, "MIGRATIONS", store_sqlite.MIGRATIONS[:2])
    async with SqliteStore(path):
        pass
    assert pragma(path, "user_version") == 2
    old = Message(role="user", content="from version 2", run_id="r")
    with connect(path) as conn:  # the row version 2 wrote (no compaction column)
        conn.execute("INSERT INTO sessions VALUES (?, ?)", (str(session), "2026-01-01T00:00:00+00:00"))
        conn.execute(
            "INSERT INTO messages (id, session_id, run_id, role, content, tool_calls, tool_call_id, "
            "created_at) VALUES (?, ?, 'r', 'user', ?, '[]', NULL, ?)",
            (old.id, str(session), old.content, old.created_at.isoformat()),
        )
    monkeypatch.undo()
    mark = Compaction(keeps_from=old.id, messages_summarized=0, tokens_before=10, tokens_after=5)
    checkpoint = Message(role="system", content="summary", compaction=mark)
    async with SqliteStore(path) as store:
        await store.append_messages(session, [checkpoint])
        loaded = await store.load_history(session)
    assert pragma(path, "user_version") == SCHEMA_VERSION == 4
    assert [m.content for m in loaded] == ["from version 2", "summary"]
    assert loaded[0].compaction is None and loaded[1].compaction == mark


async def test_the_seq_cache_follows_writes_of_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path) as one, SqliteStore(path) as two:
        rec = (await one.begin_run(record(), []))[0]
        delta = lambda seq: EventEnvelope.of(TextDelta(run_id=rec.run_id, delta=str(seq)), rec.run_id, rec.session_id, seq)  # noqa: E731
        await one.append_events([delta(1)])
        await two.append_events([delta(2)])  # `one` has cached last seq 1
        with pytest.raises(StoreError, match="does not follow 2"):
            await one.append_events([delta(2)])
        await one.append_events([delta(3)])
        with pytest.raises(StoreError):  # a failed batch leaves the cache as committed
            await one.append_events([delta(4), delta(6)])
        await one.append_events([delta(4)])
        assert [e.seq for e in await two.read_events(rec.run_id)] == [1, 2, 3, 4]


async def test_a_file_from_a_newer_version_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path):
        pass
    with connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(MigrationError, match="newer than this rxinvoke supports"):
        await SqliteStore(path).open()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a database at all, just text" * 100, "not a readable SQLite database"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "SQLite database"),
    ],
    ids=["text", "broken-header"],
)
async def test_a_corrupt_file_is_a_store_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    store = SqliteStore(path)
    with pytest.raises(StoreError, match=message):
        await store.open()
    await store.close()
    assert path.read_bytes() == content  # untouched


async def test_another_applications_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with connect(path) as conn:
        conn.execute("CREATE TABLE stuff (x)")
    with pytest.raises(StoreError, match="not an rxinvoke database"):
        await SqliteStore(path).open()


async def test_missing_file_without_create_and_a_directory_are_store_errors(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such database"):
        await SqliteStore(tmp_path / "missing.db", create=False).open()
    assert not (tmp_path / "missing.db").exists()
    with pytest.raises(StoreError, match="directory"):
        await SqliteStore(tmp_path).open()


async def test_a_closed_store_refuses_work(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "r.db")
    await store.open()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        await store.list_runs()


def test_default_path_follows_rxinvoke_db_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RXINVOKE_DB", str(tmp_path / "explicit.db"))
    assert default_db_path() == tmp_path / "explicit.db"
    monkeypatch.delenv("RXINVOKE_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_db_path() == tmp_path / "xdg" / "rxinvoke" / "rxinvoke.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_db_path() == Path.home() / ".local" / "share" / "rxinvoke" / "rxinvoke.db"


# --- crash recovery ------------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(child.stdout)  # exited and reaped: no process has this pid (for now)


def kill_dead(path: Path, run_id: str | None = None) -> None:
    """Record a dead process of this host as the owner of ``run_id`` (of every run when None):
    what the file looks like after the process running it died."""
    owner = f"{socket.gethostname()}:{dead_pid()}:"
    with connect(path) as conn:
        if run_id is None:
            conn.execute("UPDATE runs SET owner = ?", (owner,))
        else:
            conn.execute("UPDATE runs SET owner = ? WHERE id = ?", (owner, run_id))


async def test_open_fails_runs_of_a_dead_process_with_one_terminal_event(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path) as store:
        orphan = (await store.begin_run(record(), []))[0]
        alive = (await store.begin_run(record(), []))[0]
    with connect(path) as conn:
        conn.execute("UPDATE runs SET owner = ? WHERE id = ?", (f"{socket.gethostname()}:{dead_pid()}:", orphan.run_id))
        conn.execute("UPDATE runs SET owner = ? WHERE id = ?", (f"elsewhere:{dead_pid()}:", alive.run_id))
    async with SqliteStore(path) as store:
        assert store.recovered == (orphan.run_id,)
        failed = await store.get_run(orphan.run_id)
        assert failed is not None and (failed.status, failed.error) == ("failed", "interrupted")
        events = await store.read_events(orphan.run_id)
        assert [(e.seq, e.type, getattr(e.event, "error", None)) for e in events] == [
            (1, "run_started", None),
            (2, "run_failed", "interrupted"),
        ]
        assert events[0].event.session_id == str(orphan.session_id)
        other = await store.get_run(alive.run_id)
        assert other is not None and other.status == "running"  # another host's run: never stolen
        assert await store.recover_interrupted() == []


async def test_recover_run_salvages_what_observers_saw_then_settles_the_run(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path) as store:
        orphan = (await store.begin_run(record(), []))[0]
        run_id, session = orphan.run_id, orphan.session_id
        started = RunStarted(run_id=run_id, session_id=str(session), provider="p", model="m")
        await store.append_events([EventEnvelope.of(started, run_id, session, 1)])
        seen = [  # what a run stream showed of it
            EventEnvelope.of(started, run_id, session, 1),  # stored already: skipped
            EventEnvelope.of(TextDelta(run_id=run_id, delta="a"), run_id, session, 2),
            EventEnvelope.of(TextDelta(run_id=run_id, delta="b"), run_id, session, 3),
            EventEnvelope.of(TextDelta(run_id=run_id, delta="z"), run_id, session, 9),  # after a gap: dropped
        ]
        assert not await store.recover_run(run_id, seen)  # its owner (this process) lives
        assert [e.seq for e in await store.read_events(run_id)] == [1]
        with connect(path) as conn:  # its owner dies
            conn.execute("UPDATE runs SET owner = ? WHERE id = ?", (f"{socket.gethostname()}:{dead_pid()}:", run_id))
        assert await store.recover_run(run_id, seen)
        log = await store.read_events(run_id)
        assert [(e.seq, e.type) for e in log] == [
            (1, "run_started"), (2, "text_delta"), (3, "text_delta"), (4, "run_failed"),
        ]
        assert not await store.recover_run(run_id, seen)  # once


async def test_recover_run_of_this_stores_own_run_needs_mine(tmp_path: Path) -> None:
    # a claim whose reply was lost: this process's run, which nothing here runs (the caller
    # vouches for that with mine); another process's live run is never taken so
    async with SqliteStore(tmp_path / "own.db") as store:
        own = (await store.begin_run(record(), []))[0]
        assert not await store.recover_run(own.run_id, [])  # its owner (this process) lives
        assert await store.recover_run(own.run_id, [], mine=True)
        log = await store.read_events(own.run_id)
        assert [e.type for e in log] == ["run_started", "run_failed"]
        settled = await store.get_run(own.run_id)
        assert settled is not None and (settled.status, settled.error) == ("failed", "interrupted")
        assert not await store.recover_run(own.run_id, [], mine=True)  # once
        other = (await store.begin_run(record(), []))[0]
    with connect(tmp_path / "own.db") as conn:  # another live process's (another host's) run
        conn.execute("UPDATE runs SET owner = 'elsewhere:1:1' WHERE id = ?", (other.run_id,))
    async with SqliteStore(tmp_path / "own.db") as store:
        assert not await store.recover_run(other.run_id, [], mine=True)


@pytest.mark.parametrize(
    ("terminal", "status", "error"),
    [("failed", "failed", "the store failed: disk I/O error"), ("cancelled", "cancelled", "cancelled")],
)
async def test_a_recovered_run_whose_stream_showed_its_end_records_that_end(
    tmp_path: Path, terminal: str, status: str, error: str
) -> None:
    async with SqliteStore(tmp_path / "end.db") as store:
        own = (await store.begin_run(record(), []))[0]
        run_id, session = own.run_id, own.session_id
        started = RunStarted(run_id=run_id, session_id=str(session), provider="p", model="m")
        end = (
            RunFailed(run_id=run_id, error="the store failed: disk I/O error")
            if terminal == "failed"
            else RunCancelled(run_id=run_id)
        )
        seen = [EventEnvelope.of(started, run_id, session, 1), EventEnvelope.of(end, run_id, session, 2)]
        assert await store.recover_run(run_id, seen, mine=True)
        settled = await store.get_run(run_id)
        assert settled is not None and (settled.status, settled.error) == (status, error)
        assert [e.type for e in await store.read_events(run_id)] == ["run_started", f"run_{terminal}"]


async def test_a_dead_workers_run_is_left_to_the_reapers_which_settle_it_with_what_its_stream_showed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.db"
    async with SqliteStore(path) as store:
        store.mark_as_worker()  # as a Worker does with its store
        orphan = (await store.begin_run(record(), []))[0]
        late = (await store.begin_run(record(), []))[0]
        assert orphan.owner is not None and orphan.owner.endswith("/worker")
        assert not await store.recover_run(orphan.run_id, [])  # its owner (this process) lives
        run_id, session = orphan.run_id, orphan.session_id
        started = RunStarted(run_id=run_id, session_id=str(session), provider="p", model="m")
        await store.append_events([EventEnvelope.of(started, run_id, session, 1)])
    with connect(path) as conn:  # the worker dies
        conn.execute("UPDATE runs SET owner = ?", (f"{socket.gethostname()}:{dead_pid()}:/worker",))
    # a store opened now (recovering on open, as any process's) cannot salvage: it leaves them
    async with SqliteStore(path) as other:
        assert other.recovered == ()
        assert await other.recover_interrupted() == []
        seen = [  # what its stream showed: events the dead worker published, never committed
            EventEnvelope.of(started, run_id, session, 1),
            EventEnvelope.of(TextDelta(run_id=run_id, delta="a"), run_id, session, 2),
        ]
        assert await other.recover_run(run_id, seen)  # a reaper's recovery
        assert [(e.seq, e.type) for e in await other.read_events(run_id)] == [
            (1, "run_started"), (2, "text_delta"), (3, "run_failed"),
        ]
        still = await other.get_run(late.run_id)
        assert still is not None and still.status == "running"
    with pytest.raises(ValueError, match="resume_grace"):
        SqliteStore(path, resume_grace=-1)
    # past the grace (no worker took its job: the queue was lost, say) a store settles it
    async with SqliteStore(path, resume_grace=0) as last:
        assert last.recovered == (late.run_id,)
        failed = await last.get_run(late.run_id)
        assert failed is not None and (failed.status, failed.error) == ("failed", "interrupted")


async def test_resume_run_takes_over_a_dead_owners_run_with_what_observers_saw(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path) as store:
        empty = (await store.begin_run(record(), [Message(role="user", content="hi")]))[0]
        orphan = (await store.begin_run(record(), [Message(role="user", content="hello")]))[0]
        run_id, session = orphan.run_id, orphan.session_id
        started = RunStarted(run_id=run_id, session_id=str(session), provider="p", model="m")
        await store.append_events([EventEnvelope.of(started, run_id, session, 1)])
        seen = [
            EventEnvelope.of(started, run_id, session, 1),  # stored already: skipped
            EventEnvelope.of(TextDelta(run_id=run_id, delta="a"), run_id, session, 2),
        ]
        assert await store.resume_run(run_id, seen) is None  # its owner (this process) lives
        kill_dead(path)  # their owner dies
    async with SqliteStore(path, recover_on_open=False) as other:
        await other.open()
        assert other.recovered == ()  # left to be resumed
        taken = await other.resume_run(run_id, seen)
        assert taken is not None
        owned, history, last_seq = taken
        assert (owned.run_id, owned.status, owned.owner) == (run_id, "running", other.owner)
        assert [m.content for m in history] == ["hello"] and last_seq == 2
        assert [(e.seq, e.type) for e in await other.read_events(run_id)] == [(1, "run_started"), (2, "text_delta")]
        stored = await other.get_run(run_id)
        assert stored is not None and (stored.status, stored.owner) == ("running", other.owner)
        assert await other.resume_run(run_id, seen) is None  # now its owner lives: once
        # the log goes on from there, as the runtime writes it
        await other.append_events([EventEnvelope.of(TextDelta(run_id=run_id, delta="b"), run_id, session, 3)])
        # a run none of whose events was written: an empty log (the runtime starts it)
        taken = await other.resume_run(empty.run_id)
        assert taken is not None and taken[2] == 0
        assert await other.read_events(empty.run_id) == []


async def test_resume_run_of_a_run_whose_log_ended_only_settles_its_status(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    async with SqliteStore(path) as store:
        orphan = (await store.begin_run(record(), []))[0]
        run_id, session = orphan.run_id, orphan.session_id
        started = RunStarted(run_id=run_id, session_id=str(session), provider="p", model="m")
        await store.append_events([EventEnvelope.of(started, run_id, session, 1)])
        kill_dead(path)
        done = RunCompleted(run_id=run_id, finish_reason=FinishReason.STOP, iterations=1)
        assert await store.resume_run(run_id, [EventEnvelope.of(done, run_id, session, 2)]) is None
        stored = await store.get_run(run_id)
        assert stored is not None and stored.status == "completed"
        assert [e.type for e in await store.read_events(run_id)] == ["run_started", "run_completed"]


def test_a_run_killed_mid_run_leaves_a_clean_database(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    proc = subprocess.Popen(
        cli("run", "what is 2 + 3?", "--json", "--delay", "600", "--db", str(db)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO_ROOT,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the model now sleeps 600 s before its first fragment
            seen.append(json.loads(line)["type"])
            if seen[-1] == "tool_call_started":
                break
        assert seen[-1] == "tool_call_started", proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with connect(db) as conn:  # opens cleanly; the run is still marked running
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (run_id, status), = conn.execute("SELECT id, status FROM runs").fetchall()
        assert status == "running"

    listing = subprocess.run(cli("runs", "--json", "--db", str(db)), capture_output=True, text=True, env=cli_env(), cwd=REPO_ROOT, timeout=60, check=True)
    (run,) = [json.loads(line) for line in listing.stdout.splitlines()]
    assert (run["run_id"], run["status"], run["error"]) == (run_id, "failed", "interrupted")
    replay = subprocess.run(cli("events", run_id, "--json", "--db", str(db)), capture_output=True, text=True, env=cli_env(), cwd=REPO_ROOT, timeout=60, check=True)
    envelopes = [json.loads(line) for line in replay.stdout.splitlines()]
    types = [e["type"] for e in envelopes]
    # the stored log is what the run published up to its last written step, then the one
    # terminal event recovery appended. Killed in its first model call, the run had written
    # only its claim and its user message (Store.begin_run); its events so far were to go
    # with its next write, so recovery rebuilt run_started from the run record and appended
    # the terminal run_failed.
    assert types[:-1] == seen[: len(types) - 1]
    assert types == ["run_started", "run_failed"]
    with connect(db) as conn:
        assert conn.execute("SELECT run_id, role FROM messages").fetchall() == [(run_id, "user")]
    assert [t for t in types if t in TERMINAL] == ["run_failed"] and types[-1] == "run_failed"
    assert envelopes[-1]["event"]["error"] == "interrupted"
    assert [e["seq"] for e in envelopes] == list(range(1, len(envelopes) + 1))


def test_two_processes_write_one_file_at_once(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    procs = [
        subprocess.Popen(
            cli("run", f"what is {n} + 3?", "--json", "--delay", "0", "--db", str(db)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(), cwd=REPO_ROOT,
        )
        for n in (1, 2)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    with connect(db) as conn:
        runs = conn.execute("SELECT id, status FROM runs ORDER BY id").fetchall()
        assert [status for _, status in runs] == ["completed", "completed"]
        for run_id, _ in runs:
            rows = conn.execute(
                "SELECT e.key + s.first_seq, json_extract(e.value, '$.type') "
                "FROM event_segments s, json_each(s.events) e WHERE s.run_id = ? ORDER BY 1",
                (run_id,),
            ).fetchall()
            assert [seq for seq, _ in rows] == list(range(1, len(rows) + 1))
            assert [t for _, t in rows if t in TERMINAL] == ["run_completed"]
        assert conn.execute("SELECT COUNT(DISTINCT session_id) FROM messages").fetchone() == (2,)


# --- where the work runs: writes on the caller's thread when the store can, the rest on its worker


async def test_a_write_runs_on_the_callers_thread_and_a_read_on_the_worker(tmp_path: Path) -> None:
    import threading

    async with SqliteStore(tmp_path / "t.db") as store:
        here = threading.get_ident()
        wrote = await store._call(lambda conn: threading.get_ident(), write=True)
        read = await store._call(lambda conn: threading.get_ident())
        assert wrote == here and read != here
        rec = record()
        await store.begin_run(rec, [Message(role="user", content="hi")])  # a real write, here
        assert [m.content for m in await store.load_history(rec.session_id)] == ["hi"]
    with connect(tmp_path / "t.db") as conn:  # committed: another connection sees it
        assert conn.execute("SELECT status FROM runs WHERE id = ?", (rec.run_id,)).fetchone() == ("running",)


async def test_the_worker_waits_for_other_processes_and_a_write_here_never_does(tmp_path: Path) -> None:
    def timeout(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA busy_timeout").fetchone()[0])

    async with SqliteStore(tmp_path / "b.db", busy_timeout=7.5) as store:
        for _ in range(2):  # switched when the connection changes hands, each way
            assert await store._call(timeout, write=True) == 0  # here: never waits
            assert await store._call(timeout) == 7500  # the worker: waits busy_timeout


async def test_with_synchronous_full_every_write_runs_on_the_worker(tmp_path: Path) -> None:
    import threading

    async with SqliteStore(tmp_path / "f.db", synchronous="FULL") as store:
        assert await store._call(lambda conn: threading.get_ident(), write=True) != threading.get_ident()
        assert await store._call(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 1000


async def test_a_write_behind_another_processes_lock_waits_on_the_worker_not_the_loop(tmp_path: Path) -> None:
    import asyncio

    path = tmp_path / "l.db"
    async with SqliteStore(path) as store:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the file's write lock
        rec = record()
        write = asyncio.ensure_future(store.begin_run(rec, [Message(role="user", content="x")]))
        ticks = 0
        for _ in range(20):  # the loop goes on running while the write waits for the lock
            await asyncio.sleep(0)
            ticks += 1
        assert ticks == 20 and not write.done()
        later = record()  # a write after it queues behind it (call order), not on this thread
        behind = asyncio.ensure_future(store.begin_run(later, []))
        await asyncio.sleep(0)
        assert not behind.done()
        other.execute("COMMIT")
        other.close()
        (owned, history), (second, _) = await asyncio.gather(write, behind)
        assert owned.run_id == rec.run_id and [m.content for m in history] == ["x"]
        assert second.run_id == later.run_id
        assert (await store.get_run(rec.run_id)) is not None


async def _wal_after_writes(path: Path, writes: int) -> int:
    """The size of the store's write-ahead log after ``writes`` writes (the store still open)."""
    async with SqliteStore(path) as store:
        for _ in range(writes):
            await store.begin_run(record(), [Message(role="user", content="y" * 2000)])
        # read on the worker, behind the last checkpoint
        return await store._call(lambda conn: os.path.getsize(f"{path}-wal"))


class _Checkpoints:
    """``_checkpoint`` watched: ``calls`` holds (thread, every frame copied) as each ends (the
    thread's name without the executor's number); with ``hold``, a checkpoint aside sets
    ``started`` and waits for ``release`` first."""

    ASIDE, WORKER = "rxinvoke-sqlite-checkpoint", "rxinvoke-sqlite"

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, hold: bool = False) -> None:
        import threading

        self.calls: list[tuple[str, bool]] = []
        self.started, self.release = threading.Event(), threading.Event()
        checkpoint = store_sqlite._checkpoint

        def watched(conn: sqlite3.Connection) -> bool:
            name = threading.current_thread().name.rstrip("_0123456789")
            if hold and name == self.ASIDE:
                self.started.set()
                assert self.release.wait(5)
            complete = checkpoint(conn)
            self.calls.append((name, complete))
            return complete

        monkeypatch.setattr(store_sqlite, "_checkpoint", watched)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    NEXT = "the next write"

    def next_write(self, conn: sqlite3.Connection) -> int:
        """A write that notes itself in ``calls`` (as ``NEXT``) and says on which thread it ran."""
        import threading

        self.calls.append((self.NEXT, True))
        return threading.get_ident()

    @staticmethod
    async def start_aside(store: SqliteStore) -> None:
        """Three writes: with ``_CHECKPOINT_EVERY`` 3, the third starts a checkpoint aside."""
        for _ in range(3):
            await store.begin_run(record(), [Message(role="user", content="x")])


def _log_frames(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


async def test_the_log_is_checkpointed_every_hundred_writes_aside_and_caught_up_on_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _Checkpoints(monkeypatch)
    async with SqliteStore(tmp_path / "auto.db") as store:  # SQLite's own checkpoints are off
        assert await store._call(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) == 0
    checkpointed = await _wal_after_writes(tmp_path / "c.db", 450)
    # 100 writes after the log last started over, on their own thread, each followed by a
    # short one on the worker unless nothing was written meanwhile (the log starts over
    # after that one: these writes follow each other closely, so rounds are 100 writes plus
    # those written during the checkpoint aside apart — at most 200 more, when the writes
    # outrun it: 2 to 4 rounds in 450 writes, 2 on a machine so busy the asides run long)
    names = seen.names
    assert names.count(seen.ASIDE) in (2, 3, 4)
    rounds = "".join("a" if name == seen.ASIDE else "w" for name in names)
    assert set(rounds.replace("aw", "a")) == {"a"} and names[0] != seen.WORKER
    assert all(complete for name, complete in seen.calls if name == seen.WORKER)
    seen.calls.clear()
    monkeypatch.setattr(store_sqlite, "_CHECKPOINT_EVERY", 10**9)
    unchecked = await _wal_after_writes(tmp_path / "u.db", 450)
    assert seen.calls == []
    # the log is reused after each round: it holds 100 writes and those written during one
    # checkpoint aside (as many again at most, in a loop of writes this tight), not all 450
    assert checkpointed < unchecked / 2


async def test_writes_that_outrun_a_checkpoint_aside_wait_for_it_on_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    seen = _Checkpoints(monkeypatch, hold=True)
    monkeypatch.setattr(store_sqlite, "_CHECKPOINT_EVERY", 3)
    here = threading.get_ident()
    async with SqliteStore(tmp_path / "b.db") as store:
        await seen.start_aside(store)  # which does not end
        await asyncio.to_thread(seen.started.wait, 5)
        for _ in range(6):  # twice the count since it began: the sixth hands the rest on
            assert await store._call(lambda conn: threading.get_ident(), write=True) == here

        later = asyncio.ensure_future(store._call(seen.next_write, write=True))
        await asyncio.sleep(0)
        seen.release.set()
        assert await later == here
        # it waited for the worker, which waited for the checkpoint aside, then did its own
        assert seen.names == [seen.ASIDE, seen.WORKER, seen.NEXT]


async def test_writes_go_on_on_the_callers_thread_while_a_checkpoint_runs_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    seen = _Checkpoints(monkeypatch, hold=True)
    monkeypatch.setattr(store_sqlite, "_CHECKPOINT_EVERY", 3)
    here = threading.get_ident()
    async with SqliteStore(tmp_path / "s.db") as store:
        await seen.start_aside(store)
        monkeypatch.setattr(store_sqlite, "_CHECKPOINT_EVERY", 10**9)  # no other from here
        await asyncio.to_thread(seen.started.wait, 5)
        # the checkpoint holds its thread: writes are still done at once, on this thread
        for _ in range(2):
            assert await store._call(lambda conn: threading.get_ident(), write=True) == here
        seen.release.set()
        assert store._checkpointing is not None
        assert not await asyncio.wrap_future(store._checkpointing)  # written meanwhile
        # the next write waits for a checkpoint on the worker, which copies the rest
        assert await store._call(seen.next_write, write=True) == here
        assert seen.names == [seen.ASIDE, seen.WORKER, seen.NEXT]
        assert await store._call(lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0]) == 0
        assert await store._call(lambda conn: threading.get_ident(), write=True) == here


async def test_a_checkpoint_aside_with_no_write_meanwhile_needs_none_on_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    seen = _Checkpoints(monkeypatch)
    monkeypatch.setattr(store_sqlite, "_CHECKPOINT_EVERY", 3)
    async with SqliteStore(tmp_path / "q.db") as store:
        await seen.start_aside(store)
        monkeypatch.setattr(store_sqlite, "_CHECKPOINT_EVERY", 10**9)  # no other from here
        assert store._checkpointing is not None
        assert await asyncio.wrap_future(store._checkpointing)  # nothing written meanwhile
        before = await store._call(_log_frames)
        # no checkpoint on the worker: the next write is done at once and starts the log over
        assert await store._call(lambda conn: threading.get_ident(), write=True) == threading.get_ident()
        await store.begin_run(record(), [Message(role="user", content="y")])
        assert seen.names == [seen.ASIDE]
        assert 0 < await store._call(_log_frames) < before


async def test_a_write_whose_caller_was_cancelled_is_not_overtaken(tmp_path: Path) -> None:
    import asyncio
    import threading

    async with SqliteStore(tmp_path / "o.db") as store:
        started, release = threading.Event(), threading.Event()

        def block(conn: object) -> None:
            started.set()
            release.wait(5)

        blocker = asyncio.ensure_future(store._call(block))
        await asyncio.to_thread(started.wait, 5)  # the worker is busy
        first = record()
        queued = asyncio.ensure_future(store.begin_run(first, []))
        await asyncio.sleep(0)  # handed to the worker, behind the blocker
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        # still queued on the worker: a later write waits until the worker is done with it

        def later_write(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM runs WHERE id = ?", (first.run_id,)).fetchone() is not None

        later = asyncio.ensure_future(store._call(later_write, write=True))
        await asyncio.sleep(0)
        assert not later.done()
        release.set()
        await blocker
        assert await later  # the cancelled write ran, first
        assert (await store.get_run(first.run_id)) is not None
        assert await store._call(lambda conn: threading.get_ident(), write=True) == threading.get_ident()


def _transactions(store: SqliteStore) -> list[str]:
    """The store connection's ``BEGIN`` and ``SAVEPOINT`` statements from now on."""
    assert store._conn is not None
    seen: list[str] = []
    store._conn.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith(("BEGIN", "SAVEPOINT")) else None)
    return seen


async def test_the_writes_of_one_loop_iteration_after_its_first_are_one_transaction(tmp_path: Path) -> None:
    import threading

    async with SqliteStore(tmp_path / "i.db") as store:
        taken = record()
        await store.begin_run(taken, [])
        statements = _transactions(store)
        fresh = [record() for _ in range(9)]
        here = threading.get_ident()

        async def begin(rec: RunRecord) -> int:
            await store.begin_run(rec, [Message(role="user", content="hi")])
            return threading.get_ident()

        # ten runs begin in one loop iteration (as many concurrent runs do); one is refused
        outcomes = await asyncio.gather(
            *map(begin, fresh[:5]), store.begin_run(record(run_id=taken.run_id), []),
            *map(begin, fresh[5:]), return_exceptions=True,
        )
        # the first at once, the other nine together at the iteration's end, on this thread
        assert statements == ["BEGIN IMMEDIATE", "BEGIN IMMEDIATE", *["SAVEPOINT write"] * 9]
        assert outcomes[:5] + outcomes[6:] == [here] * 9
        assert isinstance(outcomes[5], StoreError) and "already stored" in str(outcomes[5])
        for rec in fresh:  # the refused one was rolled back alone
            assert [m.content for m in await store.load_history(rec.session_id)] == ["hi"]


async def test_a_read_called_after_waiting_writes_sees_them(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "r.db") as store:
        first, second = record(), record(session=uuid.uuid4())
        writes = [
            asyncio.ensure_future(store.begin_run(rec, [Message(role="user", content=rec.run_id)]))
            for rec in (first, second)
        ]
        await asyncio.sleep(0)  # the first done at once, the second waits for the iteration's end
        assert writes[0].done() and not writes[1].done()
        history = await store.load_history(second.session_id)  # a read: the waiting write first
        assert [m.content for m in history] == [second.run_id]
        await asyncio.gather(*writes)


async def test_waiting_writes_that_find_the_file_locked_go_to_the_worker_in_order(tmp_path: Path) -> None:
    import threading

    path = tmp_path / "w.db"
    async with SqliteStore(path) as store:
        order: list[str] = []

        def write(name: str) -> Any:
            def run(conn: sqlite3.Connection) -> int:
                order.append(name)
                return threading.get_ident()

            return store._call(run, write=True)

        calls = [asyncio.ensure_future(write(name)) for name in ("a", "b", "c")]
        await asyncio.sleep(0)  # a is done at once; b and c wait for the iteration's end
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # meanwhile another writer takes the write lock
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls[0].done() and not calls[1].done() and order == ["a"]
        other.execute("COMMIT")
        other.close()
        a, b, c = await asyncio.gather(*calls)
        assert order == ["a", "b", "c"] and a == threading.get_ident() and b == c != a


async def test_writes_waiting_when_the_store_closes_or_their_caller_is_cancelled_are_done(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    store = SqliteStore(path)
    await store.open()
    recs = [record() for _ in range(3)]
    writes = [asyncio.ensure_future(store.begin_run(rec, [])) for rec in recs]
    await asyncio.sleep(0)  # the first done; the others wait for the iteration's end
    writes[1].cancel()
    await store.close()  # before that end
    assert writes[0].done() and writes[2].done() and writes[2].exception() is None
    async with SqliteStore(path) as again:
        assert all([await again.get_run(rec.run_id) is not None for rec in recs])


async def test_writes_queued_before_the_file_is_open_start_no_checkpoint_on_a_missing_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SqliteStore(tmp_path / "new" / "f.db")  # not opened: the first write opens it
    try:
        await asyncio.gather(*(store.begin_run(record(), []) for _ in range(250)))
        assert len(await store.list_runs(limit=300)) == 250
        if store._checkpointing is not None:  # a checkpoint aside has ended (and logged any failure)
            await asyncio.wrap_future(store._checkpointing)
    finally:
        await store.close()
    assert "checkpoint failed" not in caplog.text


async def test_writes_waiting_for_another_loops_call_on_the_worker_are_done_when_it_ends(tmp_path: Path) -> None:
    import threading

    async with SqliteStore(tmp_path / "l.db") as store:
        started, release = threading.Event(), threading.Event()

        def block(conn: object) -> None:
            started.set()
            release.wait(5)

        blocker = asyncio.ensure_future(store._call(block))  # this loop's call holds the worker
        await asyncio.to_thread(started.wait, 5)
        recs = [record() for _ in range(3)]

        def other_loop() -> list[str]:  # a second thread with a loop of its own writes meanwhile
            async def writes() -> list[str]:
                done = await asyncio.gather(*(store.begin_run(rec, []) for rec in recs))
                return [owned.run_id for owned, _history in done]

            return asyncio.run(writes())

        other = asyncio.ensure_future(asyncio.to_thread(other_loop))
        await asyncio.sleep(0.05)
        assert not other.done()  # they wait for the worker, which this loop's call holds
        release.set()
        await blocker  # settled on this loop: the other loop is told, and writes them
        assert await asyncio.wait_for(other, 10) == [rec.run_id for rec in recs]


async def test_a_failed_checkpoint_aside_is_logged_and_writes_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    def broken(conn: sqlite3.Connection) -> bool:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store_sqlite, "_CHECKPOINT_EVERY", 2)
    async with SqliteStore(tmp_path / "f.db") as store:
        monkeypatch.setattr(store_sqlite, "_checkpoint", broken)
        for _ in range(2):  # the second starts a checkpoint aside, which fails
            await store.begin_run(record(), [Message(role="user", content="x")])
        assert store._checkpointing is not None
        with pytest.raises(sqlite3.OperationalError):
            await asyncio.wrap_future(store._checkpointing)
        # the next write sees it: logged, nothing sent to the worker, the write done here
        with caplog.at_level("WARNING", logger="rxinvoke"):
            assert await store._call(lambda conn: threading.get_ident(), write=True) == threading.get_ident()
        assert "SQLite checkpoint failed: disk I/O error" in caplog.text
        rec = record()
        await store.begin_run(rec, [Message(role="user", content="y")])
        assert (await store.get_run(rec.run_id)) is not None
