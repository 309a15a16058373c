"""The tool protocol as Code Ally's host implemented it, through real tool processes.

The reference is Code Ally's ``src/plugins/ExecutableToolWrapper.ts`` (``parsePluginOutput``,
``executePlugin``) and ``PluginLoader.ts`` before the marketplace rewrite (b6a1f4a). Every
reply shape is checked three ways: through the API (:class:`ToolResult`), through ``ally run``
(the tool's reply on stdout, exit code 0 or 3) and through ``ally run --json``. Then: live
output, cancel, masking of secrets, the manifest keys Code Ally knows, and plugins written the
way Code Ally's example plugins are written (``tests/fixtures/code_ally``), run unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ally_core import ConfigError, Host, ToolError, ToolResult
from ally_core.plugin_config import set_stored

FIXTURES = Path(__file__).parent / "fixtures" / "code_ally"
LABEL = "shapes: tool 'say'"

# Prints exactly what its input says: stdout, stderr, exit code.
SAY = """\
import json, sys
args = json.load(sys.stdin)
sys.stderr.write(args.get("err", ""))
sys.stderr.flush()
sys.stdout.write(args.get("out", ""))
sys.stdout.flush()
sys.exit(args.get("code", 0))
"""


def _say_plugin(make_plugin: Callable[..., Path]) -> Path:
    return make_plugin(
        "shapes",
        {"runtime": "python3", "tools": [{"name": "say", "command": "python3", "args": ["s.py"]}]},
        files={"s.py": SAY},
    )


def _load(host: Host, name: str) -> Any:
    (outcome,) = host.load([name])
    assert outcome.ready, outcome.reason
    return outcome


def _copy_fixture(ally_home: Path, name: str) -> Path:
    target = ally_home / "plugins" / name
    shutil.copytree(FIXTURES / name, target)
    return target


# ---------------------------------------------------------------------------------------------
# Reply shapes and exit codes (parsePluginOutput, and executePlugin's exit-code rule)

FIELDS = ("success", "error", "error_type", "reply", "data", "message", "result", "logs")


def _case(
    out: Any, *, err: str = "", code: int = 0, cli: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    """One case: what the tool prints, the ToolResult fields expected, what ``ally run``
    prints. Fields not given are expected empty (``None``, or ``""`` for logs)."""
    text = out if isinstance(out, str) else json.dumps(out)
    expected = {"error": None, "error_type": None, "reply": None, "data": None}
    expected.update({"message": None, "result": None, "logs": ""})
    expected.update(fields)
    return {"out": text, "err": err, "code": code, "fields": expected, "cli": cli}


NO_OUTPUT = f"{LABEL} produced no output; stderr: first | Traceback: boom"
EXIT_NO_OUTPUT = f"{LABEL} exited with code 2 and produced no output; stderr: boom"
NOT_JSON = f"{LABEL} printed output that is not JSON: hello world; stderr: careful"
EXIT_AFTER_SUCCESS = (
    f'{LABEL} exited with code 4 after a success reply: {{"success": true, "result": 1}}'
    "; stderr: warning: cache is cold"
)
TOP_LEVEL = {"original": "abc", "reversed": "cba", "message": "reversed 3 characters"}
WITH_DATA = {"success": True, "data": {"roots": [-2, 2]}, "message": "2 roots"}

CASES: dict[str, dict[str, Any]] = {
    "empty-stdout": _case(
        "",
        err="first\nTraceback: boom\n",
        success=False,
        error=NO_OUTPUT,
        error_type="invalid_output",
        cli={"success": False, "error": NO_OUTPUT, "error_type": "invalid_output"},
    ),
    "empty-stdout-exit-code": _case(
        "",
        err="boom\n",
        code=2,
        success=False,
        error=EXIT_NO_OUTPUT,
        error_type="exit_code",
        cli={"success": False, "error": EXIT_NO_OUTPUT, "error_type": "exit_code"},
    ),
    "not-json": _case(
        "hello world\n",
        err="careful\n",
        success=False,
        error=NOT_JSON,
        error_type="invalid_output",
        cli={"success": False, "error": NOT_JSON, "error_type": "invalid_output"},
    ),
    "success-false-error-data": _case(
        {"success": False, "error": "no such city", "error_type": "not_found", "data": {"n": 3}},
        success=False,
        error="no such city",
        error_type="not_found",
        reply={
            "success": False,
            "error": "no such city",
            "error_type": "not_found",
            "data": {"n": 3},
        },
        data={"n": 3},
        result={"n": 3},
        cli={
            "success": False,
            "error": "no such city",
            "error_type": "not_found",
            "data": {"n": 3},
        },
    ),
    "success-false-only-message": _case(
        {"success": False, "message": "quota used up"},
        success=False,
        error="quota used up",
        error_type="tool_error",
        reply={"success": False, "message": "quota used up"},
        message="quota used up",
        cli={
            "success": False,
            "message": "quota used up",
            "error": "quota used up",
            "error_type": "tool_error",
        },
    ),
    "success-false-neither": _case(
        {"success": False, "data": {"partial": [1, 2]}},
        success=False,
        error=f"{LABEL} failed",
        error_type="tool_error",
        reply={"success": False, "data": {"partial": [1, 2]}},
        data={"partial": [1, 2]},
        result={"partial": [1, 2]},
        cli={
            "success": False,
            "data": {"partial": [1, 2]},
            "error": f"{LABEL} failed",
            "error_type": "tool_error",
        },
    ),
    "error-without-success": _case(
        {"error": "disk full", "path": "/tmp"},
        success=False,
        error="disk full",
        error_type="tool_error",
        reply={"error": "disk full", "path": "/tmp"},
        cli={"error": "disk full", "path": "/tmp", "success": False, "error_type": "tool_error"},
    ),
    "falsy-error-without-success": _case(
        {"error": None, "value": 3},
        success=True,
        reply={"error": None, "value": 3},
        data={"error": None, "value": 3},
        result={"error": None, "value": 3},
        cli={"error": None, "value": 3, "success": True},
    ),
    "top-level-fields": _case(
        TOP_LEVEL,
        success=True,
        reply=TOP_LEVEL,
        data=TOP_LEVEL,
        result=TOP_LEVEL,
        message="reversed 3 characters",
        cli={**TOP_LEVEL, "success": True},
    ),
    "top-level-fields-with-success": _case(
        {"success": True, "reversed": "cba", "length": 3},
        success=True,
        reply={"success": True, "reversed": "cba", "length": 3},
        data={"success": True, "reversed": "cba", "length": 3},
        result={"success": True, "reversed": "cba", "length": 3},
        cli={"success": True, "reversed": "cba", "length": 3},
    ),
    "data-is-the-payload": _case(
        WITH_DATA,
        success=True,
        reply=WITH_DATA,
        data={"roots": [-2, 2]},
        result={"roots": [-2, 2]},
        message="2 roots",
        cli=WITH_DATA,
    ),
    "data-null-is-the-payload": _case(
        {"success": True, "data": None, "message": "nothing found"},
        success=True,
        reply={"success": True, "data": None, "message": "nothing found"},
        message="nothing found",
        cli={"success": True, "data": None, "message": "nothing found"},
    ),
    "result-key": _case(
        {"success": True, "result": 42},
        success=True,
        reply={"success": True, "result": 42},
        data={"success": True, "result": 42},
        result=42,
        cli={"success": True, "result": 42},
    ),
    "exit-code-after-success": _case(
        {"success": True, "result": 1},
        err="warning: cache is cold\n",
        code=4,
        success=False,
        error=EXIT_AFTER_SUCCESS,
        error_type="exit_code",
        reply={"success": True, "result": 1},
        data={"success": True, "result": 1},
        result=1,
        cli={"success": False, "result": 1, "error": EXIT_AFTER_SUCCESS, "error_type": "exit_code"},
    ),
    "exit-code-after-failure": _case(
        {"success": False, "error": "bad input"},
        code=1,
        success=False,
        error="bad input (exit code 1)",
        error_type="tool_error",
        reply={"success": False, "error": "bad input"},
        cli={"success": False, "error": "bad input (exit code 1)", "error_type": "tool_error"},
    ),
    "stderr-of-a-success-is-logs": _case(
        {"success": True, "result": "ok"},
        err="step 1\nstep 2\n",
        success=True,
        reply={"success": True, "result": "ok"},
        data={"success": True, "result": "ok"},
        result="ok",
        logs="step 1\nstep 2\n",
        cli={"success": True, "result": "ok"},
    ),
    "json-after-a-stray-print": _case(
        'loading model...\n{"success": true, "result": 3}\n',
        success=True,
        reply={"success": True, "result": 3},
        data={"success": True, "result": 3},
        result=3,
        cli={"success": True, "result": 3},
    ),
    # Where ally differs from Code Ally (docs/tool-protocol.md): a truthy "error" fails a
    # reply only when it has no "success" key; Code Ally failed it whatever "success" said.
    "success-true-with-error-key": _case(
        {"success": True, "error": "deprecated option ignored"},
        success=True,
        reply={"success": True, "error": "deprecated option ignored"},
        data={"success": True, "error": "deprecated option ignored"},
        result={"success": True, "error": "deprecated option ignored"},
        cli={"success": True, "error": "deprecated option ignored"},
    ),
    # As in Code Ally: lines after the JSON make stdout unreadable.
    "json-followed-by-other-lines": _case(
        '{"success": true}\nbye\n',
        success=False,
        error=f'{LABEL} printed output that is not JSON: {{"success": true}} | bye',
        error_type="invalid_output",
        cli={
            "success": False,
            "error": f'{LABEL} printed output that is not JSON: {{"success": true}} | bye',
            "error_type": "invalid_output",
        },
    ),
    "json-value-not-an-object": _case(
        [1, 2, 3],
        success=True,
        reply=[1, 2, 3],
        data=[1, 2, 3],
        result=[1, 2, 3],
        cli={"data": [1, 2, 3], "success": True},
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_reply_shape_through_the_api_ally_run_and_ally_run_json(
    host: Host, make_plugin: Any, ally_cli: Any, case: str
) -> None:
    spec = CASES[case]
    _say_plugin(make_plugin)
    arguments = {"out": spec["out"], "err": spec["err"], "code": spec["code"]}
    expected = spec["fields"]

    result = _load(host, "shapes").tool("say").call(arguments)
    assert isinstance(result, ToolResult)
    assert {k: getattr(result, k) for k in FIELDS} == expected
    assert result.exit_code == spec["code"]
    assert result.stderr == spec["err"]
    if not result.success:
        assert result.error is not None and "\n" not in result.error

    proc = ally_cli("run", "shapes", "say", "--input", json.dumps(arguments))
    assert proc.returncode == (0 if expected["success"] else 3), proc.stderr
    assert json.loads(proc.stdout) == spec["cli"]

    proc = ally_cli("run", "shapes", "say", "--json", "--input", json.dumps(arguments))
    assert proc.returncode == (0 if expected["success"] else 3), proc.stderr
    printed = json.loads(proc.stdout)
    assert printed.pop("duration") >= 0
    assert printed == {
        "ally": 1,
        "plugin": "shapes",
        "tool": "say",
        **expected,
        "exit_code": spec["code"],
        "stderr": spec["err"],
    }


def test_output_that_is_not_json_is_quoted_capped_on_one_line(host: Host, make_plugin: Any) -> None:
    _say_plugin(make_plugin)
    noise = "".join(f"line {i}\n" for i in range(3000)) + "THE END"
    result = _load(host, "shapes").tool("say").call({"out": noise, "err": "e" * 9000})
    assert not result.success and result.error_type == "invalid_output"
    error = result.error
    assert error is not None and "\n" not in error
    head = f"{LABEL} printed output that is not JSON: …"
    assert error.startswith(head)
    # The end of stdout is quoted (2000 characters of it) and the end of stderr.
    quoted, _, stderr_part = error[len(head) :].partition("; stderr: …")
    assert quoted.endswith("line 2999 | THE END") and len(quoted) == 2000
    assert stderr_part == "e" * 2000
    # ToolResult.stderr keeps the last 4000 characters.
    assert result.stderr == "e" * 4000


# ---------------------------------------------------------------------------------------------
# Live output and cancel

WAITER = """\
import json, os, sys, time
args = json.load(sys.stdin)
sys.stderr.write("waiting for go\\n")
sys.stderr.flush()
while not os.path.exists(args["go"]):
    time.sleep(0.02)
