"""ToolExecutor: validate arguments, run tools with a timeout and a concurrency bound.

Every failure (unknown tool, arguments that are not JSON or fail the schema, an exception, a
timeout) becomes a ``ToolFailure`` result, never an exception out of ``execute``;
cancellation is always re-raised.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from reactivex import abc

from ._clock import loop_scheduler
from .errors import ToolError, ToolExecutionError, ToolTimeout, UnknownTool
from .events import (
    InvocationEvent,
    ToolFailure,
    ToolResult,
    ToolSuccess,
    tool_execution_finished,
    tool_execution_started,
)
from .messages import ToolCall, valid_text
from .policy import RuntimePolicy
from .tools import ToolRegistry, render_output

__all__ = ("ToolExecutor",)


class ToolExecutor:
    """Runs one turn's tool calls and publishes their execution events."""

    def __init__(
        self,
        registry: ToolRegistry,
        policy: RuntimePolicy,
        publish: Callable[[InvocationEvent], None],
        *,
        clock: Callable[[], abc.SchedulerBase] | None = None,
    ) -> None:
        self._clock = clock  # the scheduler tool timeouts are timed on (default: the loop)
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
        self._publish(tool_execution_started(run_id, call.id, call.name))
        started = time.perf_counter()
        try:
            output = await self._run(call)
            result: ToolResult = ToolSuccess(output=self._truncate(output))
        except ToolError as exc:
            result = ToolFailure(error=exc.message, error_type=type(exc).__name__)
        self._publish(
            tool_execution_finished(
                run_id, call.id, call.name, result, (time.perf_counter() - started) * 1000.0
            )
        )
        return result

    async def _run(self, call: ToolCall) -> str:
        tool = self._registry.get(call.name)
        if tool is None:
            available = ", ".join(self._registry.names) or "none"
            what = f"unknown tool {call.name!r}" if call.name else "a tool call without a name"
            raise UnknownTool(call.name, call.id, f"{what}; available tools: {available}")
        arguments = tool.parse_arguments(call.arguments, call_id=call.id)
        timeout = tool.timeout if tool.timeout is not None else self._policy.tool_timeout
        work: Awaitable[str]
        if tool.is_async or tool.thread:
            work = tool.invoke(arguments)
        else:
            # Inline on the loop: nothing can cancel it, so any exception is the tool's own
            # (CancelledError included), and no deadline can interrupt it.
            try:
                result = tool.function(**arguments)
            except ToolError:
                raise
            except (Exception, asyncio.CancelledError) as exc:
                raise self._raised(call, exc) from exc
            if not inspect.isawaitable(result):
                return render_output(result)
            work = _rendered(result)  # a plain function that returned an awaitable
        # Its own task, awaited with asyncio.wait: a CancelledError the tool raises itself
        # (nothing cancelled it) is told apart from the run's cancellation on every Python.
        task = asyncio.ensure_future(work)
        expired = False
        timer: abc.DisposableBase | None = None
        if timeout is not None:

            def expire(_: abc.SchedulerBase, __: Any = None) -> None:
                nonlocal expired
                expired = True
                task.cancel()

            clock = self._clock() if self._clock is not None else loop_scheduler(None)
            timer = clock.schedule_relative(timeout, expire)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})
            raise
        finally:
            if timer is not None:
                timer.dispose()
        if expired and task.cancelled():
            raise ToolTimeout(call.name, call.id, f"tool {call.name!r} timed out after {timeout:g}s")
        if task.cancelled():
            raise ToolExecutionError(
                call.name, call.id, f"tool {call.name!r} raised CancelledError (nothing cancelled it)"
            )
        error = task.exception()
        if error is None:
            return task.result()
        if isinstance(error, ToolError):
            raise error
        raise self._raised(call, error) from error

    @staticmethod
    def _raised(call: ToolCall, exc: BaseException) -> ToolExecutionError:
        return ToolExecutionError(
            call.name, call.id, f"tool {call.name!r} raised {type(exc).__name__}: {exc}"
        )

    def _truncate(self, output: str) -> str:
        output = valid_text(output)
        limit = self._policy.max_tool_output_chars
        if len(output) <= limit:
            return output
        return output[:limit] + f"\n[truncated {len(output) - limit} characters]"


async def _rendered(awaitable: Awaitable[Any]) -> str:
    return render_output(await awaitable)
