"""Odd input never becomes an internal error: each is one line (issue: hardening, item 9)."""

from __future__ import annotations

from typing import Any

import pytest

from ally_core import AllyError, Host, ToolInputError


def _nested(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(depth):
        node["a"] = {}
        node = node["a"]
    return root


def _deep_schema(depth: int) -> dict[str, Any]:
    root: dict[str, Any] = {"type": "object"}
    node = root
    for _ in range(depth):
        node["properties"] = {"a": {"type": "object"}}
        node = node["properties"]["a"]
    return root


@pytest.fixture
def odd(make_plugin: Any, host: Host) -> Any:
    make_plugin(
        "odd",
        {
            "runtime": "python3",
            "tools": [
                {"name": "plain", "command": "python3", "args": ["t.py"],
                 "schema": {"type": "object"}},
                {"name": "deep-output", "command": "python3", "args": ["deep.py"]},
                {"name": "nul", "command": "python3", "args": ["t.py", "a\u0000b"]},
            ],
        },
        files={
            "t.py": "import sys\nsys.stdin.read()\nprint('{\"success\": true}')\n",
            "deep.py": "print('[' * 100000 + ']' * 100000)\n",
        },
    )  # fmt: skip
    outcome = host.ensure("odd")
    assert outcome.ready, outcome.reason
    return outcome


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text.startswith("odd: tool "), text
    return text


def test_input_nested_100k_deep_is_refused_in_one_line(odd: Any) -> None:
    with pytest.raises(ToolInputError) as info:
        odd.tool("plain").call(_nested(100_000))
    assert "input is nested too deeply" in _one_line(info.value)


def test_a_schema_nested_too_deeply_is_refused_in_one_line(
    make_plugin: Any, host: Host, odd: Any, ally_cli: Any
) -> None:
    # A plugin.json nested this deeply is refused when it is loaded (issue: hardening,
    # item 1): that plugin is blocked with one line, the others load.
    make_plugin(
        "deepschema",
        {
            "runtime": "python3",
            "tools": [{"name": "t", "command": "python3", "schema": _deep_schema(300)}],
        },
    )
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["odd"].ready
    blocked = outcomes["deepschema"]
    assert blocked.status == "blocked" and "\n" not in blocked.reason
    assert blocked.reason == (
        "plugin.json: $.tools[0].schema: nested more than 100 levels deep"
    )
    proc = ally_cli("run", "deepschema", "t")
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line == f"ally: error: deepschema: blocked: {blocked.reason}"


def test_output_nested_too_deeply_is_a_failed_result(odd: Any) -> None:
    result = odd.tool("deep-output").call({})
    assert not result.success and result.error_type == "invalid_output"
    assert result.error is not None and "\n" not in result.error


def test_nul_in_a_tool_argument_is_one_line(odd: Any) -> None:
    with pytest.raises(AllyError) as info:
        odd.tool("nul").call({})
    assert "embedded null byte" in _one_line(info.value)


def test_the_cli_reports_deep_input_in_one_line(odd: Any, ally_cli: Any) -> None:
    proc = ally_cli("run", "odd", "plain", input="{\"a\": " * 100_000 + "1" + "}" * 100_000)
    assert proc.returncode != 0
    (line,) = proc.stderr.strip().splitlines()
    assert "internal error" not in line and "nested too deeply" in line, line
