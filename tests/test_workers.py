"""Warm workers: a call through a plugin's fork server is a spawn, to the tool and to the host.

Real envs (uv, the session's wheelhouse), real servers in the env's interpreter, real forked
tool processes. Whether a call went through a worker is read from the tool itself: its parent
is the worker's server, not this process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest

from ally_core import Host, ToolError
from ally_core.testing import build_wheel
from ally_core.workers import WorkerOptions

#: Workers that keep their pid: no replacement by one preloading what calls imported.
STEADY = WorkerOptions(learn_imports=False)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="warm workers need POSIX")

# Reports what a tool can see of the process it runs in.
PROBE = r"""
import json, os, random, signal, sys
import allydemo_greet
data = sys.stdin.read()
allydemo_greet.calls = getattr(allydemo_greet, "calls", 0) + 1
leftover = "LEFTOVER" in globals()
LEFTOVER = True
main = sys.modules["__main__"]
print(json.dumps({
    "pid": os.getpid(),
    "ppid": os.getppid(),
    "random": random.random(),
    "argv": sys.argv,
    "path0": sys.path[0],
    "cwd": os.getcwd(),
    "file": __file__,
    "name": __name__,
    "spec": repr(__spec__),
    "package": __package__,
    "cached": globals().get("__cached__", "missing"),
    "main_is_me": main.__dict__ is globals(),
    "stdin": data,
    "environ": {k: v for k, v in os.environ.items() if k != "PWD"},
    "module_state": allydemo_greet.calls,
    "leftover": leftover,
    "session_leader": os.getsid(0) == os.getpid() == os.getpgid(0),
    "signals": {name: repr(signal.getsignal(getattr(signal, name)))
                for name in ("SIGINT", "SIGTERM", "SIGCHLD", "SIGPIPE", "SIGHUP", "SIGUSR1")},
    "stdout": [sys.stdout.encoding, sys.stdout.line_buffering, sys.stdin.isatty()],
    "greeting": allydemo_greet.greet("probe"),
}))
"""

# Ends in the way its input says.
EXITS = r"""
import atexit, json, os, signal, sys, threading, time
mode = json.load(sys.stdin)["mode"]
def reply(**kw):
    print(json.dumps({"success": True, "result": kw}))
if mode == "code":
    reply(mode=mode); sys.exit(3)
if mode == "message":
    sys.exit("bad input, giving up")
if mode == "none":
    reply(mode=mode); sys.exit(None)
if mode == "true":
    sys.exit(True)
if mode == "raise":
    def deeper():
        raise ValueError("boom")
    deeper()
if mode == "chained":
    try:
        {}["missing"]
    except KeyError as exc:
        raise RuntimeError("while handling") from exc
if mode == "os_exit":
    sys.stdout.write("partial"); sys.stdout.flush(); os._exit(4)
if mode == "sigterm":
    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)
if mode == "keyboard":
    raise KeyboardInterrupt
if mode == "shutdown":
    # What the interpreter's shutdown does: join threads, run atexit, flush open files.
    path = json.loads(os.environ["PLUGIN_CONFIG_OUT"])
    atexit.register(lambda: sys.stderr.write("atexit ran\n"))
    left_open = open(path, "w")
    left_open.write("flushed at exit")
    def late():
        time.sleep(0.3)
        print(json.dumps({"success": True, "result": "from a thread"}))
    threading.Thread(target=late).start()
    sys.stderr.write("main done\n")
"""

# Forks, and runs a subprocess.
FORKS = r"""
import json, os, subprocess, sys
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.write(w, b"from the fork")
    os._exit(7)
os.close(w)
got = os.read(r, 100).decode()
_, status = os.waitpid(pid, 0)
out = subprocess.run([sys.executable, "-c", "import sys; print(sys.argv[1])", "sub"],
                     capture_output=True, text=True).stdout.strip()
