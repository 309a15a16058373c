"""Host.load: envs built once and reused without a process, failures contained and retried.

Real venvs, real uv and pip, installing from the session's local wheelhouse only.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ally_core import EnvInfo, EnvSpec, Host, Interpreter, hookimpl
from ally_core.plugin_manager import make_plugin_manager
from ally_core.testing import build_wheel

GREET_TOOL = {
    "name": "hello",
    "command": "python3",
    "args": ["main.py"],
    "schema": {"type": "object", "properties": {"who": {"type": "string"}}},
}
GREET_MAIN = (
    "import json, sys\n"
    "import allydemo_greet\n"
    "args = json.load(sys.stdin)\n"
    "print(json.dumps({'success': True, 'result': {\n"
    "    'greeting': allydemo_greet.greet(args.get('who', 'world')),\n"
    "    'version': list(sys.version_info[:2]),\n"
    "    'prefix': sys.prefix,\n"
    "}}))\n"
)


def greeter(
    make_plugin: Callable[..., Path],
    name: str = "greeter",
    requirements: str = "allydemo-greet==1.0.0\n",
    **manifest: Any,
) -> Path:
    return make_plugin(
        name,
        {
            "runtime": "python3",
            "dependencies": {"file": "requirements.txt"},
            "tools": [GREET_TOOL],
            **manifest,
        },
        files={"requirements.txt": requirements, "main.py": GREET_MAIN},
    )


def store_envs(host: Host) -> list[str]:
    store = host.paths.store_dir
    return sorted(p.name for p in store.iterdir()) if store.is_dir() else []


@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_plugin_with_deps_is_built_once_and_later_loads_spawn_nothing(
    ally_home: Path,
    make_plugin: Any,
    no_spawn: Any,
    monkeypatch: pytest.MonkeyPatch,
    installer: str,
) -> None:
    monkeypatch.setenv("ALLY_INSTALLER", installer)
    greeter(make_plugin)
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.action == "built"
    assert outcome.env is not None and outcome.env.data["backend"] == installer
    assert outcome.packages["allydemo-greet"] == "1.0.0"
    result = outcome.tool("hello").call({"who": "ally"})
    assert result.success, result.error
    assert result.result["greeting"] == "hello ally from allydemo_greet 1.0.0"
    assert os.path.realpath(result.result["prefix"]) == os.path.realpath(outcome.env.path)
    envs = store_envs(Host(ally_home))
    assert len(envs) == 1

    with no_spawn():
        (again,) = Host(ally_home).load()
        (third,) = Host(ally_home).load()
    assert again.ready and again.action == "none"
    assert third.ready and third.action == "none"
    assert again.env is not None and again.env.path == outcome.env.path
    assert store_envs(Host(ally_home)) == envs


def test_plugin_without_dependencies_gets_the_shared_empty_env_once(
    ally_home: Path, make_plugin: Any, no_spawn: Any
) -> None:
    tool = {"name": "t", "command": "python3", "args": ["m.py"]}
    for name in ("plain", "other"):
        make_plugin(name, {"runtime": "python3", "tools": [tool]}, files={"m.py": "print('{}')\n"})
    first = {o.name: o for o in Host(ally_home).load()}
    assert {o.status for o in first.values()} == {"ready"}
    assert first["plain"].env is not None
    assert first["plain"].env.commands["python3"].startswith(str(first["plain"].env.path))
    assert first["other"].env == first["plain"].env
    assert len(store_envs(Host(ally_home))) == 1
    with no_spawn():
        again = Host(ally_home).load()
    assert [(o.ready, o.action) for o in again] == [(True, "none")] * 2
    assert [t.name for t in again[0].tools] == ["t"]


@pytest.fixture
def late_wheels(ally_home: Path, tmp_path: Path) -> Path:
    """A second find-links dir in the home's config, empty until a test adds wheels to it."""
    late = tmp_path / "late-wheels"
    late.mkdir()
    config = ally_home / "config.toml"
    text = config.read_text("utf-8")
    config.write_text(text.replace("find_links = [", f"find_links = [{json.dumps(str(late))}, "))
    return late


