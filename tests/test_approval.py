"""Human approval of tool calls (issue 14 §3): a batch with a call that needs approval pauses
its run (durably), other calls of the batch run, decisions are recorded one by one, and the
run that continues it answers the batch in call order — in this process or another one that
opens the same store (a killed process included). Timeouts in virtual time."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from reactivex.testing import TestScheduler

from rxinvoke import (
    AgentRuntime,
    ApprovalPolicy,
    ChatRequest,
    FinishReason,
    InvalidRequest,
    InvocationEvent,
    InvocationFailed,
    MemoryStore,
    RunRequest,
    RuntimeInvocation,
    RuntimePolicy,
    ScriptedProvider,
    SessionAwaitingApproval,
    SqliteStore,
    tool,
)
from rxinvoke.notebook import to_html

tool_calls_turn = ScriptedProvider.tool_calls_turn
tool_call_turn = ScriptedProvider.tool_call_turn
text_turn = ScriptedProvider.text_turn


class Ops:
    """deploy (always needs approval), scale (needs it for prod only), lookup (never)."""

    def __init__(self) -> None:
        self.ran: list[str] = []

        @tool(requires_approval=True)
        def deploy(env: str) -> str:
            """Deploy."""
            self.ran.append(f"deploy:{env}")
            return f"deployed to {env}"

        @tool(requires_approval=lambda args: args.get("env") == "prod")
        def scale(env: str, n: int) -> str:
            """Scale."""
            self.ran.append(f"scale:{env}:{n}")
            return f"{env} at {n}"

        @tool
        def lookup(key: str) -> str:
            """Look up."""
            self.ran.append(f"lookup:{key}")
            return f"value of {key}"

        self.all = [deploy, scale, lookup]


class Rig:
    def __init__(self, turns: Any, *, store: Any = None, scheduler: Any = None, **approval: Any) -> None:
        self.ops = Ops()
        self.provider = ScriptedProvider(turns)
        self.runtime = AgentRuntime(
            providers=[self.provider],
            tools=self.ops.all,
            policy=RuntimePolicy(approval=ApprovalPolicy(**approval)),
            store=store if store is not None else MemoryStore(),
            scheduler=scheduler,
        )
        self.events: list[InvocationEvent] = []
        self.runtime.events.subscribe(self.events.append)
        self.session = uuid.uuid4()

    async def ask(self, text: str = "go") -> Any:
        return await self.runtime.run(
            RunRequest(provider="scripted", model="scripted", input=text, session_id=self.session)
        )

    def of(self, kind: str, run_id: str | None = None) -> list[Any]:
        return [e for e in self.events if e.type == kind and (run_id is None or e.run_id == run_id)]

    def kinds(self, run_id: str) -> list[str]:
        return [e.type for e in self.events if e.run_id == run_id]


BATCH = [("deploy", {"env": "prod"}, "c_deploy"), ("lookup", {"key": "version"}, "c_lookup")]


async def test_a_call_that_needs_approval_pauses_the_run_after_the_others_ran() -> None:
    rig = Rig([tool_calls_turn(BATCH), text_turn("shipped")])

    paused = await rig.ask()

    assert paused.finish_reason is FinishReason.AWAITING_APPROVAL
    assert [(p.call_id, p.tool_name, json.loads(p.arguments)) for p in paused.pending] == [
        ("c_deploy", "deploy", {"env": "prod"})
    ]
    assert rig.ops.ran == ["lookup:version"]  # the call that needs no approval ran
    kinds = rig.kinds(paused.run_id)
    assert kinds[-3:] == ["tool_execution_finished", "approval_requested", "run_completed"]
    (requested,) = rig.of("approval_requested")
    assert (requested.call_id, requested.tool_name, requested.expires_at) == ("c_deploy", "deploy", None)
    record = await rig.runtime.store.get_run(paused.run_id)
    assert record is not None and record.status == "awaiting_approval"
    history = await rig.runtime.history(rig.session)
    assert [m.role for m in history] == ["user", "assistant"]  # no reply before the decision
    # the session is held: another run of it is refused, nothing published or stored
    before = len(rig.events)
    with pytest.raises(InvocationFailed) as refused:
        await rig.ask("something else")
    assert isinstance(refused.value.cause, SessionAwaitingApproval)
    assert "awaiting approval" in str(refused.value)
    assert len(rig.events) == before


async def test_an_approval_continues_the_run_and_answers_the_batch_in_call_order() -> None:
    rig = Rig([tool_calls_turn(BATCH), text_turn("shipped"), text_turn("next answer")])
    paused = await rig.ask()

    output = await rig.runtime.approve(paused.run_id, "c_deploy")

    assert output is not None and output.output_text == "shipped"
    assert output.finish_reason is FinishReason.STOP and output.run_id != paused.run_id
    assert rig.ops.ran == ["lookup:version", "deploy:prod"]  # lookup ran once, before the pause
    kinds = rig.kinds(output.run_id)
    assert kinds[:2] == ["run_started", "approval_decided"]
    assert rig.of("run_started", output.run_id)[0].resumes == paused.run_id
    (decided,) = rig.of("approval_decided")
    assert (decided.call_id, decided.approved, decided.reason) == ("c_deploy", True, None)
    # the model's next context: both replies, in the order of the calls
    context = rig.provider.requests[-1].messages
    tools = [(m.tool_call_id, m.content) for m in context if m.role == "tool"]
    assert tools == [("c_deploy", "deployed to prod"), ("c_lookup", "value of version")]
    assert [m.role for m in await rig.runtime.history(rig.session)] == [
        "user", "assistant", "tool", "tool", "assistant"
    ]
    record = await rig.runtime.store.get_run(paused.run_id)
    assert record is not None and record.status == "completed"
    with pytest.raises(InvalidRequest, match="not awaiting approval"):
        await rig.runtime.approve(paused.run_id, "c_deploy")  # exactly one continuation
    # the session is free again
    assert (await rig.ask("next")).run_id


async def test_a_denial_is_a_tool_message_the_model_reacts_to() -> None:
    rig = Rig([tool_calls_turn(BATCH), text_turn("ok, not deploying")])
    paused = await rig.ask()

    output = await rig.runtime.deny(paused.run_id, "c_deploy", "freeze until Monday")

    assert output is not None and output.output_text == "ok, not deploying"
    assert "deploy:prod" not in rig.ops.ran
    reply = next(m for m in rig.provider.requests[-1].messages if m.tool_call_id == "c_deploy")
    assert reply.content == "Error: not run: a person denied this call: freeze until Monday"
    (decided,) = rig.of("approval_decided")
    assert (decided.approved, decided.reason) == (False, "freeze until Monday")


async def test_every_waiting_call_is_decided_before_the_run_goes_on() -> None:
    batch = [("deploy", {"env": "a"}, "c1"), ("scale", {"env": "prod", "n": 3}, "c2"), ("scale", {"env": "dev", "n": 1}, "c3")]
    rig = Rig([tool_calls_turn(batch), text_turn("done")])
    paused = await rig.ask()
    assert [p.call_id for p in paused.pending] == ["c1", "c2"]  # the predicate: dev needs none
    assert rig.ops.ran == ["scale:dev:1"]

    assert await rig.runtime.approve(paused.run_id, "c2") is None  # c1 still waits
    assert rig.ops.ran == ["scale:dev:1"]
    with pytest.raises(InvalidRequest, match="no call 'nope'"):
        await rig.runtime.approve(paused.run_id, "nope")
    with pytest.raises(InvalidRequest, match="already approved"):
        await rig.runtime.deny(paused.run_id, "c2")
    output = await rig.runtime.deny(paused.run_id, "c1")

    assert output is not None and output.output_text == "done"
    assert rig.ops.ran == ["scale:dev:1", "scale:prod:3"]
    replies = [m.tool_call_id for m in rig.provider.requests[-1].messages if m.role == "tool"]
    assert replies == ["c1", "c2", "c3"]


async def test_a_policy_list_makes_any_tool_wait_and_unknown_runs_are_clear_errors() -> None:
    rig = Rig([tool_call_turn("lookup", {"key": "k"}, call_id="c"), text_turn("fine")], tools=frozenset({"lookup"}))
    paused = await rig.ask()
    assert [p.tool_name for p in paused.pending] == ["lookup"] and rig.ops.ran == []
    with pytest.raises(InvalidRequest, match="unknown run"):
        await rig.runtime.approve("no-such-run", "c")
    with pytest.raises(InvalidRequest, match="still waits"):
        await rig.runtime.resume(paused.run_id)
    assert (await rig.runtime.approve(paused.run_id, "c")) is not None


async def test_the_approval_timeout_denies_in_virtual_time() -> None:
    scheduler = TestScheduler()
    rig = Rig([tool_calls_turn(BATCH), text_turn("gave up on deploy")], scheduler=scheduler, timeout=60.0)
    paused = await rig.ask()
    assert paused.pending[0].expires_at is not None

    scheduler.advance_by(59.0)
    assert not rig.of("approval_decided")
    scheduler.advance_by(1.0)
    await rig.runtime.aclose()  # waits for the expiry's continuation

    (decided,) = rig.of("approval_decided")
    assert (decided.approved, decided.reason) == (False, "approval timed out")
    assert rig.of("run_completed")[-1].finish_reason is FinishReason.STOP
    reply = next(m for m in rig.provider.requests[-1].messages if m.tool_call_id == "c_deploy")
    assert "approval timed out" in reply.content and "deploy:prod" not in rig.ops.ran


async def test_the_approval_timeout_can_fail_the_run() -> None:
    scheduler = TestScheduler()
    rig = Rig([tool_calls_turn(BATCH), text_turn("never")], scheduler=scheduler, timeout=5.0, on_timeout="fail")
    await rig.ask()
    scheduler.advance_by(5.0)
    await rig.runtime.aclose()

    failed = rig.of("run_failed")
    assert len(failed) == 1 and "deploy timed out" in failed[0].error
    assert len(rig.provider.requests) == 1  # the model was not called again
    history = await rig.runtime.history(rig.session)
    assert [m.role for m in history][-2:] == ["tool", "tool"]  # the session stays valid


async def test_a_decision_after_the_deadline_counts_as_the_timeout() -> None:
    scheduler = TestScheduler()
    store = MemoryStore()
    first = Rig([tool_calls_turn(BATCH)], store=store, scheduler=scheduler, timeout=10.0)
    paused = await first.ask()
    first.runtime._timers.clear()  # as if the pausing process had died: no timer fires
    later = Rig([text_turn("too late")], store=store, scheduler=scheduler, timeout=10.0)
    later.session = first.session
    scheduler.advance_by(11.0)

    output = await later.runtime.approve(paused.run_id, "c_deploy")

    assert output is not None and "deploy:prod" not in later.ops.ran
    (decided,) = later.of("approval_decided")
    assert (decided.approved, decided.reason) == (False, "approval timed out")


async def test_invocation_facade_and_notebook_show_the_pending_call() -> None:
    rig = Rig([tool_calls_turn(BATCH), text_turn("shipped")])
    inv = RuntimeInvocation(rig.runtime)
    paused = await rig.ask()
    html = to_html(paused)
    assert "run paused" in html and "deploy" in html and "&quot;env&quot;: &quot;prod&quot;" in html
    assert "c_deploy" in html and "waiting" in html

    output = await inv.approve(paused.run_id, "c_deploy")
    assert output is not None and output.output_text == "shipped"


SCRIPT = textwrap.dedent(
    """
    import asyncio, json, os, sys, uuid
    from rxinvoke import AgentRuntime, RunRequest, ScriptedProvider, SqliteStore, tool

    @tool(requires_approval=True)
    def deploy(env: str) -> str:
        "Deploy."
        return f"deployed to {env}"

    async def main():
        provider = ScriptedProvider([ScriptedProvider.tool_call_turn("deploy", {"env": "prod"}, call_id="c1")])
        runtime = AgentRuntime(providers=[provider], tools=[deploy], store=SqliteStore(sys.argv[1]))
        out = await runtime.run(RunRequest(provider="scripted", model="scripted", input="ship it",
                                           session_id=uuid.UUID(sys.argv[2])))
        print(json.dumps({"run_id": out.run_id, "reason": out.finish_reason.value,
                          "pending": [p.call_id for p in out.pending]}), flush=True)
        os.kill(os.getpid(), 9)  # the process dies with the run paused

    asyncio.run(main())
    """
)


async def test_a_run_paused_in_a_killed_process_is_approved_from_another(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    session = uuid.uuid4()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, str(db), str(session),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    out, err = await asyncio.wait_for(child.communicate(), 120)
    assert child.returncode == -9, err.decode()
    paused = json.loads(out)
    assert paused["reason"] == "awaiting_approval" and paused["pending"] == ["c1"]

    deployed: list[str] = []

    @tool(requires_approval=True)
    def deploy(env: str) -> str:
        """Deploy."""
        deployed.append(env)
        return f"deployed to {env}"

    seen: list[ChatRequest] = []

    def model(req: ChatRequest) -> Any:
        seen.append(req)
        return text_turn("shipped after approval")

    store = SqliteStore(db)
    runtime = AgentRuntime(providers=[ScriptedProvider(model)], tools=[deploy], store=store)
    record = await store.get_run(paused["run_id"])
    assert record is not None and record.status == "awaiting_approval"  # not "interrupted"

    output = await runtime.approve(paused["run_id"], "c1")

    assert output is not None and output.output_text == "shipped after approval"
    assert deployed == ["prod"]
    roles = [m.role for m in await runtime.history(session)]
    assert roles == ["user", "assistant", "tool", "assistant"]
    assert seen[-1].messages[-1].content == "deployed to prod"
    await store.close()


def test_a_remote_submitter_rebuilds_the_pending_calls_from_the_events() -> None:
    from rxinvoke import ApprovalRequested, RunCompleted
    from rxinvoke.transports.remote import _Outcome

    outcome = _Outcome()
    run_id, session = "r1", uuid.uuid4()
    outcome.add(ApprovalRequested(run_id=run_id, call_id="c1", tool_name="deploy", arguments='{"env": "prod"}'))
    settled = outcome.settle(
        RunCompleted(run_id=run_id, finish_reason=FinishReason.AWAITING_APPROVAL, iterations=1), run_id, session
    )
    assert not isinstance(settled, Exception)
    assert [(p.call_id, p.tool_name, p.approved) for p in settled.pending] == [("c1", "deploy", None)]


async def test_an_idempotent_emit_of_a_paused_run_returns_its_pending_output() -> None:
    rig = Rig([tool_calls_turn(BATCH)])
    request = RunRequest(
        provider="scripted", model="scripted", input="go", session_id=rig.session, client_request_id="k1"
    )
    first = await rig.runtime.run(request)
    again = await rig.runtime.run(request)  # the same key: the paused run's outcome, not a failure
    assert again.run_id == first.run_id and again.pending == first.pending
    assert again.finish_reason is FinishReason.AWAITING_APPROVAL
