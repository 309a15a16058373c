"""Running tools: the env's interpreter injected, JSON in and out, nothing leaked, nothing left.

Tools are real subprocesses. Plugins without dependencies need no env, so most tests here cost
one interpreter start; only the interpreter-injection test builds a (dependency-free) env.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host, ToolError, ToolResult

ECHO_ENV = """\
import json, os, sys
data = json.load(sys.stdin)
print(json.dumps({"success": True, "result": {
    "input": data,
    "executable": sys.executable,
    "prefix": sys.prefix,
    "cwd": os.getcwd(),
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


def test_python_is_replaced_by_the_env_python_whatever_the_host_python_path(
    ally_home: Path, make_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The variables a tool gets (and the host's it does not) are tested in
    # test_tool_safety.py::test_tool_sees_a_minimal_environment_without_host_secrets.
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
    for tool in ("py3", "py"):
        result = outcome.tool(tool).call({"n": [1, "two", None], "s": "é"})
        assert isinstance(result, ToolResult) and result.success, result
        got = result.result
        assert got["input"] == {"n": [1, "two", None], "s": "é"}
        assert os.path.realpath(got["prefix"]) == env_path
        assert os.path.realpath(os.path.dirname(got["executable"])) == os.path.join(env_path, "bin")
        assert os.path.realpath(got["cwd"]) == os.path.realpath(plugin_dir)
        assert not any("/host/only" in p for p in got["sys_path"])


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


# A tool that ignores SIGTERM and starts a child that ignores it too; once both are known to
# ignore it, it records both pids in argv[1] and then hangs ("hang") or answers ("exit").
SPAWNER = """\
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
     "print('up', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE,
)
child.stdout.readline()  # a blocking read: the child's SIGTERM handler is in place
with open(sys.argv[1] + ".tmp", "w") as fh:
    json.dump({"tool": os.getpid(), "child": child.pid}, fh)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
if sys.argv[2] == "hang":
    time.sleep(600)
print(json.dumps({"success": True, "result": "left a child behind"}))
"""


def _spawner(make_plugin: Any, timeout: float | None = None) -> Path:
    tools = [
        {"name": "hang", "command": "python3", "args": ["spawner.py", "pids.json", "hang"]},
        {"name": "leave", "command": "python3", "args": ["spawner.py", "pids.json", "exit"]},
    ]
    if timeout is not None:
        tools[0]["timeout"] = timeout
    return plugin(make_plugin, "spawner", tools, {"spawner.py": SPAWNER})


#: Tool timeouts tried one after the other until the tool and its child both started within
#: one: a 2-core machine under load can take seconds to start two interpreters, and a test
#: that only ever saw the tool killed before its child existed would prove nothing.
TIMEOUTS = (3, 6, 12, 24, 48)


#: ALLY_TOOL_CGROUP=0: where a per-call cgroup exists it ends the group too, so the process-group
#: kill alone is only tested without it.
NO_CGROUP = {"ALLY_TOOL_CGROUP": "0"}


@pytest.mark.skipif(os.name != "posix", reason="process groups")
@pytest.mark.parametrize("via", ["plugin.json", "api", "cli", "cli without cgroup"])
def test_timeout_kills_the_tool_and_its_child_that_ignore_sigterm(
    via: str, ally_home: Path, make_plugin: Any, ally_cli: Any, processes: Any
) -> None:
    for timeout in TIMEOUTS:
        plugin_dir = _spawner(make_plugin, timeout if via == "plugin.json" else None)
        if via.startswith("cli"):
            proc = ally_cli(
                "run", "-q", "spawner", "hang", "--timeout", str(timeout), "--input", "{}",
                env=NO_CGROUP if via.endswith("cgroup") else None,
            )  # fmt: skip
            assert proc.returncode == 1 and proc.stdout == "", proc.stdout + proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("ally: error: "), proc.stderr
            message = lines[0]
        else:
            tool = load_one(Host(ally_home), "spawner").tool("hang")
            with pytest.raises(ToolError) as info:
                tool.call({}, timeout=timeout) if via == "api" else tool.call({})
            assert info.value.error_type == "timeout"
            message = str(info.value)
        assert f"tool 'hang' timed out after {timeout}s; killed" in message
        if (plugin_dir / "pids.json").exists():
            break
    else:
        pytest.fail(f"the tool never started its child within {TIMEOUTS[-1]} s")
    pids = json.loads((plugin_dir / "pids.json").read_text())
    processes.reap(*pids.values())
    # Both ignored SIGTERM: the whole group got SIGKILL after the grace period.
    assert processes.wait_gone(pids.values()) == []


@pytest.mark.skipif(os.name != "posix", reason="process groups")
@pytest.mark.parametrize("via", ["api", "cli without cgroup"])
def test_children_a_finished_tool_left_behind_do_not_outlive_the_call(
    via: str, host: Host, make_plugin: Any, ally_cli: Any, processes: Any
) -> None:
    plugin_dir = _spawner(make_plugin)
    if via == "api":
        result = load_one(host, "spawner").tool("leave").call({})
        assert result.success and result.result == "left a child behind"
    else:
        proc = ally_cli("run", "spawner", "leave", "--input", "{}", "-q", env=NO_CGROUP)
        assert json.loads(proc.stdout)["result"] == "left a child behind", proc.stderr
    pids = json.loads((plugin_dir / "pids.json").read_text())
    processes.reap(*pids.values())
    assert processes.wait_gone([pids["child"]]) == []


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


def test_shell_metacharacters_in_tool_args_reach_the_tool_as_they_are(
    host: Host, make_plugin: Any
) -> None:
    args = [";", "|", "&&", "$(touch pwned)", "`touch pwned2`", "*", "~", "$HOME", ">out", "a b"]
    plugin_dir = plugin(
        make_plugin,
        "literal",
        [{"name": "t", "command": "python3", "args": ["argv.py", *args]}],
        {
            "argv.py": "import json, sys\njson.load(sys.stdin)\n"
            "print(json.dumps({'success': True, 'result': sys.argv[1:]}))\n"
        },
    )
    result = load_one(host, "literal").tool("t").call({})
    assert result.success and result.result == args, result
    assert sorted(p.name for p in plugin_dir.iterdir()) == ["argv.py", "plugin.json"]


@pytest.mark.parametrize("how", ["default", "ALLY_PASS_ENV"])
def test_a_tool_printing_non_ascii_gets_utf_8_even_in_the_c_locale(
    host: Host, make_plugin: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """``PYTHONIOENCODING=utf-8``: a Python tool's stdout is UTF-8 even where the locale is C
    and the interpreter's UTF-8 mode is off (``-X utf8=0``: Python would pick ASCII), unless
    the host passes its own ``PYTHONIOENCODING``."""
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.delenv("PYTHONIOENCODING", raising=False)
    if how == "ALLY_PASS_ENV":
        monkeypatch.setenv("PYTHONIOENCODING", "ascii:backslashreplace")
        monkeypatch.setenv("ALLY_PASS_ENV", "PYTHONIOENCODING")
    plugin(
        make_plugin,
        "unicode",
        [{"name": "t", "command": "python3", "args": ["-X", "utf8=0", "t.py", how]}],
        {
            # Non-ASCII written as is (ensure_ascii=False): an ASCII stdout would raise.
            "t.py": "import json, sys\njson.load(sys.stdin)\n"
            "print(json.dumps({'success': True, 'result': 'h\\u00e9llo \\u2713',\n"
            "                  'encoding': sys.stdout.encoding},\n"
            "                 ensure_ascii=sys.argv[1] != 'default'))\n"
        },
    )
    result = load_one(Host(host.paths.home), "unicode").tool("t").call({})
    assert result.success, result
    assert result.result == "h\u00e9llo \u2713"
    # The host's own value wins when it is passed on purpose.
    assert result.reply["encoding"] == ("utf-8" if how == "default" else "ascii")


def test_a_tool_killed_by_a_signal_after_a_success_reply_failed(host: Host, make_plugin: Any):
    plugin(
        make_plugin,
        "crasher",
        [{"name": "t", "command": "python3", "args": ["t.py"]}],
        {
            "t.py": "import json, os, signal, sys\njson.load(sys.stdin)\n"
            "print(json.dumps({'success': True, 'result': 'half done'}), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n"
        },
    )
    result = load_one(host, "crasher").tool("t").call({})
    assert not result.success and result.exit_code == -9, result
    assert result.error_type == "exit_code"
    assert result.error is not None and "exited with code -9 after a success reply" in result.error
