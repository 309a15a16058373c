"""Warm workers, the parts that keep a call short: the call process forked ahead of its call
(the spare), the compile of a fresh env's imports ahead of the preload, and inputs of any
size. Real envs, real servers in the env's interpreter, real forked processes."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest

from ally_core import Host
from ally_core.containment import PREFIX, cgroup_root
from ally_core.workers import WorkerOptions
from ally_core.workers import preload as preload_module

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the process tree from /proc"
)

WHO = r"""
import json, os, sys
data = sys.stdin.read()
print(json.dumps({"success": True, "result": {"pid": os.getpid(), "ppid": os.getppid(),
                                              "size": len(data)}}))
"""


def _children(parent: int) -> list[int]:
    """Live (not zombie) processes whose parent is ``parent`` that lead a session of their
    own (not the background compiles a fresh env's worker forks)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] != "Z" and int(fields[3]) == int(entry):
            found.append(int(entry))
    return found


def _wait_for(check: Callable[[], Any], seconds: float = 20.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("the condition never held")


def _gone(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return True
    return fields[0] == "Z"


@pytest.fixture
def warm(ally_home: Path, make_plugin: Callable[..., Path]) -> Iterator[tuple[Host, int]]:
    """A host whose plugin "who" has a ready worker (its pid)."""
    make_plugin(
        "who",
        {"runtime": "python3", "tools": [{"name": "who", "command": "python3", "args": ["w.py"]}]},
        files={"w.py": WHO},
    )
    host = Host(ally_home, warm_workers=WorkerOptions(learn_imports=False))
    try:
        (outcome,) = host.load()
        assert host.workers is not None and outcome.ready, outcome.reason
        info = host.workers.start(outcome)
        assert info.state == "ready" and info.pid, info
        yield host, info.pid
    finally:
        host.close()


def _call(host: Host, arguments: Any = None) -> dict[str, Any]:
    (outcome,) = host.load()
    result = outcome.tool("who").call(arguments)
    assert result.success, result.error
    assert isinstance(result.result, dict)
    return result.result


def test_a_call_runs_in_the_process_its_worker_forked_before_the_call(
    warm: tuple[Host, int],
) -> None:
    host, server = warm
    for _ in range(3):
        (spare,) = _wait_for(lambda: _children(server))  # waiting for the next call
        got = _call(host)
        assert got["pid"] == spare and got["ppid"] == server
        # Once that call is handed over, the next spare is forked.
        _wait_for(lambda: [p for p in _children(server) if p != spare])


def test_a_killed_spare_is_replaced_and_the_call_still_runs_in_the_worker(
    warm: tuple[Host, int],
) -> None:
    host, server = warm
    (spare,) = _wait_for(lambda: _children(server))
    os.kill(spare, signal.SIGKILL)
    _wait_for(lambda: _gone(spare))
    got = _call(host)
    assert got["ppid"] == server and got["pid"] != spare


def test_the_spare_does_not_outlive_its_worker(warm: tuple[Host, int]) -> None:
    host, server = warm
    (spare,) = _wait_for(lambda: _children(server))
    host.close()
    _wait_for(lambda: _gone(server) and _gone(spare))


@pytest.mark.parametrize("size", [10, 200_000])
def test_inputs_of_any_size_reach_the_tool(warm: tuple[Host, int], size: int) -> None:
    """Small inputs are written at once, large ones from a thread (the pipe fills)."""
    host, _server = warm
    value = "x" * size
    got = _call(host, {"v": value})
    assert got["size"] == len(json.dumps({"v": value}))


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_compile_ahead_finds_what_an_import_runs_without_importing_it(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    _write(
        site,
        {
            "pkg/__init__.py": "import sys\nfrom . import core\nfrom .sub import (\n  leaf,\n)\n"
            "raise RuntimeError('never imported')\n",
            "pkg/core.py": "import other.mod  # another top-level package\n"
            "try:\n    from pkg import optional\nexcept ImportError:\n    pass\n"
            "def later():\n    import pkg.lazy\n"
            "class K:\n    from pkg import in_class\n",
            "pkg/optional.py": "",
            "pkg/lazy.py": "",
            "pkg/in_class.py": "",
            "pkg/sub/__init__.py": "",
            "pkg/sub/leaf.py": "from .. import core\nfrom ..sub import deeper\n",
            "pkg/sub/deeper.py": "",
            "other/__init__.py": "",
            "other/mod.py": "",
            "unrelated.py": "",
        },
    )
    closure = preload_module.import_closure(["pkg"], [str(site)])
    names = [str(Path(p).relative_to(site)) for p in closure]
    assert names == [
        "pkg/__init__.py",
        "pkg/core.py",
        "other/__init__.py",
        "other/mod.py",
        "pkg/optional.py",
        "pkg/sub/__init__.py",
        "pkg/sub/leaf.py",
        "pkg/sub/deeper.py",
    ]
    preload_module.compile_ahead(["pkg"], [str(site)])
    compiled = {p.parent.parent.name + "/" + p.name.split(".")[0] for p in site.rglob("*.pyc")}
    assert compiled == {
        "pkg/__init__",
        "pkg/core",
        "other/__init__",
        "other/mod",
        "pkg/optional",
        "sub/__init__",
        "sub/leaf",
        "sub/deeper",
    }


# Compiles a regular expression built from a set (as tokenize does): its text depends on the
# hash seed of the process.
REGEX = r"""
import json, os, re
words = {"alpha", "beta", "gamma", "delta", "epsilon"}
pattern = "|".join(words)
cached = any(isinstance(k, tuple) and len(k) == 3 and k[1] == pattern for k in re._cache)
print(json.dumps({"success": True, "result": {"ppid": os.getppid(), "cached": cached,
                  "match": re.compile(pattern).findall("beta, delta")}}))
"""


def test_a_worker_learns_the_regular_expressions_its_calls_compile(
    ally_home: Path, make_plugin: Callable[..., Path]
) -> None:
    """The worker that replaces it compiles them in its preload, with the same hash seed
    (so that a pattern built from a set is built alike)."""
    make_plugin(
        "rx",
        {"runtime": "python3", "tools": [{"name": "rx", "command": "python3", "args": ["r.py"]}]},
        files={"r.py": REGEX},
    )
    with Host(ally_home, warm_workers=True) as host:
        (outcome,) = host.load()
        assert host.workers is not None
        first = host.workers.start(outcome)
        got = outcome.tool("rx").call().result
        assert got == {"ppid": first.pid, "cached": False, "match": ["beta", "delta"]}

        def replaced() -> Any:
            (info,) = host.workers.info() if host.workers is not None else ()
            return info if info.pid != first.pid and info.state == "ready" else None

        info = _wait_for(replaced, 30)
        again = outcome.tool("rx").call().result
        assert again == {"ppid": info.pid, "cached": True, "match": ["beta", "delta"]}


def test_a_pool_dropped_without_close_stops_its_workers(
    ally_home: Path, make_plugin: Callable[..., Path]
) -> None:
    import gc
    import weakref

    from ally_core.workers import WorkerPool

    make_plugin(
        "who",
        {"runtime": "python3", "tools": [{"name": "who", "command": "python3", "args": ["w.py"]}]},
        files={"w.py": WHO},
    )
    (outcome,) = Host(ally_home).load()
    pool = WorkerPool()
    info = pool.start(outcome)
    assert info.state == "ready" and info.pid, info
    dropped = weakref.ref(pool)
    del pool
    gc.collect()
    assert dropped() is None, "the pool's own thread kept it alive"
    _wait_for(lambda: _gone(info.pid or 0))


needs_cgroup = pytest.mark.skipif(
    cgroup_root() is None, reason="no writable cgroup v2 here (not root, no delegation)"
)

# Reports its cgroup; with "escape", first starts a descendant that leaves the process group
# (setsid) and records its pid.
CGROUP = r"""
import json, os, subprocess, sys, time
args = json.load(sys.stdin)
if args.get("escape"):
    subprocess.Popen([sys.executable, "-c",
        "import os, sys, time\nos.setsid()\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
        "while True: time.sleep(0.1)\n", args["escape"]])
    while not (os.path.exists(args["escape"]) and open(args["escape"]).read()):
        time.sleep(0.01)
cgroup = [l[3:] for l in open("/proc/self/cgroup").read().splitlines() if l.startswith("0::")]
print(json.dumps({"success": True, "result": {"ppid": os.getppid(), "cgroup": cgroup[0]}}))
"""


def _cgroup_of(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return next(line[3:] for line in lines if line.startswith("0::"))


@needs_cgroup
def test_the_spare_waits_in_the_cgroup_made_ahead_for_the_next_call(
    ally_home: Path, make_plugin: Callable[..., Path], tmp_path: Path, processes: Any
) -> None:
    """Moving a process into a cgroup can wait for the kernel: the spare joins the next
    call's cgroup when it is forked, and that cgroup ends everything of the call as the
    call's own would (a descendant that left the process group too), then is removed."""
    make_plugin(
        "cg",
        {"runtime": "python3", "tools": [{"name": "cg", "command": "python3", "args": ["c.py"]}]},
        files={"c.py": CGROUP},
    )
    with Host(ally_home, warm_workers=WorkerOptions(learn_imports=False)) as host:
        (outcome,) = host.load()
        assert host.workers is not None
        server = host.workers.start(outcome).pid
        assert server
        first = outcome.tool("cg").call({}).result  # its request brings a cgroup made ahead
        assert first["ppid"] == server and f"/{PREFIX}{os.getpid()}-" in first["cgroup"]
        (spare,) = _wait_for(lambda: _children(server))
        waiting_in = _wait_for(lambda: PREFIX in _cgroup_of(spare) and _cgroup_of(spare))
        escaper = tmp_path / "escaper"
        got = outcome.tool("cg").call({"escape": str(escaper)}).result
        assert got["cgroup"] == waiting_in and got["ppid"] == server
        pid = int(escaper.read_text())
        processes.reap(pid)
        assert processes.wait_gone([pid]) == [], "the setsid child outlived the call"
        root = cgroup_root()
        assert root is not None
        assert not (root / waiting_in.rpartition("/")[2]).exists()
    mine = [p for p in root.iterdir() if p.name.startswith(f"{PREFIX}{os.getpid()}-")]
    assert mine == [], "cgroups made ahead were left behind"
