"""``@tool``, argument parsing, ToolRegistry and the built-in tools."""

import asyncio
import datetime as dt
import threading
from typing import Annotated, Any, Literal

import pydantic
import pytest

from rxinvoke import (
    Tool,
    ToolArgumentsError,
    ToolSpec,
    UserError,
    builtin_tools,
    tool,
)
from rxinvoke.tools import ToolRegistry, calculate, now


class Point(pydantic.BaseModel):
    x: int
    y: int


@tool
def add(a: int, b: int = 1) -> int:
    """Add two integers.

    The second paragraph is not part of the description.
    """
    return a + b


@tool
async def shout(text: str, times: int = 1) -> str:
    """Upper-case ``text``."""
    await asyncio.sleep(0)
    return " ".join([text.upper()] * times)


@tool(name="search_notes", description="Search the user's notes.", timeout=2.5)
def search(
    query: str,
    limit: int = 10,
    exact: bool = False,
    tags: list[str] | None = None,
    mode: Literal["fast", "full"] = "fast",
    score: float = 0.5,
) -> list[str]:
    """Not used: the description is given explicitly."""
    return [query] * min(limit, 2)


@tool
def norm(point: Point) -> float:
    """Manhattan norm of a point."""
    return float(abs(point.x) + abs(point.y))


# --- @tool ------------------------------------------------------------------------------------


def test_tool_on_a_sync_function() -> None:
    assert isinstance(add, Tool)
    assert add.name == "add"
    assert add.is_async is False
    assert add(2, 3) == 5  # still callable as the function
    assert repr(add) == "Tool(name='add')"


async def test_tool_on_an_async_function() -> None:
    assert isinstance(shout, Tool)
    assert shout.is_async is True
    assert await shout.invoke({"text": "hi", "times": 2}) == "HI HI"


async def test_invoke_runs_a_sync_function_and_renders_its_result() -> None:
    assert await add.invoke({"a": 2, "b": 3}) == "5"


async def test_invoke_awaits_an_awaitable_returned_by_a_sync_function() -> None:
    async def later() -> str:
        return "done"

    @tool
    def deferred() -> Any:
        """Return a coroutine."""
        return later()

    assert await deferred.invoke({}) == "done"


async def test_thread_tool_runs_in_a_worker_thread() -> None:
    seen: list[int] = []

    @tool(thread=True)
    def where() -> str:
        """Record the thread."""
        seen.append(threading.get_ident())
        return "ok"

    assert where.thread is True
    assert await where.invoke({}) == "ok"
    assert seen and seen[0] != threading.get_ident()


@pytest.mark.parametrize(
    ("result", "text"),
    [
        ("plain text", "plain text"),
        (5, "5"),
        (3.5, "3.5"),
        (True, "true"),
        (None, "null"),
        ({"a": 1, "b": [1, 2]}, '{"a":1,"b":[1,2]}'),
        ([1, "x"], '[1,"x"]'),
        (Point(x=1, y=2), '{"x":1,"y":2}'),
        (dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc), '"2025-01-02T03:04:05Z"'),
    ],
)
async def test_invoke_renders_non_str_results_as_json(result: object, text: str) -> None:
    @tool
    def give() -> object:
        """Return the value."""
        return result

    assert await give.invoke({}) == text


# --- schema -----------------------------------------------------------------------------------


def test_schema_required_and_defaulted_parameters() -> None:
    params = add.parameters
    assert params["type"] == "object"
    assert params["required"] == ["a"]
    assert params["properties"] == {
        "a": {"type": "integer"},
        "b": {"type": "integer", "default": 1},
    }
    assert params["additionalProperties"] is False
    assert "title" not in params


def test_schema_types_from_annotations() -> None:
    props = search.parameters["properties"]
    assert search.parameters["required"] == ["query"]
    assert props["query"] == {"type": "string"}
    assert props["limit"] == {"type": "integer", "default": 10}
    assert props["exact"] == {"type": "boolean", "default": False}
    assert props["score"] == {"type": "number", "default": 0.5}
    assert props["mode"]["enum"] == ["fast", "full"]
    assert props["mode"]["default"] == "fast"
    assert {"type": "array", "items": {"type": "string"}} in props["tags"]["anyOf"]
    assert props["tags"]["default"] is None


def test_schema_of_a_model_parameter() -> None:
    schema = norm.parameters
    assert schema["required"] == ["point"]
    assert "$defs" in schema
    assert schema["$defs"]["Point"]["required"] == ["x", "y"]


def test_schema_of_a_function_without_parameters() -> None:
    assert now.parameters == {"type": "object", "properties": {}, "additionalProperties": False}


def test_description_is_the_first_docstring_paragraph() -> None:
    assert add.description == "Add two integers."
    assert shout.description == "Upper-case ``text``."


def test_description_is_empty_without_a_docstring() -> None:
    @tool
    def bare(x: int) -> int:
        return x

    assert bare.description == ""


