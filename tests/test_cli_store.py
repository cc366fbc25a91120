"""The CLI and the durable store: ``run --db``, ``runs``, ``events``, ``--session`` across
processes' worth of invocations, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

import rxinvoke
from rxinvoke.cli import main
from rxinvoke.stores import EventEnvelope

PROMPT = "what is 2 + 3?"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], db: Path, *extra: str) -> list[rxinvoke.InvocationEvent]:
    code, out, err = cli(capsys, "run", PROMPT, "--json", "--delay", "0", "--db", str(db), *extra)
    assert code == 0, err
    return [rxinvoke.INVOCATION_EVENT.validate_json(line) for line in out.splitlines()]


def assert_one_line_error(stderr: str, text: str) -> None:
    assert stderr.startswith("rxinvoke: error:") and text in stderr, stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stderr


def test_run_stores_the_run_and_runs_lists_it(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    events = run_json(capsys, db)
    run_id = events[0].run_id
    code, out, _ = cli(capsys, "runs", "--db", str(db))
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["RUN", "SESSION", "STATUS", "ITER", "TOKENS", "STARTED"]
    fields = row.split()
    assert fields[:4] == [run_id, events[0].session_id, "completed", "2"]  # type: ignore[union-attr]
    assert int(fields[4]) > 0
    code, out, _ = cli(capsys, "runs", "--json", "--db", str(db))
    assert rxinvoke.RunRecord.model_validate_json(out).run_id == run_id


def test_events_replays_a_stored_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    published = run_json(capsys, db)
    run_id = published[0].run_id or ""
    code, out, _ = cli(capsys, "events", run_id, "--json", "--db", str(db))
    assert code == 0
    envelopes = [EventEnvelope.model_validate_json(line) for line in out.splitlines()]
    assert [e.event for e in envelopes] == published
    assert [e.seq for e in envelopes] == list(range(1, len(published) + 1))
    code, out, _ = cli(capsys, "events", run_id, "--kind", "text_delta", "--db", str(db))
    lines = out.splitlines()
    assert code == 0 and lines and all(" text_delta " in line for line in lines)
    assert "".join(json.loads(line.split("delta=", 1)[1]) for line in lines) == "2 + 3 = 5."


def test_session_continues_a_stored_session(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    first = run_json(capsys, db)
    session = first[0].session_id  # type: ignore[union-attr]
    second = run_json(capsys, db, "--session", session)
    assert second[0].session_id == session  # type: ignore[union-attr]
    built = next(e for e in second if isinstance(e, rxinvoke.ContextBuilt))
    assert built.message_count == 5  # the first run's 4 messages + the new question
    code, out, _ = cli(capsys, "runs", "--session", session, "--db", str(db))
    assert code == 0 and len(out.splitlines()) == 3


def test_the_default_database_comes_from_the_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "env" / "default.db"
    monkeypatch.setenv("RXINVOKE_DB", str(db))
    code, _, _ = cli(capsys, "run", PROMPT, "--delay", "0")
    assert code == 0 and db.exists()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert str(db) in capsys.readouterr().out.replace("\n", " ")


def test_tests_never_touch_the_real_data_dir() -> None:
    assert os.environ["RXINVOKE_DB"] != str(Path.home() / ".local" / "share" / "rxinvoke" / "rxinvoke.db")


@pytest.mark.parametrize("command", [["runs"], ["events", "some-run"]])
def test_a_missing_database_is_an_error_and_is_not_created(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "missing.db"
    code, _, err = cli(capsys, *command, "--db", str(db))
    assert code == 1
    assert_one_line_error(err, "no such database")
    assert not db.exists()


@pytest.mark.parametrize("command", [["run", PROMPT, "--delay", "0"], ["runs"], ["events", "some-run"]])
def test_a_corrupt_database_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"definitely not sqlite " * 200)
    code, _, err = cli(capsys, *command, "--db", str(db))
    assert code == 1
    assert_one_line_error(err, "not a readable SQLite database")


def test_an_unknown_run_id_is_an_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    run_json(capsys, db)
    code, _, err = cli(capsys, "events", "no-such-run", "--db", str(db))
    assert code == 1
    assert_one_line_error(err, "unknown run 'no-such-run'")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", PROMPT, "--session", "not-a-uuid"], "--session must be a UUID"),
        (["runs", "--session", "not-a-uuid"], "--session must be a UUID"),
        (["events", str(uuid.uuid4()), "--kind", "no_such_kind"], "unknown event kind"),
    ],
)
def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str) -> None:
    code, _, err = cli(capsys, *argv, "--db", str(tmp_path / "x.db"))
    assert code == 2
    assert_one_line_error(err, message)


def test_runs_and_events_read_the_workers_postgres_store(
    capsys: pytest.CaptureFixture[str], postgres_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from rxinvoke import (
        AgentRuntime,
        EmitRequest,
        OfflineProvider,
        PostgresStore,
        RuntimeInvocation,
        builtin_tools,
    )

    dsn: str = postgres_server.dsn  # type: ignore[attr-defined]
    session = uuid.uuid4()

    async def seed() -> tuple[str, list[EventEnvelope]]:
        async with PostgresStore(dsn) as store:  # the schema `rxinvoke worker --postgres` uses
            runtime = AgentRuntime(providers=[OfflineProvider()], tools=builtin_tools(), store=store)
            out = await RuntimeInvocation(runtime).emit(EmitRequest(PROMPT, session_id=session))
            return out.run_id, await store.read_events(out.run_id)

    run_id, stored = asyncio.run(seed())
    code, out, err = cli(capsys, "runs", "--session", str(session), "--postgres", dsn)
    assert code == 0, err
    (row,) = out.splitlines()[1:]
    assert row.split()[:3] == [run_id, str(session), "completed"]
    monkeypatch.setenv("RXINVOKE_POSTGRES", dsn)
    code, out, err = cli(capsys, "events", run_id, "--json", "--postgres")  # the DSN from the environment
    assert code == 0, err
    assert [EventEnvelope.model_validate_json(line) for line in out.splitlines()] == stored
    monkeypatch.delenv("RXINVOKE_POSTGRES")
    code, _, err = cli(capsys, "runs", "--postgres")
    assert code == 1
    assert_one_line_error(err, "--postgres needs a DSN (or $RXINVOKE_POSTGRES)")
    with pytest.raises(SystemExit) as refused:  # one store or the other
        cli(capsys, "runs", "--postgres", dsn, "--db", "x.db")
    assert refused.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_a_run_paused_in_the_postgres_store_is_approved_from_the_command_line(
    capsys: pytest.CaptureFixture[str], postgres_server: object
) -> None:
    from test_cli import ANSWER, _paused

    dsn: str = postgres_server.dsn  # type: ignore[attr-defined]
    code, out, err = cli(capsys, "run", PROMPT, "--approve-tool", "calculate", "--delay", "0", "--postgres", dsn)
    assert code == 0, err
    assert "[awaiting_approval · 1 iteration(s)" in out
    run_id, call_id = _paused(out)
    code, out, err = cli(capsys, "approve", run_id, call_id, "--delay", "0", "--postgres", dsn)
    assert code == 0, err
    assert ANSWER in out and "[stop ·" in out  # continued here, from the shared store
    code, out, _ = cli(capsys, "events", run_id, "--postgres", dsn, "--kind", "approval_requested")
    assert code == 0 and "calculate" in out