print(json.dumps({"success": True, "result": [got, os.waitstatus_to_exitcode(status), out]}))
"""

# Asks a form, answers with what it got.
FORM = r"""
import json, sys
args = json.loads(sys.stdin.readline())
print("thinking...")
print(json.dumps({"__ally_form_request": True, "schema": {"title": "Pick", "fields": [
    {"name": "x", "type": "number", "label": "x", "required": True}]}}), flush=True)
answer = json.loads(sys.stdin.readline())
print(json.dumps({"success": True, "result": {"args": args, "answer": answer}}))
"""

# Records its pid and runs until killed.
SLEEPS = r"""
import json, os, sys, time
path = json.load(sys.stdin)["pidfile"]
with open(path, "w") as fh:
    fh.write(str(os.getpid()))
while True:
    time.sleep(0.05)
"""

# `python -m probe_mod`: a module of the plugin run as __main__.
MODULE = r"""
import json, sys
import allydemo_greet
print(json.dumps({"success": True, "result": {"argv0": sys.argv[0], "name": __name__,
                  "path0": sys.path[0], "greeting": allydemo_greet.greet("module")}}))
"""

TOOLS = [
    {"name": "probe", "command": "python3", "args": ["probe.py", "--flag", "a b"]},
    {"name": "exits", "command": "python3", "args": ["exits.py"]},
    {"name": "forks", "command": "python3", "args": ["forks.py"]},
    {"name": "form", "command": "python3", "args": ["form.py"], "interactive": True},
    {"name": "sleeps", "command": "python3", "args": ["sleeps.py"]},
    {"name": "module", "command": "python3", "args": ["-m", "probe_mod", "x"]},
    {"name": "package", "command": "python3", "args": ["-m", "probe_pkg.run", "y"]},
    {"name": "inline", "command": "python3", "args": ["-c", "print('{\"result\": 1}')"]},
]
FILES = {
    "requirements.txt": "allydemo-greet==1.0.0\n",
    "probe.py": PROBE,
    "exits.py": EXITS,
    "forks.py": FORKS,
    "form.py": FORM,
    "sleeps.py": SLEEPS,
    "probe_mod.py": MODULE,
    "probe_pkg/__init__.py": "LOADED_AS_PARENT = True\n",
    "probe_pkg/run.py": MODULE,
}
CONFIG = {"type": "object", "properties": {"x": {"type": "string"}, "out": {"type": "string"}}}


def _plugin(make_plugin: Callable[..., Path], name: str = "probe", **extra: Any) -> Path:
    manifest = {
        "runtime": "python3",
        "dependencies": {"file": "requirements.txt"},
        "tools": TOOLS,
        "config": CONFIG,
        **extra,
    }
    return make_plugin(name, manifest, files=FILES)


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _running(pid)


def _wait_file(path: Path, seconds: float = 20.0) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def plugin(make_plugin: Callable[..., Path]) -> Path:
    return _plugin(make_plugin)


@pytest.fixture
def warm(ally_home: Path, plugin: Path) -> Iterator[Host]:
    """A host with warm workers whose probe plugin's worker is ready."""
    host = Host(ally_home, warm_workers=STEADY)
    try:
        (outcome,) = host.load()
        assert outcome.ready, outcome.reason
        assert host.workers is not None
        info = host.workers.start(outcome)
        assert info.state == "ready", info
        yield host
    finally:
        host.close()


def _worker_pid(host: Host) -> int:
    assert host.workers is not None
    (info,) = host.workers.info()
    assert info.state == "ready" and info.pid, info
    return info.pid


def _outcome(host: Host, tool: str, arguments: Any = None, **kw: Any) -> dict[str, Any]:
    """The call's result or error, with the parts that differ between any two calls
    (pids, random numbers, durations) taken out and returned under "volatile"."""
    (outcome,) = host.load()
    try:
        result = outcome.tool(tool).call(arguments, **kw)
    except ToolError as exc:
        return {"raised": exc.error_type, "message": str(exc), "stderr": exc.stderr}
    data = attrs.asdict(result)
    data.pop("duration")
    volatile = {}
    for part in ("result", "reply", "data"):
        value = data.get(part)
        if isinstance(value, dict):
            value = dict(value)
            for key in ("pid", "ppid", "random"):
                if key in value:
                    volatile[key] = value.pop(key)
            data[part] = value
    if isinstance(data["error"], str) and '"pid"' in data["error"]:
        data["error"] = "<quotes the reply>"
    data["volatile"] = volatile
    return data