def test_name_description_and_timeout_overrides() -> None:
    assert search.name == "search_notes"
    assert search.description == "Search the user's notes."
    assert search.timeout == 2.5
    assert search.spec == ToolSpec(
        name="search_notes", description="Search the user's notes.", parameters=search.parameters
    )
    assert search("x") == ["x", "x"]


def test_spec_is_what_the_provider_sees() -> None:
    spec = add.spec
    assert isinstance(spec, ToolSpec)
    assert (spec.name, spec.description) == ("add", "Add two integers.")
    assert spec.parameters == add.parameters


def test_a_spec_is_built_once_and_again_after_its_parts_are_replaced() -> None:
    @tool
    def ping(host: str) -> str:
        """Ping a host."""
        return host

    first = ping.spec
    assert ping.spec is first  # every run's model calls send it: not rebuilt each time
    ping.description = "Ping a host, twice."
    assert ping.spec.description == "Ping a host, twice." and ping.spec is not first
    ping.name = "ping2"
    assert ping.spec.name == "ping2"
    ping.parameters = {**ping.parameters, "required": []}
    assert ping.spec.parameters["required"] == []
    assert ToolRegistry([ping]).specs() == (ping.spec,)


def test_field_constraints_and_descriptions_reach_schema_and_validation() -> None:
    @tool
    def pick(
        count: Annotated[int, pydantic.Field(ge=1, le=5, description="How many.")] = 1,
        label: str = pydantic.Field("x", max_length=3, description="A short label."),
    ) -> str:
        """Pick things."""
        return label * count

    props = pick.parameters["properties"]
    assert props["count"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 5,
        "default": 1,
        "description": "How many.",
    }
    assert props["label"]["maxLength"] == 3
    assert props["label"]["description"] == "A short label."
    assert pick.parse_arguments("") == {"count": 1, "label": "x"}
    with pytest.raises(ToolArgumentsError, match="count: Input should be less than or equal to 5"):
        pick.parse_arguments('{"count": 9}')
    with pytest.raises(ToolArgumentsError, match="label: "):
        pick.parse_arguments('{"label": "toolong"}')


