"""Running tools: the env's interpreter injected, JSON in and out, nothing leaked, nothing left.

Tools are real subprocesses. Plugins without dependencies need no env, so most tests here cost
one interpreter start; only the interpreter-injection test builds a (dependency-free) env.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host, ToolError, ToolInputError, ToolResult

ECHO_ENV = """\
import json, os, sys
data = json.load(sys.stdin)
print(json.dumps({"success": True, "result": {
    "input": data,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "cwd": os.getcwd(),
    "pythonpath": os.environ.get("PYTHONPATH"),
    "pythonhome": os.environ.get("PYTHONHOME"),
    "secret": os.environ.get("ALLY_TEST_SECRET"),
    "virtual_env": os.environ.get("VIRTUAL_ENV"),
    "plugin_name": os.environ.get("ALLY_PLUGIN_NAME"),
    "sys_path": sys.path,
}}))
"""


def plugin(
    make_plugin: Callable[..., Path],
    name: str,
    tools: list[dict[str, Any]],
    files: dict[str, str],
    **manifest: Any,
) -> Path:
    return make_plugin(name, {"runtime": "python3", "tools": tools, **manifest}, files=files)


def load_one(host: Host, name: str) -> Any:
    (outcome,) = host.load([name])
    assert outcome.ready, outcome.reason
    return outcome


def test_python_is_replaced_by_the_env_python_and_host_python_vars_are_dropped(
    ally_home: Path, make_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    plugin_dir = plugin(
        make_plugin,
        "probe",
        [
            {"name": "py3", "command": "python3", "args": ["probe.py"]},
            {"name": "py", "command": "python", "args": ["probe.py"]},
        ],
        {"probe.py": ECHO_ENV, "requirements.txt": "# nothing to install\n"},
        dependencies={"file": "requirements.txt"},
    )
    outcome = load_one(Host(ally_home), "probe")
    env_path = os.path.realpath(outcome.env.path)
    monkeypatch.setenv("PYTHONPATH", "/host/only/pythonpath")
    monkeypatch.setenv("PYTHONHOME", "/host/only/pythonhome")
    monkeypatch.setenv("ALLY_TEST_SECRET", "hunter2")
    for tool in ("py3", "py"):
        result = outcome.tool(tool).call({"n": [1, "two", None], "s": "é"})
        assert isinstance(result, ToolResult) and result.success, result
        got = result.result
        assert got["input"] == {"n": [1, "two", None], "s": "é"}
        assert os.path.realpath(got["prefix"]) == env_path
        assert os.path.realpath(os.path.dirname(got["executable"])) == os.path.join(env_path, "bin")
        assert os.path.realpath(got["cwd"]) == os.path.realpath(plugin_dir)
        assert got["pythonpath"] is None and got["pythonhome"] is None
        assert not any("/host/only" in p for p in got["sys_path"])
        assert got["secret"] is None
        assert os.path.realpath(got["virtual_env"]) == env_path
        assert got["plugin_name"] == "probe"


def test_tool_without_env_runs_in_the_plugin_dir_with_json_in_and_out(
    host: Host, make_plugin: Any
) -> None:
    plugin_dir = plugin(
        make_plugin,
        "plain",
        [{"name": "echo", "command": "python3", "args": ["probe.py"]}],
        {"probe.py": ECHO_ENV},
    )
    result = load_one(host, "plain").tool("echo").call({"k": "v"})
    assert result.success
    assert result.result["input"] == {"k": "v"}
    assert os.path.realpath(result.result["cwd"]) == os.path.realpath(plugin_dir)
    assert result.to_json()["success"] is True


def _gone(pid: int) -> bool:
    """No such process, or only a zombie waiting for a parent that is not us."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in {"Z", "X"}


