"""``@tool``: a typed Python function becomes a tool the model can call; the built-in tools.

The JSON schema comes from the function's signature (pydantic); the model's JSON arguments are
parsed and validated against it before the function runs. Async functions are awaited; plain
functions run inline on the event loop (cheap, ~1 µs) unless declared ``@tool(thread=True)``, in
which case they run in a worker thread and can be timed out.

Built in: ``calculate`` (safe arithmetic) and ``now`` (the current UTC time), the tools the
offline provider knows how to use (:func:`builtin_tools`).
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import math
import operator
import typing
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Annotated, Any, TypeVar, overload

import pydantic
import pydantic_core

from .errors import ToolArgumentsError, UserError
from .messages import ToolSpec

__all__ = ("Tool", "ToolRegistry", "builtin_tools", "calculate", "now", "tool")

_F = TypeVar("_F", bound=Callable[..., Any])


class Tool:
    """A callable tool: name, description, argument model and the function itself."""

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        thread: bool = False,
        requires_approval: bool | Callable[[dict[str, Any]], bool] = False,
    ) -> None:
        if not callable(function):
            raise UserError(f"a tool must be callable, got {function!r}")
        if not isinstance(requires_approval, bool) and not callable(requires_approval):
            raise UserError(
                f"requires_approval must be a bool or a predicate on the arguments, got "
                f"{requires_approval!r}"
            )
        self.requires_approval = requires_approval
        self.function = function
        self.name = name or function.__name__
        doc = inspect.getdoc(function) or ""
        self.description = description if description is not None else doc.split("\n\n")[0]
        self.timeout = timeout
        self.thread = thread
        self.is_async = inspect.iscoroutinefunction(function)
        self.arguments_model = _arguments_model(function, self.name)
        schema = self.arguments_model.model_json_schema()
        schema.pop("title", None)
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
        self.parameters: dict[str, Any] = schema
        self._spec: tuple[str, str, dict[str, Any], ToolSpec] | None = None

    @property
    def spec(self) -> ToolSpec:
        """What a provider is told about this tool: built once (every run's model calls send
        it), again after ``name``, ``description`` or ``parameters`` is replaced (a change made
        inside the ``parameters`` dict is not seen: assign a new one)."""
        cached = self._spec
        if (
            cached is None
            or cached[0] != self.name
            or cached[1] != self.description
            or cached[2] is not self.parameters
        ):
            spec = ToolSpec(name=self.name, description=self.description, parameters=self.parameters)
            cached = self._spec = (self.name, self.description, self.parameters, spec)
        return cached[3]

    def needs_approval(self, arguments: str) -> bool:
        """Whether a call with these JSON ``arguments`` waits for a person: the tool's
        ``requires_approval``, its predicate applied to the parsed arguments (arguments that do
        not parse, or a predicate that raises, need approval: the safe side)."""
        rule = self.requires_approval
        if isinstance(rule, bool):
            return rule
        try:
            parsed = json.loads(arguments.strip() or "{}")
            return bool(rule(parsed if isinstance(parsed, dict) else {}))
        except Exception:
            return True

    def parse_arguments(self, arguments: str, *, call_id: str = "") -> dict[str, Any]:
        """Validate the model's JSON ``arguments``; raise ToolArgumentsError with a clear message."""
        text = arguments.strip() or "{}"
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ToolArgumentsError(
                self.name, call_id, f"arguments for tool {self.name!r} are not valid JSON: {exc}"
            ) from exc
        if not isinstance(raw, dict):
            raise ToolArgumentsError(
                self.name, call_id, f"arguments for tool {self.name!r} must be a JSON object"
            )
        try:
            model = self.arguments_model.model_validate(raw)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )
            raise ToolArgumentsError(
                self.name, call_id, f"invalid arguments for tool {self.name!r}: {problems}"
            ) from exc
        return {
            info.alias or field: getattr(model, field)
            for field, info in type(model).model_fields.items()
        }

    async def invoke(self, arguments: dict[str, Any]) -> str:
        """Run the function with validated arguments; the result rendered as text."""
        if self.is_async:
            result = await self.function(**arguments)
        elif self.thread:
            result = await asyncio.to_thread(self.function, **arguments)
        else:
            result = self.function(**arguments)
            if inspect.isawaitable(result):
                result = await result
        return render_output(result)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r})"


def render_output(result: Any) -> str:
    """A tool result as the text the model sees (strings as they are, the rest as JSON)."""
    if isinstance(result, str):
        return result
    return pydantic_core.to_json(result).decode()


