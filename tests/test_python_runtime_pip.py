"""Every Python env has its own pip: the seed's ``<env>/bin/pip list`` check, Code Ally's
``{pip}`` placeholder in ``install_command``, on both installer backends.

Code Ally replaced ``{pip}`` with ``<env>/bin/pip`` and ran the command through a shell; ally
runs it without one, split like a shell would, in the plugin dir with the env activated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ally_core import Host
from ally_core.runtimes.python import installed_packages

BACKENDS = ["uv", "pip"]
MAIN = (
    "import json, sys, allydemo_greet\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': allydemo_greet.__version__}))\n"
)
TOOLS = [{"name": "v", "command": "python3", "args": ["main.py"]}]


def _pip_list(pip: Path) -> dict[str, str]:
    proc = subprocess.run(
        [str(pip), "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    assert proc.returncode == 0, proc.stderr
    return {p["name"].lower(): p["version"] for p in json.loads(proc.stdout)}


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_seeds_pip_list_check_lists_the_plugins_packages(
    backend, ally_home: Path, make_plugin, monkeypatch
):
    monkeypatch.setenv("ALLY_INSTALLER", backend)
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN},
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.env.data["backend"] == backend
    # The path the seed's troubleshooting section checks, byte for byte.
    listed = _pip_list(ally_home / "plugin-envs" / "greeter" / "bin" / "pip")
    assert listed["allydemo-greet"] == "1.0.0"
    if backend == "uv":
        # The launcher runs pip from a wheel kept in the env: no pip package, no dependency.
        assert outcome.packages == {"allydemo-greet": "1.0.0"}
        assert set(listed) == {"allydemo-greet"}
    assert outcome.env.commands["pip"] == str(outcome.env.path / "bin" / "pip")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pip_placeholder_in_install_command_installs_into_this_env(
    backend, ally_home: Path, make_plugin, wheelhouse: Path, monkeypatch
):
    monkeypatch.setenv("ALLY_INSTALLER", backend)
    command = f"{{pip}} install --no-index --find-links {wheelhouse} allydemo-greet==2.0.0"
    make_plugin(
        "placeholder",
        {"runtime": "python3", "dependencies": {"install_command": command}, "tools": TOOLS},
        {"main.py": MAIN},
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.env.data["backend"] == backend
    assert installed_packages(outcome.env.path)["allydemo-greet"] == "2.0.0"
    assert outcome.tool("v").call({}).result == "2.0.0"
    # The env's pip ran, not one on PATH: the interpreter running the tests is untouched.
    host_site = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('allydemo_greet'))"],
        capture_output=True,
        text=True,
    ).stdout
    assert host_site.strip() == "None"


def test_pip_placeholder_inside_a_word_is_replaced_too(
    ally_home: Path, make_plugin, wheelhouse: Path
):
    # Code Ally replaced every "{pip}" in the command string, wherever it stood.
    command = (
        "python -c \"import subprocess, sys; sys.exit(subprocess.call(sys.argv[1].split('=')[1:]"
        f" + ['install', '--no-index', '--find-links', {str(wheelhouse)!r}, 'allydemo-greet']))\""
        " --pip={pip}"
    )
    make_plugin(
        "inword",
        {"runtime": "python3", "dependencies": {"install_command": command}, "tools": TOOLS},
        {"main.py": MAIN},
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert "allydemo-greet" in installed_packages(outcome.env.path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_deleted_env_pip_is_found_by_doctor_and_repaired(
    backend, ally_home: Path, make_plugin, monkeypatch
):
    monkeypatch.setenv("ALLY_INSTALLER", backend)
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    host = Host(ally_home)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    (pip,) = [p for p in (outcome.env.path / "bin").iterdir() if p.name == "pip"]
    pip.unlink()
    ((_, health),) = host.doctor(["greeter"])
    assert not health.ok
    assert "bin/pip is missing" in health.describe()
    ((fixed, health),) = host.doctor(["greeter"], fix=True)
    assert fixed.ready and fixed.action == "repaired", fixed.reason
    assert _pip_list(ally_home / "plugin-envs" / "greeter" / "bin" / "pip")["allydemo-greet"]


@pytest.mark.parametrize("damage", ["deleted", "modified", "replaced launcher"])
def test_a_broken_pip_launcher_is_found_by_the_deep_check(
    damage, ally_home: Path, make_plugin, monkeypatch
):
    monkeypatch.setenv("ALLY_INSTALLER", "uv")
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    host = Host(ally_home)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    wheel = Path(outcome.env.data["pip_wheel"])
    assert wheel.is_relative_to(outcome.env.path)
    if damage == "deleted":
        wheel.unlink()
    elif damage == "modified":
        data = bytearray(wheel.read_bytes())
        data[-100] ^= 0xFF  # same size: only the hash can tell
        wheel.unlink()  # (a hardlink: write a new file, never through the shared inode)
        wheel.write_bytes(bytes(data))
    else:
        (outcome.env.path / "bin" / "pip").write_text('#!/bin/sh\nexec pip "$@"\n')
    ((_, health),) = host.doctor(["greeter"])
    assert not health.ok
    assert "the env's pip is broken" in health.describe()
    ((fixed, _),) = host.doctor(["greeter"], fix=True)
    assert fixed.ready and fixed.action == "repaired", fixed.reason
    assert _pip_list(ally_home / "plugin-envs" / "greeter" / "bin" / "pip")["allydemo-greet"]


def test_the_pip_launcher_survives_losing_allys_cache(ally_home: Path, make_plugin, monkeypatch):
    """It needs only the env's python and the wheel inside the env."""
    import shutil

    monkeypatch.setenv("ALLY_INSTALLER", "uv")
    make_plugin(
        "greeter",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    host = Host(ally_home)
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    shutil.rmtree(host.paths.cache_dir)
    assert _pip_list(ally_home / "plugin-envs" / "greeter" / "bin" / "pip") == {
        "allydemo-greet": outcome.packages["allydemo-greet"]
    }
    ((_, health),) = host.doctor(["greeter"])
    assert health.ok, health.describe()
