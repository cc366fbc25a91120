"""The ``rxinvoke`` command line: in-process through ``rxinvoke.cli.main`` and as a subprocess.

Every run passes ``--delay 0`` so the offline model streams without pausing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import rxinvoke
from rxinvoke.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
PROMPT = "what is 2 + 3?"
ANSWER = "2 + 3 = 5."
TOOL_LINE = '→ calculate({"expression": "2 + 3"})'
RESULT_PREFIX = "← calculate: 5 ("


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``rxinvoke run *argv --delay 0`` in-process: (exit code, stdout, stderr)."""
    code = main(["run", *argv, "--delay", "0"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_subprocess(*argv: str) -> subprocess.CompletedProcess[str]:
    """``python -m rxinvoke *argv`` in a fresh interpreter, importable without installing."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONIOENCODING"] = "utf-8"  # the → / ← markers, whatever the locale
    return subprocess.run(
        [sys.executable, "-m", "rxinvoke", *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def parse_events(stdout: str) -> list[rxinvoke.InvocationEvent]:
    lines = stdout.splitlines()
    assert lines, "no output"
    return [rxinvoke.INVOCATION_EVENT.validate_json(line) for line in lines]


def assert_human_output(stdout: str) -> None:
    """Tool call line, tool result line, streamed answer, then the usage line, in that order."""
    lines = stdout.splitlines()
    assert TOOL_LINE in lines
    result_index = next(i for i, line in enumerate(lines) if line.startswith(RESULT_PREFIX))
    assert lines[result_index].endswith(" ms)")
    assert lines.index(TOOL_LINE) < result_index < lines.index(ANSWER) < len(lines) - 1
    usage = lines[-1]
    assert usage.startswith("[stop · 2 iteration(s) · tokens in ")
    assert "tokens" in usage and "total" in usage and "session " in usage


def new_session_warning(session: uuid.UUID) -> str:
    return f"rxinvoke: warning: session {session} has no stored history; starting it\n"


def assert_one_line_error(stderr: str) -> None:
    assert stderr.startswith("rxinvoke: error:")
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr


# --- the main job ------------------------------------------------------------------------------


def test_run_streams_the_answer_with_tool_call_and_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, PROMPT)
    assert code == 0
    assert err == ""
    assert_human_output(out)


def test_run_as_a_real_subprocess() -> None:
    proc = run_subprocess("run", PROMPT, "--delay", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert_human_output(proc.stdout)


def test_prompt_without_arithmetic_answers_without_tools(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "hello there")
    assert code == 0 and err == ""
    assert "→" not in out and "←" not in out
    assert "offline rxinvoke model" in out
    assert out.splitlines()[-1].startswith("[stop · 1 iteration(s) · tokens in ")


def test_tool_failure_is_shown_and_the_run_still_completes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "what is 1/0")
    assert code == 0 and err == ""
    assert "← calculate: error: tool 'calculate' raised ZeroDivisionError" in out
    assert "I could not do that" in out
    assert out.splitlines()[-1].startswith("[stop · 2 iteration(s)")


# --- --json ------------------------------------------------------------------------------------


def test_json_prints_one_event_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, PROMPT, "--json")
    assert code == 0 and err == ""
    events = parse_events(out)
    types = [event.type for event in events]
    assert types[0] == "run_started"
    assert types[-1] == "run_completed"
    assert sum(event.is_terminal for event in events) == 1
    assert len({event.run_id for event in events}) == 1
    assert "".join(e.delta for e in events if isinstance(e, rxinvoke.TextDelta)) == ANSWER
    # each tool call's events in the documented order
    for kind in (
        "tool_call_started",
        "tool_call_completed",
        "tool_execution_started",
        "tool_execution_finished",
        "tool_message_committed",
    ):
        assert types.count(kind) == 1, kind
    assert (
        types.index("tool_call_started")
        < types.index("tool_call_completed")
        < types.index("tool_execution_started")
        < types.index("tool_execution_finished")
        < types.index("tool_message_committed")
    )
    finished = events[types.index("tool_execution_finished")]
    assert isinstance(finished, rxinvoke.ToolExecutionFinished)
    assert finished.result == rxinvoke.ToolSuccess(output="5")
    # lines are exactly the serialised events (no usage line, nothing else)
    for line, event in zip(out.splitlines(), events, strict=True):
        assert json.loads(rxinvoke.INVOCATION_EVENT.dump_json(event)) == json.loads(line)


def test_json_with_session_as_a_real_subprocess() -> None:
    session = uuid.uuid4()
    proc = run_subprocess("run", PROMPT, "--json", "--session", str(session), "--delay", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == new_session_warning(session)
    events = parse_events(proc.stdout)
    assert isinstance(events[0], rxinvoke.RunStarted)
    assert events[0].session_id == str(session)
    assert events[-1].type == "run_completed"


# --- --session ---------------------------------------------------------------------------------


def test_session_id_is_used_for_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    session = uuid.uuid4()
    code, out, err = run(capsys, PROMPT, "--json", "--session", str(session))
    assert code == 0 and err == new_session_warning(session)  # nothing stored yet: said once
    started = parse_events(out)[0]
    assert isinstance(started, rxinvoke.RunStarted)
    assert started.session_id == str(session)

    code, out, err = run(capsys, PROMPT, "--session", str(session))
    assert code == 0 and err == ""
    summary = out.splitlines()[-1]
    assert f"· session {session} · run " in summary and summary.endswith("]")
    run_id = summary.rsplit("· run ", 1)[1].rstrip("]")
    assert str(uuid.UUID(run_id)) == run_id  # the id `rxinvoke events RUN_ID` takes


def test_without_session_a_new_session_is_created(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, PROMPT, "--json")
    assert code == 0
    started = parse_events(out)[0]
    assert isinstance(started, rxinvoke.RunStarted)
    uuid.UUID(started.session_id)  # a valid, fresh session id


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_a_one_line_error(capsys: pytest.CaptureFixture[str], prompt: str) -> None:
    code, out, err = run(capsys, prompt)
    assert code != 0
    assert out == ""
    assert_one_line_error(err)
    assert "empty" in err


def test_session_that_is_not_a_uuid_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, PROMPT, "--session", "not-a-uuid")
    assert code != 0
    assert out == ""
    assert_one_line_error(err)
    assert "--session" in err and "not-a-uuid" in err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["run", "", "--delay", "0"], id="empty-prompt"),
        pytest.param(["run", PROMPT, "--session", "not-a-uuid"], id="bad-session"),
    ],
)
def test_errors_in_a_real_subprocess_have_no_traceback(argv: list[str]) -> None:
    proc = run_subprocess(*argv)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr)


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: rxinvoke")
    assert "rxinvoke: error:" in err
    assert "Traceback" not in err


def test_run_without_prompt_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2
    assert "PROMPT" in capsys.readouterr().err


# --- help and version --------------------------------------------------------------------------


def test_help_lists_the_run_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: rxinvoke")
    assert any(line.split()[:1] == ["run"] for line in out.splitlines())


def test_run_help_lists_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("PROMPT", "--session", "--json", "--delay"):
        assert option in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rxinvoke {rxinvoke.__version__}"


# --- bad input is one line and a non-zero exit, never a hang or a traceback (issue 9) ------------


@pytest.mark.parametrize("delay", ["nan", "inf", "-inf", "-1", "1e9", "soon"])
def test_a_bad_delay_is_refused_in_one_line(capsys: pytest.CaptureFixture[str], delay: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", PROMPT, "--delay", delay])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--delay" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("rxinvoke run: error:")


@pytest.mark.parametrize("limit", ["100000000000000000000", "0", "-3", "many"])
def test_a_bad_limit_is_refused_in_one_line(capsys: pytest.CaptureFixture[str], limit: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["runs", "--limit", limit])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--limit" in err and "Traceback" not in err


def test_an_unusable_db_path_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    long_name = tmp_path / ("x" * 300) / "db.sqlite"
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for path in (long_name, locked / "sub" / "db.sqlite", tmp_path):
            code = main(["run", PROMPT, "--delay", "0", "--db", str(path)])
            err = capsys.readouterr().err
            if os.geteuid() == 0 and path.parent.parent == locked:
                continue  # root writes anywhere: nothing to refuse
            assert code == 1, (path, err)
            assert_one_line_error(err)
    finally:
        locked.chmod(0o700)


def test_corrupted_rows_are_one_line_naming_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "c.db"
    code, out, _ = run(capsys, PROMPT, "--db", str(db))
    assert code == 0
    run_id = out.splitlines()[-1].rsplit("· run ", 1)[1].rstrip("]")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE event_segments SET events = 'not json'")
    conn.execute("UPDATE runs SET request = '{}'")
    conn.commit()
    conn.close()
    for argv in (["events", run_id], ["runs"]):
        code = main([*argv, "--db", str(db)])
        err = capsys.readouterr().err
        assert code == 1
        assert_one_line_error(err)
        assert run_id in err


def test_a_huge_expression_is_refused_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    expression = "1 + " * 10_000 + "1"  # 40 KB
    code, out, err = run(capsys, f"what is {expression}?")
    assert code == 0 and err == ""
    lines = out.splitlines()
    echo = next(line for line in lines if line.startswith("→ calculate("))
    assert len(echo) < 260 and echo.endswith("…)")  # the echo line is clipped
    result = next(line for line in lines if line.startswith("← calculate: error:"))
    assert "too long" in result and len(result) < 300


def test_deep_nesting_within_the_length_limit_is_refused_cleanly() -> None:
    from rxinvoke.tools import calculate

    for expression in ("-" * 1900 + "1", "(" * 900 + "1" + ")" * 900, "2**" * 600 + "1"):
        with pytest.raises(ValueError, match="nested too deeply|not an arithmetic|too large"):
            calculate(expression)


def test_an_ascii_terminal_gets_ascii_markers() -> None:
    env_proc = run_subprocess_with_env({"PYTHONIOENCODING": "ascii"}, "run", PROMPT, "--delay", "0")
    assert env_proc.returncode == 0, env_proc.stderr
    assert "Traceback" not in env_proc.stderr
    lines = env_proc.stdout.splitlines()
    assert '-> calculate({"expression": "2 + 3"})' in lines
    assert lines[-1].startswith("[stop | 2 iteration(s) | tokens")


def test_the_prompt_can_come_from_stdin() -> None:
    proc = run_subprocess_with_env({}, "run", "-", "--json", "--delay", "0", stdin="what is 4 * 5?")
    assert proc.returncode == 0, proc.stderr
    events = parse_events(proc.stdout)
    assert any(e.type == "tool_execution_finished" and e.result.output == "20" for e in events)  # type: ignore[union-attr]


def test_session_must_exist_refuses_an_unknown_session(capsys: pytest.CaptureFixture[str]) -> None:
    session = uuid.uuid4()
    code, out, err = run(capsys, PROMPT, "--session", str(session), "--session-must-exist")
    assert code == 1 and out == ""
    assert_one_line_error(err)
    assert "no stored history" in err
    code, _, _ = run(capsys, PROMPT, "--session", str(session))  # now it exists
    code, _, err = run(capsys, PROMPT, "--session", str(session), "--session-must-exist")
    assert code == 0 and err == ""


def test_ctrl_c_ends_the_line_and_names_the_run(tmp_path: Path) -> None:
    import signal

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONIOENCODING"] = "utf-8"
    db = tmp_path / "i.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rxinvoke", "run", "hello there", "--delay", "0.5", "--db", str(db)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", env=env,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)  # the first streamed fragment has arrived
    assert first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert (first + out).endswith("\n")  # the partial line is ended
    assert err.startswith("rxinvoke: interrupted (run ") and "Traceback" not in err
    run_id = err.split("(run ", 1)[1].split(":", 1)[0]
    listed = run_subprocess("runs", "--db", str(db), "--json")
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["run_id"], r["status"]) for r in records] == [(run_id, "cancelled")]


def run_subprocess_with_env(
    extra: dict[str, str], *argv: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "rxinvoke", *argv], input=stdin, capture_output=True, text=True,
        encoding="utf-8", errors="replace", env=env, cwd=REPO_ROOT, timeout=60, check=False,
    )


def _paused(out: str) -> tuple[str, str]:
    line = next(line for line in out.splitlines() if line.startswith("awaiting approval: calculate("))
    words = line.split("rxinvoke approve ", 1)[1].split()
    return words[0], words[1]


def test_a_tool_that_needs_approval_pauses_the_run_until_rxinvoke_approve(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "runs.db")
    code, out, err = run(capsys, PROMPT, "--approve-tool", "calculate", "--db", db)
    assert code == 0, err
    assert "[awaiting_approval · 1 iteration(s)" in out and ANSWER not in out
    run_id, call_id = _paused(out)

    code = main(["approve", run_id, call_id, "--db", db, "--delay", "0"])
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert code == 0, err
    assert ANSWER in out and "[stop ·" in out

    code = main(["approve", run_id, call_id, "--db", db, "--delay", "0"])
    assert code == 1
    assert "not awaiting approval" in capsys.readouterr().err


def test_rxinvoke_deny_tells_the_model_and_bad_ids_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    db = str(tmp_path / "runs.db")
    code, out, _ = run(capsys, PROMPT, "--approve-tool", "calculate", "--db", db)
    run_id, call_id = _paused(out)

    assert main(["deny", run_id, "nope", "--db", db, "--delay", "0"]) == 1
    assert "no call 'nope' awaiting approval" in capsys.readouterr().err
    assert main(["deny", run_id, call_id, "--reason", "no maths today", "--db", db, "--delay", "0"]) == 0
    out = capsys.readouterr().out
    assert "[stop ·" in out and ANSWER not in out
    code = main(["events", run_id, "--db", db, "--kind", "approval_requested"])
    assert code == 0 and "calculate" in capsys.readouterr().out


# --- --otel: the runs as OpenTelemetry spans, to the providers the environment set up -----------

SITECUSTOMIZE = """
import os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=open(os.environ["SPANS_FILE"], "a"))))
trace.set_tracer_provider(provider)
"""


def otel_env(tmp_path: Path) -> dict[str, str]:
    """What `opentelemetry-instrument` does: a sitecustomize that sets the global providers up
    before the command runs (here: every span as JSON into a file)."""
    pytest.importorskip("opentelemetry.sdk")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), *sys.path]),
        "SPANS_FILE": str(tmp_path / "spans.jsonl"),
        "RXINVOKE_DB": str(tmp_path / "o.db"),
    }


def test_run_with_otel_exports_its_spans_to_the_global_providers(tmp_path: Path) -> None:
    env = otel_env(tmp_path)
    spans = Path(env["SPANS_FILE"])
    plain = subprocess.run([sys.executable, "-m", "rxinvoke", "run", PROMPT, "--delay", "0"], env=env, capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert not spans.exists() or spans.read_text() == ""  # not asked: nothing exported
    traced = subprocess.run([sys.executable, "-m", "rxinvoke", "run", PROMPT, "--delay", "0", "--otel"], env=env, capture_output=True, text=True)
    assert traced.returncode == 0, traced.stderr
    assert ANSWER in traced.stdout
    text = spans.read_text()
    for name in ("invoke_agent rxinvoke", "chat offline", "execute_tool calculate"):
        assert f'"name": "{name}"' in text, text[:500]


def test_otel_without_the_extra_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    code = main(["run", PROMPT, "--otel", "--delay", "0", "--db", str(tmp_path / "x.db")])
    err = capsys.readouterr().err
    assert code == 1 and err == "rxinvoke: error: --otel needs the [otel] extra: pip install 'rxinvoke[otel]'\n"
