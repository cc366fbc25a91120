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
    assert proc.stderr == ""
    events = parse_events(proc.stdout)
    assert isinstance(events[0], rxinvoke.RunStarted)
    assert events[0].session_id == str(session)
    assert events[-1].type == "run_completed"


# --- --session ---------------------------------------------------------------------------------


def test_session_id_is_used_for_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    session = uuid.uuid4()
    code, out, err = run(capsys, PROMPT, "--json", "--session", str(session))
    assert code == 0 and err == ""
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