SPAWNER = """\
import json, os, signal, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"],
)
with open("pids.json.tmp", "w") as fh:
    json.dump({"tool": os.getpid(), "grandchild": child.pid}, fh)
os.replace("pids.json.tmp", "pids.json")
if sys.argv[1] == "hang":
    time.sleep(600)
print(json.dumps({"success": True, "result": "left a child behind"}))
"""


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_timeout_kills_the_tool_and_its_grandchildren(host: Host, make_plugin: Any) -> None:
    plugin_dir = plugin(
        make_plugin,
        "sleepy",
        [{"name": "hang", "command": "python3", "args": ["spawner.py", "hang"], "timeout": 3}],
        {"spawner.py": SPAWNER},
    )
    tool = load_one(host, "sleepy").tool("hang")
    with pytest.raises(ToolError) as info:
        tool.call({})
    assert info.value.error_type == "timeout"
    assert "timed out after 3s" in str(info.value)
    pids = json.loads((plugin_dir / "pids.json").read_text())
    assert _gone(pids["tool"])
    assert _gone(pids["grandchild"])  # it ignored SIGTERM: the group got SIGKILL


@pytest.mark.skipif(os.name != "posix", reason="process groups")
def test_children_a_finished_tool_left_behind_do_not_outlive_the_call(
    host: Host, make_plugin: Any
) -> None:
    plugin_dir = plugin(
        make_plugin,
        "leaky",
        [{"name": "leave", "command": "python3", "args": ["spawner.py", "exit"]}],
        {"spawner.py": SPAWNER},
    )
    result = load_one(host, "leaky").tool("leave").call({})
    assert result.success and result.result == "left a child behind"
    pids = json.loads((plugin_dir / "pids.json").read_text())
    deadline = time.monotonic() + 10  # SIGKILL delivery is asynchronous
    while not _gone(pids["grandchild"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pids["grandchild"])


def test_endless_output_is_capped_and_the_tool_killed(
    ally_home: Path, make_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLY_OUTPUT_LIMIT", "65536")
    plugin(
        make_plugin,
        "chatty",
        [
            {"name": "flood", "command": "python3", "args": ["flood.py", "out"]},
            {"name": "flood-err", "command": "python3", "args": ["flood.py", "err"]},
        ],
        {
            "flood.py": "import sys\n"
            "stream = sys.stdout if sys.argv[1] == 'out' else sys.stderr\n"
            "while True:\n    stream.write('x' * 8192)\n"
        },
    )
    outcome = load_one(Host(ally_home), "chatty")
    for name in ("flood", "flood-err"):
        with pytest.raises(ToolError) as info:
            outcome.tool(name).call({})
        assert info.value.error_type == "output_limit"
        assert str(info.value) == f"chatty: tool {name!r} output exceeded 65536 bytes; killed"


@pytest.mark.parametrize(
    ("script", "error_type", "message"),
    [
        (
            "print('not json')",
            "invalid_output",
            "odd: tool 't' printed output that is not JSON: not json",
        ),
        ("pass", "invalid_output", "odd: tool 't' produced no output"),
        (
            "import sys\nsys.stderr.write('first\\nTraceback: boom\\n')\nsys.exit(3)",
            "exit_code",
            "exited with code 3 and produced no output; stderr: first | Traceback: boom",
        ),
    ],
    ids=["not-json", "nothing", "exit-code"],
)
def test_unusable_tool_output_is_a_failed_result_with_a_clear_error(
    host: Host, make_plugin: Any, script: str, error_type: str, message: str
) -> None:
    plugin(
        make_plugin,
        "odd",
        [{"name": "t", "command": "python3", "args": ["t.py"]}],
        {"t.py": script},
    )
    result = load_one(host, "odd").tool("t").call({})
    assert not result.success and result.reply is None
    assert result.error_type == error_type
    assert result.error is not None and message in result.error
    assert "\n" not in result.error


def test_success_false_is_a_failed_tool_result_not_an_exception(
    host: Host, make_plugin: Any
) -> None:
    plugin(
        make_plugin,
        "sad",
        [{"name": "t", "command": "python3", "args": ["t.py"]}],
        {
            "t.py": "import json\nprint(json.dumps({'success': False, 'error': 'no such city', "
            "'error_type': 'not_found'}))\n"
        },
    )
    result = load_one(host, "sad").tool("t").call({})
    reply = {"success": False, "error": "no such city", "error_type": "not_found"}
    assert result == ToolResult(
        False,
        None,
        error="no such city",
        error_type="not_found",
        exit_code=0,
        stderr=result.stderr,
        duration=result.duration,
        reply=reply,
    )
    assert result.to_json() == {
        "success": False,
        "error": "no such city",
        "error_type": "not_found",
    }


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("../outside.sh", "is outside the plugin directory"),
        ("sub/../../outside.sh", "is outside the plugin directory"),
        ("/bin/sh", "is an absolute path"),
        ("~/outside.sh", "is an absolute path"),
        ("./link.sh", "is outside the plugin directory"),
    ],
)
def test_tool_command_outside_the_plugin_dir_is_refused_before_spawning(
    host: Host, make_plugin: Any, no_spawn: Any, command: str, why: str
) -> None:
    outside = host.paths.plugin_dirs[0] / "outside.sh"
    outside.write_text("#!/bin/sh\necho '{}'\n")
    outside.chmod(0o755)
    plugin_dir = plugin(make_plugin, "sneaky", [{"name": "t", "command": command}], {})
    (plugin_dir / "sub").mkdir()
    os.symlink(outside, plugin_dir / "link.sh")
    outcome = load_one(host, "sneaky")
    with no_spawn(), pytest.raises(ToolError) as info:
        outcome.tool("t").call({})
    assert info.value.error_type == "unsafe_command"
    assert why in str(info.value)


