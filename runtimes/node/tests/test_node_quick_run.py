"""``ally run`` of a node plugin takes the quick path once its run record is written, and
prints what the full path prints; a change the node runtime watches sends it back to the
full path, which repairs the env.

Real ``ally`` processes (``python -m ally_core``, the console script's entry), real npm from
the session's local registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node and npm are needed for the node runtime's tests", allow_module_level=True)

pytestmark = pytest.mark.usefixtures("npm_env")

ADD_JS = (
    "const lib = require('ally-cjs-lib');\n"
    "let input = '';\n"
    "process.stdin.on('data', (c) => (input += c));\n"
    "process.stdin.on('end', () => {\n"
    "  const { a, b } = JSON.parse(input);\n"
    "  console.log(JSON.stringify({ success: true, result: { sum: lib.add(a, b) } }));\n"
    "});\n"
)
Run = subprocess.CompletedProcess[str]


def _ally(*args: str, env: dict[str, str] | None = None) -> tuple[Run, bool]:
    """Run ``ally ARGS``; the process, and whether it took the quick path (it imports no
    ``ally_core.cli``)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "ally_core", *args],
        input='{"a": 2, "b": 3}',
        text=True,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )
    lines = proc.stderr.splitlines()
    quick = not any(line.endswith("| ally_core.cli") for line in lines)
    stderr = "".join(f"{line}\n" for line in lines if not line.startswith("import time:"))
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, stderr), quick


def test_a_node_plugin_runs_on_the_quick_path_and_a_removed_module_sends_it_back(
    make_plugin, ally_home: Path
) -> None:
    package = {"name": "adder", "private": True, "dependencies": {"ally-cjs-lib": "^1.0.0"}}
    make_plugin(
        "adder",
        {
            "runtime": "node",
            "dependencies": {"file": "package.json"},
            "tools": [{"name": "add", "command": "node", "args": ["add.js"]}],
        },
        files={"package.json": json.dumps(package), "add.js": ADD_JS},
    )
    assert _ally("install", "-q")[0].returncode == 0
    full, quick = _ally("run", "adder", "add", env={"ALLY_QUICK_RUN": "0"})
    assert full.returncode == 0, full.stderr
    assert not quick
    time.sleep(2.2)  # a run record is written once nothing it watches is this fresh
    assert _ally("run", "adder", "add")[0].returncode == 0  # the full path writes it
    again, quick = _ally("run", "adder", "add")
    assert quick, "a ready node plugin with a record took the full path"
    assert (again.returncode, again.stdout, again.stderr) == (0, full.stdout, full.stderr)
    assert '"sum": 5' in again.stdout

    # The env's node_modules taken away: the runtime's quick check fails, so the next run
    # must take the full path, which rebuilds the env before the tool runs.
    shutil.rmtree((ally_home / "plugin-envs" / "adder" / "node_modules").resolve())
    repaired, quick = _ally("run", "adder", "add")
    assert not quick
    assert (repaired.returncode, repaired.stdout) == (0, full.stdout), repaired.stderr
    assert "Installing dependencies for 'adder'" in repaired.stderr
