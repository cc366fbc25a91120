"""ToolExecutor: validate arguments, run tools with a timeout and a concurrency bound.

Every failure (unknown tool, arguments that are not JSON or fail the schema, an exception, a
timeout) becomes a ``ToolFailure`` result, never an exception out of ``execute``;
cancellation is always re-raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

from ._compat import wait_with_timeout
from .errors import ToolError, ToolExecutionError, ToolTimeout, UnknownTool
from .events import (
    InvocationEvent,
    ToolExecutionFinished,
    ToolExecutionStarted,
    ToolFailure,
    ToolResult,
    ToolSuccess,
)
from .messages import ToolCall
from .policy import RuntimePolicy
from .tools import ToolRegistry

__all__ = ("ToolExecutor",)


class ToolExecutor:
    """Runs one turn's tool calls and publishes their execution events."""

    def __init__(
        self,
        registry: ToolRegistry,
        policy: RuntimePolicy,
        publish: Callable[[InvocationEvent], None],
    ) -> None:
        self._registry = registry
        self._policy = policy
        self._publish = publish

    async def execute(
        self, calls: Sequence[ToolCall], *, run_id: str, limit: int
    ) -> list[ToolResult]:
        """Results in call order; at most ``limit`` tools execute at once."""
        if len(calls) == 1:
            return [await self._execute_one(calls[0], run_id)]
        semaphore = asyncio.Semaphore(limit)

        async def bounded(call: ToolCall) -> ToolResult:
            async with semaphore:
                return await self._execute_one(call, run_id)

        return list(await asyncio.gather(*(bounded(call) for call in calls)))

    async def _execute_one(self, call: ToolCall, run_id: str) -> ToolResult:
        self._publish(ToolExecutionStarted(run_id=run_id, call_id=call.id, tool_name=call.name))
        started = time.perf_counter()
        try:
            output = await self._run(call)
            result: ToolResult = ToolSuccess(output=self._truncate(output))
        except ToolError as exc:
            result = ToolFailure(error=exc.message, error_type=type(exc).__name__)
        self._publish(
            ToolExecutionFinished(
                run_id=run_id,
                call_id=call.id,
                tool_name=call.name,
                result=result,
                duration_ms=(time.perf_counter() - started) * 1000.0,
            )
        )
        return result

    async def _run(self, call: ToolCall) -> str:
        tool = self._registry.get(call.name)
        if tool is None:
            available = ", ".join(self._registry.names) or "none"
            raise UnknownTool(
                call.name, call.id, f"unknown tool {call.name!r}; available tools: {available}"
            )
        arguments = tool.parse_arguments(call.arguments, call_id=call.id)
        timeout = tool.timeout if tool.timeout is not None else self._policy.tool_timeout

        async def invoke() -> str:
            # The tool's own exceptions (a TimeoutError of its own included) are translated
            # here, inside the deadline, so only the deadline itself becomes a ToolTimeout.
            try:
                return await tool.invoke(arguments)
            except ToolError:
                raise
            except Exception as exc:
                raise ToolExecutionError(
                    call.name, call.id, f"tool {call.name!r} raised {type(exc).__name__}: {exc}"
                ) from exc

        if timeout is None:
            return await invoke()
        try:
            return await wait_with_timeout(invoke(), timeout)
        except ToolError:
            raise
        except asyncio.TimeoutError as exc:  # not builtin TimeoutError on 3.10
            raise ToolTimeout(
                call.name, call.id, f"tool {call.name!r} timed out after {timeout:g}s"
            ) from exc

    def _truncate(self, output: str) -> str:
        limit = self._policy.max_tool_output_chars
        if len(output) <= limit:
            return output
        return output[:limit] + f"\n[truncated {len(output) - limit} characters]"
