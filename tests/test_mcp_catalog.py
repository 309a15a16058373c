"""The MCP catalog's rules (names, schemas, masking, forms): no SDK, no process."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ally_core.forms import FormRequest
from ally_core.manifest import Tool
from ally_core.mcp.catalog import (
    MAX_NAME,
    Entry,
    Masker,
    describe,
    exposed_names,
    form_request_schema,
    input_schema,
)
from ally_core.plugin_config import MASK

VALID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def test_unique_names_stay_and_clashes_are_qualified_by_plugin() -> None:
    names = exposed_names([("calc", "add"), ("other", "add"), ("calc", "sub"), ("x", "run it!")])
    assert names == {
        ("calc", "add"): "calc__add",
        ("other", "add"): "other__add",
        ("calc", "sub"): "sub",
        ("x", "run it!"): "run_it_",
    }


def test_names_that_sanitize_alike_clash_too() -> None:
    names = exposed_names([("a", "x y"), ("b", "x_y")])
    assert names == {("a", "x y"): "a__x_y", ("b", "x_y"): "b__x_y"}


def test_a_qualified_name_taken_by_another_tool_and_long_names_are_hashed() -> None:
    long_tool = "t" * 70
    pairs = [("a", "b"), ("z", "b"), ("q", "a__b"), ("p", long_tool)]
    names = exposed_names(pairs)
    assert names[("z", "b")] == "z__b"
    # "a__b" would be both a's qualified "b" and q's own tool: neither keeps it.
    assert names[("a", "b")] != "a__b" and names[("q", "a__b")] != "a__b"
    assert names[("a", "b")] != names[("q", "a__b")]
    assert len(names[("p", long_tool)]) == MAX_NAME
    assert all(VALID.fullmatch(n) for n in names.values())
    assert len(set(names.values())) == len(pairs)
    # Stable: the same input gives the same names, whatever its order.
    assert exposed_names(reversed(pairs)) == names


def test_input_schema_is_an_object_schema_or_nothing() -> None:
    assert input_schema(Tool("t", "c")) == {"type": "object"}
    props = {"properties": {"a": {"type": "string"}}}
    assert input_schema(Tool("t", "c", schema=props)) == {"type": "object", **props}
    assert input_schema(Tool("t", "c", schema={"type": "array"})) is None


def test_describe_maps_confirmation_to_a_destructive_hint_and_keeps_the_flags() -> None:
    tool = Tool("t", "c", description="does t", extra={"requiresConfirmation": True})
    out = describe(Entry("t", "plug", tool))
    assert out["annotations"] == {"readOnlyHint": False, "destructiveHint": True}
    assert out["_meta"] == {
        "ally/plugin": "plug",
        "ally/tool": "t",
        "ally/requiresConfirmation": True,
        "ally/interactive": False,
    }
    plain = describe(Entry("u", "plug", Tool("u", "c", extra={"interactive": True}), "plugin text"))
    assert "annotations" not in plain
    assert plain["description"] == "plugin text"
    assert plain["_meta"]["ally/interactive"] is True


def test_masker_replaces_secrets_everywhere_and_credentials_in_urls() -> None:
    masker = Masker(["abc123", "abc123xyz", ""])
    value = {"k abc123": ["abc123xyz", 5, {"deep": "is abc123"}], "url": "https://u:pw@h/x"}
    assert masker.value(value) == {
        f"k {MASK}": [MASK, 5, {"deep": f"is {MASK}"}],
        "url": "https://h/x",
    }
    assert Masker().text("nothing to hide") == "nothing to hide"


def test_form_fields_become_an_elicitation_schema() -> None:
    schema = {
        "title": "Solve",
        "description": "Pick a method",
        "fields": [
            {"name": "method", "type": "choice", "choices": ["newton", "bisect"], "required": True},
            {
                "name": "steps",
                "type": "number",
                "label": "Steps",
                "validation": {"min": 1, "max": 9},
            },
            {"name": "verbose", "type": "boolean", "default": False},
            {"name": "note", "type": "string", "description": "free text", "default": "x"},
            {"name": "kind", "type": "choice", "choices": [{"label": "Fast", "value": "f"}]},
            {"type": "string"},
        ],
    }
    request = FormRequest("p", "t", schema, {"note": "from the tool"})
    message, requested = form_request_schema(request)
    assert message == "Solve\nPick a method"
    assert requested == {
        "type": "object",
        "properties": {
            "method": {"type": "string", "enum": ["newton", "bisect"]},
            "steps": {"type": "number", "minimum": 1, "maximum": 9, "title": "Steps"},
            "verbose": {"type": "boolean", "default": False},
            "note": {"type": "string", "description": "free text", "default": "from the tool"},
            "kind": {"type": "string", "enum": ["f"], "enumNames": ["Fast"]},
        },
        "required": ["method"],
    }


def test_without_the_sdk_serve_prints_one_line_saying_how_to_install_it(ally_home: Path) -> None:
    # sys.modules["mcp"] = None makes `import mcp` fail as if the SDK were not installed.
    code = (
        "import sys; sys.modules['mcp'] = None\n"
        "from ally_core.cli import main\n"
        "sys.exit(main(['mcp', 'serve']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "ally: ally mcp serve needs the MCP SDK: pip install 'ally-core[mcp]' (Python >= 3.10)"
    ]
