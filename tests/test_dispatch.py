"""One policy for runtimes that misbehave (:mod:`ally_core.dispatch`) and registrations that
match no hook (:func:`ally_core.plugin_manager.unknown_hooks`).

The third-party runtimes are real distributions: built as wheels in this session, installed
with ``pip install --target`` and found by a real ``ally`` process through their ``ally``
entry points, as a runtime from PyPI would be.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ally_core import EnvSpec, Host, InstallFailed, hookimpl
from ally_core.dispatch import Dispatch
from ally_core.plugin_manager import UnknownHook, make_plugin_manager, unknown_hooks
from ally_core.testing import build_wheel, hermetic_environ

#: A runtime whose runtime_names raises, and whose other hooks raise for every plugin,
#: whatever its runtime (what a careless runtime that never looks at ``spec.runtime`` does).
SHAKY_RUNTIME = """\
from ally_core import hookimpl


@hookimpl
def runtime_names():
    raise RuntimeError("cannot read shaky.toml")


@hookimpl(tryfirst=True)
def env_identity(spec):
    raise ValueError("shaky env_identity for " + spec.plugin_name)


@hookimpl(tryfirst=True)
def health_check(spec, env, deep):
    raise ValueError("shaky health_check for " + spec.plugin_name)
"""

#: A runtime with a misspelled hook implementation (never called: pluggy knows no such hook).
TYPO_RUNTIME = """\
from ally_core import hookimpl


@hookimpl
def runtime_names():
    return ["typort"]


@hookimpl
def creat_env(spec, interpreter):
    return None
