"""Plugins with a runtime and no dependencies run on ally's interpreter, in an env.

Never on whatever ``python3`` or ``node`` comes first on ``PATH`` (a pyenv shim costs a
process per call; another venv leaks its packages into the plugin). All such plugins of one
interpreter share one empty env in the store, built, checked and published like any other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host

PROBE = (
    "import importlib.util, json, sys\n"
    "print(json.dumps({'success': True, 'result': {\n"
    "    'executable': sys.executable, 'prefix': sys.prefix, 'base': sys.base_prefix,\n"
    "    'leaked': importlib.util.find_spec('leaky_from_path') is not None}}))\n"
)
NODE_PROBE = "console.log(JSON.stringify({success: true, result: process.execPath}))"
FAKE = '#!/bin/sh\necho \'{"success": true, "result": "the fake on PATH ran"}\'\n'


def _python_plugin(make_plugin: Any, name: str) -> Path:
    return make_plugin(
        name,
        {
            "runtime": "python3",
            "tools": [{"name": "probe", "command": "python3", "args": ["p.py"]}],
        },
        files={"p.py": PROBE},
    )


@pytest.fixture
def polluted_path(tmp_path: Path) -> str:
    """A ``PATH`` whose first ``python3`` is another venv's, with a package of its own."""
    other = tmp_path / "other-venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(other)
    (site,) = other.glob("lib/python*/site-packages")
    (site / "leaky_from_path.py").write_text("X = 1\n")
    return f"{other / 'bin'}{os.pathsep}{os.environ['PATH']}"


def test_python_plugins_without_dependencies_share_one_env_on_allys_interpreter(
    ally_home: Path, make_plugin: Any, ally_cli: Any, polluted_path: str, no_spawn: Any
) -> None:
    for name in ("first", "second"):
        _python_plugin(make_plugin, name)
    env = {"PATH": polluted_path}
    proc = ally_cli("install", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    outcomes = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert {o["status"] for o in outcomes.values()} == {"ready"}
    env_dir = outcomes["first"]["env"]
    assert env_dir is not None and outcomes["second"]["env"] == env_dir
    assert Path(env_dir).parent == ally_home / "plugin-envs" / ".store"
    assert {o["action"] for o in outcomes.values()} == {"built", "shared"}
    assert outcomes["first"]["packages"] == {}
    for name in ("first", "second"):
        assert (ally_home / "plugin-envs" / name).resolve() == Path(env_dir).resolve()
        run = ally_cli("run", name, "probe", env=env)
        assert run.returncode == 0, run.stderr
        got = json.loads(run.stdout)["result"]
        assert os.path.realpath(got["prefix"]) == os.path.realpath(env_dir)
        assert os.path.realpath(got["base"]) == os.path.realpath(sys.base_prefix)
        assert got["leaked"] is False
    listed = {p["name"]: p for p in json.loads(ally_cli("list", "--json").stdout)["plugins"]}
    assert listed["first"]["env"] == listed["second"]["env"] == env_dir
    # A later load uses the env as is: no process.
    with no_spawn():
        outcomes_again = Host(ally_home).load()
    assert [(o.status, o.action) for o in outcomes_again] == [("ready", "none")] * 2
    assert {str(o.env.path) for o in outcomes_again if o.env} == {env_dir}


def test_a_plugin_without_a_runtime_still_runs_plain_commands_without_an_env(
    ally_home: Path, make_plugin: Any, ally_cli: Any
) -> None:
    make_plugin(
        "plain", {"tools": [{"name": "t", "command": "python3", "args": ["p.py"]}]}, {"p.py": PROBE}
    )
    listed = json.loads(ally_cli("list", "--json").stdout)["plugins"]
    assert listed[0]["status"] == "ready" and listed[0]["env"] is None
    assert not (ally_home / "plugin-envs" / "plain").exists()


NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_node_plugin_without_dependencies_runs_on_the_node_its_runtime_resolved(
    ally_home: Path, make_plugin: Any, ally_cli: Any, tmp_path: Path
) -> None:
    assert NODE is not None
    if "node" not in Host(ally_home).runtimes():
        pytest.skip("the node runtime is not installed")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "node").write_text(FAKE)
    (fakes / "node").chmod(0o755)
    make_plugin(
        "nodeprobe",
        {
            "runtime": "node",
            "tools": [{"name": "probe", "command": "node", "args": ["-e", NODE_PROBE]}],
        },
    )
    env = {"PATH": f"{fakes}{os.pathsep}{os.environ['PATH']}", "ALLY_NODE": NODE}
    run = ally_cli("run", "nodeprobe", "probe", "-q", env=env)
    assert run.returncode == 0, run.stderr
    assert os.path.realpath(json.loads(run.stdout)["result"]) == os.path.realpath(NODE)
    listed = json.loads(ally_cli("list", "--json", env=env).stdout)["plugins"]
    env_dir = listed[0]["env"]
    assert listed[0]["status"] == "ready" and env_dir is not None
    # The env is a real one: its node shim and npm work.
    version = subprocess.run(
        [os.path.join(env_dir, ".ally", "bin", "node"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert version.startswith("v")
    doctor = ally_cli("doctor", "nodeprobe", "--json", env=env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert json.loads(doctor.stdout)["plugins"][0]["healthy"] is True
