"""Context compaction: older turns summarised by a model call, with a circuit breaker per
session.

Before each model call (:meth:`Compactor.prepare`) the context is pruned (old tool outputs,
``CompactionPolicy.prune``) and, when the model's limits are known and the context would take
more than ``trigger_ratio`` of the usable window, compacted (*proactive*). A provider that
refuses the context as too long gets one compaction and one retry (*reactive*,
:meth:`Compactor.rescue`). A compaction publishes ``compaction_started`` and
``compaction_finished``; the summary is committed as a checkpoint message (nothing is
deleted) and the run's context becomes ``_context.build_context`` of it.

The summarising call goes through the runtime's model-call rule (retries) with the policy's
``timeout``; its stream is not published (its text is not the run's answer). A failure is not
fatal: it is counted and the run goes on with its context as it was. After
``circuit_breaker_threshold`` consecutive failures of one session its breaker opens
(``compaction_circuit_opened``): proactive compaction of that session is skipped until
``cooldown`` has passed on the runtime's scheduler, then one attempt is let through (half-open);
a success closes it, a failure opens it again. Breakers live in this process (a restarted
process starts with every breaker closed).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from reactivex import abc

from ._context import (
    CHECKPOINT_PREFIX,
    build_context,
    estimate_tokens,
    prune_tool_outputs,
    spec_tokens,
    split_for_compaction,
)
from ._model_call import call_model
from ._run import Run
from .errors import InvocationError, ProviderContextOverflow, ProviderError, ProviderHTTPError
from .events import (
    CompactionCircuitOpened,
    CompactionFinished,
    CompactionStarted,
    InvocationEvent,
)
from .messages import ChatRequest, Compaction, Message, TokenUsage, ToolChoice, ToolSpec
from .policy import ModelLimits, RuntimePolicy
from .providers.base import ChatProvider, ProviderRegistry

__all__ = ("Compactor", "is_context_overflow")

Reason = Literal["proactive", "reactive"]

_OVERFLOW_HINTS = (
    "context_length_exceeded",
    "context length",
    "context window",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "input is too long",
    "reduce the length",
)

SUMMARY_INSTRUCTIONS = (
    "You compact the earlier part of a conversation between a user and an AI assistant that "
    "uses tools, so the assistant can continue without it. Write a concise summary as notes: "
    "the user's goals and constraints, decisions taken, facts learned from tools (with the key "
    "values, names, ids, paths and URLs), what was already tried, and what is still open. "
    "When a previous summary is given, update it with the new turns: keep what still matters, "
    "drop what no longer does. Answer with the summary only."
)


def is_context_overflow(error: BaseException) -> bool:
    """True when a provider refused the request because its context is too long."""
    if isinstance(error, ProviderContextOverflow):
        return True
    if isinstance(error, ProviderHTTPError) and error.status_code in (400, 413):
        body = error.body.lower()
        return any(hint in body for hint in _OVERFLOW_HINTS)
    return False


def _transcript(messages: Sequence[Message], clip: int = 2000) -> str:
    lines: list[str] = []
    for message in messages:
        if message.role == "tool":
            text = message.content
            if len(text) > clip:
                text = f"{text[:clip]} … [{len(text) - clip} more characters]"
            lines.append(f"[tool result {message.tool_call_id}]\n{text}")
            continue
        if message.content:
            lines.append(f"[{message.role}]\n{message.content}")
        for call in message.tool_calls:
            lines.append(f"[assistant calls {call.name} ({call.id})] {call.arguments}")
    return "\n\n".join(lines)


@dataclass
class _Breaker:
    failures: int = 0
    opened_at: datetime | None = None


class Compactor:
    """The runtime's compaction part (one per runtime; breakers per session)."""

    def __init__(
        self,
        policy: RuntimePolicy,
        providers: ProviderRegistry,
        publish: Callable[[InvocationEvent], None],
        commit: Callable[[uuid.UUID, Sequence[Message]], Awaitable[Any]],
        clock: Callable[[], abc.SchedulerBase],
    ) -> None:
        self._policy = policy
        self._providers = providers
        self._publish = publish
        self._commit = commit
        self._clock = clock
        self._breakers: dict[uuid.UUID, _Breaker] = {}
        self._specs: tuple[tuple[ToolSpec, ...], int] | None = None

    def breaker_state(self, session_id: uuid.UUID) -> Literal["closed", "open", "half-open"]:
        """The session's breaker: ``closed`` (compaction allowed), ``open`` (proactive
        compaction skipped) or ``half-open`` (the cooldown passed: one attempt allowed)."""
        breaker = self._breakers.get(session_id)
        if breaker is None or breaker.opened_at is None:
            return "closed"
        waited = (self._clock().now - breaker.opened_at).total_seconds()
        return "half-open" if waited >= self._policy.compaction.cooldown else "open"

    def limits(self, provider: ChatProvider, model: str) -> ModelLimits | None:
        """The model's limits: the policy's for that model, the provider's, the policy's
        default; None when nothing says."""
        policy = self._policy.compaction
        limits = policy.limits_by_model.get(model)
        if limits is not None:
            return limits
        hook = getattr(provider, "model_limits", None)
        if callable(hook):
            found = hook(model)
            if isinstance(found, ModelLimits):
                return found
        return policy.limits

    @staticmethod
    def count(provider: ChatProvider, messages: Sequence[Message]) -> int:
        """Tokens of ``messages``: the provider's ``count_tokens`` when it has one, else the
        estimate."""
        hook = getattr(provider, "count_tokens", None)
        if callable(hook):
            counted = hook(messages)
            if isinstance(counted, int):
                return counted
        return estimate_tokens(messages)

    def _spec_tokens(self, specs: tuple[ToolSpec, ...]) -> int:
        cached = self._specs
        if cached is None or len(cached[0]) != len(specs) or any(
            a is not b for a, b in zip(cached[0], specs, strict=True)
        ):
            cached = self._specs = (specs, spec_tokens(specs))
        return cached[1]

    async def prepare(
        self, run: Run, messages: list[Message], specs: tuple[ToolSpec, ...]
    ) -> tuple[list[Message], TokenUsage | None]:
        """The context to send for the next model call (pruned, compacted first when it would
        overflow), and what a compaction cost. ``messages`` (the run's context) is replaced by
        its compacted form when one succeeds."""
        policy = self._policy.compaction
        if not policy.enabled:
            return messages, None
        usage = None
        view = self.view(messages)
        limits = self.limits(run.provider, run.request.model or "")
        if limits is not None and self.breaker_state(run.session_id) != "open":
            extra_tokens = self._spec_tokens(specs)
            tokens = self.count(run.provider, view) + extra_tokens
            if tokens > limits.usable * policy.trigger_ratio:
                compacted, usage = await self._attempt(
                    run, messages, "proactive", tokens, extra_tokens
                )
                if compacted:
                    view = self.view(messages)
        return view, usage

    async def rescue(
        self, run: Run, messages: list[Message], specs: tuple[ToolSpec, ...]
    ) -> tuple[bool, TokenUsage | None]:
        """After the provider refused the context as too long: compact once (even with the
        breaker open: the run fails otherwise). (compacted, what it cost)."""
        if not self._policy.compaction.enabled:
            return False, None
        extra_tokens = self._spec_tokens(specs)
        tokens = self.count(run.provider, self.view(messages)) + extra_tokens
        return await self._attempt(run, messages, "reactive", tokens, extra_tokens)

    def view(self, messages: list[Message]) -> list[Message]:
        """The context sent for ``messages``: old tool outputs pruned (when the policy says)."""
        policy = self._policy.compaction
        if not policy.prune:
            return messages
        return prune_tool_outputs(messages, policy.prune_protect_tokens, policy.prune_minimum_tokens)

    async def _attempt(
        self, run: Run, messages: list[Message], reason: Reason, tokens: int, extra_tokens: int
    ) -> tuple[bool, TokenUsage | None]:
        """Compact ``messages`` in place: (whether it did, what the summarising call cost)."""
        split = split_for_compaction(messages, self._policy.compaction.tail_turns)
        if split is None:
            return False, None  # nothing older than the kept turns: no attempt
        checkpoint, older, keep = split
        run_id = run.run_id
        summarized = len(older) + (
            checkpoint.compaction.messages_summarized
            if checkpoint is not None and checkpoint.compaction is not None
            else 0
        )
        self._publish(
            CompactionStarted(run_id=run_id, reason=reason, tokens_before=tokens, messages=len(older))
        )
        started = time.perf_counter()
        try:
            summary, usage = await self._summarise(run, checkpoint, older)
        except (ProviderError, InvocationError) as exc:
            self._publish(
                CompactionFinished(
                    run_id=run_id,
                    reason=reason,
                    succeeded=False,
                    tokens_before=tokens,
                    tokens_after=tokens,
                    messages_summarized=0,
                    duration_ms=(time.perf_counter() - started) * 1000.0,
                    error=exc.message,
                )
            )
            self._failed(run)
            return False, None
        mark = Compaction(
            keeps_from=messages[keep].id,
            messages_summarized=summarized,
            tokens_before=tokens,
            tokens_after=0,
        )
        draft = Message(
            role="system", content=CHECKPOINT_PREFIX + summary, run_id=run_id, compaction=mark
        )
        context = build_context([*messages, draft])
        after = self.count(run.provider, context) + extra_tokens
        checkpoint = draft.model_copy(
            update={"compaction": mark.model_copy(update={"tokens_after": after})}
        )
        await self._commit(run.session_id, [checkpoint])
        messages[:] = [checkpoint if m is draft else m for m in context]
        self._breakers.pop(run.session_id, None)
        self._publish(
            CompactionFinished(
                run_id=run_id,
                reason=reason,
                succeeded=True,
                tokens_before=tokens,
                tokens_after=after,
                messages_summarized=summarized,
                duration_ms=(time.perf_counter() - started) * 1000.0,
                usage=usage,
            )
        )
        return True, usage

    def _failed(self, run: Run) -> None:
        policy = self._policy.compaction
        breaker = self._breakers.setdefault(run.session_id, _Breaker())
        breaker.failures += 1
        half_open = breaker.opened_at is not None
        if breaker.failures >= policy.circuit_breaker_threshold or half_open:
            breaker.opened_at = self._clock().now
            self._publish(
                CompactionCircuitOpened(run_id=run.run_id, consecutive_failures=breaker.failures)
            )

    async def _summarise(
        self, run: Run, checkpoint: Message | None, older: Sequence[Message]
    ) -> tuple[str, TokenUsage | None]:
        policy = self._policy.compaction
        provider = run.provider
        model = policy.model or run.request.model or ""
        if policy.provider is not None and policy.provider != run.request.provider:
            found = self._providers.get(policy.provider)
            if found is None:
                raise ProviderError(policy.provider, model, "the compaction provider is not registered")
            provider = found
            if policy.model is None:
                models = tuple(found.models)
                model = models[0] if len(models) == 1 else model
        parts = []
        if checkpoint is not None:
            parts.append("Previous summary:\n" + checkpoint.content.removeprefix(CHECKPOINT_PREFIX))
        parts.append("Conversation to fold into the summary:\n\n" + _transcript(older))
        chat = ChatRequest(
            provider=provider.id,
            model=model,
            messages=(
                Message(role="system", content=SUMMARY_INSTRUCTIONS),
                Message(role="user", content="\n\n".join(parts)),
            ),
            tool_choice=ToolChoice.none(),
            run_id=run.run_id,
        )
        accumulated = await call_model(
            provider,
            chat,
            run_id=run.run_id,
            policy=self._policy.model_copy(update={"provider_timeout": policy.timeout}),
            publish=_unpublished,
            scheduler=self._clock(),
        )
        text = accumulated.message(run.run_id).content.strip()
        if not text:
            raise ProviderError(provider.id, model, "the summarising call returned no text")
        return text[: policy.max_summary_chars], accumulated.usage


def _unpublished(_event: InvocationEvent) -> None:
    """The summarising call's stream is not the run's: nothing of it is published."""