@pytest.mark.parametrize("name", ["json", "schema", "copy", "validate", "dict", "model_name"])
def test_parameters_named_like_model_attributes(name: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def echo({name}: str) -> str:\n    '''Echo.'''\n    return {name}\n", namespace)
    echo = tool(namespace["echo"])
    assert echo.parameters["required"] == [name]
    assert echo.parameters["properties"] == {name: {"type": "string"}}
    assert echo.parse_arguments(f'{{"{name}": "v"}}') == {name: "v"}


async def test_underscore_parameter_is_in_the_schema_and_passed() -> None:
    @tool
    def private(_hidden: int) -> int:
        """Use an underscore name."""
        return _hidden * 2

    assert private.parameters["required"] == ["_hidden"]
    arguments = private.parse_arguments('{"_hidden": 4}')
    assert arguments == {"_hidden": 4}
    assert await private.invoke(arguments) == "8"


@pytest.mark.parametrize(
    "source",
    [
        "def f(*args: int) -> int:\n    return 0\n",
        "def f(**kwargs: int) -> int:\n    return 0\n",
        "def f(a: int, *rest: int) -> int:\n    return 0\n",
        "def f(a: int, /) -> int:\n    return a\n",
    ],
)
def test_unsupported_parameter_kinds_raise_user_error(source: str) -> None:
    namespace: dict[str, Any] = {}
    exec(source, namespace)
    with pytest.raises(UserError, match="tool 'f'"):
        tool(namespace["f"])


def test_unresolvable_annotation_raises_user_error() -> None:
    def broken(a):  # type: ignore[no-untyped-def]
        return a

    broken.__annotations__ = {"a": "NoSuchType"}
    with pytest.raises(UserError, match="type hints of tool 'broken'"):
        tool(broken)


def test_non_callable_raises_user_error() -> None:
    with pytest.raises(UserError, match="callable"):
        Tool(42)  # type: ignore[arg-type]


# --- parse_arguments --------------------------------------------------------------------------


def test_parse_valid_arguments_fills_defaults() -> None:
    assert add.parse_arguments('{"a": 2}') == {"a": 2, "b": 1}
    assert add.parse_arguments('{"a": 2, "b": 5}') == {"a": 2, "b": 5}
    assert search.parse_arguments('{"query": "x", "tags": ["a"]}') == {
        "query": "x",
        "limit": 10,
        "exact": False,
        "tags": ["a"],
        "mode": "fast",
        "score": 0.5,
    }


def test_parse_builds_model_arguments() -> None:
    arguments = norm.parse_arguments('{"point": {"x": 3, "y": -4}}')
    assert arguments == {"point": Point(x=3, y=-4)}
    assert isinstance(arguments["point"], Point)


@pytest.mark.parametrize("text", ["", "   ", "\n"])
def test_empty_arguments_are_an_empty_object(text: str) -> None:
    assert now.parse_arguments(text) == {}
    assert search.parse_arguments(text.join(['{"query": "q"', "}"]))["query"] == "q"
    with pytest.raises(ToolArgumentsError, match="query"):
        search.parse_arguments(text)  # {} lacks the required field


def test_invalid_json_is_reported() -> None:
    with pytest.raises(ToolArgumentsError, match="not valid JSON") as info:
        add.parse_arguments('{"a": 2', call_id="call_7")
    error = info.value
    assert error.tool_name == "add"
    assert error.call_id == "call_7"
    assert "'add'" in error.message
    assert isinstance(error.__cause__, ValueError)


@pytest.mark.parametrize("text", ["[1, 2]", '"a"', "3", "null", "true"])
def test_non_object_json_is_rejected(text: str) -> None:
    with pytest.raises(ToolArgumentsError, match="must be a JSON object"):
        add.parse_arguments(text)


def test_wrong_type_names_the_field() -> None:
    with pytest.raises(ToolArgumentsError) as info:
        add.parse_arguments('{"a": "two"}')
    message = info.value.message
    assert message.startswith("invalid arguments for tool 'add': a: ")
    assert "integer" in message
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_nested_wrong_type_names_the_path() -> None:
    with pytest.raises(ToolArgumentsError, match=r"point\.y: "):
        norm.parse_arguments('{"point": {"x": 1, "y": "north"}}')


def test_missing_field_is_named() -> None:
    with pytest.raises(ToolArgumentsError, match="a: Field required"):
        add.parse_arguments('{"b": 2}')


def test_extra_field_is_rejected() -> None:
    with pytest.raises(ToolArgumentsError, match="c: Extra inputs are not permitted"):
        add.parse_arguments('{"a": 1, "c": 3}')


def test_several_problems_are_all_reported() -> None:
    with pytest.raises(ToolArgumentsError) as info:
        add.parse_arguments('{"a": "x", "b": "y"}')
    assert "a: " in info.value.message
    assert "; b: " in info.value.message


# --- ToolRegistry -----------------------------------------------------------------------------


def test_registry_registers_tools_and_plain_functions() -> None:
    def double(x: int) -> int:
        """Double x."""
        return 2 * x

    registry = ToolRegistry([add, shout])
    wrapped = registry.add(double)
    assert isinstance(wrapped, Tool)
    assert wrapped.name == "double"
    assert registry.names == ("add", "shout", "double")
    assert len(registry) == 3
    assert registry.get("shout") is shout
    assert registry.get("missing") is None
    assert registry.specs() == (add.spec, shout.spec, wrapped.spec)


def test_registry_rejects_duplicate_names() -> None:
    registry = ToolRegistry([add])
    twin = tool(name="add")(lambda a: a)
    with pytest.raises(UserError, match="'add' is already registered"):
        registry.add(twin)
    with pytest.raises(UserError, match="already registered"):
        ToolRegistry([calculate, calculate])
    assert registry.get("add") is add
    assert len(registry) == 1


def test_builtin_tools() -> None:
    tools = builtin_tools()
    assert tools == (calculate, now)
    assert [t.name for t in tools] == ["calculate", "now"]
    assert calculate.parameters["required"] == ["expression"]
    assert calculate.description.startswith("Evaluate an arithmetic expression")


# --- calculate --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("2 + 3", "5"),
        ("2 * (3 + 4)", "14"),
        ("7 / 2", "3.5"),
        ("6 / 3", "2"),
        ("2 ^ 10", "1024"),
        ("2 ** 10", "1024"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
        ("-3 + +1", "-2"),
        ("2 ** -1", "0.5"),
        ("0.1 + 0.2", "0.30000000000000004"),
        ("  1_000 * 3  ", "3000"),
        ("(2 ** 10) ** 3", "1073741824"),
    ],
)
def test_calculate(expression: str, value: str) -> None:
    assert calculate(expression) == value


async def test_calculate_through_the_tool_interface() -> None:
    arguments = calculate.parse_arguments('{"expression": "2 * (3 + 4)"}')
    assert await calculate.invoke(arguments) == "14"


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "a + 1",
        "abs(-1)",
        "(1).real",
        "'a' * 3",
        "True + 1",
        "[1, 2]",
        "1 if 1 else 2",
        "lambda: 1",
        "1 < 2",
        "1 << 2",
        "",
        "1 +",
        "1; 2",
    ],
)
def test_calculate_rejects_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ValueError):
        calculate(expression)


@pytest.mark.parametrize(
    "expression", ["2 ** 100000", "9 ^ 99999", "((9 ** 999) ** 999) ** 999", "(2 ** 1000) ** 1000"]
)
def test_calculate_rejects_huge_powers(expression: str) -> None:
    with pytest.raises(ValueError, match="too large"):
        calculate(expression)


# --- now --------------------------------------------------------------------------------------


def test_now_is_an_iso_utc_timestamp() -> None:
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    text = now()
    after = dt.datetime.now(dt.timezone.utc)
    stamp = dt.datetime.fromisoformat(text)
    assert stamp.utcoffset() == dt.timedelta(0)
    assert text.endswith("+00:00")
    assert before <= stamp <= after
