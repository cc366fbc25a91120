"""rxinvoke: run LLM agent loops and observe every step as a typed reactive stream.

The package in data-flow order (request → runtime → provider stream → events → bus →
subscribers → stores / transports / notebook):

- ``request``, ``control``, ``policy``  what a caller asks for, how it is stopped, the limits
- ``messages``, ``events``, ``errors``  the values: messages, the event contract, the error tree
- ``tools``                 ``@tool``: typed functions the model can call; the built-in tools
- ``providers/``            chat models streaming chat events: offline, scripted, openai
- ``runtime``               ``AgentRuntime``: the agent loop, composed of its private parts:
  ``_sessions`` (one run per session), ``_claim`` (the run's claim in the store),
  ``_run`` (run state, cancel and deadline),
  ``_model_call`` (the provider stream and its retries), ``_accumulate`` (stream → message),
  ``_execute`` (tools), ``_context`` (history → context)
- ``_bus``                  the hot, kind-indexed Subject every event is published on
- ``_eventlog``             numbers each run's events (seq) and writes them to the store
- ``stores/``               where sessions, runs and event logs live: memory, sqlite, postgres
- ``invocation``            the facade: ``emit`` / ``on`` (``_sink``) / ``observe`` / ``stream`` and
  ``runs`` (``_runstream``: one run as a ``RunStream``)
- ``operators``             pipeable operators over event streams
- ``transports/``           runs across processes: the transport seam, Redis Streams, the event
  mirror, remote submit / observe / cancel, workers (imported on demand)
- ``cli``                   the ``rxinvoke`` command (``run``, ``runs``, ``events``, ``worker``,
  ``submit``, ``cancel``)

Example:
    >>> import asyncio, rxinvoke
    >>> runtime = rxinvoke.AgentRuntime(
    ...     providers=[rxinvoke.OfflineProvider()], tools=rxinvoke.builtin_tools())
    >>> inv = rxinvoke.RuntimeInvocation(runtime)
    >>> async def main() -> str:
    ...     out = await inv.emit(lambda ctx, control: rxinvoke.EmitRequest(
    ...         provider="offline", model="offline", input="what is 2 + 3?"))
    ...     return out.output_text
    >>> asyncio.run(main())
    '2 + 3 = 5.'
"""

import importlib as _importlib
import sys as _sys
import warnings as _warnings
from typing import Any as _Any