CASES = [
    ("probe", {"any": ["json", 1]}, {}),
    ("probe", None, {"config": {"x": "per-call value"}}),
    ("exits", {"mode": "code"}, {}),
    ("exits", {"mode": "message"}, {}),
    ("exits", {"mode": "none"}, {}),
    ("exits", {"mode": "true"}, {}),
    ("exits", {"mode": "raise"}, {}),
    ("exits", {"mode": "chained"}, {}),
    ("exits", {"mode": "os_exit"}, {}),
    ("exits", {"mode": "sigterm"}, {}),
    ("exits", {"mode": "keyboard"}, {}),
    ("forks", None, {}),
    ("module", None, {}),
    ("package", None, {}),
]


def test_a_call_through_a_worker_is_a_spawn_to_the_tool_and_to_the_host(
    ally_home: Path, warm: Host
) -> None:
    spawner = Host(ally_home)  # the same home, without warm workers
    worker_pid = _worker_pid(warm)
    assert warm.workers is not None
    for tool, arguments, kw in CASES:
        spawned = _outcome(spawner, tool, arguments, **kw)
        (before,) = warm.workers.info()
        forked = _outcome(warm, tool, arguments, **kw)
        (after,) = warm.workers.info()
        label = f"{tool} {arguments}"
        assert after.calls == before.calls + 1, f"{label} did not go through the worker"
        assert forked.pop("volatile").get("ppid", worker_pid) == worker_pid, label
        assert spawned.pop("volatile").get("ppid", os.getpid()) == os.getpid(), label
        assert forked == spawned, label
    # What the cases above compared, spelled out for a few.
    probe = _outcome(warm, "probe", {"k": 1}, config={"x": "v"})["result"]
    assert probe["argv"] == ["probe.py", "--flag", "a b"]
    assert probe["stdin"] == '{"k": 1}'
    assert probe["environ"]["PLUGIN_CONFIG_X"] == "v"
    assert probe["module_state"] == 1 and probe["leftover"] is False
    assert probe["name"] == "__main__" and probe["main_is_me"] and probe["session_leader"]
    assert probe["signals"]["SIGINT"] == repr(signal.default_int_handler)
    assert probe["signals"]["SIGCHLD"] == repr(signal.SIG_DFL)
    raised = _outcome(warm, "exits", {"mode": "raise"})
    assert raised["exit_code"] == 1 and 'exits.py", line' in raised["stderr"]
    assert "ValueError: boom" in raised["stderr"]
    assert "server.py" not in raised["stderr"] and "child.py" not in raised["stderr"]
    assert _outcome(warm, "exits", {"mode": "sigterm"})["exit_code"] == -signal.SIGTERM
    assert _outcome(warm, "exits", {"mode": "keyboard"})["exit_code"] == -signal.SIGINT
    assert _outcome(warm, "forks")["result"] == ["from the fork", 7, "sub"]


def test_the_interpreter_shutdown_of_a_tool_is_kept(
    ally_home: Path, warm: Host, tmp_path: Path
) -> None:
    """Non-daemon threads are joined, atexit functions run, files left open are flushed."""
    for host in (Host(ally_home), warm):
        out = tmp_path / f"out-{host.workers is not None}"
        got = _outcome(host, "exits", {"mode": "shutdown"}, config={"out": json.dumps(str(out))})
        assert got["success"] and got["result"] == "from a thread", got
        assert got["logs"] == "main done\natexit ran\n"
        assert out.read_text() == "flushed at exit"