def _arguments_model(function: Callable[..., Any], name: str) -> type[pydantic.BaseModel]:
    signature = inspect.signature(function)
    try:
        hints = typing.get_type_hints(function, include_extras=True)
    except Exception as exc:  # unresolved forward references
        raise UserError(f"cannot resolve the type hints of tool {name!r}: {exc}") from exc
    fields: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UserError(f"tool {name!r}: *args/**kwargs parameters are not supported")
        if param.kind is param.POSITIONAL_ONLY:  # invoke() passes arguments by keyword
            raise UserError(f"tool {name!r}: positional-only parameters are not supported")
        annotation = hints.get(param.name, Any)
        default = ... if param.default is param.empty else param.default
        # Neutral field names, the parameter name as alias: parameters called like BaseModel
        # attributes (``json``, ``schema``) or starting with ``_`` work like any other.
        fields[f"arg{len(fields)}"] = (
            Annotated[annotation, pydantic.Field(alias=param.name)],
            default,
        )
    model_name = "".join(part.capitalize() for part in name.split("_")) + "Arguments"
    config = pydantic.ConfigDict(extra="forbid")
    model: type[pydantic.BaseModel] = pydantic.create_model(
        model_name, __config__=config, **fields
    )
    return model


@overload
def tool(function: _F, /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    thread: bool = False,
    requires_approval: bool | Callable[[dict[str, Any]], bool] = False,
) -> Callable[[_F], Tool]: ...


def tool(
    function: _F | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    thread: bool = False,
    requires_approval: bool | Callable[[dict[str, Any]], bool] = False,
) -> Tool | Callable[[_F], Tool]:
    """Turn a typed function into a :class:`Tool`; usable as ``@tool`` or ``@tool(...)``.

    Args:
        name: the tool name the model sees (default: the function name).
        description: default: the first paragraph of the docstring.
        timeout: seconds, overriding ``RuntimePolicy.tool_timeout`` for this tool.
        thread: run a plain function in a worker thread instead of inline.
        requires_approval: True, or a predicate on the parsed arguments: such a call waits for
            a person (the run pauses, ``finish_reason=awaiting_approval``).

    Example:
        >>> @tool
        ... def add(a: int, b: int) -> int:
        ...     '''Add two integers.'''
        ...     return a + b
        >>> add.spec.parameters["required"]
        ['a', 'b']
    """

    def wrap(fn: _F) -> Tool:
        return Tool(
            fn,
            name=name,
            description=description,
            timeout=timeout,
            thread=thread,
            requires_approval=requires_approval,
        )

    return wrap(function) if function is not None else wrap


class ToolRegistry:
    """Tools by name."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for item in tools:
            self.add(item)

    def add(self, item: Tool | Callable[..., Any]) -> Tool:
        """Register a Tool (or a plain function, wrapped with ``tool``)."""
        registered = item if isinstance(item, Tool) else Tool(item)
        if registered.name in self._tools:
            raise UserError(f"a tool named {registered.name!r} is already registered")
        self._tools[registered.name] = registered
        return registered

    def get(self, name: str) -> Tool | None:
        """The tool called ``name``, or None."""
        return self._tools.get(name)

    @property
    def names(self) -> tuple[str, ...]:
        """Registered tool names, in registration order."""
        return tuple(self._tools)

    def specs(self) -> tuple[ToolSpec, ...]:
        """Specs of every registered tool, for a ChatRequest."""
        return tuple(t.spec for t in self._tools.values())

    def __len__(self) -> int:
        return len(self._tools)


# --- built-in tools -----------------------------------------------------------------------

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_MAX_POW_BITS = 100_000
_MAX_EXPRESSION = 2_000
"""Characters of one ``calculate`` expression at most."""
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def _evaluate(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            raise ValueError("exponent too large")
        # Nested powers ((9**999)**999)**999 pass the exponent check but would take minutes
        # and gigabytes inline on the event loop: bound the size of an integer result.
        if (
            isinstance(node.op, ast.Pow)
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and abs(left).bit_length() * right > _MAX_POW_BITS
        ):
            raise ValueError("result too large")
        return _BINARY[type(node.op)](left, right)  # type: ignore[no-any-return]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))  # type: ignore[no-any-return]
    raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % ** and parentheses) exactly.

    Args:
        expression: the expression, e.g. "2 + 3 * (4 - 1)".
    """
    text = expression.replace("^", "**").strip()
    if len(text) > _MAX_EXPRESSION:
        raise ValueError(
            f"expression too long ({len(text):,} characters; at most {_MAX_EXPRESSION:,})"
        )
    try:
        tree = ast.parse(text, mode="eval")
        value = _evaluate(tree)
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {expression[:80]!r}") from exc
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    return str(value)


@tool
def now() -> str:
    """The current date and time in UTC, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def builtin_tools() -> tuple[Tool, ...]:
    """The tools the offline provider knows how to use."""
    return (calculate, now)
