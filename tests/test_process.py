"""Installer processes (``ally_core/process.py``): how ally starts and ends them.

Seen through ``install_command`` plugins, whose command ally runs as it runs uv, pip, npm or
bundler: with stdin closed, in a session of its own, killed with its whole group when it
outlives ``ALLY_INSTALL_TIMEOUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# Reads its stdin to the end and records what it got.
READS_STDIN = """\
import json, sys
data = sys.stdin.read()
with open("stdin.json", "w") as fh:
    json.dump({"read": data}, fh)
"""

# Starts a child that ignores SIGTERM, ignores it too, records both pids, then hangs.
HANGS = """\
import json, os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(
    [sys.executable, "-c",
     "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
     "print('up', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE,
)
child.stdout.readline()
with open("pids.json.tmp", "w") as fh:
    json.dump({"installer": os.getpid(), "child": child.pid}, fh)
os.replace("pids.json.tmp", "pids.json")
time.sleep(600)
"""


def _plugin(make_plugin: Any, script: str) -> Path:
    return make_plugin(
        "inst",
        {"runtime": "python3", "dependencies": {"install_command": "python install.py"}},
        {"install.py": script},
    )


def test_an_installer_reading_stdin_gets_end_of_file_not_the_callers_terminal(
    ally_home: Path, make_plugin: Any, tmp_path: Path
):
    plugin = _plugin(make_plugin, READS_STDIN)
    # ally's own stdin stays open and silent (as a terminal would): an installer that
    # inherited it would wait for input until ALLY_INSTALL_TIMEOUT (a bound on a failure,
    # not a timing check). Output goes to files: nothing here closes ally's stdin.
    with open(tmp_path / "out", "w+") as out:
        cli = subprocess.Popen(
            [sys.executable, "-m", "ally_core.cli", "install", "inst"],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ALLY_INSTALL_TIMEOUT": "60"},
        )
        try:
            code = cli.wait(timeout=300)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
            assert cli.stdin is not None
            cli.stdin.close()
        out.seek(0)
        assert code == 0, out.read()
    assert json.loads((plugin / "stdin.json").read_text()) == {"read": ""}


#: ALLY_INSTALL_TIMEOUT values tried until the installer and its child both started within one.
TIMEOUTS = (5, 10, 20, 40)


def test_an_installer_past_its_timeout_is_killed_with_its_group_and_leaves_nothing(
    ally_home: Path, make_plugin: Any, ally_cli: Any, processes: Any
):
    plugin = _plugin(make_plugin, HANGS)
    for timeout in TIMEOUTS:
        proc = ally_cli("install", "inst", env={"ALLY_INSTALL_TIMEOUT": str(timeout)})
        assert proc.returncode == 4, proc.stdout + proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("\u2717 inst:")]
        assert len(lines) == 1, proc.stdout
        assert f"timed out after {timeout}s" in lines[0], lines[0]
        if (plugin / "pids.json").exists():
            break
    else:
        pytest.fail(f"the installer never started its child within {TIMEOUTS[-1]} s")
    pids = json.loads((plugin / "pids.json").read_text())
    processes.reap(*pids.values())
    # Both ignored SIGTERM: the group got SIGKILL. The unfinished env is gone too.
    assert processes.wait_gone(pids.values()) == []
    store = ally_home / "plugin-envs" / ".store"
    assert not store.is_dir() or list(store.iterdir()) == []


def test_an_installer_that_cannot_start_is_one_line(ally_home: Path, make_plugin: Any, ally_cli):
    make_plugin(
        "inst",
        {
            "runtime": "python3",
            "dependencies": {"install_command": "no-such-installer-anywhere --go"},
        },
    )
    proc = ally_cli("install", "inst")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("\u2717 inst:")]
    assert "cannot run no-such-installer-anywhere" in line, line
    assert "Traceback" not in proc.stderr