def _use_wheels(ally_home: Path, wheelhouse: Path, extra: Path) -> None:
    """Install from the session's wheelhouse and from ``extra``."""
    (ally_home / "config.toml").write_text(
        "[ally.index]\nno_index = true\n"
        f"find_links = [{json.dumps(str(wheelhouse))}, {json.dumps(str(extra))}]\n"
    )


# numpy's legacy global RandomState in miniature: seeded from the OS once, at import.
FAKE_NUMPY = {
    "numpy/__init__.py": "",
    "numpy/random/__init__.py": "import random as _random\n"
    "_state = _random.Random()\n"
    "def seed(value=None):\n    _state.seed(value)\n"
    "def random():\n    return _state.random()\n",
}


def test_each_call_is_a_new_process_with_new_random_seeds(
    ally_home: Path, wheelhouse: Path, tmp_path: Path, make_plugin: Callable[..., Path]
) -> None:
    build_wheel(tmp_path / "wheels", "numpy", "0.0.1", files=FAKE_NUMPY)
    _use_wheels(ally_home, wheelhouse, tmp_path / "wheels")
    make_plugin(
        "dice",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [{"name": "roll", "command": "python3", "args": ["roll.py"]}],
        },
        files={
            "requirements.txt": "numpy==0.0.1\n",
            "roll.py": "import json, os, random\nimport numpy.random\n"
            "print(json.dumps([os.getpid(), os.getppid(), random.random(),"
            " numpy.random.random()]))\n",
        },
    )
    with Host(ally_home, warm_workers=True) as host:
        (outcome,) = host.load()
        assert host.workers is not None
        worker = host.workers.start(outcome).pid
        calls = [outcome.tool("roll").call().result for _ in range(4)]
    assert {c[1] for c in calls} == {worker}
    for column in (0, 2, 3):  # pid, random, numpy.random
        assert len({c[column] for c in calls}) == 4, column


def test_an_interactive_form_is_asked_and_answered_through_a_worker(warm: Host) -> None:
    asked = []

    def on_form(request: Any) -> dict[str, Any]:
        asked.append(request.title)
        return {"x": 3}

    (outcome,) = warm.load()
    result = outcome.tool("form").call({"q": 1}, on_form=on_form)
    assert asked == ["Pick"]
    assert result.success, result.error
    assert result.result["args"] == {"q": 1}
    assert result.result["answer"]["data"] == {"x": 3}


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_timeout_and_cancel_kill_the_forked_child(warm: Host, tmp_path: Path, how: str) -> None:
    pidfile = tmp_path / "pid"
    (outcome,) = warm.load()
    worker = _worker_pid(warm)
    cancel = threading.Event()
    if how == "cancel":
        threading.Thread(target=lambda: (_wait_file(pidfile), cancel.set()), daemon=True).start()
    with pytest.raises(ToolError) as caught:
        outcome.tool("sleeps").call(
            {"pidfile": str(pidfile)}, timeout=3 if how == "timeout" else 60, cancel=cancel
        )
    assert caught.value.error_type == ("timeout" if how == "timeout" else "cancelled")
    pid = int(_wait_file(pidfile))
    assert _wait_gone(pid), "the tool outlived its call"
    # The worker itself lives on and takes the next call.
    assert _outcome(warm, "probe")["volatile"]["ppid"] == worker


