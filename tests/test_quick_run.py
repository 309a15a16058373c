"""The quick path of ``ally run`` (:mod:`ally_core.quick_run`) is the full path, only faster.

Each run here is a real process of the ``ally`` console script under ``python -X importtime``:
a run took the quick path when it never imported ``ally_core.cli``. Every check runs the same
command twice, quick and with ``ALLY_QUICK_RUN=0`` (the full path), and compares stdout,
stderr and the exit code byte for byte (only the ``duration`` of ``--json`` differs). Then:
containment (session, cgroup, parent-death signal, SIGTERM), what invalidates a run record
(each change takes the full path at once, and the quick one again once the files settled),
what never gets a record, and the pruning of records.

Most plugins here have no ``runtime`` (their tools run ``python3`` from PATH, or a script in
the plugin directory); one has a Python env, built from the session's wheelhouse. Records
are written only when nothing watched changed in the last 2 s, so the homes are settled
(``time.sleep(SETTLE)``) before the runs that should write their records.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest

from ally_core.containment import PREFIX, cgroup_root
from ally_core.lean import environ_digest
from ally_core.run_records import KEEP
from ally_core.testing import hermetic_environ, write_plugin

ALLY = Path(sys.executable).parent / "ally"
#: Seconds after the last change of a plugin file before a run writes a record (2 s + margin).
SETTLE = 2.2

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
needs_cgroup = pytest.mark.skipif(
    not sys.platform.startswith("linux") or cgroup_root() is None,
    reason="no writable cgroup v2 here (not root, no delegation)",
)

# One script, many behaviours: `python3 tool.py MODE`.
TOOL = r"""
import json, os, subprocess, sys, time

mode = sys.argv[1]


def reply(**fields):
    print(json.dumps(fields))


if mode == "interactive":  # reads one line: stdin stays open for form answers
    line = sys.stdin.readline()
    reply(success=True, result={"line": line})
    sys.exit(0)
if mode == "noread":  # answers without reading its input
    reply(success=True, result="did not read")
    sys.exit(0)
raw = sys.stdin.read()
if mode == "ok":
    reply(success=True, result="ok")
elif mode == "echo":
    value = json.loads(raw) if raw.strip() else None
    reply(success=True, result=value, data={"argv": sys.argv[1:]}, message="echoed")
elif mode == "fail":
    reply(success=False, error="it broke", error_type="custom_kind")
elif mode == "fail_plain":
    reply(success=False, error="plain failure")
elif mode == "not_json":
    print("hello, this is not JSON")
    sys.stderr.write("a log line\n")
elif mode == "broken_json":  # an error json.decoder words
    print('{"success": true, "result": ')
elif mode == "bad_bytes":
    sys.stdout.buffer.write(b"\xff\xfe not utf-8 \xe2\x82\n")
    sys.stderr.buffer.write(b"log \xc3\n")
elif mode == "empty":
    pass
elif mode == "empty_exit":
    sys.stderr.write("boom\n")
    sys.exit(4)
elif mode == "exit_after_success":
    reply(success=True, result=1)
    sys.exit(2)
elif mode == "logs":
    sys.stderr.write("line 1\nline \x1b[2J 2\n\tindented\n")
    reply(success=True, result="logged")
elif mode == "controls":
    reply(success=False, error="red \x1b[31m alert\r\nnext \u202etxt \u00fcn\u00efc\u00f8d\u00e9 "
          "\x07 tab\tend \u200b")
elif mode == "preamble":
    print("Loading model...")
    reply(success=True, result="after preamble")
elif mode == "bare":
    print(json.dumps([1, "two", {"three": 3}]))
elif mode == "deep":
    depth = json.loads(raw)["depth"]
    sys.stdout.write("[" * depth + "]" * depth + "\n")
elif mode == "length":
    reply(success=True, result=len(raw))
elif mode == "big":  # more than a pipe holds, on both streams
    sys.stderr.write("e" * 200_000 + "\n")
    reply(success=True, result="y" * 1_000_000)
elif mode == "killed":  # a success reply, then death by a signal
    reply(success=True, result="then killed")
    sys.stdout.flush()
    os.kill(os.getpid(), 9)
elif mode == "process":  # what the tool inherits besides its environment
    status = [line for line in open("/proc/self/status") if line.startswith(("SigBlk", "SigIgn"))]
    reply(success=True, result={"fds": sorted(os.listdir("/proc/self/fd"), key=int),
                                "signals": status, "umask": os.umask(0o22)})
elif mode == "env":
    reply(success=True, result={"environ": dict(os.environ), "cwd": os.getcwd()})
elif mode == "sleep":
    time.sleep(60)
elif mode in ("flood", "flood_err"):
    stream = sys.stdout if mode == "flood" else sys.stderr
    stream.write("x" * 5000)
    stream.flush()
    time.sleep(60)
elif mode == "late_flood":  # too much output, written once the tool itself has exited
    subprocess.Popen([sys.executable, "-c",
                      "import sys, time; time.sleep(0.3); sys.stdout.write('x' * 5000)"],
                     start_new_session=True)
elif mode == "whoami":
    with open("/proc/self/cgroup") as fh:
        cgroup = fh.read()
    reply(success=True, result={"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
                                "ppid": os.getppid(), "cgroup": cgroup})
elif mode == "escape":  # a grandchild in a session of its own, then the tool exits
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                             start_new_session=True)
    reply(success=True, result=child.pid)
