"""No process outlives its tool call: setsid escapers, ally killed mid-call, stale cgroups.

Real tool processes that try to escape; what is checked is whether their pids still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host
from ally_core.containment import PREFIX, cgroup_root

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")

# `python3 escape.py MODE`: starts a child that leaves the process group (setsid) and
# records its pid, then answers (MODE=exit) or waits forever (MODE=wait).
ESCAPE = r"""
import json, os, subprocess, sys, time
args = json.load(sys.stdin)
pids = args["pids"]
child = subprocess.Popen([sys.executable, "-c",
    "import os, sys, time\n"
    "os.setsid()\n"
    "open(sys.argv[1], 'a').write('escaper %d\\n' % os.getpid())\n"
    "while True: time.sleep(0.1)\n", pids], start_new_session=False)
while "escaper" not in (open(pids).read() if os.path.exists(pids) else ""):
    time.sleep(0.01)
with open(pids, "a") as fh:
    fh.write("tool %d\n" % os.getpid())
if sys.argv[1] == "wait":
    while True:
        time.sleep(0.1)
print(json.dumps({"success": True, "data": "escaped"}))
"""


def _pids(path: Path) -> dict[str, int]:
    out = {}
    for line in path.read_text().splitlines():
        role, pid = line.split()
        out[role] = int(pid)
    return out


@pytest.fixture
def escaper(make_plugin: Any) -> Path:
    return make_plugin(
        "escaper",
        {
            "runtime": "python3",
            "tools": [
                {"name": "leave", "command": "python3", "args": ["escape.py", "exit"]},
                {"name": "stay", "command": "python3", "args": ["escape.py", "wait"]},
            ],
        },
        files={"escape.py": ESCAPE},
    )


needs_cgroup = pytest.mark.skipif(
    cgroup_root() is None, reason="no writable cgroup v2 here (not root, no delegation)"
)


@needs_cgroup
def test_a_descendant_that_left_the_process_group_is_ended_with_the_call(
    host: Host, escaper: Path, tmp_path: Path, processes: Any
) -> None:
    pids_file = tmp_path / "pids"
    outcome = host.ensure("escaper")
    result = outcome.tool("leave").call({"pids": str(pids_file)})
    assert result.success and result.data == "escaped"
    pids = _pids(pids_file)
    processes.reap(*pids.values())
    assert processes.wait_gone([pids["escaper"]]) == [], "the setsid child outlived the call"
    root = cgroup_root()
    assert root is not None
    assert not [p for p in root.iterdir() if p.name.startswith(f"{PREFIX}{os.getpid()}-")]


def test_without_a_cgroup_the_process_group_is_still_killed(
    ally_home: Path, escaper: Path, tmp_path: Path, ally_cli: Any, processes: Any
) -> None:
    """ALLY_TOOL_CGROUP=0: what holds is the group kill (the escaper is out of reach)."""
    # Longer timeouts until the tool got to record its pid within one (two interpreters
    # start before it does: seconds on a loaded 2-core machine).
    for timeout in (5, 10, 20, 40):
        pids_file = tmp_path / f"pids-{timeout}"
        proc = ally_cli(
            "run", "escaper", "stay", "--timeout", str(timeout),
            "--input", json.dumps({"pids": str(pids_file)}),
            env={"ALLY_TOOL_CGROUP": "0"},
        )  # fmt: skip
        pids = _pids(pids_file) if pids_file.exists() else {}
        processes.reap(*pids.values())
        assert proc.returncode == 1 and f"timed out after {timeout}s" in proc.stderr
        if "tool" in pids:
            break
    else:
        pytest.fail("the tool never recorded its pid before its timeout")
    assert processes.wait_gone([pids["tool"]]) == []


def test_the_tool_dies_with_ally_and_escapers_are_reaped_by_the_next_call(
    ally_home: Path, escaper: Path, tmp_path: Path, ally_cli: Any, processes: Any
) -> None:
    """ally SIGKILLed mid-call: the parent-death signal ends the tool at once; what left
    its process group is ended by the next tool call of any ally process (cgroup)."""
    assert ally_cli("install", "escaper").returncode == 0
    pids_file = tmp_path / "pids"
    env = {**os.environ, "ALLY_HOME": str(ally_home)}
    cli = subprocess.Popen(
        [sys.executable, "-m", "ally_core.cli", "run", "escaper", "stay",
         "--input", json.dumps({"pids": str(pids_file)})],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while "tool" not in (pids_file.read_text() if pids_file.exists() else ""):
        assert cli.poll() is None, cli.communicate()
        assert time.monotonic() < deadline, "the tool did not start"
        time.sleep(0.02)
    pids = _pids(pids_file)
    processes.reap(*pids.values())
    cli.kill()
    cli.wait()
    assert processes.wait_gone([pids["tool"]]) == [], "the tool outlived ally"
    if cgroup_root() is not None:
        other = tmp_path / "pids2"
        run = ally_cli("run", "escaper", "leave", "--input", json.dumps({"pids": str(other)}))
        assert run.returncode == 0, run.stderr
        processes.reap(*_pids(other).values())
        assert processes.wait_gone([pids["escaper"]]) == [], (
            "the next call did not reap the stale cgroup"
        )