def _messages(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_calls_are_spawned_when_the_plugin_or_the_host_says_so(
    ally_home: Path, make_plugin: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    _plugin(make_plugin, "cold", warm=False)
    caplog.set_level(logging.DEBUG, logger="ally")
    with Host(ally_home, warm_workers=True) as host:
        (outcome,) = host.load()
        assert host.workers is not None
        assert host.workers.start(outcome).state == "failed"
        for _ in range(2):
            assert _outcome(host, "probe")["volatile"]["ppid"] == os.getpid()
        assert host.workers.info() == []
    assert "tool 'probe' is spawned: the plugin says \"warm\": false" in _messages(caplog)
    # No warning for the key: "warm" is known.
    assert not [w for w in outcome.warnings if "warm" in w]
    off = Host(ally_home)
    assert off.workers is None
    assert _outcome(off, "probe")["volatile"]["ppid"] == os.getpid()


def test_commands_that_are_not_a_script_of_the_env_python_are_spawned(
    warm: Host, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ally")
    got = _outcome(warm, "inline")
    assert got["success"] and got["result"] == 1
    assert "tool 'inline' is spawned: the command is not the env's python" in _messages(caplog)


@pytest.fixture
def odd_wheels(ally_home: Path, wheelhouse: Path, tmp_path: Path) -> None:
    """Packages a worker must refuse to preload, in a wheelhouse beside the session's."""
    extra = tmp_path / "odd-wheels"
    build_wheel(
        extra,
        "allydemo-boom",
        "1.0.0",
        files={"allydemo_boom.py": "raise RuntimeError('no import for you')\n"},
    )
    build_wheel(
        extra,
        "allydemo-threads",
        "1.0.0",
        files={
            "allydemo_threads.py": "import threading, time\n"
            "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()\n"
        },
    )
    build_wheel(
        extra,
        "allydemo-noisy",
        "1.0.0",
        files={"allydemo_noisy.py": "print('hello from an import')\n"},
    )
    _use_wheels(ally_home, wheelhouse, extra)


@pytest.mark.parametrize(
    ("package", "reason"),
    [
        ("allydemo_boom", "importing allydemo_boom raised RuntimeError: no import for you"),
        ("allydemo_threads", "the preloaded modules started threads"),
        ("allydemo_noisy", "the preloaded modules wrote output"),
    ],
)
def test_a_preload_that_would_not_fork_like_a_spawn_falls_back_to_spawning(
    ally_home: Path,
    make_plugin: Callable[..., Path],
    odd_wheels: None,
    caplog: pytest.LogCaptureFixture,
    package: str,
    reason: str,
) -> None:
    script = (
        "import json, os\n"
        f"try:\n    import {package}\nexcept RuntimeError:\n    pass\n"
        "print(json.dumps({'ppid': os.getppid()}))\n"
    )
    make_plugin(
        "odd",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [{"name": "t", "command": "python3", "args": ["t.py"]}],
        },
        files={"requirements.txt": package.replace("_", "-") + "\n", "t.py": script},
    )
    caplog.set_level(logging.DEBUG, logger="ally")
    with Host(ally_home, warm_workers=True) as host:
        (outcome,) = host.load()
        assert outcome.ready, outcome.reason
        assert host.workers is not None
        info = host.workers.start(outcome)
        assert info.state == "failed" and reason in info.reason
        for _ in range(2):
            result = outcome.tool("t").call()
            assert result.result["ppid"] == os.getpid(), result
        assert host.workers.info() == []
    assert f"tool 't' is spawned: no warm worker: {reason}" in _messages(caplog)


def test_a_worker_is_replaced_when_a_tool_script_or_the_env_changes(
    warm: Host, plugin: Path
) -> None:
    assert warm.workers is not None
    first = _worker_pid(warm)
    probe = plugin / "probe.py"
    probe.write_text(PROBE.replace('"greeting"', '"edited": True, "greeting"'))
    got = _outcome(warm, "probe")  # sees the change, whoever runs it
    assert got["result"]["edited"] is True
    assert _wait_gone(first), "the worker of the old files kept running"
    (outcome,) = warm.load()
    second = warm.workers.start(outcome).pid
    assert second is not None and second != first
    assert _outcome(warm, "probe")["volatile"]["ppid"] == second
    rebuilt = warm.ensure("probe", force=True)
    assert rebuilt.ready and rebuilt.env is not None
    assert outcome.env is not None and rebuilt.env.path != outcome.env.path
    assert [i.plugin for i in warm.workers.info()] == ["probe"]  # started by the build
    ready = warm.workers.start(rebuilt)
    assert ready.state == "ready" and ready.pid not in (first, second)
    assert _wait_gone(second)
    assert rebuilt.tool("probe").call().result["ppid"] == ready.pid


def test_a_killed_worker_is_replaced(warm: Host) -> None:
    assert warm.workers is not None
    first = _worker_pid(warm)
    os.kill(first, signal.SIGKILL)
    assert _wait_gone(first)
    got = _outcome(warm, "probe")  # this call is spawned; a new worker starts
    assert got["success"] and got["volatile"]["ppid"] == os.getpid()
    (outcome,) = warm.load()
    info = warm.workers.start(outcome)
    assert info.state == "ready" and info.pid != first
    assert _outcome(warm, "probe")["volatile"]["ppid"] == info.pid


def test_a_worker_killed_during_a_call_fails_that_call_only(warm: Host, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    worker = _worker_pid(warm)
    threading.Thread(
        target=lambda: (_wait_file(pidfile), os.kill(worker, signal.SIGKILL)), daemon=True
    ).start()
    got = _outcome(warm, "sleeps", {"pidfile": str(pidfile)}, timeout=60)
    assert got["success"] is False and got["exit_code"] == -signal.SIGKILL
    assert _wait_gone(int(pidfile.read_text()))
    assert _outcome(warm, "probe")["success"]


def test_no_worker_or_call_is_left_after_close(warm: Host, tmp_path: Path) -> None:
    worker = _worker_pid(warm)
    pidfile = tmp_path / "pid"
    (outcome,) = warm.load()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            outcome.tool("sleeps").call({"pidfile": str(pidfile)}, timeout=60)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    tool = int(_wait_file(pidfile))
    warm.close()
    caller.join(30)
    assert _wait_gone(worker) and _wait_gone(tool)
    assert errors or not caller.is_alive()
    assert warm.workers is not None and warm.workers.info() == []
    # A closed host spawns.
    assert _outcome(warm, "probe")["volatile"]["ppid"] == os.getpid()


HOST_SCRIPT = r"""
import json, sys
from ally_core import Host
host = Host(sys.argv[1], warm_workers=True)
(outcome,) = host.load()
info = host.workers.start(outcome)
result = outcome.tool("sleeps").call if sys.argv[2] == "call" else None
print(json.dumps({"worker": info.pid}), flush=True)
if result is not None:
    result({"pidfile": sys.argv[3]}, timeout=600)
"""


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_no_worker_outlives_its_host_process(
    ally_home: Path, plugin: Path, tmp_path: Path, end: str
) -> None:
    Host(ally_home).load()  # built here, so the child process only starts its worker
    pidfile = tmp_path / "pid"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            HOST_SCRIPT,
            str(ally_home),
            "call" if end == "kill" else "-",
            str(pidfile),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    worker = json.loads(child.stdout.readline())["worker"]
    assert _running(worker)
    if end == "kill":
        tool = int(_wait_file(pidfile))
        child.kill()
    child.wait(60)
    assert _wait_gone(worker), "the worker outlived its host"
    if end == "kill":
        assert _wait_gone(tool), "the tool outlived its host"


def test_workers_over_the_memory_limit_stop_least_recently_used_first(
    ally_home: Path, make_plugin: Callable[..., Path]
) -> None:
    for name in ("one", "two"):
        _plugin(make_plugin, name)
    with Host(ally_home, warm_workers=True) as probe_host:
        outcomes = probe_host.load()
        assert probe_host.workers is not None
        rss = probe_host.workers.start(outcomes[0]).rss
    assert rss > 0
    with Host(ally_home, warm_workers=WorkerOptions(memory_limit=int(rss * 1.5))) as host:
        one, two = host.load()
        assert host.workers is not None
        first = host.workers.start(one)
        assert first.state == "ready"
        second = host.workers.start(two)
        assert second.state == "ready"
        assert [i.plugin for i in host.workers.info()] == ["two"]
        assert _wait_gone(first.pid or 0)
    with Host(ally_home, warm_workers=WorkerOptions(memory_limit=rss // 2)) as host:
        one, _ = host.load()
        assert host.workers is not None
        info = host.workers.start(one)
        assert info.state == "failed" and "over the limit" in info.reason


def test_an_idle_worker_stops(ally_home: Path, plugin: Path) -> None:
    with Host(ally_home, warm_workers=WorkerOptions(idle_timeout=0.5)) as host:
        (outcome,) = host.load()
        assert host.workers is not None
        pid = host.workers.start(outcome).pid
        assert pid is not None
        assert _wait_gone(pid, 20), "an idle worker kept running"
        assert host.workers.info() == []


LAZY = {
    "allydemo_lazy/__init__.py": "VALUE = 1\n",
    "allydemo_lazy/later.py": "LATER = 2  # imported by no tool at top level\n",
}


@pytest.mark.parametrize("warm_key", [True, False])
def test_after_a_build_the_imported_packages_are_compiled_in_the_background(
    ally_home: Path,
    wheelhouse: Path,
    tmp_path: Path,
    make_plugin: Callable[..., Path],
    warm_key: bool,
) -> None:
    """With a worker (its preload imports, a forked helper compiles the packages) and
    without one ("warm": false: a compile process does both)."""
    extra = tmp_path / "lazy-wheels"
    build_wheel(extra, "allydemo-lazy", "1.0.0", files=LAZY)
    _use_wheels(ally_home, wheelhouse, extra)
    make_plugin(
        "lazy",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [{"name": "t", "command": "python3", "args": ["t.py"]}],
            **({} if warm_key else {"warm": False}),
        },
        files={
            "requirements.txt": "allydemo-lazy\n",
            "t.py": "import json, os\nimport allydemo_lazy\n"
            "print(json.dumps({'ppid': os.getppid()}))\n",
        },
    )
    with Host(ally_home, warm_workers=STEADY) as host:
        (outcome,) = host.load()
        assert outcome.action == "built"
        assert host.workers is not None and outcome.env is not None
        package = next(outcome.env.path.glob("lib/python*/site-packages/allydemo_lazy"))
        assert not list(package.glob("__pycache__/later.*.pyc"))  # uv does not compile
        # The first call waits for the imports of the background work instead of doing
        # them (compiling the same modules) at the same time; with a worker it runs in it.
        ppid = outcome.tool("t").call().result["ppid"]
        assert ppid == (_worker_pid(host) if warm_key else os.getpid())
        deadline = time.monotonic() + 60
        while not list(package.glob("__pycache__/later.*.pyc")):
            assert time.monotonic() < deadline, "the package was never compiled"
            time.sleep(0.05)


def _pythons(spec: str) -> list[str]:
    from packaging.specifiers import SpecifierSet

    found = []
    for path in sorted(Path("~/.pyenv/versions").expanduser().glob("*/bin/python3")):
        version = path.parents[1].name
        if version[:1].isdigit() and SpecifierSet(spec).contains(version):
            found.append(str(path))
    return found


@pytest.mark.parametrize("version", ["3.9", "3.13"])
def test_a_worker_runs_in_the_oldest_and_newest_python(
    ally_home: Path, make_plugin: Callable[..., Path], version: str
) -> None:
    if not _pythons(f"=={version}.*"):
        pytest.skip(f"no Python {version} in ~/.pyenv/versions")
    _plugin(make_plugin, "old", runtime_version=f"=={version}.*")
    spawner = Host(ally_home)
    with Host(ally_home, warm_workers=STEADY) as host:
        (outcome,) = host.load()
        assert outcome.ready, outcome.reason
        assert outcome.env is not None
        assert outcome.env.interpreter.version.startswith(f"{version}.")
        assert host.workers is not None
        assert host.workers.start(outcome).state == "ready"
        worker = _worker_pid(host)
        for tool, arguments, kw in CASES:
            forked = _outcome(host, tool, arguments, **kw)
            spawned = _outcome(spawner, tool, arguments, **kw)
            assert forked.pop("volatile").get("ppid", worker) == worker, tool
            spawned.pop("volatile")
            assert forked == spawned, f"{tool} {arguments}"
        assert _outcome(host, "probe")["volatile"]["ppid"] == worker


def test_a_worker_learns_what_its_calls_import_lazily(
    ally_home: Path, wheelhouse: Path, tmp_path: Path, make_plugin: Callable[..., Path]
) -> None:
    build_wheel(tmp_path / "wheels", "allydemo-lazy", "1.0.0", files=LAZY)
    _use_wheels(ally_home, wheelhouse, tmp_path / "wheels")
    make_plugin(
        "lazy",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [{"name": "t", "command": "python3", "args": ["t.py"]}],
        },
        files={
            "requirements.txt": "allydemo-lazy\n",
            "t.py": "import json, os\n"
            "def later():\n    import allydemo_lazy.later\n    return allydemo_lazy.later.LATER\n"
            "print(json.dumps({'ppid': os.getppid(), 'later': later()}))\n",
        },
    )
    spawned = Host(ally_home).load()[0].tool("t").call().result
    with Host(ally_home, warm_workers=True) as host:
        (outcome,) = host.load()
        assert host.workers is not None
        first = host.workers.start(outcome)
        assert "allydemo_lazy.later" not in first.imported
        got = outcome.tool("t").call().result
        assert got["ppid"] == first.pid and got["later"] == spawned["later"] == 2
        deadline = time.monotonic() + 30
        while True:  # a worker preloading it takes over in the background
            (info,) = host.workers.info()
            if info.pid != first.pid and "allydemo_lazy.later" in info.imported:
                break
            assert time.monotonic() < deadline, info
            time.sleep(0.05)
        again = outcome.tool("t").call().result
        assert again == {"ppid": info.pid, "later": 2}
        assert _wait_gone(first.pid or 0), "the replaced worker kept running"


def test_the_worker_started_after_a_build_serves_the_first_call(
    ally_home: Path, plugin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was started with the calls' environment (the host's pass_env included), so the
    first call does not replace it."""
    monkeypatch.setenv("DEMO_PASSED", "yes")
    settings = {"pass_env": ("DEMO_PASSED",)}
    with Host(ally_home, settings=settings, warm_workers=STEADY) as host:
        (outcome,) = host.load()
        assert outcome.action == "built" and host.workers is not None
        (starting,) = host.workers.info()
        got = _outcome(host, "probe")
        (ready,) = host.workers.info()
        assert ready.pid == got["volatile"]["ppid"] and ready.calls == 1
        assert got["result"]["environ"]["DEMO_PASSED"] == "yes"
        assert starting.plugin == "probe"


PARENT = r"""
import json, os
import allydemo_greet
cmdline = open(f"/proc/{os.getppid()}/cmdline", "rb").read().split(b"\0")
print(json.dumps({"success": True, "result": [c.decode() for c in cmdline if c]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("warm_flag", [[], ["--no-warm-workers"]])
def test_ally_mcp_serve_runs_python_tools_in_warm_workers(
    make_plugin: Callable[..., Path], tmp_path: Path, warm_flag: list[str]
) -> None:
    pytest.importorskip("mcp")
    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    make_plugin(
        "parent",
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [{"name": "parent", "command": "python3", "args": ["parent.py"]}],
        },
        files={"requirements.txt": "allydemo-greet==1.0.0\n", "parent.py": PARENT},
    )
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "ally_core.cli", "mcp", "serve", *warm_flag],
        env=dict(os.environ),
    )

    async def main() -> list[Any]:
        with open(tmp_path / "stderr", "w") as errlog:
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
                session = await stack.enter_async_context(ClientSession(read, write))
                await session.initialize()
                calls = []
                for _ in range(2):  # the first one builds the env
                    result = await session.call_tool("parent", {})
                    assert not result.isError, result
                    calls.append(result.structuredContent)
                return calls

    for reply in anyio.run(main):
        assert reply is not None
        parent = " ".join(reply["result"])
        if warm_flag:
            assert "mcp serve" in parent, parent
        else:
            assert "workers/server.py serve" in parent, parent
