"""The whole rxinvoke exception tree.

```
RxInvokeError                         base; .message, structured attributes, picklable
├── UserError                         wrong use of the API (bad handler, bad configuration)
├── InvocationError                   what emit() raises; .kind, .run_id
│   ├── InvalidRequest(ValueError)    empty input, unknown provider/model (before any event)
│   ├── InvocationCancelled           Control.cancel() honoured
│   └── InvocationFailed              the run ended with run_failed; .cause
│       └── InvocationTimedOut(TimeoutError)   the run deadline expired
├── ProviderError                     .provider, .model
│   ├── ProviderHTTPError             .status_code, .body, .retry_after
│   │   └── ProviderContextOverflow   the context is too long for the model (compaction retries)
│   ├── ProviderConnectionError       connect/read failures
│   └── ProviderStreamError           malformed stream, stream ended without a finish
├── ToolError                         .tool_name, .call_id (becomes data in tool_execution_finished)
│   ├── UnknownTool
│   ├── ToolArgumentsError            arguments are not JSON or fail the tool's schema
│   ├── ToolExecutionError            the tool raised
│   └── ToolTimeout(TimeoutError)
├── StoreError                        a store could not load or persist data
│   ├── MigrationError                the database schema is from a newer rxinvoke, or corrupt
│   ├── SessionBusy                   another process runs the session now; .session_id, .run_id
│   ├── SessionAwaitingApproval       the session's last run waits for approval; .session_id, .run_id
│   ├── RunAlreadyStored              begin_run: a run with that id is stored already; .run_id
│   └── UnknownRun(LookupError)       no run with that id is stored; .run_id
├── TransportError                    the broker between processes (Redis) failed; .where
├── ResumeGap                         a run stream no longer holds what was asked for; .first_available
└── SubscriberError                   a handler raised or timed out; surfaced on `errors`
    └── SubscriberOverflow            a subscription's buffer overflowed
```

Run failures are published as events (``run_failed``), never as ``on_error`` on the runtime
subject: an errored reactivex Subject is dead for every subscriber. Foreign exceptions are
translated once, at the boundary where they occur, with ``raise X(...) from exc``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

__all__ = (
    "InvalidRequest",
    "InvocationCancelled",
    "InvocationError",
    "InvocationErrorKind",
    "InvocationFailed",
    "InvocationTimedOut",
    "MigrationError",
    "ProviderConnectionError",
    "ProviderContextOverflow",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderStreamError",
    "ResumeGap",
    "RunAlreadyStored",
    "RxInvokeError",
    "SessionAwaitingApproval",
    "SessionBusy",
    "StoreError",
    "SubscriberError",
    "SubscriberOverflow",
    "ToolArgumentsError",
    "ToolError",
    "ToolExecutionError",
    "ToolTimeout",
    "TransportError",
    "UnknownRun",
    "UnknownTool",
    "UserError",
    "redacted",
)

_E = TypeVar("_E", bound="RxInvokeError")

InvocationErrorKind = Literal["cancelled", "invalid_request", "runtime", "timeout"]


class RxInvokeError(Exception):
    """Base class of every error rxinvoke raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def _state(self) -> dict[str, Any]:
        return dict(vars(self))

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only constructors do not survive the default pickling; rebuild from state.
        return (_rebuild, (type(self), self._state()))


def _rebuild(cls: type[RxInvokeError], state: dict[str, Any]) -> RxInvokeError:
    error = cls.__new__(cls)
    Exception.__init__(error, state.get("message", ""))
    error.__dict__.update(state)
    return error


def redacted(error: _E, redact: Callable[[str], str]) -> _E:
    """A copy of ``error`` whose text attributes went through ``redact``, with no cause and
    no context (a chain that held a secret is dropped whole). Raise it outside an ``except``
    block, or Python attaches the handled exception as its context again."""
    state = {k: redact(v) if isinstance(v, str) else v for k, v in vars(error).items()}
    copy = _rebuild(type(error), state)
    assert isinstance(copy, type(error))
    return copy


class UserError(RxInvokeError):
    """A usage mistake by the application developer: a bad handler, tool or configuration."""


class InvocationError(RxInvokeError):
    """Raised by ``RuntimeInvocation.emit`` and ``AgentRuntime.run`` when a run does not complete."""

    kind: InvocationErrorKind = "runtime"

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class InvalidRequest(InvocationError, ValueError):
    """The request is invalid; raised before any event is published."""

    kind: InvocationErrorKind = "invalid_request"


class InvocationCancelled(InvocationError):
    """The run was cancelled through its ``Control`` (before or during the run)."""

    kind: InvocationErrorKind = "cancelled"


