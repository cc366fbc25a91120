"""rxinvoke: run LLM agent loops and observe every step as a typed reactive stream.

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

from ._version import __version__ as __version__
from .bus import EventBus as EventBus
from .bus import Overflow as Overflow
from .bus import SubscriptionStats as SubscriptionStats
from .control import Control as Control
from .control import SessionContext as SessionContext
from .errors import InvalidRequest as InvalidRequest
from .errors import InvocationCancelled as InvocationCancelled
from .errors import InvocationError as InvocationError
from .errors import InvocationFailed as InvocationFailed
from .errors import InvocationTimedOut as InvocationTimedOut
from .errors import MigrationError as MigrationError
from .errors import ProviderConnectionError as ProviderConnectionError
from .errors import ProviderError as ProviderError
from .errors import ProviderHTTPError as ProviderHTTPError
from .errors import ProviderStreamError as ProviderStreamError
from .errors import RxInvokeError as RxInvokeError
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
from .eventlog import EventLog as EventLog
from .events import AGENT_EVENT as AGENT_EVENT
from .events import CHAT_STREAM_EVENT as CHAT_STREAM_EVENT
from .events import INVOCATION_EVENT as INVOCATION_EVENT
from .events import AgentEvent as AgentEvent
from .events import AssistantMessageCommitted as AssistantMessageCommitted
from .events import ChatFinished as ChatFinished
from .events import ChatStarted as ChatStarted
from .events import ChatStreamEvent as ChatStreamEvent
from .events import ChatTextDelta as ChatTextDelta
from .events import ChatToolCallArgumentsDelta as ChatToolCallArgumentsDelta
from .events import ChatToolCallCompleted as ChatToolCallCompleted
from .events import ChatToolCallStarted as ChatToolCallStarted
from .events import CompactionCircuitOpened as CompactionCircuitOpened
from .events import ContextBuilt as ContextBuilt
from .events import DoomLoopDetected as DoomLoopDetected
from .events import EventBase as EventBase
from .events import EventKind as EventKind
from .events import InvocationEvent as InvocationEvent
from .events import ModelStarted as ModelStarted
from .events import RunCancelled as RunCancelled
from .events import RunCompleted as RunCompleted
from .events import RunFailed as RunFailed
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
from .messages import FinishReason as FinishReason
from .messages import Message as Message
from .messages import ModelName as ModelName
from .messages import ProviderId as ProviderId
from .messages import TokenUsage as TokenUsage
from .messages import ToolCall as ToolCall
from .messages import ToolChoice as ToolChoice
from .messages import ToolSpec as ToolSpec
from .operators import coalesce_text as coalesce_text
from .operators import for_run as for_run
from .operators import of_kind as of_kind
from .operators import text_of as text_of
from .operators import to_async_iterator as to_async_iterator
from .operators import until_terminal as until_terminal
from .policy import RuntimePolicy as RuntimePolicy
from .provider import ChatProvider as ChatProvider
from .provider import ProviderRegistry as ProviderRegistry
from .provider_offline import OfflineProvider as OfflineProvider
from .provider_scripted import ScriptedProvider as ScriptedProvider
from .request import EmitRequest as EmitRequest
from .request import RunOutput as RunOutput
from .request import RunRequest as RunRequest
from .runtime import AgentRuntime as AgentRuntime
from .store import EventEnvelope as EventEnvelope
from .store import MemoryStore as MemoryStore
from .store import RunRecord as RunRecord
from .store import RunStatus as RunStatus
from .store import Store as Store
from .store_sqlite import SqliteStore as SqliteStore
from .tools import Tool as Tool
from .tools import ToolRegistry as ToolRegistry
from .tools import tool as tool
from .tools_builtin import builtin_tools as builtin_tools

__all__ = (
    "AGENT_EVENT",
    "AgentEvent",
    "AgentRuntime",
    "AssistantMessageCommitted",
    "Build",
    "builtin_tools",
    "CHAT_STREAM_EVENT",
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
    "CompactionCircuitOpened",
    "ContextBuilt",
    "Control",
    "DoomLoopDetected",
    "EmitRequest",
    "EventBase",
    "EventBus",
    "EventEnvelope",
    "EventKind",
    "EventLog",
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
    "ModelName",
    "ModelStarted",
    "of_kind",
    "OfflineProvider",
    "Overflow",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderHTTPError",
    "ProviderId",
    "ProviderRegistry",
    "ProviderStreamError",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunOutput",
    "RunRecord",
    "RunRequest",
    "RunStarted",
    "RunStatus",
    "RuntimeInvocation",
    "RuntimePolicy",
    "RxInvokeError",
    "ScriptedProvider",
    "SessionContext",
    "SqliteStore",
    "Store",
    "StoreError",
    "SubscriberError",
    "SubscriberOverflow",
    "SubscriptionStats",
    "text_of",
    "TextDelta",
    "to_async_iterator",
    "TokenUsage",
    "Tool",
    "tool",
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
    "ToolRegistry",
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