def test_failing_install_blocks_with_stderr_tail_and_is_retried_by_the_next_host_only(
    ally_home: Path, make_plugin: Any, no_spawn: Any, late_wheels: Path
) -> None:
    greeter(make_plugin, "wants-new", requirements="allydemo-greet==9.9\n")
    make_plugin("plain")
    host = Host(ally_home)
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["plain"].ready
    failed = outcomes["wants-new"]
    assert failed.status == "blocked" and failed.action == "failed"
    assert "\n" not in failed.reason
    # The installer's own words (uv: "no version of allydemo-greet==9.9" / pip: "No
    # matching distribution"), not just "install failed".
    assert "allydemo-greet==9.9" in failed.reason
    assert "exited with" in failed.reason
    assert not glob.glob(str(host.paths.store_dir / "*"))  # no half env left behind

    # The wheel appears, but this host remembers the failure for retry_after seconds.
    build_wheel(late_wheels, "allydemo-greet", "9.9")
    with no_spawn():
        (still,) = host.load(["wants-new"])
    assert still.status == "blocked"
    assert "allydemo-greet==9.9" in still.reason

    # `ally list` knows about the failure without trying again.
    with no_spawn():
        (listed,) = [o for o in Host(ally_home).status() if o.name == "wants-new"]
    assert listed.status == "pending" and listed.reason.startswith("install failed:")

    (retried,) = Host(ally_home).load(["wants-new"])
    assert retried.ready, retried.reason
    assert retried.packages["allydemo-greet"] == "9.9"


def test_same_host_retries_a_failed_install_after_retry_after(
    ally_home: Path, make_plugin: Any, late_wheels: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLY_RETRY_AFTER", "0.001")
    greeter(make_plugin, "wants-new", requirements="allydemo-greet==9.9\n")
    host = Host(ally_home)
    (failed,) = host.load()
    assert failed.status == "blocked"
    build_wheel(late_wheels, "allydemo-greet", "9.9")
    (retried,) = host.load()
    assert retried.ready, retried.reason


def _pythons_satisfying(spec: str) -> list[str]:
    from packaging.specifiers import SpecifierSet

    found = []
    for path in glob.glob(os.path.expanduser("~/.pyenv/versions/*/bin/python3")):
        version = Path(path).parents[1].name
        if version[:1].isdigit() and SpecifierSet(spec).contains(version):
            found.append(path)
    return found


def test_runtime_version_picks_an_interpreter_that_satisfies_it(
    host: Host, make_plugin: Any
) -> None:
    if sys.version_info >= (3, 12):
        pytest.skip("the running Python already satisfies >=3.12")
    if not _pythons_satisfying(">=3.12"):
        pytest.skip("no Python >=3.12 in ~/.pyenv/versions")
    greeter(make_plugin, runtime_version=">=3.12")
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.env is not None
    major, minor = map(int, outcome.env.interpreter.version.split(".")[:2])
    assert (major, minor) >= (3, 12)
    assert "shims" not in outcome.env.interpreter.path
    result = outcome.tool("hello").call({})
    assert result.success, result.error
    assert tuple(result.result["version"]) >= (3, 12)


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        (">=4", "no Python satisfying runtime_version '>=4' found (found: "),
        ("three", "$.runtime_version: 'three' is not a valid version specifier"),
    ],
)
def test_unsatisfiable_runtime_version_blocks_with_a_clear_message(
    host: Host, make_plugin: Any, constraint: str, expected: str
) -> None:
    greeter(make_plugin, runtime_version=constraint)
    make_plugin("plain")
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["plain"].ready
    assert outcomes["greeter"].status == "blocked"
    assert expected in outcomes["greeter"].reason
    assert "\n" not in outcomes["greeter"].reason


RECORD_INSTALL = """\
import json, os, shutil, sys
json.dump(
    {
        "argv": sys.argv[1:],
        "cwd": os.getcwd(),
        "prefix": sys.prefix,
        "virtual_env": os.environ.get("VIRTUAL_ENV"),
        "path0": os.environ["PATH"].split(os.pathsep)[0],
        "which_python": shutil.which("python"),
        "pythonpath": os.environ.get("PYTHONPATH"),
    },
    open("install-record.json", "w"),
)
"""


