"""What a caller asks for (EmitRequest, RunRequest) and what a run returns (RunOutput)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict, overload

from pydantic import Field

from ._display import clip, short_id
from ._frozen import Frozen as _Frozen
from ._frozen import fill_trusted, trusted
from .messages import FinishReason, ModelName, ProviderId, TokenUsage, ToolChoice

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ("EmitRequest", "PendingApproval", "RunOutput", "RunRequest")


_POSITIONAL = {1: ("input",), 3: ("provider", "model", "input")}


class _RequestFields(_Frozen):
    """What an emit and a run request both say (written once, copied by ``into_run_request``).

    Positional forms: ``Request(input)`` and ``Request(provider, model, input)``.
    """

    provider: ProviderId | None = None
    """The provider to run on; None: the runtime's default (its only provider, or
    ``AgentRuntime(default_provider=...)``)."""
    model: ModelName | None = None
    """The model; None: the runtime's default (``default_model``, or the provider's only one)."""
    input: str
    """The user message that starts the run."""

    def __init__(self, /, *args: str, **data: Any) -> None:
        if not args and type(self) is EmitRequest and len(data) == 3 and _fill_emit(self, data):
            return
        if args:
            names = _POSITIONAL.get(len(args))
            if names is None:
                raise TypeError(
                    f"{type(self).__name__}() takes (input) or (provider, model, input) "
                    f"positionally, got {len(args)} positional arguments"
                )
            for name, value in zip(names, args, strict=True):
                if name in data:
                    raise TypeError(f"{type(self).__name__}() got {name!r} twice")
                data[name] = value
        super().__init__(**data)
    session_id: uuid.UUID | None = None
    """The session to continue; a new session when None."""
    client_request_id: str | None = None
    """The caller's idempotency key: a second emit with the same key joins the first run."""
    metadata: dict[str, Any] | None = None
    """Caller metadata kept with the run, never sent to the model."""


class RunRequest(_RequestFields):
    """Everything the runtime needs to start a run."""

    if TYPE_CHECKING:  # the positional forms, as EmitRequest's

        @overload
        def __init__(self, input: str, /, **options: Unpack[_RunOptions]) -> None: ...
        @overload
        def __init__(
            self, provider: str, model: str, input: str, /, **options: Unpack[_RunOptions]
        ) -> None: ...
        @overload
        def __init__(
            self, /, *, input: str, provider: str | None = None, model: str | None = None,
            **options: Unpack[_RunOptions],
        ) -> None: ...
        def __init__(self, /, *args: str, **data: Any) -> None: ...

    run_id: str | None = None
    """A caller-chosen run id; generated when None."""
    tool_choice: ToolChoice = Field(default_factory=ToolChoice.auto)
    system_prompt: str | None = None
    """A system message placed before the history of a new session."""
    resumes: str | None = None
    """Set by the runtime on the run that continues a run paused for approval (its id): it
    answers the paused tool calls instead of adding a user message."""
    timeout: float | None = Field(default=None, gt=0)
    """A whole-run deadline (seconds) for a worker to apply: ``submit``'s ``Control`` timeout
    (a run in this process takes its ``Control`` as it is)."""
    concurrency_limit: int | None = Field(default=None, ge=1)
    """Tools of a turn executing at once at most, for a worker: ``submit``'s ``Control``."""
    trace_context: dict[str, str] | None = None
    """The W3C trace context (``traceparent``, …) current where the run was submitted to
    workers, set by ``submit`` when OpenTelemetry is in use: the worker runs the run in it,
    so its spans are children of the submitter's span."""


class _EmitOptions(TypedDict, total=False):
    """The keywords of an :class:`EmitRequest` besides provider, model and input (for type
    checkers: the positional forms' signatures)."""

    session_id: uuid.UUID | str | None
    client_request_id: str | None
    metadata: dict[str, Any] | None


class _RunOptions(_EmitOptions, total=False):
    """The keywords of a :class:`RunRequest` besides provider, model and input."""

    run_id: str | None
    tool_choice: ToolChoice
    system_prompt: str | None
    resumes: str | None
    timeout: float | None
    concurrency_limit: int | None
    trace_context: dict[str, str] | None