elif mode == "hang":  # says where it is, then waits to be ended
    pidfile = json.loads(raw)["pidfile"]
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(pidfile + ".tmp", pidfile)
    time.sleep(60)
else:
    sys.exit("unknown mode " + mode)
"""

SCRIPT = '#!/bin/sh\nprintf \'{"success": true, "result": "inside"}\\n\'\n'
OUTSIDE = '#!/bin/sh\nprintf \'{"success": true, "result": "outside"}\\n\'\n'

MODES = [
    *("ok", "echo", "fail", "fail_plain", "not_json", "broken_json", "bad_bytes", "empty"),
    *("empty_exit", "exit_after_success", "killed", "logs", "controls", "preamble", "bare"),
    *("deep", "length", "noread", "big", "env", "process", "sleep", "flood", "flood_err"),
    *("late_flood", "whoami", "escape", "hang"),
]


def _tool(mode: str, *extra: str, **keys: Any) -> dict[str, Any]:
    return {"name": mode, "command": "python3", "args": ["tool.py", mode, *extra], **keys}


#: The plugins of the shared home: name -> (manifest, files).
PLUGINS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "echo": (
        {
            "tools": [
                *(_tool(m) for m in MODES),
                {"name": "noexec", "command": "bin/noexec"},
                {"name": "missing", "command": "no-such-command-for-ally-tests"},
                {"name": "script", "command": "bin/script"},
            ]
        },
        # bin/noexec is not executable; bin/script is (made so by _make_home).
        {"tool.py": TOOL, "bin/noexec": "#!/bin/sh\necho '{}'\n", "bin/script": SCRIPT},
    ),
    "forms": (
        {"tools": [_tool("ok"), _tool("interactive", interactive=True)]},
        {"tool.py": TOOL},
    ),
    "checked": (
        {
            "tools": [
                _tool("ok"),
                _tool(
                    "echo",
                    schema={"type": "object", "properties": {"n": {"type": "integer"}}},
                ),
            ]
        },
        {"tool.py": TOOL},
    ),
    "configured": (
        {
            "config": {
                "type": "object",
                "properties": {"greeting": {"type": "string", "default": "hello"}},
            },
            "tools": [_tool("ok"), _tool("env")],
        },
        {"tool.py": TOOL},
    ),
    "prune": ({"tools": [_tool("ok")]}, {"tool.py": TOOL}),
}


# -- running ally ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    """One ``ally`` process: exit code, stdout, stderr without the import times, its pid,
    and whether it took the quick path (never imported ``ally_core.cli``)."""

    code: int
    out: bytes
    err: bytes
    pid: int
    quick: bool

    @property
    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.out)


def split_importtime(stderr: bytes) -> tuple[bytes, set[str]]:
    """``stderr`` without ``-X importtime``'s lines, and the modules those lines name."""
    kept, modules = [], set()
    for line in stderr.splitlines(keepends=True):
        if line.startswith(b"import time:"):
            modules.add(line.rsplit(b"|", 1)[-1].strip().decode())
        else:
            kept.append(line)
    return b"".join(kept), modules


def _finished(proc: subprocess.Popen[bytes], out: bytes, err: bytes) -> Ran:
    err, modules = split_importtime(err)
    # The entry module is always imported: without it, the import times were not seen.
    assert "ally_core.quick_run" in modules, "no import times on stderr"
    return Ran(proc.returncode, out, err, proc.pid, "ally_core.cli" not in modules)


def _command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-X", "importtime", str(ALLY), *args]