def test_install_command_runs_in_plugin_dir_without_shell_in_the_activated_env(
    ally_home: Path, make_plugin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", "/host/only")
    plugin_dir = make_plugin(
        "custom",
        {
            "runtime": "python3",
            "dependencies": {
                "install_command": "python record.py ; touch pwned $(touch pwned2) `touch pwned3`"
            },
        },
        files={"record.py": RECORD_INSTALL},
    )
    (outcome,) = Host(ally_home).load()
    assert outcome.ready, outcome.reason
    assert outcome.env is not None
    record = json.loads((plugin_dir / "install-record.json").read_text("utf-8"))
    assert record["argv"] == [";", "touch", "pwned", "$(touch", "pwned2)", "`touch", "pwned3`"]
    assert os.path.realpath(record["cwd"]) == os.path.realpath(plugin_dir)
    env_path = os.path.realpath(outcome.env.path)
    assert os.path.realpath(record["prefix"]) == env_path
    assert os.path.realpath(record["virtual_env"]) == env_path
    assert os.path.realpath(record["path0"]) == os.path.join(env_path, "bin")
    assert os.path.realpath(os.path.dirname(record["which_python"])) == os.path.join(
        env_path, "bin"
    )
    assert record["pythonpath"] is None
    for leftover in ("pwned", "pwned2", "pwned3"):
        assert not (plugin_dir / leftover).exists()
        assert not Path(leftover).exists()


def test_pyproject_toml_is_a_dependency_file(host: Host, make_plugin: Any) -> None:
    make_plugin(
        "modern",
        {"runtime": "python3", "dependencies": {"file": "pyproject.toml"}, "tools": [GREET_TOOL]},
        files={
            "pyproject.toml": '[project]\nname = "modern"\nversion = "0"\n'
            'dependencies = ["allydemo-greet==2.0.0"]\n',
            "main.py": GREET_MAIN,
        },
    )
    (outcome,) = host.load()
    assert outcome.ready, outcome.reason
    assert outcome.packages["allydemo-greet"] == "2.0.0"
    result = outcome.tool("hello").call({"who": "toml"})
    assert result.result["greeting"] == "hello toml from allydemo_greet 2.0.0"


def test_install_command_with_a_nul_byte_blocks_only_that_plugin(
    host: Host, make_plugin: Any
) -> None:
    make_plugin(
        "nul",
        {"runtime": "python3", "dependencies": {"install_command": "python -c pass \x00"}},
    )
    make_plugin("plain")
    outcomes = {o.name: o for o in host.load()}
    assert outcomes["plain"].ready
    assert outcomes["nul"].status == "blocked"
    assert "install_command" in outcomes["nul"].reason


class ExplodingRuntime:
    """A runtime whose create_env fails with a bug (not an AllyError)."""

    @hookimpl
    def runtime_names(self) -> list[str]:
        return ["boom"]

    @hookimpl
    def env_identity(self, spec: EnvSpec) -> Any:
        return {} if spec.runtime == "boom" else None

    @hookimpl
    def resolve_interpreter(self, spec: EnvSpec) -> Any:
        return Interpreter(sys.executable, "0", kind="boom") if spec.runtime == "boom" else None

    @hookimpl
    def create_env(self, spec: EnvSpec, interpreter: Interpreter) -> Any:
        if spec.runtime != "boom":
            return None
        raise RuntimeError("the boom runtime has a bug")

    @hookimpl
    def install_deps(self, spec: EnvSpec, env: EnvInfo) -> Any:
        return None


def test_runtime_raising_a_non_ally_error_blocks_only_its_plugin(
    ally_home: Path, make_plugin: Any, no_spawn: Any
) -> None:
    # hookspecs: "any other exception blocks the plugin with the exception's text".
    pm = make_plugin_manager({}, load_entrypoints=False)
    pm.register(ExplodingRuntime(), name="boom")
    make_plugin("fragile", {"runtime": "boom", "dependencies": {"install_command": "x"}})
    make_plugin("plain")
    with no_spawn():
        outcomes = {o.name: o for o in Host(ally_home, plugin_manager=pm).load()}
    assert outcomes["plain"].ready
    assert outcomes["fragile"].status == "blocked"
    assert "the boom runtime has a bug" in outcomes["fragile"].reason
    assert not glob.glob(str(Path(ally_home, "plugin-envs", ".store", "*")))


def test_one_broken_plugin_never_stops_the_others_building(host: Host, make_plugin: Any) -> None:
    greeter(make_plugin, "good")
    greeter(make_plugin, "bad", requirements="allydemo-nonexistent\n")
    make_plugin("invalid", {"tools": "nope"})
    outcomes = {o.name: o.status for o in host.load()}
    assert outcomes == {"good": "ready", "bad": "blocked", "invalid": "blocked"}