class InvocationFailed(InvocationError):
    """The run ended with ``run_failed``; ``cause`` is the underlying error, if any."""

    def __init__(
        self, message: str, *, run_id: str | None = None, cause: BaseException | None = None
    ) -> None:
        super().__init__(message, run_id=run_id)
        self.cause = cause


class InvocationTimedOut(InvocationFailed, TimeoutError):
    """The run's deadline (``Control.set_timeout``) expired; the run ended with ``run_failed``."""

    kind: InvocationErrorKind = "timeout"


class ProviderError(RxInvokeError):
    """A chat provider failed to produce a complete response."""

    def __init__(self, provider: str, model: str, message: str) -> None:
        super().__init__(f"{provider}/{model}: {message}")
        self.provider = provider
        self.model = model


class ProviderHTTPError(ProviderError):
    """The provider answered with an HTTP error status."""

    def __init__(
        self,
        provider: str,
        model: str,
        status_code: int,
        body: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(provider, model, f"HTTP {status_code}: {body[:200]}")
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after


class ProviderContextOverflow(ProviderHTTPError):
    """The provider refused the request because its context is too long for the model (the
    runtime compacts the context once and retries). Providers that cannot tell raise a plain
    ``ProviderHTTPError``; a 400/413 whose message says the context is too long counts too."""


class ProviderConnectionError(ProviderError):
    """The provider could not be reached, or the connection broke."""


class ProviderStreamError(ProviderError):
    """The provider's stream was malformed or ended without a finish."""


class ToolError(RxInvokeError):
    """A tool call could not be executed successfully."""

    def __init__(self, tool_name: str, call_id: str, message: str) -> None:
        super().__init__(message)
        self.tool_name = tool_name
        self.call_id = call_id


class UnknownTool(ToolError):
    """The model asked for a tool that is not registered."""


class ToolArgumentsError(ToolError):
    """The tool-call arguments are not valid JSON or do not match the tool's schema."""


class ToolExecutionError(ToolError):
    """The tool raised an exception."""


class ToolTimeout(ToolError, TimeoutError):
    """The tool did not finish within its timeout."""


class StoreError(RxInvokeError):
    """The store could not load or persist data."""


class MigrationError(StoreError):
    """The database cannot be brought to this version's schema (e.g. it is from a newer one)."""


class SessionBusy(StoreError):
    """A run of the session is running in another process (a store shared between
    processes): nothing was written; the runtime waits (``wait_session``) and tries again."""

    def __init__(self, session_id: str, run_id: str) -> None:
        super().__init__(f"session {session_id}: run {run_id!r} of another process is running")
        self.session_id = session_id
        self.run_id = run_id


class SessionAwaitingApproval(StoreError):
    """The session's last run paused for approval: no other run may start on it until that
    run's calls are approved or denied (its continuation answers them). Nothing was written."""

    def __init__(self, session_id: str, run_id: str) -> None:
        super().__init__(
            f"session {session_id}: run {run_id!r} is awaiting approval of its tool calls; "
            "approve or deny them (approve/deny) before the session runs again"
        )
        self.session_id = session_id
        self.run_id = run_id


class RunAlreadyStored(StoreError):
    """``begin_run`` refused a run whose id is stored already (nothing was written)."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id!r} is already stored")
        self.run_id = run_id


class UnknownRun(StoreError, LookupError):
    """No run with this id is stored."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"unknown run {run_id!r}")
        self.run_id = run_id


class TransportError(RxInvokeError):
    """The transport between processes (a Redis server) could not be reached or refused a
    command: submitting, following or cancelling a run elsewhere. ``where`` names the server
    (no password)."""

    def __init__(self, message: str, *, where: str = "") -> None:
        super().__init__(message)
        self.where = where


class ResumeGap(RxInvokeError):
    """A run's live event stream no longer holds what was asked for: retention trimmed the
    envelopes after ``after_seq`` up to ``first_available - 1`` (read them from the store)."""

    def __init__(self, run_id: str, after_seq: int, first_available: int) -> None:
        super().__init__(
            f"run {run_id!r}: events after seq {after_seq} were trimmed from its stream; "
            f"the first available is seq {first_available}"
        )
        self.run_id = run_id
        self.after_seq = after_seq
        self.first_available = first_available


class SubscriberError(RxInvokeError):
    """A subscriber (handler or observer) failed; reported on ``errors``, never raised into a run."""

    def __init__(
        self,
        message: str,
        *,
        subscription: str,
        event: Any | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.subscription = subscription
        self.event = event
        self.cause = cause


class SubscriberOverflow(SubscriberError):
    """A subscription's bounded buffer overflowed; ``dropped`` events were not delivered."""

    def __init__(
        self, message: str, *, subscription: str, dropped: int, event: Any | None = None
    ) -> None:
        super().__init__(message, subscription=subscription, event=event)
        self.dropped = dropped
