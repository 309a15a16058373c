"""``ally exec NAME -- CMD``: CMD comes from the plugin's env first; a command the env lacks
runs only if it is a system tool, never another environment's program."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from ally_core import Host
from ally_core.runtimes.python import installed_packages

MANIFEST = {
    "runtime": "python3",
    "dependencies": {"file": "requirements.txt"},
    "tools": [{"name": "v", "command": "python3", "args": ["main.py"]}],
}


@pytest.fixture
def plugin(make_plugin, ally_home: Path, monkeypatch) -> Path:
    monkeypatch.setenv("ALLY_INSTALLER", "uv")
    make_plugin("greeter", MANIFEST, {"requirements.txt": "allydemo-greet\n", "main.py": "\n"})
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    return outcome.env.path


def _error(proc: Any) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_pip_is_the_envs_own_pip(plugin: Path, ally_cli):
    proc = ally_cli("exec", "greeter", "--", "pip", "--version")
    assert proc.returncode == 0, proc.stderr
    assert str(plugin) in proc.stdout, proc.stdout


def test_pip_install_through_exec_changes_the_plugins_env(plugin: Path, ally_cli, wheelhouse):
    proc = ally_cli(
        "exec", "greeter", "--", "pip", "install", "-q", "--no-index",
        "--find-links", str(wheelhouse), "allydemo-shout",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "allydemo-shout" in installed_packages(plugin)


def test_a_command_from_another_environment_on_path_is_refused(
    plugin: Path, ally_cli, tmp_path: Path
):
    other = tmp_path / "other-venv" / "bin"
    other.mkdir(parents=True)
    (other.parent / "pyvenv.cfg").write_text("home = /usr/bin\n")
    tool = other / "allytool-xyz"
    tool.write_text('#!/bin/sh\necho ran > "$0.ran"\n')
    tool.chmod(0o755)
    proc = ally_cli(
        "exec", "greeter", "--", "allytool-xyz",
        env={"PATH": f"{other}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    line = _error(proc)
    assert "cannot run allytool-xyz: greeter's env has no allytool-xyz" in line, line
    assert str(tool) in line
    assert not Path(f"{tool}.ran").exists()


def test_a_deleted_env_program_is_an_error_not_a_fallback_to_path(plugin: Path, ally_cli):
    (plugin / "bin" / "pip").unlink()
    line = _error(ally_cli("exec", "greeter", "--", "pip", "--version"))
    assert f"cannot run pip: {plugin}/bin/pip is missing from greeter's env" in line, line
    assert "ally doctor --fix greeter" in line


def test_system_tools_and_explicit_paths_run(plugin: Path, ally_cli):
    proc = ally_cli("exec", "greeter", "--", "env")
    assert proc.returncode == 0, proc.stderr
    assert f"VIRTUAL_ENV={plugin}" in proc.stdout
    proc = ally_cli("exec", "greeter", "--", str(plugin / "bin" / "python"), "-c", "print(7)")
    assert proc.returncode == 0 and proc.stdout.strip() == "7", proc.stderr
    # The env's own console scripts come first.
    proc = ally_cli("exec", "greeter", "--", "python", "-c", "import sys; print(sys.prefix)")
    assert proc.stdout.strip() == str(plugin)