sys.stderr.write("got go\\n")
print(json.dumps({"success": True, "result": "went"}))
"""


def _waiter(make_plugin: Callable[..., Path]) -> None:
    make_plugin(
        "live",
        {"runtime": "python3", "tools": [{"name": "wait", "command": "python3", "args": ["w.py"]}]},
        files={"w.py": WAITER},
    )


def test_output_callback_gets_stderr_while_the_tool_still_runs(
    host: Host, make_plugin: Any, tmp_path: Path
) -> None:
    # The tool waits for a file that only the output callback creates, when it sees the
    # tool's first stderr line: without live output the call would time out.
    _waiter(make_plugin)
    go = tmp_path / "go"
    seen: list[tuple[str, str]] = []

    def on_output(stream: str, text: str) -> None:
        seen.append((stream, text))
        if stream == "stderr" and "waiting for go" in text:
            go.touch()

    result = _load(host, "live").tool("wait").call({"go": str(go)}, timeout=30, on_output=on_output)
    assert result.success and result.result == "went", result
    assert "".join(t for s, t in seen if s == "stderr") == "waiting for go\ngot go\n"
    assert "".join(t for s, t in seen if s == "stdout") == '{"success": true, "result": "went"}\n'
    assert result.logs == "waiting for go\ngot go\n"


def test_ally_run_verbose_shows_the_tools_stderr_live(
    ally_home: Path, make_plugin: Any, ally_cli: Any, tmp_path: Path
) -> None:
    _waiter(make_plugin)
    go = tmp_path / "go"
    argv = [sys.executable, "-m", "ally_core.cli", "run", "live", "wait", "-v", "--timeout", "30"]
    proc = subprocess.Popen(
        [*argv, "--input", json.dumps({"go": str(go)})],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # ends when the CLI exits (after the tool's timeout at worst)
        lines.append(line)
        if "waiting for go" in line:
            go.touch()
            break
    stdout, rest = proc.communicate(timeout=120)
    assert any("waiting for go" in line for line in lines), "".join(lines)
    assert proc.returncode == 0, rest
    assert "got go\n" in rest
    assert json.loads(stdout) == {"success": True, "result": "went"}

    # Without -v the tool's stderr is not shown (it is in --json's "logs").
    quiet = ally_cli("run", "live", "wait", "--input", json.dumps({"go": str(go)}))
    assert quiet.returncode == 0 and "waiting for go" not in quiet.stderr


SPAWNER = """\
import json, os, subprocess, sys, time
child = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
args = json.load(sys.stdin)
with open(args["pids"] + ".tmp", "w") as f:
    json.dump([os.getpid(), child.pid], f)