def test_relative_command_inside_the_plugin_dir_runs(host: Host, make_plugin: Any) -> None:
    plugin_dir = plugin(
        make_plugin,
        "script",
        [{"name": "t", "command": "bin/run.sh", "args": ["a b"]}],
        {"bin/run.sh": '#!/bin/sh\nprintf \'{"success": true, "result": "%s"}\' "$1"\n'},
    )
    (plugin_dir / "bin" / "run.sh").chmod(0o755)
    result = load_one(host, "script").tool("t").call({})
    assert result.success and result.result == "a b"


def test_input_is_validated_against_the_tool_schema_before_any_process_starts(
    host: Host, make_plugin: Any, no_spawn: Any
) -> None:
    plugin(
        make_plugin,
        "strict",
        [
            {
                "name": "t",
                "command": "python3",
                "args": ["t.py"],
                "schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer", "minimum": 1}},
                    "required": ["n"],
                },
            }
        ],
        {"t.py": "print('{}')"},
    )
    tool = load_one(host, "strict").tool("t")
    with no_spawn():
        with pytest.raises(ToolInputError) as missing:
            tool.call({})
        with pytest.raises(ToolInputError) as wrong:
            tool.call({"n": 0})
    assert missing.value.error_type == "invalid_input"
    assert "'n' is a required property" in str(missing.value)
    assert str(wrong.value) == "strict: tool 't': input $.n: 0 is less than the minimum of 1"


def test_tool_of_a_blocked_plugin_cannot_be_called(host: Host, make_plugin: Any) -> None:
    make_plugin(
        "broken",
        {
            "runtime": "python3",
            "dependencies": {"file": "missing.txt"},
            "tools": [{"name": "t", "command": "python3"}],
        },
    )
    (outcome,) = host.load()
    assert outcome.status == "blocked"
    assert outcome.tools == []
    with pytest.raises(Exception, match="no tool named 't'"):
        outcome.tool("t")


def test_a_very_long_timeout_is_just_a_long_timeout(host: Host, make_plugin: Any) -> None:
    plugin(
        make_plugin,
        "patient",
        [{"name": "t", "command": "python3", "args": ["t.py"], "timeout": 1e12}],
        {"t.py": 'print(\'{"success": true, "result": 42}\')'},
    )
    result = load_one(host, "patient").tool("t").call({})
    assert result.success and result.result == 42