@dataclass(frozen=True)
class Home:
    """An ally home, the environment its commands run in, and their working directory."""

    path: Path
    env: dict[str, str]
    cwd: Path
    #: (plugin, environment) pairs whose record a run of the plugin's ``ok`` tool wrote.
    primed: set[tuple[str, str]] = field(default_factory=set)

    def prime(self, plugin: str, extra: Optional[Mapping[str, str]] = None) -> None:
        """Make sure ``plugin`` has a record for this environment (the shared home's files
        never change: once written, it holds)."""
        key = (plugin, json.dumps(dict(extra or {}), sort_keys=True))
        if key not in self.primed:
            self.run("run", plugin, "ok", extra=extra)
            self.primed.add(key)

    def environ(self, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        return {**self.env, **(extra or {})}

    def start(
        self, *args: str, extra: Optional[Mapping[str, str]] = None, **kwargs: Any
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            _command(args), env=self.environ(extra), cwd=self.cwd, **kwargs
        )  # fmt: skip

    def run(
        self,
        *args: str,
        input: Optional[bytes] = None,
        extra: Optional[Mapping[str, str]] = None,
        timeout: float = 120,
        pass_fds: Sequence[int] = (),
    ) -> Ran:
        proc = self.start(
            *args,
            extra=extra,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return _finished(proc, out, err)

    def full(self, *args: str, extra: Optional[Mapping[str, str]] = None, **kw: Any) -> Ran:
        ran = self.run(*args, extra={**(extra or {}), "ALLY_QUICK_RUN": "0"}, **kw)
        assert not ran.quick
        return ran

    def records(self, plugin: str) -> set[str]:
        """The run records of ``plugin``: their environment digests."""
        folder = self.path / "plugin-envs" / ".run"
        prefix = f"{plugin}."
        found = folder.iterdir() if folder.is_dir() else iter(())
        return {p.name[len(prefix) :] for p in found if p.name.startswith(prefix)}

    def plugin_of(self, args: Sequence[str]) -> str:
        words = [a for a in args if not a.startswith("-")]
        return words[words.index("run") + 1]


_DURATION = re.compile(rb'("duration": )[^,\n}]+')


def _normal(ran: Ran, args: Sequence[str]) -> tuple[int, bytes, bytes]:
    out = _DURATION.sub(rb"\g<1>0", ran.out) if "--json" in args else ran.out
    return ran.code, out, ran.err


def same(
    home: Home,
    *args: str,
    input: Optional[bytes] = None,
    extra: Optional[Mapping[str, str]] = None,
    pass_fds: Sequence[int] = (),
) -> Ran:
    """``ally ARGS`` on the quick path and on the full path: the same stdout, stderr and exit
    code. The plugin's ``ok`` tool runs first, once per environment (it writes the record)."""
    home.prime(home.plugin_of(args), extra)
    quick = home.run(*args, input=input, extra=extra, pass_fds=pass_fds)
    assert quick.quick, f"ally {' '.join(args)} did not take the quick path: {quick.stderr}"
    full = home.full(*args, input=input, extra=extra, pass_fds=pass_fds)
    assert _normal(quick, args) == _normal(full, args)
    return quick


def _environ(home: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env = hermetic_environ(base)
    env["ALLY_HOME"] = str(home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _make_home(
    root: Path,
    plugins: Mapping[str, tuple[dict[str, Any], dict[str, str]]],
    wheelhouse: Optional[Path] = None,
) -> Home:
    """A home with ``plugins``; Python envs install only from ``wheelhouse``."""
    home = root / "home"
    (home / "plugins").mkdir(parents=True)
    links = f"find_links = [{json.dumps(str(wheelhouse))}]\n" if wheelhouse else ""
    (home / "config.toml").write_text(f"[ally.index]\nno_index = true\n{links}", "utf-8")
    for name, (manifest, files) in plugins.items():
        plugin = write_plugin(home / "plugins", name, manifest, files)
        if "bin/script" in files:
            (plugin / "bin" / "script").chmod(0o755)
    cwd = root / "cwd"
    cwd.mkdir()
    return Home(home, _environ(home), cwd)


@pytest.fixture(scope="module")
def home(homes: dict[str, Home]) -> Home:
    """The shared home: tests that use it change none of its files."""
    return homes["shared"]


#: The homes the invalidation tests change, one each, all settled by one sleep.
CHANGED = ("manifest", "duplicate", "config_toml", "environ", "config_set", "off", "symlink")
#: A plugin with a Python env (allydemo-greet from the test session's wheelhouse).
GREET = (
    {
        "runtime": "python3",
        "dependencies": {"file": "requirements.txt"},
        "tools": [
            *(_tool(mode) for mode in ("ok", "echo", "fail", "env", "logs")),
            {
                "name": "hello",
                "command": "python3",
                "args": ["-c", "import json, allydemo_greet as g; print(json.dumps(g.greet()))"],
            },
        ],
    },
    {"tool.py": TOOL, "requirements.txt": "allydemo-greet==1.0.0\n"},
)


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> dict[str, Home]:
    """All the homes of this module, settled by one sleep: ``shared`` (:data:`PLUGINS`), one
    per invalidation test (:data:`CHANGED`), and two with an installed Python plugin:
    ``python`` (never changed) and ``python_env`` (changed)."""
    made = {"shared": _make_home(tmp_path_factory.mktemp("quick"), PLUGINS)}
    for case in CHANGED:
        made[case] = _make_home(
            tmp_path_factory.mktemp(f"quick-{case}"),
            {"echo": PLUGINS["echo"], "plain": ({"tools": [_tool("ok")]}, {"tool.py": TOOL})},
        )
    for case in ("python", "python_env"):
        made[case] = _make_home(tmp_path_factory.mktemp(case), {"greet": GREET}, wheelhouse)
        installed = made[case].run("install", "greet")
        assert installed.code == 0, installed.stderr
    time.sleep(SETTLE)
    return made


# -- 1. replies --------------------------------------------------------------------------------


#: The tools (of the "echo" plugin) whose calls fail.
FAILING = {"fail", "fail_plain", "not_json", "broken_json", "bad_bytes", "empty", "empty_exit"}
FAILING |= {"exit_after_success", "killed", "controls"}
#: Replies whose plain printing differs in kind.
PRINTED = ["ok", "echo", "fail", "not_json", "broken_json", "bad_bytes", "empty", "empty_exit"]
PRINTED += ["killed", "preamble", "bare"]
#: What ``ally run --json`` reports of a reply (a few of its fields), by tool.
READ_AS: dict[str, dict[str, Any]] = {
    "echo": {"result": {}, "data": {"argv": ["echo"]}, "message": "echoed"},
    "fail": {"success": False, "error": "it broke", "error_type": "custom_kind"},
    "fail_plain": {"error": "plain failure", "error_type": "tool_error", "exit_code": 0},
    "not_json": {"error_type": "invalid_output", "stderr": "a log line\n"},
    "broken_json": {"error_type": "invalid_output", "reply": None},
    "bad_bytes": {"error_type": "invalid_output", "stderr": "log \ufffd\n"},
    "empty_exit": {"error_type": "exit_code", "exit_code": 4},
    "exit_after_success": {"success": False, "error_type": "exit_code", "exit_code": 2},
    "killed": {"success": False, "error_type": "exit_code", "exit_code": -9},
    "logs": {"success": True, "logs": "line 1\nline \x1b[2J 2\n\tindented\n"},
    "controls": {"success": False, "error_type": "tool_error"},
    "bare": {"success": True, "data": [1, "two", {"three": 3}], "reply": [1, "two", {"three": 3}]},
    "noread": {"success": True, "result": "did not read"},
}


@pytest.mark.parametrize("mode", PRINTED)
def test_every_kind_of_reply_is_printed_the_same(home: Home, mode: str):
    ran = same(home, "run", "echo", mode)
    failed = mode in FAILING
    assert ran.code == (3 if failed else 0), ran.stderr
    assert ran.out.count(b"\n") == 1  # not a terminal: one compact line
    assert ran.json()["success"] is not failed
    assert ran.err.count(b"\n") == (1 if failed else 0), ran.stderr  # the failure, said once
    if failed:
        assert ran.stderr.startswith(f"ally: echo: tool {mode!r}")
    if mode == "preamble":  # the line before the reply is not part of it
        assert ran.json() == {"success": True, "result": "after preamble"}


@pytest.mark.parametrize("mode", sorted(READ_AS))
def test_every_kind_of_reply_is_read_the_same_with_json(home: Home, mode: str):
    ran = same(home, "run", "echo", mode, "--json")
    data = ran.json()
    assert ran.out.startswith(b'{\n  "ally": 1,\n  "plugin": "echo",\n  "tool": ')  # indented
    assert data["success"] is (mode not in FAILING) and ran.err == b""
    assert {key: data[key] for key in READ_AS[mode]} == READ_AS[mode]


@pytest.mark.parametrize(
    "args",
    [
        ["-q", "run", "echo", "fail"],
        ["run", "echo", "ok", "-q"],
        ["run", "echo", "empty_exit", "--quiet"],
    ],
)
def test_quiet_says_nothing_more(home: Home, args: list[str]):
    mode = args[args.index("echo") + 1]
    ran = same(home, *args)
    assert ran.err == b"" and ran.code == (0 if mode == "ok" else 3)


def test_large_replies_and_logs_are_read_whole(home: Home):
    ran = same(home, "run", "echo", "big", "--json")
    data = ran.json()
    assert data["result"] == "y" * 1_000_000
    assert data["logs"] == data["stderr"] == "e" * 3999 + "\n"  # the end of stderr


def test_control_characters_in_an_error_are_escaped_on_stderr(home: Home):
    ran = same(home, "run", "echo", "controls")
    line = ran.stderr
    assert line.startswith("ally: echo: tool 'controls' failed: red \\x1b[31m alert")
    assert "\\u202etxt \u00fcn\u00efc\u00f8d\u00e9 \\x07 tab end \\u200b\n" in line
    assert "\x1b" not in line and "\r" not in line and "\u202e" not in line
    assert line.count("\n") == 1


def test_the_tool_sees_the_same_environment(home: Home):
    seen = same(home, "run", "echo", "env", extra={"TZ": "UTC", "LC_TIME": "C", "SECRET": "x"})
    result = seen.json()["result"]
    environ = result["environ"]
    assert environ["ALLY_PLUGIN_NAME"] == "echo"
    assert environ["ALLY_PLUGIN_DIR"] == result["cwd"] == str(home.path / "plugins" / "echo")
    assert environ["TZ"] == "UTC" and environ["LC_TIME"] == "C"
    assert "SECRET" not in environ and "ALLY_HOME" not in environ


@linux_only
def test_the_tool_inherits_nothing_more_of_ally(home: Home, tmp_path: Path):
    import fcntl

    with open(tmp_path / "held", "w") as held:  # a descriptor ally inherits
        high = fcntl.fcntl(held.fileno(), fcntl.F_DUPFD, 200)
        try:
            fds = [held.fileno(), high]
            seen = same(home, "run", "echo", "process", pass_fds=fds).json()["result"]
        finally:
            os.close(high)
    # Its three pipes and the directory it lists: no descriptor of ally's.
    assert seen["fds"] == ["0", "1", "2", "3"]
    assert "SigBlk:\t0000000000000000\n" in seen["signals"]  # no signal left blocked


@pytest.mark.parametrize(
    "args, stdin, value",
    [
        (["--input", '{"a": [1, 2]}'], b'{"ignored": true}', {"a": [1, 2]}),
        (['--input={"a": "b=c"}'], None, {"a": "b=c"}),
        (["--input="], b'{"ignored": true}', {}),
        ([], b'{"from": "stdin", "lone": "\\ud800"}', {"from": "stdin", "lone": "\ud800"}),
        ([], b" \n\t", {}),
        ([], b'"\xe2\x98\x83"', "\u2603"),
    ],
)
def test_input_arrives_the_same(home: Home, args: list[str], stdin: Optional[bytes], value: Any):
    ran = same(home, "run", "echo", "echo", *args, input=stdin)
    assert ran.code == 0 and ran.json()["result"] == value, ran.stderr


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["--input", "{nope"], None, "--input is not valid JSON: Expecting property name"),
        ([], b'{"a": 1} trailing', "--input is not valid JSON: Extra data"),
        ([], b"\xef\xbb\xbf{}", "--input is not valid JSON: Unexpected UTF-8 BOM"),
        ([], b"nope", "--input is not valid JSON: Expecting value"),
        ([], b"[" * 100_000 + b"]" * 100_000, "--input is nested too deeply"),
    ],
)
def test_bad_input_is_the_same_one_line_error(
    home: Home, args: list[str], stdin: Optional[bytes], message: str
):
    ran = same(home, "run", "echo", "echo", *args, input=stdin)
    assert ran.code == 1 and ran.out == b""
    assert ran.stderr.startswith(f"ally: error: {message}"), ran.stderr
    assert ran.stderr.count("\n") == 1


@pytest.mark.parametrize(
    "text",
    ["{nope", '{"a": }', '{"a" 1}', "[1, 2", '"unterminated', '{"a": 1} x', "[1,]", "nul"],
)
def test_lean_json_errors_are_jsons_in_a_process_without_json(text: str):
    """The quick path never imports json until a text is bad: its errors must be json's."""
    probe = (
        "import sys\n"
        "from ally_core import lean\n"
        "assert 'json.decoder' not in sys.modules\n"
        "try:\n"
        "    lean.loads(sys.argv[1])\n"
        "except ValueError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe, text], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    assert proc.stdout == f"JSONDecodeError {expected.value}\n"


@pytest.mark.parametrize("depth", [500, 501, 992])
def test_deep_input_is_refused_or_passed_alike(home: Home, depth: int):
    """How deep an input may nest is a limit of ally's, not of either path's stack."""
    ran = same(home, "run", "echo", "length", input=b"[" * depth + b"]" * depth)
    if depth <= 500:
        assert ran.code == 0 and ran.json()["result"] == 2 * depth
    else:
        assert ran.code == 1 and ran.stderr == "ally: error: --input is nested too deeply\n"


@pytest.mark.parametrize("depth", [500, 501, 988])
def test_a_deep_reply_is_read_alike(home: Home, depth: int):
    """How deep a reply may nest to be read as JSON is ally's limit too."""
    ran = same(home, "run", "echo", "deep", "--input", json.dumps({"depth": depth}))
    if depth <= 500:
        assert ran.code == 0 and ran.out.startswith(b'{"data": [[')
    else:
        assert ran.code == 3 and "printed output that is not JSON" in ran.stderr


def test_the_command_line_may_mix_options_and_words(home: Home):
    for args in (
        ["run", "-q", "echo", "fail"],
        ["run", "echo", "--json", "echo", "--input", "[1]"],
        ["run", "--input", "[2]", "echo", "echo", "--timeout=inf"],
        ["run", "echo", "echo", "--timeout", "1e3", "--input={}"],
    ):
        same(home, *args)


def test_a_terminal_gets_the_indented_reply(home: Home):
    """stdout (and stdin) a terminal: the reply is indented, and no input is read."""
    home.prime("echo")

    def on_terminal(extra: Mapping[str, str]) -> tuple[bytes, bytes, bool]:
        main, secondary = os.openpty()
        try:
            proc = home.start(
                "run", "echo", "echo", extra=extra, stdin=secondary, stdout=secondary,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            os.close(secondary)
            secondary = -1
            out = b""
            while True:
                ready, _, _ = select.select([main], [], [], 60)
                assert ready, "no output on the terminal"
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                out += chunk
            _, err = proc.communicate(timeout=60)
        finally:
            os.close(main)
            if secondary >= 0:
                os.close(secondary)
        ran = _finished(proc, out, err)
        return out, ran.err, ran.quick

    quick = on_terminal({})
    full = on_terminal({"ALLY_QUICK_RUN": "0"})
    assert quick[2] and not full[2]
    assert quick[:2] == full[:2]
    assert quick[0].startswith(b'{\r\n  "success": true,\r\n  "result": {},\r\n')


# -- 2. limits ---------------------------------------------------------------------------------


def test_a_timeout_kills_the_tool_with_the_same_message(home: Home):
    ran = same(home, "run", "echo", "sleep", "--timeout", "0.5")
    assert (ran.code, ran.out) == (1, b"")
    assert ran.stderr == "ally: error: echo: tool 'sleep' timed out after 0.5s; killed\n"


@pytest.mark.parametrize("mode", ["flood", "flood_err"])
def test_output_over_the_limit_is_the_same_error(home: Home, mode: str):
    ran = same(home, "run", "echo", mode, extra={"ALLY_OUTPUT_LIMIT": "1000"})
    assert (ran.code, ran.out) == (1, b"")
    assert ran.stderr == (f"ally: error: echo: tool {mode!r} output exceeded 1000 bytes; killed\n")


def test_output_over_the_limit_after_the_tool_exited_is_the_same_error(home: Home):
    """Too much output from a descendant once the tool is gone (no cgroup ends it)."""
    limits = {"ALLY_OUTPUT_LIMIT": "1000", "ALLY_TOOL_CGROUP": "0"}
    ran = same(home, "run", "echo", "late_flood", extra=limits)
    assert (ran.code, ran.out) == (1, b"")
    assert ran.stderr == "ally: error: echo: tool 'late_flood' output exceeded 1000 bytes; killed\n"


def test_a_command_that_cannot_be_executed(home: Home):
    ran = same(home, "run", "echo", "noexec")
    script = home.path / "plugins" / "echo" / "bin" / "noexec"
    assert ran.code == 1 and ran.out == b""
    assert ran.stderr == (
        f"ally: error: echo: tool 'noexec': cannot run {script}: Permission denied\n"
    )


def test_a_command_not_on_path_is_the_full_paths_error(home: Home):
    home.prime("echo")
    ran = home.run("run", "echo", "missing")
    assert not ran.quick  # the quick path looks it up, finds nothing, and hands over
    assert _normal(ran, ()) == _normal(home.full("run", "echo", "missing"), ())
    assert "not found on PATH" in ran.stderr and ran.code == 1


def test_an_input_larger_than_a_pipe_is_read_whole(home: Home):
    blob = b'{"blob": "' + b"x" * 1_000_000 + b'"}'
    ran = same(home, "run", "echo", "length", input=blob)
    assert ran.json()["result"] == len(blob)
    unread = same(home, "run", "echo", "noread", input=blob)  # the tool's business
    assert unread.json()["result"] == "did not read"


# -- 3. containment ----------------------------------------------------------------------------

PATHS = pytest.mark.parametrize("path", ["quick", "full"])


def _path_env(path: str) -> dict[str, str]:
    return {"ALLY_QUICK_RUN": "0"} if path == "full" else {}


def _took(ran: Ran, path: str) -> Ran:
    assert ran.quick is (path == "quick"), ran.stderr
    return ran


@linux_only
@PATHS
def test_the_tool_runs_in_its_own_session(home: Home, path: str):
    home.prime("echo")
    ran = _took(home.run("run", "echo", "whoami", extra=_path_env(path)), path)
    seen = ran.json()["result"]
    assert seen["ppid"] == ran.pid
    assert seen["sid"] == seen["pgid"] == seen["pid"]  # a session (and group) of its own
    assert seen["sid"] != os.getsid(0)  # ally's session is this test's


@needs_cgroup
@PATHS
def test_the_tool_runs_in_a_cgroup_of_its_call(home: Home, path: str):
    home.prime("echo")
    ran = _took(home.run("run", "echo", "whoami", extra=_path_env(path)), path)
    lines = ran.json()["result"]["cgroup"].splitlines()
    unified = [line for line in lines if line.startswith("0::")]
    assert len(unified) == 1 and unified[0].endswith(f"/{PREFIX}{ran.pid}-0"), lines
    root = cgroup_root()
    assert root is not None and not (root / f"{PREFIX}{ran.pid}-0").exists()


@needs_cgroup
@PATHS
def test_a_grandchild_that_left_the_session_ends_with_the_call(
    home: Home, path: str, processes: Any
):
    home.prime("echo")
    ran = _took(home.run("run", "echo", "escape", extra=_path_env(path)), path)
    grandchild = ran.json()["result"]
    processes.reap(grandchild)
    assert processes.wait_gone([grandchild], timeout=5) == [], "the grandchild outlived ally"


def _hanging(
    home: Home, path: str, pidfile: Path, extra: Optional[Mapping[str, str]] = None
) -> tuple[subprocess.Popen[bytes], int]:
    """``ally run echo hang`` started, and the pid of its tool once it runs."""
    home.prime("echo", extra)
    proc = home.start(
        "run", "echo", "hang", "--input", json.dumps({"pidfile": str(pidfile)}),
        extra={**_path_env(path), **(extra or {})}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not pidfile.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"the tool did not start: {out!r} {err!r}")
        time.sleep(0.01)
    return proc, int(pidfile.read_text())


@linux_only
@PATHS
def test_killing_ally_kills_the_tool(home: Home, path: str, tmp_path: Path, processes: Any):
    # No cgroup: the next call of any ally process would end the tool of a dead one (see
    # test_containment.py); what is checked here is the parent-death signal alone.
    proc, tool = _hanging(home, path, tmp_path / "pid", {"ALLY_TOOL_CGROUP": "0"})
    processes.reap(tool)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    _took(_finished(proc, out, err), path)
    assert processes.wait_gone([tool]) == [], "the tool outlived ally (no parent-death signal)"


@linux_only
def test_sigterm_interrupts_ally_and_ends_the_tool(home: Home, tmp_path: Path, processes: Any):
    seen = {}
    for path in ("quick", "full"):
        proc, tool = _hanging(home, path, tmp_path / f"pid-{path}")
        processes.reap(tool)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        ran = _took(_finished(proc, out, err), path)
        assert processes.wait_gone([tool], timeout=5) == [], f"{path}: the tool outlived ally"
        seen[path] = (ran.code, ran.out, ran.err)
    assert seen["quick"] == seen["full"] == (130, b"", b"ally: interrupted\n")


# -- 4. what invalidates a record --------------------------------------------------------------


def recorded(home: Home, *args: str, extra: Optional[Mapping[str, str]] = None) -> Ran:
    """Run ``ally ARGS`` until the record is there: the run after it is quick."""
    home.run(*args, extra=extra)
    ran = home.run(*args, extra=extra)
    assert ran.quick, ran.stderr
    return ran


def changed(home: Home, *args: str, extra: Optional[Mapping[str, str]] = None) -> Ran:
    """The first run after a change: the full path, as the full path answers."""
    ran = home.run(*args, extra=extra)
    assert not ran.quick, "a record that no longer holds was used"
    assert _normal(ran, args) == _normal(home.full(*args, extra=extra), args)
    return ran


def quick_again(home: Home, *args: str, extra: Optional[Mapping[str, str]] = None) -> Ran:
    """Once the change settled: the next run writes a new record, the one after uses it."""
    time.sleep(SETTLE)
    first = home.run(*args, extra=extra)
    assert not first.quick
    again = home.run(*args, extra=extra)
    assert again.quick, again.stderr
    assert _normal(again, args) == _normal(first, args)
    return again


def test_an_edited_manifest_is_used_at_once(homes: dict[str, Home]):
    home = homes["manifest"]
    before = recorded(home, "run", "echo", "echo")
    assert before.json()["data"] == {"argv": ["echo"]}
    manifest, _files = PLUGINS["echo"]
    tools = [_tool("echo", "edited"), *(t for t in manifest["tools"] if t["name"] != "echo")]
    write_plugin(home.path / "plugins", "echo", {**manifest, "tools": tools})
    after = changed(home, "run", "echo", "echo")
    assert after.json()["data"] == {"argv": ["echo", "edited"]}
    assert quick_again(home, "run", "echo", "echo").json()["data"] == after.json()["data"]


def test_a_second_plugin_of_the_same_name_blocks_both(homes: dict[str, Home]):
    home = homes["duplicate"]
    recorded(home, "run", "echo", "ok")
    recorded(home, "run", "plain", "ok")
    twin = write_plugin(home.path / "plugins", "twin", {"name": "echo", "tools": [_tool("ok")]})
    blocked = changed(home, "run", "echo", "ok")
    assert blocked.code != 0 and blocked.out == b""
    assert blocked.stderr.startswith("ally: error: echo: blocked: "), blocked.stderr
    other = changed(home, "run", "plain", "ok")  # the plugins dir changed: every record
    assert other.code == 0
    time.sleep(SETTLE)
    for _ in range(2):  # settled, still blocked: no record
        again = home.run("run", "echo", "ok")
        assert not again.quick and again.err == blocked.err
    shutil.rmtree(twin)
    assert changed(home, "run", "echo", "ok").code == 0
    quick_again(home, "run", "echo", "ok")


def test_a_changed_config_file_is_used_at_once(homes: dict[str, Home]):
    home = homes["config_toml"]
    extra = {"ALLY_TEST_SHOWN": "yes"}
    before = recorded(home, "run", "echo", "env", extra=extra)
    assert "ALLY_TEST_SHOWN" not in before.json()["result"]["environ"]
    config = home.path / "config.toml"
    config.write_text('[ally]\npass_env = ["ALLY_TEST_SHOWN"]\n' + config.read_text(), "utf-8")
    after = changed(home, "run", "echo", "env", extra=extra)
    assert after.json()["result"]["environ"]["ALLY_TEST_SHOWN"] == "yes"
    again = quick_again(home, "run", "echo", "env", extra=extra)
    assert again.json()["result"]["environ"]["ALLY_TEST_SHOWN"] == "yes"


def test_another_environment_is_another_record(homes: dict[str, Home]):
    home = homes["environ"]
    recorded(home, "run", "echo", "env")
    for value in ("1", "2"):
        extra = {"FOO": value, "ALLY_PASS_ENV": "FOO"}
        ran = changed(home, "run", "echo", "env", extra=extra)
        assert ran.json()["result"]["environ"]["FOO"] == value
        # Nothing on disk changed: the record of this environment is written at once.
        assert home.run("run", "echo", "env", extra=extra).quick
    changed(home, "run", "echo", "env", extra={"FOO": "3"})  # not passed, still another env
    # The records of the other environments are kept.
    ran = home.run("run", "echo", "env", extra={"FOO": "1", "ALLY_PASS_ENV": "FOO"})
    assert ran.quick and ran.json()["result"]["environ"]["FOO"] == "1"
    assert home.run("run", "echo", "env").quick


def test_a_stored_config_value_means_no_record(homes: dict[str, Home]):
    home = homes["config_set"]
    recorded(home, "run", "echo", "env")
    refused = home.run("config", "set", "echo", "colour", "blue")  # no config declared
    assert refused.code == 1 and "declares no config" in refused.stderr
    assert home.run("run", "echo", "env").quick  # nothing was stored: the record holds
    manifest, _files = PLUGINS["echo"]
    colour = {"type": "object", "properties": {"colour": {"type": "string"}}}
    write_plugin(home.path / "plugins", "echo", {**manifest, "config": colour})
    stored = home.run("config", "set", "echo", "colour", "blue")
    assert stored.code == 0, stored.stderr
    # The schema gone again, the stored value stays, and reaches the tool.
    write_plugin(home.path / "plugins", "echo", manifest)
    ran = changed(home, "run", "echo", "env")
    assert ran.json()["result"]["environ"]["PLUGIN_CONFIG_COLOUR"] == "blue"
    time.sleep(SETTLE)
    for _ in range(2):  # settled: still the full path, every time (no record is written)
        again = home.run("run", "echo", "env")
        assert not again.quick and again.out == ran.out
    assert recorded(home, "run", "plain", "ok").code == 0  # other plugins keep theirs


def test_quick_run_off_is_always_the_full_path(homes: dict[str, Home]):
    home = homes["off"]
    recorded(home, "run", "echo", "ok")
    records = home.records("echo")
    for value in ("0", "0", "false", " OFF "):
        ran = home.run("run", "echo", "echo", "--input", "[7]", extra={"ALLY_QUICK_RUN": value})
        assert not ran.quick and ran.json()["result"] == [7]
    assert home.records("echo") == records  # and no record written for it
    assert home.run("run", "echo", "ok").quick


def test_a_script_replaced_by_a_symlink_out_of_the_plugin_is_refused(
    homes: dict[str, Home], tmp_path: Path
):
    home = homes["symlink"]
    plugin = home.path / "plugins" / "echo"
    assert recorded(home, "run", "echo", "script").json()["result"] == "inside"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "script").write_text(OUTSIDE, "utf-8")
    (outside / "script").chmod(0o755)
    script = plugin / "bin" / "script"
    script.unlink()
    script.symlink_to(outside / "script")  # bin/ is not watched: the record still holds
    refused = changed(home, "run", "echo", "script")
    assert refused.code == 1 and refused.out == b""
    assert refused.stderr == (
        "ally: error: echo: tool 'script': command 'bin/script' is outside the plugin directory\n"
    )
    assert changed(home, "run", "echo", "script").err == refused.err
    assert home.run("run", "echo", "ok").quick  # the plugin's other tools stay quick
    # The directory itself a symlink to the outside.
    script.unlink()
    (plugin / "bin").rename(plugin / "bin-real")
    (plugin / "bin").symlink_to(outside)
    assert changed(home, "run", "echo", "script").err == refused.err
    (plugin / "bin").unlink()
    (plugin / "bin-real").rename(plugin / "bin")
    script.write_text(SCRIPT, "utf-8")
    script.chmod(0o755)
    # The plugin's own directory is not watched: the record holds, and serves the script.
    back = same(home, "run", "echo", "script")
    assert back.json()["result"] == "inside"


# -- plugins with a Python env ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hello", "fail", "env"])
def test_a_python_plugin_runs_the_same(homes: dict[str, Home], mode: str):
    home = homes["python"]
    ran = same(home, "run", "greet", mode, "--json", "--input", '{"who": "py"}')
    data = ran.json()
    if mode == "hello":
        assert data["reply"] == "hello world from allydemo_greet 1.0.0"
    if mode == "env":  # the env's interpreter and variables, from the record
        environ = data["result"]["environ"]
        env_bin = environ["PATH"].split(os.pathsep)[0]
        assert env_bin.startswith(str(home.path / "plugin-envs"))
        assert os.path.exists(os.path.join(env_bin, "python3"))


def test_a_new_env_of_a_python_plugin_is_used_at_once(homes: dict[str, Home]):
    home = homes["python_env"]
    before = recorded(home, "run", "greet", "hello")
    assert before.json()["data"] == "hello world from allydemo_greet 1.0.0"
    assert home.run("reinstall", "greet").code == 0
    assert changed(home, "run", "greet", "hello").out == before.out  # a new env, the same
    requirements = home.path / "plugins" / "greet" / "requirements.txt"
    requirements.write_text("allydemo-greet==2.0.0\n", "utf-8")
    rebuilt = home.run("run", "greet", "hello")  # the full path builds the new env
    assert not rebuilt.quick and rebuilt.json()["data"] == "hello world from allydemo_greet 2.0.0"
    assert quick_again(home, "run", "greet", "hello").out == rebuilt.out


# -- 5. never a record, and command lines for the full path ------------------------------------


def _never_quick(home: Home, *args: str) -> Ran:
    home.run(*args)  # (would write a record)
    ran = home.run(*args)
    assert not ran.quick, f"ally {' '.join(args)} took the quick path"
    assert _normal(ran, args) == _normal(home.full(*args), args)
    return ran


def test_an_interactive_tool_is_always_the_full_path(home: Home):
    ran = _never_quick(home, "run", "forms", "interactive", "--input", '{"x": 1}')
    assert ran.json()["result"] == {"line": '{"x": 1}\n'}
    assert home.run("run", "forms", "ok").quick  # the plugin's other tool is quick


def test_a_tool_with_an_input_schema_is_always_the_full_path(home: Home):
    good = _never_quick(home, "run", "checked", "echo", "--input", '{"n": 1}')
    assert good.code == 0 and good.json()["result"] == {"n": 1}
    bad = _never_quick(home, "run", "checked", "echo", "--input", '{"n": "one"}')
    assert bad.code != 0 and "n" in bad.stderr
    assert home.run("run", "checked", "ok").quick


def test_a_plugin_with_a_config_schema_gets_no_record(home: Home):
    ran = _never_quick(home, "run", "configured", "env")
    assert ran.json()["result"]["environ"]["PLUGIN_CONFIG_GREETING"] == "hello"
    _never_quick(home, "run", "configured", "ok")
    assert home.records("configured") == set()


@pytest.mark.parametrize(
    "args",
    [
        ["run", "echo", "logs", "-v"],
        ["run", "echo", "env", "--config", "k=v"],
        ["--home", "{home}", "run", "echo", "ok"],
        ["--debug", "run", "echo", "ok"],
        ["run", "echo", "ok", "--timeout", "0"],
        ["run", "echo", "ok", "--inp", "{}"],
    ],
)
def test_command_lines_the_quick_path_does_not_parse_go_to_the_full_path(
    home: Home, args: list[str]
):
    args = [a.replace("{home}", str(home.path)) for a in args]
    home.prime("echo")
    ran = home.run(*args)
    assert not ran.quick
    assert _normal(ran, args) == _normal(home.full(*args), args)


# -- 6. unknown tools, pruning -----------------------------------------------------------------


def test_an_unknown_tool_of_a_recorded_plugin_is_the_full_paths_error(home: Home):
    home.prime("echo")
    ran = home.run("run", "echo", "no-such-tool")
    assert not ran.quick and ran.code != 0
    assert "no-such-tool" in ran.stderr
    assert _normal(ran, ()) == _normal(home.full("run", "echo", "no-such-tool"), ())


def test_records_are_pruned_to_the_newest(home: Home):
    envs = [{"ALLY_TEST_ENVIRONMENT": str(i)} for i in range(KEEP + 1)]
    for extra in envs:
        assert not home.run("run", "prune", "ok", extra=extra).quick  # writes its record
    digests = [environ_digest(home.environ(extra)) for extra in envs]
    assert home.records("prune") == set(digests[1:])  # the oldest is gone
    assert home.run("run", "prune", "ok", extra=envs[-1]).quick
    assert not home.run("run", "prune", "ok", extra=envs[0]).quick
    assert home.records("prune") == set(digests[2:]) | {digests[0]}