os.rename(args["pids"] + ".tmp", args["pids"])
time.sleep(600)
"""


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


def test_cancel_from_another_thread_kills_the_tool_and_its_child(
    host: Host, make_plugin: Any, tmp_path: Path
) -> None:
    make_plugin(
        "slow",
        {"runtime": "python3", "tools": [{"name": "t", "command": "python3", "args": ["s.py"]}]},
        files={"s.py": SPAWNER},
    )
    tool = _load(host, "slow").tool("t")
    pids_file = tmp_path / "pids.json"
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def call() -> None:
        try:
            outcome["result"] = tool.call({"pids": str(pids_file)}, timeout=300, cancel=cancel)
        except ToolError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    deadline = time.monotonic() + 60
    while not pids_file.exists() and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    pids = json.loads(pids_file.read_text())
    assert not any(_gone(p) for p in pids)
    cancel.set()
    thread.join(30)
    assert not thread.is_alive()
    error = outcome.get("error")
    assert isinstance(error, ToolError), outcome
    assert error.error_type == "cancelled"
    assert str(error) == "slow: tool 't' cancelled; killed"
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(p) for p in pids), pids


# ---------------------------------------------------------------------------------------------
# Secrets: masked in every text ally writes, and in the reply where a CLI shows it

SECRET = "sk-4e1b9c07d2f3-TOPSECRET"
LEAKER = """\
import json, os, sys, time
mode = sys.argv[1]
key = os.environ["PLUGIN_CONFIG_API_KEY"]
json.load(sys.stdin)
sys.stderr.write(f"using key {key}\\n")
if mode == "ok":
    print(json.dumps({"success": True, "message": f"signed with {key}",
                      "data": {"echo": key, key: "as a key"}}))