from ._aiter import Dropped as Dropped
from ._runstream import RunStream as RunStream
from ._runstream import RunStreamLike as RunStreamLike
from ._sink import Overflow as Overflow
from ._sink import SubscriptionStats as SubscriptionStats
from ._version import __version__ as __version__
from .control import Control as Control
from .control import SessionContext as SessionContext
from .errors import InvalidRequest as InvalidRequest
from .errors import InvocationCancelled as InvocationCancelled
from .errors import InvocationError as InvocationError
from .errors import InvocationFailed as InvocationFailed
from .errors import InvocationTimedOut as InvocationTimedOut
from .errors import MigrationError as MigrationError
from .errors import ProviderConnectionError as ProviderConnectionError
from .errors import ProviderContextOverflow as ProviderContextOverflow
from .errors import ProviderError as ProviderError
from .errors import ProviderHTTPError as ProviderHTTPError
from .errors import ProviderStreamError as ProviderStreamError
from .errors import RxInvokeError as RxInvokeError
from .errors import SessionAwaitingApproval as SessionAwaitingApproval
from .errors import StoreError as StoreError
from .errors import SubscriberError as SubscriberError
from .errors import SubscriberOverflow as SubscriberOverflow
from .errors import ToolArgumentsError as ToolArgumentsError
from .errors import ToolError as ToolError
from .errors import ToolExecutionError as ToolExecutionError
from .errors import ToolTimeout as ToolTimeout
from .errors import UnknownRun as UnknownRun
from .errors import UnknownTool as UnknownTool
from .errors import UserError as UserError
from .events import INVOCATION_EVENT as INVOCATION_EVENT
from .events import AgentEvent as AgentEvent
from .events import ApprovalDecided as ApprovalDecided
from .events import ApprovalRequested as ApprovalRequested
from .events import AssistantMessageCommitted as AssistantMessageCommitted
from .events import ChatFinished as ChatFinished
from .events import ChatStarted as ChatStarted
from .events import ChatStreamEvent as ChatStreamEvent
from .events import ChatTextDelta as ChatTextDelta
from .events import ChatToolCallArgumentsDelta as ChatToolCallArgumentsDelta
from .events import ChatToolCallCompleted as ChatToolCallCompleted
from .events import ChatToolCallStarted as ChatToolCallStarted
from .events import CompactionCircuitOpened as CompactionCircuitOpened
from .events import CompactionFinished as CompactionFinished
from .events import CompactionStarted as CompactionStarted
from .events import ContextBuilt as ContextBuilt
from .events import DoomLoopDetected as DoomLoopDetected
from .events import EventBase as EventBase
from .events import EventKind as EventKind
from .events import InvocationEvent as InvocationEvent
from .events import ModelRetried as ModelRetried
from .events import ModelStarted as ModelStarted
from .events import RunCancelled as RunCancelled
from .events import RunCompleted as RunCompleted
from .events import RunFailed as RunFailed
from .events import RunResumed as RunResumed
from .events import RunStarted as RunStarted
from .events import TextDelta as TextDelta
from .events import ToolCallCompleted as ToolCallCompleted
from .events import ToolCallDelta as ToolCallDelta
from .events import ToolCallStarted as ToolCallStarted
from .events import ToolExecutionFinished as ToolExecutionFinished
from .events import ToolExecutionStarted as ToolExecutionStarted
from .events import ToolFailure as ToolFailure
from .events import ToolMessageCommitted as ToolMessageCommitted
from .events import ToolResult as ToolResult
from .events import ToolSuccess as ToolSuccess
from .events import UsageRecorded as UsageRecorded
from .invocation import Build as Build
from .invocation import Handler as Handler
from .invocation import InvocationHandle as InvocationHandle
from .invocation import RuntimeInvocation as RuntimeInvocation
from .messages import ChatRequest as ChatRequest
from .messages import Compaction as Compaction
from .messages import FinishReason as FinishReason
from .messages import Message as Message
from .messages import TokenUsage as TokenUsage
from .messages import ToolCall as ToolCall
from .messages import ToolChoice as ToolChoice
from .messages import ToolSpec as ToolSpec
from .notebook import RunView as RunView
from .notebook import to_dataframe as to_dataframe
from .notebook import to_records as to_records
from .operators import accumulate_text as accumulate_text
from .operators import coalesce_text as coalesce_text
from .operators import for_run as for_run
from .operators import of_kind as of_kind
from .operators import per_run as per_run
from .operators import text_of as text_of
from .operators import throttle_latest as throttle_latest
from .operators import to_async_iterator as to_async_iterator
from .operators import until_terminal as until_terminal
from .policy import ApprovalPolicy as ApprovalPolicy
from .policy import CompactionPolicy as CompactionPolicy
from .policy import DoomLoopPolicy as DoomLoopPolicy
from .policy import ModelLimits as ModelLimits
from .policy import RuntimePolicy as RuntimePolicy
from .providers import ChatProvider as ChatProvider
from .providers import OfflineProvider as OfflineProvider
from .providers import ScriptedProvider as ScriptedProvider
from .request import EmitRequest as EmitRequest
from .request import PendingApproval as PendingApproval
from .request import RunOutput as RunOutput
from .request import RunRequest as RunRequest
from .runtime import AgentRuntime as AgentRuntime
from .spans import Span as Span
from .spans import spans as spans
from .stores import MemoryStore as MemoryStore
from .stores import PostgresStore as PostgresStore
from .stores import RunRecord as RunRecord
from .stores import RunStatus as RunStatus
from .stores import SqliteStore as SqliteStore
from .stores import Store as Store
from .tools import Tool as Tool
from .tools import builtin_tools as builtin_tools
from .tools import tool as tool

