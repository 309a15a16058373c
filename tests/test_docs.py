"""The docs site stays true to the code: nothing the code offers goes undocumented.

Reference sections (CLI, plugin.json, settings, tool environment) are generated from the code
by ``docs/_ext/hooks.py``; these tests check the generators cover everything, that the
hand-written pages name every hook, public API object and ``--json`` shape (the shapes are
compared with what the CLI really prints), that the documented example runtime and tests
pass, and — when mkdocs is installed — that ``mkdocs build --strict`` succeeds.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import ally_core
from ally_core import hookspecs
from ally_core.cli import build_parser
from ally_core.config import SETTINGS
from ally_core.schema import plugin_schema
from ally_core.tools import PASSED_VARS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKSPEC_NAMES = sorted(
    name
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(func, "ally_spec")
)


def _load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ally_docs_hooks", DOCS / "_ext" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOKS = _load_hooks()


def _sources() -> dict[str, str]:
    return {
        p.relative_to(DOCS).as_posix(): p.read_text("utf-8")
        for p in DOCS.rglob("*.md")
        if "_ext" not in p.parts
    }


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                out.append(((*prefix, name), child))
                out += _commands(child, (*prefix, name))
    return out


COMMANDS = _commands(build_parser())


# ---------------------------------------------------------------------------------------------
# generated reference sections


def test_cli_reference_has_every_sub_command_with_its_help_and_options():
    text = HOOKS.cli_reference_markdown()
    assert len(COMMANDS) >= 15
    for words, parser in COMMANDS:
        assert f"### `ally {' '.join(words)}`" in text, words
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}" in text, (words, option)
            if action.help and action.help != argparse.SUPPRESS:
                assert action.help in text, (words, action.help)
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert f"`{option}" in text or option in {"-h", "--help"}, option


def test_plugin_json_reference_covers_every_schema_property():
    schema = plugin_schema()
    text = HOOKS.plugin_schema_markdown(schema)
    for key in schema["properties"]:
        assert f"| `{key}` |" in text, key
    for key in schema["properties"]["dependencies"]["properties"]:
        assert f"| `dependencies.{key}` |" in text, key
    for key in schema["$defs"]["tool"]["properties"]:
        assert f"| `tools[].{key}` |" in text, key
    for key, prop in schema["properties"].items():
        if prop.get("description"):
            assert HOOKS._cell(prop["description"]) in text, key


def test_every_setting_and_its_environment_variable_is_documented():
    text = HOOKS.settings_markdown()
    for key, (var, _parse, _default, doc) in SETTINGS.items():
        assert f"| `{key}` | `{var}` |" in text, key
        assert doc in text
    configuration = (DOCS / "configuration.md").read_text("utf-8")
    assert "<!-- ally:settings -->" in configuration
    for var in ("ALLY_HOME", "ALLY_DISABLED_PLUGINS", "ALLY_TRACE_PLUGINS", "[ally.index]"):
        assert var in configuration, var


def test_security_page_lists_every_variable_a_tool_sees():
    text = HOOKS.passed_vars_markdown()
    assert all(f"`{name}`" in text for name in PASSED_VARS)
    assert "<!-- ally:passed-vars -->" in (DOCS / "security.md").read_text("utf-8")


def test_every_generated_section_is_used_and_every_marker_is_known():
    used = set()
    for page, text in _sources().items():
        for match in HOOKS.MARKER.finditer(text):
            name = match.group(1)
            assert name in HOOKS.GENERATORS or name == "include", (page, name)
            used.add(name)
        HOOKS.render_markers(text, page)  # raises on an unknown section or a bad include
    assert set(HOOKS.GENERATORS) <= used


def test_unknown_generated_section_is_an_error():
    with pytest.raises(ValueError, match="unknown generated section 'nope'"):
        HOOKS.render_markers("<!-- ally:nope -->\n")


def test_included_readme_links_point_into_the_site():
    text = HOOKS.render_markers("<!-- ally:include runtimes/ruby/README.md -->", "runtimes/ruby.md")
    assert "# ally-runtime-ruby" in text
    assert "../../README.md" not in text
    if "[ally](" in text:
        assert "[ally](../index.md)" in text


def test_table_cells_keep_angle_brackets_visible_outside_code():
    assert HOOKS._cell("<home>/x `<name>`") == "&lt;home&gt;/x `<name>`"
    assert HOOKS._cell("a | b\nc") == "a \\| b c"


# ---------------------------------------------------------------------------------------------
# hand-written pages


def test_every_hookspec_is_named_in_the_runtime_guide_and_rendered():
    assert len(HOOKSPEC_NAMES) >= 7, HOOKSPEC_NAMES
    guide = (DOCS / "runtime-authors.md").read_text("utf-8")
    directive = guide[guide.index("## The hooks") :]
    for name in HOOKSPEC_NAMES:
        assert f"`{name}(" in guide, f"{name} is not explained in runtime-authors.md"
        assert f"::: ally_core.hookspecs.{name}\n" in directive, f"{name} is not rendered"
        assert (getattr(hookspecs, name).__doc__ or "").strip(), f"{name} has no docstring"


def test_documented_location_of_stored_plugin_config_is_where_ally_writes_it(ally_home):
    from ally_core import Host
    from ally_core.plugin_config import _store_path

    host = Host(ally_home)
    where = _store_path(host.config_home(), "NAME").relative_to(host.paths.config_dir).as_posix()
    documented = where.replace("NAME", "<name>")
    for page in ("security.md", "configuration.md"):
        text = (DOCS / page).read_text("utf-8")
        assert f"/{documented}`" in text, f"{page} does not say stored config is in {documented}"


def test_every_public_api_object_is_rendered_somewhere():
    rendered = set(re.findall(r"^::: ally_core\.(\w+)\s*$", "\n".join(_sources().values()), re.M))
    missing = sorted(set(ally_core.__all__) - rendered)
    assert not missing, f"not rendered by any ::: directive in docs/: {missing}"


def test_every_sub_command_is_in_the_docs_sources_or_the_generated_reference():
    text = "\n".join(_sources().values()) + HOOKS.cli_reference_markdown()
    for words, _parser in COMMANDS:
        assert f"ally {' '.join(words)}" in text, words


def test_pages_in_the_nav_exist_and_every_page_is_in_the_nav():
    config = (ROOT / "mkdocs.yml").read_text("utf-8")
    nav = re.findall(r":\s*([\w./-]+\.md)\s*$", config, re.M)
    assert "guarantees.md" in nav
    for page in nav:
        assert (DOCS / page).is_file(), page
    assert set(_sources()) == set(nav)


def _documented_json(page: str) -> list[dict[str, Any]]:
    blocks = re.findall(r"```json\n(.*?)```", (DOCS / page).read_text("utf-8"), re.S)
    out = []
    for block in blocks:
        try:
            data = json.loads(block)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("ally") == 1:
            out.append(data)
    return out


def test_documented_json_shapes_match_what_the_cli_prints(make_plugin, ally_cli, ally_home):
    make_plugin(
        "wordy",
        {
            "runtime": "python3",
            "config": {
                "type": "object",
                "properties": {"token": {"type": "string", "secret": True}},
            },
            "tools": [{"name": "t", "description": "d", "command": "python3", "args": ["-c", "1"]}],
        },
    )
    documented = _documented_json("reference/cli.md")

    def shape(*args: str) -> dict[str, Any]:
        proc = ally_cli(*args)
        assert proc.returncode == 0, (args, proc.stderr)
        data: dict[str, Any] = json.loads(proc.stdout)
        assert data["ally"] == 1
        return data

    def example_with(keys: set[str]) -> dict[str, Any]:
        for example in documented:
            if set(example) == keys:
                return example
        raise AssertionError(f"no documented --json example with the keys {sorted(keys)}")

    plugin_examples = [e["plugins"][0] for e in documented if set(e) == {"ally", "plugins"}]
    outcome_example = next(p for p in plugin_examples if "healthy" not in p)
    doctor_example = next(p for p in plugin_examples if "healthy" in p)
    outcome_keys = set(outcome_example)
    for args in (("list", "--json"), ("install", "--json"), ("update", "--json", "wordy")):
        printed = set(shape(*args)["plugins"][0])
        assert printed == outcome_keys, (args, printed ^ outcome_keys)
    printed = set(shape("doctor", "--json")["plugins"][0])
    expected = outcome_keys | (set(doctor_example) - {"…"})
    assert printed == expected, printed ^ expected
    bundle = str(Path(ally_home) / "wordy.ally.tar.gz")
    for args in (
        ("gc", "--json", "--dry-run"),
        ("runtimes", "--json"),
        ("config", "--json"),
        ("config", "set", "wordy", "token", "s3cret", "--json"),
        ("config", "show", "wordy", "--json"),
        ("config", "unset", "wordy", "token", "--json"),
        ("remove", "wordy", "--json"),
        ("exec", "wordy", "--json", "--", sys.executable, "-c", "print(1)"),
        ("bundle", "wordy", "-o", bundle, "--json"),
        ("schema", "--json"),
    ):
        data = shape(*args)
        example = example_with(set(data))
        for key, value in data.items():
            if isinstance(value, list) and value and isinstance(example[key], list):
                if isinstance(value[0], dict):
                    assert set(value[0]) == set(example[key][0]), (args, key)
                else:
                    assert all(isinstance(v, type(value[0])) for v in example[key]), (args, key)
            if key in {"settings", "paths"}:
                assert set(value) == set(example[key]), (args, key)
            assert example[key] is None or value is None or type(value) is type(example[key]), (
                args,
                key,
            )
    table = (DOCS / "reference" / "cli.md").read_text("utf-8")
    for key in outcome_keys - {"runtime", "version"}:
        assert f"| `{key}` |" in table, f"outcome key {key!r} is not in the table"


# ---------------------------------------------------------------------------------------------
# examples and the site itself


def test_documented_example_runtime_and_tests_pass(tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(ROOT),
            "--basetemp",
            str(tmp_path / "base"),
            str(DOCS / "examples"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def _mkdocs_missing() -> str:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ModuleNotFoundError:
            return module
    return ""


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = _mkdocs_missing()
    if missing:
        pytest.skip(
            f"{missing} is not installed (pip install -r docs/requirements.txt; tox -e docs)"
        )
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    return out


def _page_text(site: Path, page: str) -> str:
    import html

    raw = (site / page / "index.html").read_text("utf-8")
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", raw)).split())


def test_site_builds_strict_and_shows_every_command(site: Path):
    text = _page_text(site, "reference/cli")
    for words, _parser in COMMANDS:
        assert f"ally {' '.join(words)}" in text, words


def test_site_renders_every_hookspec_from_its_docstring(site: Path):
    raw = (site / "runtime-authors" / "index.html").read_text("utf-8")
    text = _page_text(site, "runtime-authors")
    for name in HOOKSPEC_NAMES:
        assert f'id="ally_core.hookspecs.{name}"' in raw, name
        first_line = (getattr(hookspecs, name).__doc__ or "").strip().splitlines()[0]
        assert " ".join(first_line.replace("``", "").split()) in text, name
    # Sphinx markup is translated, not shown.
    assert not re.search(r":(func|class|meth|data|mod):`", text)
    assert ".. versionadded" not in text
    assert "Added in version" in text


def test_site_plugin_json_page_lists_every_key(site: Path):
    text = _page_text(site, "reference/plugin-json")
    schema = plugin_schema()
    for key in schema["properties"]:
        assert key in text, key
    for key in schema["$defs"]["tool"]["properties"]:
        assert f"tools[].{key}" in text, key