class EmitRequest(_RequestFields):
    """The request an ``emit`` build callback returns; fluent ``with_*`` copies refine it."""

    if TYPE_CHECKING:  # the positional forms: a type checker's keyword-only __init__ lacks them

        @overload
        def __init__(self, input: str, /, **options: Unpack[_EmitOptions]) -> None: ...
        @overload
        def __init__(
            self, provider: str, model: str, input: str, /, **options: Unpack[_EmitOptions]
        ) -> None: ...
        @overload
        def __init__(
            self, /, *, input: str, provider: str | None = None, model: str | None = None,
            **options: Unpack[_EmitOptions],
        ) -> None: ...
        def __init__(self, /, *args: str, **data: Any) -> None: ...

    def with_session_id(self, session_id: uuid.UUID | str) -> EmitRequest:
        """A copy that continues the session ``session_id``."""
        return self._replace(session_id=session_id)

    def with_client_request_id(self, client_request_id: str) -> EmitRequest:
        """A copy tagged with the caller's idempotency key."""
        return self._replace(client_request_id=client_request_id)

    def with_metadata(self, metadata: dict[str, Any]) -> EmitRequest:
        """A copy carrying caller metadata (kept with the run, never sent to the model)."""
        return self._replace(metadata=dict(metadata))

    def _replace(self, **update: Any) -> EmitRequest:
        # a validated copy (model_copy(update=...) would skip validation)
        return EmitRequest.model_validate({**self.__dict__, **update})

    def into_run_request(self, **update: Any) -> RunRequest:
        """The RunRequest for this emit (tool choice auto), with ``update`` applied."""
        run_id = update.get("run_id")
        session_id = update.get("session_id", self.session_id)
        if (
            update.keys() <= _IDS
            and (run_id is None or type(run_id) is str)
            and (session_id is None or type(session_id) is uuid.UUID)
        ):  # what emit gives every run: this request's checked fields and two checked ids
            mine = self.__dict__
            metadata = mine["metadata"]
            return trusted(
                RunRequest,
                {
                    "provider": mine["provider"], "model": mine["model"], "input": mine["input"],
                    "session_id": session_id, "client_request_id": mine["client_request_id"],
                    "metadata": None if metadata is None else dict(metadata),  # as validation copies
                    "run_id": run_id, "tool_choice": _AUTO, "system_prompt": None, "resumes": None,
                    "timeout": None, "concurrency_limit": None, "trace_context": None,
                },
            )
        fields = {name: getattr(self, name) for name in _RequestFields.model_fields}
        return RunRequest(**{**fields, **update})


_IDS = frozenset({"run_id", "session_id"})
_AUTO = ToolChoice.auto()  # frozen: shared


_NAMED = {"provider", "model", "input"}  # the fields set of EmitRequest(provider=, model=, input=)


def _fill_emit(request: EmitRequest, data: dict[str, Any]) -> bool:
    """Fill ``EmitRequest(provider=..., model=..., input=...)`` without the validator when the
    three are text that is valid as it is (a provider and a model non-empty and stripped, as
    their constraints make them); False, filling nothing, for anything else."""
    provider, model, text = data.get("provider"), data.get("model"), data.get("input")
    if not (
        type(provider) is str and type(model) is str and type(text) is str
        and provider and model and provider.strip() == provider and model.strip() == model
    ):
        return False
    fill_trusted(
        request,
        {
            "provider": provider, "model": model, "input": text, "session_id": None,
            "client_request_id": None, "metadata": None,
        },
        _NAMED,
    )
    return True


class PendingApproval(_Frozen):
    """A tool call of a paused run that waits for a person (``approve`` / ``deny``), and the
    decision once taken."""

    call_id: str
    tool_name: str
    arguments: str
    """The call's JSON arguments, as the model wrote them."""
    approved: bool | None = None
    """None until decided."""
    reason: str | None = None
    """Why it was denied (or "approval timed out")."""
    expires_at: datetime | None = None
    """When the approval policy's timeout applies (None: it waits forever)."""

    @property
    def is_decided(self) -> bool:
        return self.approved is not None


class RunOutput(_Frozen):
    """The result of a completed run."""

    run_id: str
    session_id: uuid.UUID
    iterations: int
    finish_reason: FinishReason
    total_usage: TokenUsage
    output_text: str
    """The text of the last assistant message."""
    pending: tuple[PendingApproval, ...] = ()
    """With ``finish_reason=awaiting_approval``: the calls waiting for a decision."""

    @classmethod
    def checked(
        cls,
        run_id: str,
        session_id: uuid.UUID,
        iterations: int,
        finish_reason: FinishReason,
        total_usage: TokenUsage,
        output_text: str,
        pending: tuple[PendingApproval, ...] = (),
    ) -> RunOutput:
        """A RunOutput from values the runtime checked (no validation: every run)."""
        return trusted(
            cls,
            {
                "run_id": run_id, "session_id": session_id, "iterations": iterations,
                "finish_reason": finish_reason, "total_usage": total_usage,
                "output_text": output_text, "pending": pending,
            },
        )

    def __repr__(self) -> str:
        usage = self.total_usage
        return clip(
            f"RunOutput(run {short_id(self.run_id)}, {self.finish_reason.value}, "
            f"{self.iterations} iteration{'s' if self.iterations != 1 else ''}, tokens "
            f"{usage.input_tokens}/{usage.output_tokens}/{usage.total_tokens}, "
            f"{clip(self.output_text, 60)!r})",
            159,
        )
