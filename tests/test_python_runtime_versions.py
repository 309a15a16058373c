"""Every interpreter ally accepts builds on both backends; Python 2 is refused in one line.

Interpreters come from ``~/.pyenv/versions`` (or ``$PYENV_ROOT``): a version the machine lacks
is skipped with a reason.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from ally_core import Host
from ally_core.runtimes.python import _without_cli_advice, installed_packages

PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
MAIN = (
    "import json, sys, allydemo_greet\n"
    "json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': [allydemo_greet.__version__,"
    " '%d.%d' % sys.version_info[:2]]}))\n"
)
TOOLS = [{"name": "v", "command": "python3", "args": ["main.py"]}]


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def _python(prefix: str) -> Optional[str]:
    """The newest ``<pyenv>/versions/<prefix>.*/bin/python`` (``prefix`` "3" = newest 3.x)."""
    found = [
        (_key(Path(path).parts[-3]), path)
        for path in glob.glob(str(PYENV / f"{prefix}.*" / "bin" / "python"))
        if os.access(path, os.X_OK)
    ]
    return max(found)[1] if found else None


def _require(prefix: str) -> str:
    path = _python(prefix)
    if path is None:
        pytest.skip(f"no Python {prefix}.x under {PYENV}")
    return path


VERSIONS = ["3.7", "3.8", "3"]  # "3": the newest 3.x the machine has


@pytest.mark.parametrize("backend", ["pip", "uv"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_accepted_python_builds_a_dependency_file_env(
    version, backend, ally_home: Path, make_plugin
):
    python = _require(version)
    make_plugin(
        "old",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN},
    )
    (outcome,) = Host(ally_home, settings={"installer": backend, "python": python}).load()
    assert outcome.ready, outcome.reason
    assert outcome.env.data["backend"] == backend
    result = outcome.tool("v").call({}).result
    assert result[0] == "1.0.0"
    assert outcome.env.interpreter.path == python or result[1] == ".".join(
        outcome.env.interpreter.version.split(".")[:2]
    )
    pip = subprocess.run(
        [str(outcome.env.path / "bin" / "pip"), "list", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    assert pip.returncode == 0, pip.stderr
    assert {p["name"] for p in json.loads(pip.stdout)} >= {"allydemo-greet"}


@pytest.mark.parametrize("backend", ["pip", "uv"])
@pytest.mark.parametrize("version", VERSIONS)
def test_every_accepted_python_runs_an_install_command_with_pip(
    version, backend, ally_home: Path, make_plugin, wheelhouse: Path
):
    python = _require(version)
    command = f"{{pip}} install --no-index --find-links {wheelhouse} allydemo-greet==2.0.0"
    make_plugin(
        "old",
        {"runtime": "python3", "dependencies": {"install_command": command}, "tools": TOOLS},
        {"main.py": MAIN},
    )
    (outcome,) = Host(ally_home, settings={"installer": backend, "python": python}).load()
    assert outcome.ready, outcome.reason
    assert installed_packages(outcome.env.path)["allydemo-greet"] == "2.0.0"
    assert outcome.tool("v").call({}).result[0] == "2.0.0"


def test_virtualenvs_advice_to_pass_its_flags_never_reaches_the_user(tmp_path: Path):
    """The message virtualenv gives for an interpreter it cannot seed, cut to its facts."""
    python = _require("3.8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "virtualenv",
            str(tmp_path / "env"),
            "--python",
            python,
            "--no-periodic-update",
            "--no-download",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode == 0:
        pytest.skip("this virtualenv still seeds pip for Python 3.8")
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    message = lines[-1].split(": ", 1)[-1]
    assert "--" in message  # what virtualenv says: "... pass --no-seed ..."
    cleaned = _without_cli_advice(message)
    assert "--" not in cleaned and cleaned, cleaned
    assert "3.8" in cleaned


def test_a_plugin_on_the_oldest_accepted_python_can_be_bundled(
    ally_home: Path, make_plugin, tmp_path: Path
):
    """Collecting the wheels runs pip with the env's Python: a pip that supports it."""
    python = _require("3.8")
    make_plugin(
        "old",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet==1.0.0\n", "main.py": MAIN},
    )
    archive = tmp_path / "old.tar.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "ally_core.cli", "bundle", "old", "-o", str(archive)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "ALLY_PYTHON": python},
    )
    assert proc.returncode == 0, proc.stderr
    import tarfile

    with tarfile.open(archive) as tar:
        wheels = {Path(n).name for n in tar.getnames() if n.endswith(".whl")}
    assert wheels == {"allydemo_greet-1.0.0-py3-none-any.whl"}


# ---------------------------------------------------------------------------------------------
# Python 2


def _one_line_reason(outcome) -> str:
    assert not outcome.ready
    assert "\n" not in outcome.reason
    return outcome.reason


def test_ally_python_pointing_at_python_2_says_python_2_is_not_supported(
    ally_home: Path, make_plugin
):
    python2 = _require("2")
    make_plugin(
        "legacy",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}, "tools": TOOLS},
        {"requirements.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    (outcome,) = Host(ally_home, settings={"python": python2}).load()
    reason = _one_line_reason(outcome)
    assert "Python 2 is not supported" in reason, reason
    assert "not found" not in reason and "install one" not in reason


@pytest.mark.parametrize("constraint", ["==2.7", "<3", "~=2.7", ">=2.6,<3.0"])
def test_runtime_version_asking_for_python_2_says_python_2_is_not_supported(
    constraint, ally_home: Path, make_plugin
):
    make_plugin(
        "legacy",
        {
            "runtime": "python3",
            "runtime_version": constraint,
            "dependencies": {"file": "requirements.txt"},
            "tools": TOOLS,
        },
        {"requirements.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    (outcome,) = Host(ally_home).load()
    reason = _one_line_reason(outcome)
    assert "Python 2 is not supported" in reason, reason
    assert "install one" not in reason


def test_a_python_2_is_never_listed_as_a_candidate_that_was_found(
    ally_home: Path, make_plugin, monkeypatch
):
    """A constraint no installed Python 3 meets still reads "not found", without 2.x."""
    _require("2")
    monkeypatch.setenv("PATH", f"{Path(_require('2')).parent}{os.pathsep}{os.environ['PATH']}")
    make_plugin(
        "future",
        {
            "runtime": "python3",
            "runtime_version": ">=3.99",
            "dependencies": {"file": "requirements.txt"},
            "tools": TOOLS,
        },
        {"requirements.txt": "allydemo-greet\n", "main.py": MAIN},
    )
    (outcome,) = Host(ally_home).load()
    reason = _one_line_reason(outcome)
    assert "no Python satisfying runtime_version '>=3.99'" in reason
    assert "2.7" not in reason
