"""The ``ally`` command line, run as a real subprocess in an isolated home."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from ally_core.schema import schema_text

GREET = {
    "runtime": "python3",
    "version": "1.2.3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [
        {
            "name": "hello",
            "description": "Say hello",
            "command": "python3",
            "args": ["main.py"],
            "schema": {"type": "object", "properties": {"who": {"type": "string"}}},
        },
        {"name": "fail", "command": "python3", "args": ["fail.py"]},
    ],
}
GREET_FILES = {
    "requirements.txt": "allydemo-greet==1.0.0\n",
    "main.py": "import json, sys, allydemo_greet\n"
    "args = json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.greet(args.get('who', 'x'))}))\n",
    "fail.py": "import json\nprint(json.dumps({'success': False, 'error': 'nope'}))\n",
}


def one_line_error(proc: Any) -> str:
    """The error a failed command printed: exactly one line on stderr, no traceback."""
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ally: error: "), lines
    return str(lines[0])


def test_list_shows_each_plugin_state_without_building_anything(
    ally_cli: Any, make_plugin: Any, ally_home: Path
) -> None:
    make_plugin("greeter", GREET, files=GREET_FILES)
    make_plugin("plain", {"tools": [{"name": "t", "command": "python3"}], "colour": "red"})
    make_plugin("broken", {"tools": "x"})

    proc = ally_cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ally"] == 1
    plugins = {p["name"]: p for p in data["plugins"]}
    assert set(plugins) == {"greeter", "plain", "broken"}
    assert plugins["greeter"]["status"] == "pending"
    assert plugins["greeter"]["reason"] == "not installed"
    assert plugins["greeter"]["version"] == "1.2.3"
    assert [(t["name"], t["description"]) for t in plugins["greeter"]["tools"]] == [
        ("hello", "Say hello"),
        ("fail", None),
    ]
    assert plugins["plain"]["status"] == "ready" and plugins["plain"]["env"] is None
    assert plugins["plain"]["warnings"] == ["$.colour: unknown key (kept)"]
    assert plugins["broken"]["status"] == "blocked"
    assert "$.tools: expected a list of tools" in plugins["broken"]["reason"]
    assert not (ally_home / "plugin-envs" / "greeter").exists()

    text = ally_cli("list")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert "\u2026 greeter: not installed" in lines
    assert "\u26a0 plain: t" in lines  # ready, with a warning mark
    assert "    warning: $.colour: unknown key (kept)" in lines
    assert any(line.startswith("\u2717 broken: plugin.json: $.tools") for line in lines)


def test_list_of_an_empty_home_says_so(ally_cli: Any) -> None:
    proc = ally_cli("list")
    assert proc.returncode == 0 and proc.stdout.strip() == "no plugins found"


def test_install_then_run_and_exec_use_the_plugin_env(
    ally_cli: Any, make_plugin: Any, ally_home: Path
) -> None:
    make_plugin("greeter", GREET, files=GREET_FILES)

    install = ally_cli("install")
    assert install.returncode == 0, install.stderr
    # Not a TTY: the original design's log lines, on stderr, in the seed's order (ally may
    # add phases of its own between them).
    seed_lines = [
        "[PluginEnvironmentManager] Installing dependencies for 'greeter'...",
        "[PluginEnvironmentManager]   \u2192 Creating virtual environment",
        "[PluginEnvironmentManager]   \u2192 Installing packages from requirements.txt",
        "[PluginEnvironmentManager] \u2713 Dependencies installed for 'greeter'",
    ]
    printed = install.stderr.splitlines()
    assert all(line.startswith("[PluginEnvironmentManager] ") for line in printed), printed
    assert [line for line in printed if line in seed_lines] == seed_lines
    assert install.stdout.splitlines() == ["\u2713 greeter: hello, fail (installed)"]

    again = ally_cli("install", "--json")
    assert again.returncode == 0 and again.stderr == ""
    (plugin,) = json.loads(again.stdout)["plugins"]
    assert plugin["status"] == "ready" and plugin["action"] == "none"
    assert plugin["packages"] == {"allydemo-greet": "1.0.0"}
    env_path = plugin["env"]

    run = ally_cli("run", "greeter", "hello", "--input", '{"who": "cli"}')
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {
        "success": True,
        "result": "hello cli from allydemo_greet 1.0.0",
    }

    piped = ally_cli("run", "greeter", "hello", input='{"who": "stdin"}')
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["result"] == "hello stdin from allydemo_greet 1.0.0"

    failed = ally_cli("run", "greeter", "fail", input="")
    assert failed.returncode == 3
    assert json.loads(failed.stdout) == {
        "success": False,
        "error": "nope",
        "error_type": "tool_error",
    }

    bad_input = ally_cli("run", "greeter", "hello", "--input", '{"who": 5}')
    assert "input $.who: 5 is not of type 'string'" in one_line_error(bad_input)

    exec_ = ally_cli(
        "exec",
        "greeter",
        "--",
        "python",
        "-c",
        "import os, sys, allydemo_greet; print(sys.prefix); print(os.environ['VIRTUAL_ENV'])",
    )
    assert exec_.returncode == 0, exec_.stderr
    prefix, virtual_env = exec_.stdout.splitlines()
    assert os.path.realpath(prefix) == os.path.realpath(env_path)
    assert os.path.realpath(virtual_env) == os.path.realpath(env_path)

    status = ally_cli("exec", "greeter", "--", "python", "-c", "raise SystemExit(7)")
    assert status.returncode == 7


def test_install_exits_nonzero_when_a_plugin_is_blocked(ally_cli: Any, make_plugin: Any) -> None:
    make_plugin("plain")
    make_plugin(
        "impossible",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-greet==9.9\n"},
    )
    proc = ally_cli("install", "--json")
    assert proc.returncode == 4
    plugins = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert plugins["plain"]["status"] == "ready"
    assert plugins["impossible"]["status"] == "blocked"
    assert "allydemo-greet==9.9" in plugins["impossible"]["reason"]


def test_runtimes_lists_the_builtin_python_runtime(ally_cli: Any) -> None:
    proc = ally_cli("runtimes", "--json")
    assert proc.returncode == 0, proc.stderr
    runtimes = {r["name"]: r for r in json.loads(proc.stdout)["runtimes"]}
    assert runtimes["python"]["serves"] == ["python3", "python"]
    assert "(built in)" in runtimes["python"]["distribution"]
    text = ally_cli("runtimes")
    assert any(line.startswith("python: python3, python  [") for line in text.stdout.splitlines())


def test_schema_prints_the_published_json_schema(ally_cli: Any) -> None:
    proc = ally_cli("schema")
    assert proc.returncode == 0
    assert proc.stdout == schema_text()
    assert json.loads(proc.stdout)["title"] == "plugin.json"


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("run", "nosuch", "tool"), {}, "no plugin named 'nosuch'"),
        (("run", "plain", "missing"), {}, "plain: no tool named 'missing' (tools: t)"),
        (("run", "plain", "t", "--input", "{nope"), {}, "--input is not valid JSON"),
        (("exec", "plain"), {}, "give a command after '--'"),
        (("exec", "plain", "--", "no-such-binary-xyz"), {}, "cannot run no-such-binary-xyz"),
        (("list",), {"ALLY_JOBS": "many"}, "$ALLY_JOBS: "),
        (("config", "show", "nosuch"), {}, "no plugin named 'nosuch'"),
        (("remove", "../evil"), {}, "not a valid plugin name"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_errors_are_one_line_with_a_nonzero_exit_and_no_traceback(
    ally_cli: Any, make_plugin: Any, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    make_plugin("plain", {"tools": [{"name": "t", "command": "python3"}]})
    line = one_line_error(ally_cli(*args, env=env))
    assert expected in line


def test_debug_adds_the_traceback(ally_cli: Any) -> None:
    proc = ally_cli("--debug", "run", "nosuch", "tool")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "PluginNotFound" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("ally: error: no plugin named")


def test_usage_errors_exit_2_with_argparse_message(ally_cli: Any) -> None:
    proc = ally_cli("frobnicate")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "invalid choice: 'frobnicate'" in proc.stderr
