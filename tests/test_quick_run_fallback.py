"""The quick ``ally run`` path where ``clone3`` is refused (kernels before 5.7, seccomp
profiles that answer ENOSYS): the tool is forked and joins its call's cgroup itself, as on
the full path. Run in this process, with ``clone3`` taken away, against a record the full
path wrote; everything else is real (processes, cgroup, pipes).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from ally_core import quick_run
from ally_core.lean import own_cgroup2

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the quick path's process start is Linux's"
)

TOOL = (
    "import json, os, sys\n"
    "data = json.load(sys.stdin)\n"
    "cgroup = [l[3:] for l in open('/proc/self/cgroup').read().splitlines() if l[:3] == '0::']\n"
    "print(json.dumps({'got': data, 'sid': os.getsid(0), 'cgroup': cgroup[0] if cgroup else ''}))\n"
)


def _cgroup_writable() -> bool:
    root = own_cgroup2()
    if root is None or os.environ.get("ALLY_TOOL_CGROUP") == "0":
        return False
    probe = Path(root) / f"ally-call-{os.getpid()}-probe"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return False
    return True


def test_without_clone3_the_tool_is_forked_into_its_session_and_cgroup(
    make_plugin, ally_cli, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_plugin(
        "fallback",
        {"tools": [{"name": "t", "command": "python3", "args": ["t.py"]}]},
        {"t.py": TOOL},
    )
    time.sleep(2.2)  # a run record is written once nothing it watches is this fresh
    full = ally_cli("run", "fallback", "t", "--input", '{"n": 1}', env={"ALLY_QUICK_RUN": "0"})
    assert full.returncode == 0, full.stderr
    assert ally_cli("run", "fallback", "t", "--input", "{}").returncode == 0  # writes it

    forks = []
    real_fork = os.fork

    def fork() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(quick_run, "_SYS_CLONE3", {})
    monkeypatch.setattr(os, "fork", fork)
    call = quick_run._prepare(["run", "fallback", "t", "--input", '{"n": 1}'])
    assert call is not None, "the record the full path wrote was not usable"
    assert quick_run._run(call) == 0
    out = capsys.readouterr().out
    assert forks == [1]
    reply = json.loads(out)
    expected = json.loads(full.stdout)
    assert reply["got"] == expected["got"] == {"n": 1}
    assert reply["sid"] != os.getsid(0)  # its own session
    if _cgroup_writable():
        assert reply["cgroup"].rsplit("/", 1)[-1] == f"ally-call-{os.getpid()}-0"
        assert not os.path.exists(Path(own_cgroup2() or "/") / f"ally-call-{os.getpid()}-0")