__all__ = (
    "accumulate_text",
    "AgentEvent",
    "AgentRuntime",
    "ApprovalDecided",
    "ApprovalPolicy",
    "ApprovalRequested",
    "AssistantMessageCommitted",
    "Build",
    "builtin_tools",
    "ChatFinished",
    "ChatProvider",
    "ChatRequest",
    "ChatStarted",
    "ChatStreamEvent",
    "ChatTextDelta",
    "ChatToolCallArgumentsDelta",
    "ChatToolCallCompleted",
    "ChatToolCallStarted",
    "coalesce_text",
    "Compaction",
    "CompactionCircuitOpened",
    "CompactionFinished",
    "CompactionPolicy",
    "CompactionStarted",
    "ContextBuilt",
    "Control",
    "DoomLoopDetected",
    "DoomLoopPolicy",
    "Dropped",
    "EmitRequest",
    "EventBase",
    "EventKind",
    "FinishReason",
    "for_run",
    "Handler",
    "InvalidRequest",
    "INVOCATION_EVENT",
    "InvocationCancelled",
    "InvocationError",
    "InvocationEvent",
    "InvocationFailed",
    "InvocationHandle",
    "InvocationTimedOut",
    "MemoryStore",
    "Message",
    "MigrationError",
    "ModelLimits",
    "ModelRetried",
    "ModelStarted",
    "of_kind",
    "OfflineProvider",
    "Overflow",
    "PendingApproval",
    "per_run",
    "PostgresStore",
    "ProviderConnectionError",
    "ProviderContextOverflow",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderStreamError",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunOutput",
    "RunRecord",
    "RunRequest",
    "RunResumed",
    "RunStarted",
    "RunStatus",
    "RunStream",
    "RunStreamLike",
    "RuntimeInvocation",
    "RuntimePolicy",
    "RunView",
    "RxInvokeError",
    "ScriptedProvider",
    "SessionAwaitingApproval",
    "SessionContext",
    "Span",
    "spans",
    "SqliteStore",
    "Store",
    "StoreError",
    "SubscriberError",
    "SubscriberOverflow",
    "SubscriptionStats",
    "text_of",
    "TextDelta",
    "throttle_latest",
    "to_async_iterator",
    "to_dataframe",
    "to_records",
    "TokenUsage",
    "tool",
    "Tool",
    "ToolArgumentsError",
    "ToolCall",
    "ToolCallCompleted",
    "ToolCallDelta",
    "ToolCallStarted",
    "ToolChoice",
    "ToolError",
    "ToolExecutionError",
    "ToolExecutionFinished",
    "ToolExecutionStarted",
    "ToolFailure",
    "ToolMessageCommitted",
    "ToolResult",
    "ToolSpec",
    "ToolSuccess",
    "ToolTimeout",
    "UnknownRun",
    "UnknownTool",
    "until_terminal",
    "UsageRecorded",
    "UserError",
)

# Importable from the top level on first use: their module needs an optional extra.
_LAZY: dict[str, str] = {
    "AnthropicProvider": "rxinvoke.providers.anthropic",
    "OpenAIProvider": "rxinvoke.providers.openai",
}

# Plumbing that left the top level: still reachable here, with a DeprecationWarning, for one
# release; import it from its module instead.
_MOVED: dict[str, str] = {
    "AGENT_EVENT": "rxinvoke.events",
    "CHAT_STREAM_EVENT": "rxinvoke.events",
    "EventBus": "rxinvoke._bus",
    "EventEnvelope": "rxinvoke.stores",
    "EventLog": "rxinvoke._eventlog",
    "ModelName": "rxinvoke.messages",
    "ProviderId": "rxinvoke.messages",
    "ProviderRegistry": "rxinvoke.providers",
    "ToolRegistry": "rxinvoke.tools",
}


if "IPython" in _sys.modules:  # inside IPython/Jupyter: values render as HTML
    from .notebook import install as _install_notebook

    _install_notebook()


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None and name in _MOVED:
        module = _MOVED[name]
        _warnings.warn(
            f"rxinvoke.{name} is deprecated: import it from {module}",
            DeprecationWarning,
            stacklevel=2,
        )
    if module is None:
        raise AttributeError(f"module 'rxinvoke' has no attribute {name!r}")
    return getattr(_importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