"""


def _install_runtimes(tmp: Path) -> Path:
    wheels = tmp / "wheels"
    wheels.mkdir()
    for dist, module, source, entry in (
        ("ally-runtime-shaky", "ally_runtime_shaky", SHAKY_RUNTIME, "shaky = ally_runtime_shaky"),
        ("ally-runtime-typo", "ally_runtime_typo", TYPO_RUNTIME, "typo = ally_runtime_typo"),
    ):
        info = f"{dist.replace('-', '_')}-0.1.0.dist-info/entry_points.txt"
        files = {f"{module}.py": source, info: f"[ally]\n{entry}\n"}
        build_wheel(wheels, dist, "0.1.0", files=files)
    from virtualenv.seed.wheels.embed import get_embed_wheel

    pip = get_embed_wheel("pip", f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert pip is not None
    target = tmp / "site"
    subprocess.run(
        [
            sys.executable,
            str(pip.path) + "/pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheels),
            "--target",
            str(target),
            "--no-deps",
            "--disable-pip-version-check",
            "ally-runtime-shaky",
            "ally-runtime-typo",
        ],
        check=True,
        capture_output=True,
        env=hermetic_environ(),
    )
    return target


@pytest.fixture(scope="module")
def runtime_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _install_runtimes(tmp_path_factory.mktemp("dispatch-runtimes"))


def test_a_runtime_whose_runtime_names_raises_blocks_only_its_plugins(
    ally_cli: Callable[..., subprocess.CompletedProcess[str]],
    make_plugin: Callable[..., Path],
    runtime_site: Path,
) -> None:
    make_plugin(
        "calm",
        {"runtime": "python3", "tools": [{"name": "t", "command": "python3", "args": ["t.py"]}]},
        files={"t.py": 'print(\'{"success": true, "result": 7}\')'},
    )
    make_plugin("plain")
    make_plugin("wobbly", {"runtime": "shaky"})
    env = {"PYTHONPATH": str(runtime_site)}

    install = ally_cli("install", "--json", env=env)
    plugins = {p["name"]: p for p in json.loads(install.stdout)["plugins"]}
    assert plugins["calm"]["status"] == "ready", plugins["calm"]
    assert plugins["plain"]["status"] == "ready"
    assert plugins["wobbly"]["status"] == "blocked"
    reason = plugins["wobbly"]["reason"]
    assert "unknown runtime 'shaky'" in reason
    why = "runtime_names raised RuntimeError: cannot read shaky.toml"
    assert f"runtime 'shaky' is broken: {why}" in reason
    assert install.returncode == 4
    assert "Traceback" not in install.stderr

    # Its other hooks are never asked for the plugins of other runtimes: the tool runs.
    run = ally_cli("run", "calm", "t", env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["result"] == 7

    runtimes = ally_cli("runtimes", "--json", env=env)
    assert runtimes.returncode == 0, runtimes.stderr
    data = json.loads(runtimes.stdout)
    assert "shaky" not in {r["name"] for r in data["runtimes"]}
    assert data["broken"] == [
        {
            "name": "shaky",
            "reason": "runtime_names raised RuntimeError: cannot read shaky.toml",
            "distribution": "ally-runtime-shaky 0.1.0",
        }
    ]


def test_a_misspelled_hook_implementation_is_reported_by_name(
    ally_cli: Callable[..., subprocess.CompletedProcess[str]], runtime_site: Path
) -> None:
    env = {"PYTHONPATH": str(runtime_site)}
    runtimes = ally_cli("runtimes", "--json", env=env)
    assert runtimes.returncode == 0, runtimes.stderr
    data = json.loads(runtimes.stdout)
    assert data["unknown_hooks"] == [{"runtime": "typo", "hook": "creat_env"}]
    assert {"name": "typo", "serves": ["typort"], "distribution": "ally-runtime-typo 0.1.0"} in (
        data["runtimes"]
    )
    warning = (
        "runtime 'typo' implements 'creat_env', which is not an ally hook: it is never called "
        "(did you mean 'create_env'?)"
    )
    assert warning in runtimes.stderr

    text = ally_cli("runtimes", env=env)
    assert text.returncode == 0, text.stderr
    assert "typo: typort" in text.stdout
    assert "creat_env" in text.stdout and "never called" in text.stdout
    assert "shaky: broken: runtime_names raised RuntimeError" in text.stdout


# -- in one process: the dispatch policy, hook by hook ----------------------------------------


class Names:
    """A runtime serving ``values``, whose building hooks raise ``error`` when asked."""

    def __init__(self, values: Any, error: Exception | None = None) -> None:
        self.values = values
        self.error = error

    @hookimpl
    def runtime_names(self) -> Any:
        if isinstance(self.values, Exception):
            raise self.values
        return self.values

    @hookimpl(tryfirst=True)
    def env_identity(self, spec: EnvSpec) -> Any:
        if self.error is not None:
            raise self.error
        return None


def _pm(**runtimes: Any) -> Any:
    pm = make_plugin_manager({}, load_entrypoints=False)
    for name, runtime in runtimes.items():
        pm.register(runtime, name=name)
    return pm


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (RuntimeError("boom"), "runtime_names raised RuntimeError: boom"),
        ("toyrt", "runtime_names returned str, not a list of names"),
        (None, "runtime_names returned NoneType, not a list of names"),
        ([1], "runtime_names returned a name that is not a string"),
    ],
)
def test_runtime_names_that_cannot_be_used_make_the_runtime_broken(
    values: Any, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ally"):
        dispatch = Dispatch(_pm(bad=Names(values)))
        assert dispatch.broken() == {"bad": reason}
    assert "python3" in dispatch.runtimes() and "bad" not in dispatch.runtimes().values()
    assert f"runtime 'bad' is broken: {reason}" in caplog.text


def test_a_runtime_raising_in_a_hook_blocks_only_the_plugins_it_serves(
    ally_home: Path, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("mine", {"runtime": "buggy"})
    make_plugin("other", {"runtime": "python3"})
    pm = _pm(buggy=Names(["buggy"], ValueError("identity bug")))
    outcomes = {o.name: o for o in Host(ally_home, plugin_manager=pm).load()}
    assert outcomes["other"].ready, outcomes["other"].reason
    assert not outcomes["mine"].ready
    assert outcomes["mine"].reason == "runtime error: ValueError: identity bug"
    assert isinstance(outcomes["mine"].error.__cause__, ValueError)  # for --debug
    assert isinstance(outcomes["mine"].error, InstallFailed)


def test_unknown_hooks_are_found_and_optional_ones_are_not() -> None:
    class Typos:
        @hookimpl
        def creat_env(self, spec: Any, interpreter: Any) -> None:
            return None

        @hookimpl(optionalhook=True)
        def future_hook(self) -> None:
            return None

    pm = _pm(typos=Typos())
    (found,) = unknown_hooks(pm)
    assert found == UnknownHook("typos", "creat_env")
    assert "did you mean 'create_env'?" in found.describe()
    assert unknown_hooks(make_plugin_manager({}, load_entrypoints=False)) == []


def test_a_plugin_that_declares_no_runtime_names_still_answers_for_every_runtime(
    ally_home: Path, make_plugin: Callable[..., Path]
) -> None:
    class Everywhere:
        calls: list[str] = []

        @hookimpl(tryfirst=True)
        def env_identity(self, spec: EnvSpec) -> Any:
            self.calls.append(spec.plugin_name)
            return None

    make_plugin("p", {"runtime": "python3", "tools": [{"name": "t", "command": "python3"}]})
    everywhere = Everywhere()
    host = Host(ally_home, plugin_manager=_pm(everywhere=everywhere))
    assert os.path.isdir(ally_home)
    host.status()
    assert everywhere.calls == ["p"]