elif mode == "fail":
    print(json.dumps({"success": False, "error": f"key {key} was refused",
                      "message": f"tried {key}", "data": {"key": key}}))
elif mode == "raw":
    print(f"not json, but the key: {key}")
elif mode == "exit":
    print(json.dumps({"success": True, "result": key}))
    sys.exit(5)
elif mode == "split":  # the key in pieces, each flushed: live output sees them apart
    for piece in (key[:5], key[5:12], key[12:] + " and more\\n"):
        sys.stderr.write(piece)
        sys.stderr.flush()
        time.sleep(0.2)
    sys.stderr.write("end with " + key[:3])
    print(json.dumps({"success": True}))
"""
VAULT = {
    "runtime": "python3",
    "config": {
        "schema": {
            "type": "object",
            "properties": {
                "api_key": {"type": "string", "secret": True},
                "region": {"type": "string", "default": "eu"},
            },
        }
    },
    "tools": [
        {"name": mode, "command": "python3", "args": ["leak.py", mode]}
        for mode in ("ok", "fail", "raw", "exit", "split")
    ],
}


def _assert_no_secret(value: Any, secret: str = SECRET) -> None:
    text = json.dumps(value) if not isinstance(value, str) else value
    assert secret not in text, text


def test_secret_is_masked_in_every_text_of_the_result_and_in_masked(
    host: Host, make_plugin: Any
) -> None:
    make_plugin("vault", VAULT, files={"leak.py": LEAKER})
    outcome = _load(host, "vault")
    set_stored(host, outcome.manifest, "api_key", SECRET)

    ok = outcome.tool("ok").call({})
    assert ok.success
    assert ok.logs == ok.stderr == "using key ********\n"
    assert ok.message == "signed with ********"
    # The tool's data is the host's own: kept; masked() masks it for display.
    assert ok.data == {"echo": SECRET, SECRET: "as a key"}
    shown = ok.masked()
    assert shown.data == {"echo": "********", "********": "as a key"}
    assert shown.reply == {
        "success": True,
        "message": "signed with ********",
        "data": {"echo": "********", "********": "as a key"},
    }
    _assert_no_secret(shown.to_json())

    fail = outcome.tool("fail").call({})
    assert not fail.success
    assert fail.error == "key ******** was refused"
    assert fail.message == "tried ********"
    _assert_no_secret(fail.masked().to_json())

    for mode in ("raw", "exit"):
        result = outcome.tool(mode).call({})
        assert not result.success and result.error is not None
        assert "********" in result.error
        for text in (result.error, result.stderr, result.logs, result.message or ""):
            _assert_no_secret(text)
        _assert_no_secret(result.masked().to_json())


def test_secret_appears_in_no_output_of_ally_run(
    host: Host, make_plugin: Any, ally_cli: Any
) -> None:
    make_plugin("vault", VAULT, files={"leak.py": LEAKER})
    set_stored(host, host.source("vault").manifest, "api_key", SECRET)
    other = "sk-0000aaaa1111-PERCALL"
    for mode in ("ok", "fail", "raw", "exit"):
        for extra in ((), ("--json",), ("-v",), ("--config", f"api_key={other}")):
            proc = ally_cli("run", "vault", mode, "--input", "{}", *extra)
            assert proc.returncode == (0 if mode == "ok" else 3), (mode, extra, proc.stderr)
            for text in (proc.stdout, proc.stderr):
                _assert_no_secret(text)
                _assert_no_secret(text, other)
            assert "********" in proc.stdout + proc.stderr
            if extra == ("-v",):
                assert "using key ********" in proc.stderr


def test_secret_written_in_pieces_is_masked_in_live_output(
    host: Host, make_plugin: Any, ally_cli: Any
) -> None:
    make_plugin("vault", VAULT, files={"leak.py": LEAKER})
    set_stored(host, host.source("vault").manifest, "api_key", SECRET)
    chunks: list[str] = []
    result = (
        _load(host, "vault")
        .tool("split")
        .call(
            {}, on_output=lambda stream, text: chunks.append(text) if stream == "stderr" else None
        )
    )
    assert result.success
    shown = "".join(chunks)
    assert len(chunks) > 1
    # Nothing is lost: the start of the key at the very end is shown once the call ends.
    assert shown == result.stderr == f"using key ********\n******** and more\nend with {SECRET[:3]}"
    proc = ally_cli("run", "vault", "split", "--input", "{}", "-v")
    assert proc.returncode == 0, proc.stderr
    _assert_no_secret(proc.stderr)
    assert "******** and more" in proc.stderr


def test_secret_stored_under_a_key_in_other_case_is_still_masked(
    host: Host, make_plugin: Any, ally_cli: Any
) -> None:
    # PLUGIN_CONFIG_API_KEY is the same variable for "API_KEY" and "api_key".
    make_plugin("vault", VAULT, files={"leak.py": LEAKER})
    proc = ally_cli("config", "set", "vault", "API_KEY", SECRET)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "vault: api_key = ********\n"  # stored as the schema spells it
    result = _load(host, "vault").tool("fail").call({})
    assert result.error == "key ******** was refused"
    _assert_no_secret(result.masked().to_json())
    other = "sk-1111bbbb2222-OTHERCASE"
    result = _load(host, "vault").tool("fail").call({}, config={"Api_Key": other})
    assert result.error == "key ******** was refused"
    _assert_no_secret(result.masked().to_json(), other)
    for args in (
        ("run", "vault", "ok", "--input", "{}"),
        ("run", "vault", "ok", "--input", "{}", "--config", f"API_KEY={other}"),
        ("config", "show", "vault"),
        ("config", "show", "vault", "--json"),
    ):
        proc = ally_cli(*args)
        assert proc.returncode == 0, proc.stderr
        _assert_no_secret(proc.stdout + proc.stderr)
        _assert_no_secret(proc.stdout + proc.stderr, other)
        assert "********" in proc.stdout


# ---------------------------------------------------------------------------------------------
# The manifest keys Code Ally knows, and what a host needs to advertise tools

CODE_ALLY_MANIFEST: dict[str, Any] = {
    "version": "1.2.0",
    "description": "Every key Code Ally's PluginManifest and ToolDefinition know",
    "author": "Someone <someone@example.org>",
    "runtime": "python3",
    "activationMode": "tagged",
    "agents": [
        {
            "name": "helper",
            "description": "Helps",
            "system_prompt_file": "agents/helper.md",
            "tools": ["ask"],
            "model": "some-model",
            "temperature": 0.3,
            "reasoning_effort": "medium",
            "usage_guidelines": "When the user asks",
            "requirements": {"required_tools_one_of": ["ask"], "require_tool_use": True},
            "visible_from_agents": ["main"],
            "can_delegate_to_agents": True,
            "can_see_agents": True,
        }
    ],
    "config": {
        "schema": {
            "type": "object",
            "properties": {
                "token": {"type": "string", "secret": True, "default": "dflt-9c2e-SECRET"},
                "units": {"type": "string", "default": "metric", "description": "Units"},
            },
        }
    },
    "tools": [
        {
            "name": "ask",
            "display_name": "Ask",
            "description": "Ask something",
            "command": "python3",
            "args": ["-c", "print('{}')"],
            "interactive": True,
            "requiresConfirmation": True,
            "visible_to": ["helper"],
            "subtext": "asking {question}",
            "usageGuidance": "Use it to ask",
            "timeout": 45,
            "schema": {"type": "object", "properties": {"question": {"type": "string"}}},
        },
        {"name": "plain", "command": "python3", "args": ["-c", "print('{}')"]},
    ],
}


def test_code_ally_keys_give_no_warning_and_are_exposed_by_the_api(
    host: Host, make_plugin: Any
) -> None:
    make_plugin("full", CODE_ALLY_MANIFEST)
    outcome = _load(host, "full")
    assert outcome.warnings == []
    ask = outcome.tool("ask").spec
    assert ask.interactive and ask.requires_confirmation
    assert ask.visible_to == ["helper"]
    assert ask.subtext == "asking {question}"
    assert ask.display_name == "Ask" and ask.usage_guidance == "Use it to ask"
    assert ask.timeout == 45
    plain = outcome.tool("plain").spec
    assert not plain.interactive and not plain.requires_confirmation
    assert plain.visible_to is None and plain.subtext is None
    assert outcome.manifest.activation_mode == "tagged"
    assert outcome.manifest.agents == CODE_ALLY_MANIFEST["agents"]


def test_ally_list_json_describes_every_tool_for_a_host(make_plugin: Any, ally_cli: Any) -> None:
    make_plugin("full", CODE_ALLY_MANIFEST)
    proc = ally_cli("list", "--json")
    assert proc.returncode == 0, proc.stderr
    (plugin,) = json.loads(proc.stdout)["plugins"]
    assert plugin["description"] == CODE_ALLY_MANIFEST["description"]
    assert plugin["agents"] == CODE_ALLY_MANIFEST["agents"]
    assert plugin["activationMode"] == "tagged"
    assert plugin["config_schema"] == {
        "type": "object",
        "properties": {
            "token": {"type": "string", "secret": True, "default": "********"},
            "units": {"type": "string", "default": "metric", "description": "Units"},
        },
    }
    assert "dflt-9c2e-SECRET" not in proc.stdout
    ask, plain = plugin["tools"]
    assert ask == {
        "name": "ask",
        "description": "Ask something",
        "schema": {"type": "object", "properties": {"question": {"type": "string"}}},
        "interactive": True,
        "requiresConfirmation": True,
        "visible_to": ["helper"],
        "subtext": "asking {question}",
        "display_name": "Ask",
        "usageGuidance": "Use it to ask",
        "timeout": 45,
    }
    # A tool without a schema advertises the empty object schema (as Code Ally did).
    assert plain == {
        "name": "plain",
        "description": None,
        "schema": {"type": "object", "properties": {}},
        "interactive": False,
        "requiresConfirmation": False,
        "visible_to": None,
        "subtext": None,
        "display_name": None,
        "usageGuidance": None,
        "timeout": None,
    }


def test_a_typo_says_did_you_mean_and_ally_list_marks_the_plugin(
    host: Host, make_plugin: Any, ally_cli: Any
) -> None:
    make_plugin(
        "typo",
        {
            "runtime": "python3",
            "dependecies": {"file": "requirements.txt"},
            "tools": [
                {"name": "t", "command": "python3", "args": ["-c", "1"], "interactve": True},
                {"name": "slow", "command": "python3", "timeout": 120000},
            ],
        },
    )
    make_plugin("fine", {"tools": [{"name": "u", "command": "python3"}]})
    outcomes = {o.name: o for o in host.load()}
    typo = outcomes["typo"]
    assert typo.ready, typo.reason
    assert typo.warnings == [
        "$.dependecies: unknown key (kept); did you mean 'dependencies'?",
        "$.tools[0].interactve: unknown key (kept); did you mean 'interactive'?",
        "$.tools[1].timeout: 120000 is read as seconds "
        "(Code Ally read milliseconds: write 120 for the same limit)",
    ]
    assert outcomes["fine"].warnings == []
    proc = ally_cli("list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "\u26a0 typo: t, slow" in lines
    assert "\u2713 fine: u" in lines
    assert "    warning: $.dependecies: unknown key (kept); did you mean 'dependencies'?" in lines


ENV_ECHO = """\
import json, os, sys
json.load(sys.stdin)
print(json.dumps({k: v for k, v in os.environ.items() if k.startswith("PLUGIN_CONFIG_")}))
"""


def test_code_ally_config_format_is_read_as_the_json_schema_it_means(
    host: Host, make_plugin: Any, ally_cli: Any
) -> None:
    # Code Ally's ConfigProperty: "required" on the property, types choice/filepath/directory.
    config = {
        "schema": {
            "type": "object",
            "properties": {
                "token": {"type": "string", "secret": True, "required": True},
                "mode": {
                    "type": "choice",
                    "choices": [
                        {"label": "Fast", "value": "fast"},
                        {"label": "Slow", "value": "slow"},
                    ],
                    "default": "fast",
                    "required": False,
                },
                "out": {"type": "directory", "description": "Where to write", "required": False},
            },
        }
    }
    make_plugin(
        "styled",
        {"config": config, "tools": [{"name": "env", "command": "python3", "args": ["e.py"]}]},
        files={"e.py": ENV_ECHO},
    )
    tool = _load(host, "styled").tool("env")
    with pytest.raises(ConfigError) as info:
        tool.call({})
    assert str(info.value) == "styled: config: 'token' is a required property"
    proc = ally_cli("config", "set", "styled", "mode", "medium")
    assert proc.returncode == 1
    assert "mode: 'medium' is not one of ['fast', 'slow']" in proc.stderr
    result = tool.call({}, config={"token": SECRET, "mode": "slow", "out": "/tmp"})
    assert result.success, result.error
    assert result.reply == {
        "PLUGIN_CONFIG_TOKEN": SECRET,
        "PLUGIN_CONFIG_MODE": "slow",
        "PLUGIN_CONFIG_OUT": "/tmp",
    }


@pytest.mark.parametrize(
    ("tool_keys", "plugin_keys", "problem"),
    [
        ({"interactive": "yes"}, {}, "$.tools[0].interactive: expected a boolean, got a string"),
        ({"requiresConfirmation": 1}, {}, "$.tools[0].requiresConfirmation: expected a boolean"),
        ({"visible_to": "helper"}, {}, "$.tools[0].visible_to: expected a list of strings"),
        ({"subtext": 3}, {}, "$.tools[0].subtext: expected a string, got a number"),
        ({}, {"activationMode": "sometimes"}, "$.activationMode: expected 'always' or 'tagged'"),
        ({}, {"agents": [{"description": "no name"}]}, "$.agents[0].name: required field missing"),
        ({}, {"agents": {"name": "x"}}, "$.agents: expected a list of agents, got an object"),
    ],
)
def test_code_ally_keys_of_the_wrong_type_block_the_plugin_with_a_json_path(
    host: Host,
    make_plugin: Any,
    tool_keys: dict[str, Any],
    plugin_keys: dict[str, Any],
    problem: str,
) -> None:
    make_plugin(
        "typed",
        {"tools": [{"name": "t", "command": "python3", **tool_keys}], **plugin_keys},
    )
    make_plugin("other", {"tools": [{"name": "u", "command": "python3"}]})
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["other"].ready
    assert outcomes["typed"].status == "blocked"
    assert problem in outcomes["typed"].reason
    assert "\n" not in outcomes["typed"].reason


# ---------------------------------------------------------------------------------------------
# Plugins written the way Code Ally's example plugins are written, run unchanged


def test_python_tool_answering_with_top_level_fields_keeps_its_whole_answer(
    host: Host, ally_home: Path, ally_cli: Any
) -> None:
    _copy_fixture(ally_home, "reverse-text")
    outcome = _load(host, "reverse-text")
    assert outcome.warnings == []
    set_stored(host, outcome.manifest, "prefix", ">> ")
    set_stored(host, outcome.manifest, "api_key", SECRET)
    tool = outcome.tool("reverse-text")
    result = tool.call({"text": "Hello World"})
    expected = {
        "success": True,
        "original": "Hello World",
        "reversed": ">> dlroW olleH",
        "length": 11,
        "config_applied": {"prefix": ">> ", "api_key_present": True},
    }
    assert result.success and result.reply == expected and result.data == expected

    failed = tool.call({"text": "  "})
    assert not failed.success
    assert failed.error == "text is empty: nothing to reverse"
    assert failed.error_type == "validation_error"

    proc = ally_cli("run", "reverse-text", "reverse-text", "--input", '{"text": "abc"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        **expected,
        "original": "abc",
        "reversed": ">> cba",
        "length": 3,
    }
    proc = ally_cli("run", "reverse-text", "reverse-text", "--input", '{"text": ""}')
    assert proc.returncode == 3
    assert json.loads(proc.stdout) == {
        "success": False,
        "error": "text is empty: nothing to reverse",
        "error_type": "validation_error",
    }


def test_interactive_solver_asks_one_form_and_answers_in_full(
    host: Host, ally_home: Path, ally_cli: Any
) -> None:
    _copy_fixture(ally_home, "math-solver")
    outcome = _load(host, "math-solver")
    assert outcome.warnings == []
    asked: list[Any] = []

    def on_form(request: Any) -> dict[str, Any]:
        asked.append(request)
        return {"expression": "2 * (3 + 4)", "precision": 3, "style": "fixed", "show_work": True}

    result = outcome.tool("solve").call({"expression": "1 + 1"}, on_form=on_form)
    (request,) = asked
    assert request.title == "Solve"
    assert [f["name"] for f in request.fields] == ["expression", "precision", "style", "show_work"]
    assert request.initial_values == {"expression": "1 + 1"}
    assert result.success, result.error
    assert result.reply == {
        "success": True,
        "expression": "2 * (3 + 4)",
        "value": 14,
        "formatted": "14.000",
        "message": "2 * (3 + 4) = 14.000",
        "steps": ["parse 2 * (3 + 4)", "evaluate to 14", "format 14.000"],
    }
    assert result.message == "2 * (3 + 4) = 14.000"

    # The CLI answers with --form-response over the defaults and the initial values...
    proc = ally_cli(
        "run", "math-solver", "solve", "--input", '{"expression": "10 / 4"}',
        "--form-response", '{"precision": 1}',
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "success": True,
        "expression": "10 / 4",
        "value": 2.5,
        "formatted": "2.5",
        "message": "10 / 4 = 2.5",
    }
    # ...and without a terminal it cancels, says so, and the tool's answer decides the code.
    proc = ally_cli("run", "math-solver", "solve", "--input", '{"expression": "1"}', input="")
    assert proc.returncode == 3
    assert json.loads(proc.stdout) == {
        "success": False,
        "error": "Calculation cancelled by user",
        "error_type": "tool_error",
    }
    assert "asked the form 'Solve'; cancelled (no terminal" in proc.stderr


def _reachable(host: str, port: int = 443) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.mark.network
def test_sympy_tool_from_pypi_answers_in_full(ally_home: Path, ally_cli: Any) -> None:
    if not _reachable("pypi.org"):
        pytest.skip("pypi.org not reachable")
    (ally_home / "config.toml").write_text(
        '[ally.index]\nindex_url = "https://pypi.org/simple"\n', "utf-8"
    )
    _copy_fixture(ally_home, "sympy-calc")
    outcome = _load(Host(ally_home), "sympy-calc")
    assert "sympy" in outcome.packages
    tool = outcome.tool("differentiate")
    result = tool.call({"expression": "sin(x)**2 + x**3", "variable": "x"})
    assert result.success, result.error
    assert result.reply == {
        "success": True,
        "expression": "sin(x)**2 + x**3",
        "variable": "x",
        "derivative": "3*x**2 + sin(2*x)",
        "sympy_version": outcome.packages["sympy"],
    }
    # Its failure: success false, then exit code 1 (the tool's own error is the text).
    failed = tool.call({"expression": "(("})
    assert not failed.success and failed.exit_code == 1
    assert failed.error is not None and failed.error.startswith("cannot parse '((': ")
    assert failed.error.endswith(" (exit code 1)")
    proc = ally_cli("run", "sympy-calc", "differentiate", "--input", '{"expression": "x**2"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["derivative"] == "2*x"


@pytest.mark.network
def test_typescript_tool_run_by_tsx_from_dev_dependencies_answers_in_full(
    ally_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ally_runtime_node")
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed")
    if not _reachable("registry.npmjs.org"):
        pytest.skip("registry.npmjs.org not reachable")
    monkeypatch.setenv("npm_config_registry", "https://registry.npmjs.org/")
    _copy_fixture(ally_home, "ts-reverse")
    outcome = _load(Host(ally_home), "ts-reverse")
    assert "tsx" in outcome.packages
    tool = outcome.tool("reverse-ts")
    result = tool.call({"text": "héllo"})
    assert result.success, (result.error, result.stderr)
    assert result.reply["reversed"] == "olléh"
    assert result.reply["original"] == "héllo" and result.reply["length"] == 5
    assert result.reply["runtime"].startswith("node v")
    failed = tool.call({"text": ""})
    assert not failed.success and failed.error == "text is empty (exit code 1)"
