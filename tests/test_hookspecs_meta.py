"""The runtime author's contract is documented and tested, hook by hook (as datasette does).

Rule for "tested": some test function in ``tests/`` or ``runtimes/*/tests/`` calls the hook
directly through a plugin manager, ``<something>.hook.<name>(...)``. Calls made indirectly by
``Host.load`` do not count: a new hookspec nobody calls in a test makes this file fail. The
``test_hook_*`` functions below are those direct calls for the built-in Python runtime.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from ally_core import EnvInfo, EnvSpec, Health, Host, InstallResult, Interpreter, hookspecs
from ally_core.plugin_manager import make_plugin_manager

REPO = Path(__file__).resolve().parents[1]


def hookspec_functions() -> dict[str, Callable[..., Any]]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return {n: f for n, f in vars(hookspecs).items() if callable(f) and hasattr(f, marker)}


HOOKS = hookspec_functions()


def test_hookspecs_are_found() -> None:
    assert set(HOOKS) >= {
        "runtime_names",
        "env_identity",
        "resolve_interpreter",
        "create_env",
        "install_deps",
        "health_check",
        "bundle_artifacts",
    }


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_hookspec_is_documented(name: str) -> None:
    func = HOOKS[name]
    doc = inspect.getdoc(func) or ""
    assert doc.strip(), f"{name} has no docstring"
    assert ":return:" in doc, f"{name}: docstring lacks :return:"
    assert ".. versionadded::" in doc, f"{name}: docstring lacks versionadded"
    for param in inspect.signature(func).parameters:
        assert f":param {param}:" in doc, f"{name}: docstring lacks :param {param}:"
    firstresult = getattr(func, f"{hookspecs.PROJECT_NAME}_spec")["firstresult"]
    says_first = "Stops at first non-None result" in " ".join(doc.split())
    assert firstresult == says_first, f"{name}: firstresult={firstresult} but docstring disagrees"


def source_files() -> list[Path]:
    paths = sorted((REPO / "tests").rglob("test_*.py"))
    paths += sorted(REPO.glob("runtimes/*/tests/**/test_*.py"))
    return paths


def hooks_called_by_tests(sources: dict[str, str]) -> dict[str, set[str]]:
    """hook name -> ``file::test`` of the test functions calling ``….hook.<name>(…)``."""
    called: dict[str, set[str]] = {}
    for label, text in sources.items():
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if not node.name.startswith("test"):
                continue
            for call in ast.walk(node):
                if (
                    isinstance(call, ast.Call)
                    and isinstance(call.func, ast.Attribute)
                    and isinstance(call.func.value, ast.Attribute)
                    and call.func.value.attr == "hook"
                ):
                    called.setdefault(call.func.attr, set()).add(f"{label}::{node.name}")
    return called


def _read_sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text("utf-8") for p in source_files()}


def test_every_hookspec_is_called_by_a_test() -> None:
    called = hooks_called_by_tests(_read_sources())
    untested = sorted(set(HOOKS) - set(called))
    assert not untested, f"hookspecs no test calls directly (….hook.<name>(…)): {untested}"


def test_the_coverage_rule_rejects_what_it_should() -> None:
    # Calls outside a test function, calls of other attributes and mentions in strings
    # do not count; a call inside a test does.
    source = (
        "def helper(host):\n    host.hook.only_in_helper(spec=1)\n"
        "def test_a(pm):\n    pm.hook.really_called(x=1)\n    pm.other.not_a_hook()\n"
        "    text = 'host.hook.only_in_string()'\n"
    )
    called = hooks_called_by_tests({"t.py": source})
    assert called == {"really_called": {"t.py::test_a"}}


# -- direct calls of every hook on the built-in Python runtime --------------------------------


@pytest.fixture
def pm() -> Any:
    """The plugin manager with only the built-in runtimes (no third-party entry points)."""
    return make_plugin_manager({}, load_entrypoints=False)


@pytest.fixture
def python_spec(ally_home: Path, make_plugin: Any, tmp_path: Path) -> EnvSpec:
    plugin_dir = make_plugin(
        "contract",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-shout==1.0.0\n"},
    )
    host = Host(ally_home)
    (source,) = host.discover()
    assert source.manifest is not None
    spec = host.spec_for(source.manifest, plugin_dir)
    return attrs.evolve(
        spec,
        env_dir=tmp_path / "contract-env",
        options=attrs.evolve(spec.options, installer="uv"),
    )


def foreign(spec: EnvSpec) -> EnvSpec:
    return attrs.evolve(spec, runtime="no-such-runtime")


def test_hook_runtime_names_collects_every_runtime(pm: Any) -> None:
    results = pm.hook.runtime_names()
    assert ["python3", "python"] in [list(r) for r in results]


def test_hook_env_identity_is_cheap_json_and_none_for_other_runtimes(
    pm: Any, python_spec: EnvSpec, no_spawn: Any
) -> None:
    with no_spawn():
        identity = pm.hook.env_identity(spec=python_spec)
        other = pm.hook.env_identity(spec=foreign(python_spec))
    assert other is None
    assert identity["backend"] == "uv"
    json.dumps(identity)


def test_hook_resolve_interpreter_returns_a_real_binary_with_its_signature(
    pm: Any, python_spec: EnvSpec
) -> None:
    assert pm.hook.resolve_interpreter(spec=foreign(python_spec)) is None
    interp = pm.hook.resolve_interpreter(spec=python_spec)
    assert isinstance(interp, Interpreter)
    assert os.path.isabs(interp.path) and "shims" not in interp.path
    assert interp.realpath == os.path.realpath(interp.path)
    st = os.stat(interp.realpath)
    assert tuple(interp.signature) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert interp.version.count(".") == 2


def test_hook_building_hooks_create_install_check_and_bundle_a_python_env(
    pm: Any, python_spec: EnvSpec, tmp_path: Path, no_spawn: Any
) -> None:
    spec = python_spec
    other = foreign(spec)
    interp = pm.hook.resolve_interpreter(spec=spec)
    assert pm.hook.create_env(spec=other, interpreter=interp) is None
    assert not spec.env_dir.exists()

    env = pm.hook.create_env(spec=spec, interpreter=interp)
    assert isinstance(env, EnvInfo) and env.path == spec.env_dir
    python = Path(env.commands["python3"])
    assert python.is_file() and str(spec.env_dir) in env.bin_dirs[0]
    assert env.env_vars["VIRTUAL_ENV"] == str(spec.env_dir)

    assert pm.hook.install_deps(spec=other, env=env) is None
    result = pm.hook.install_deps(spec=spec, env=env)
    assert isinstance(result, InstallResult)
    assert result.packages == {"allydemo-greet": "2.0.0", "allydemo-shout": "1.0.0"}

    deep = pm.hook.health_check(spec=spec, env=env, deep=True)
    assert isinstance(deep, Health) and deep.ok, deep.describe()
    assert pm.hook.health_check(spec=other, env=env, deep=True) is None
    with no_spawn():
        shallow = pm.hook.health_check(spec=spec, env=env, deep=False)
    assert shallow.ok

    dest = tmp_path / "artifacts"
    dest.mkdir()
    assert pm.hook.bundle_artifacts(spec=other, env=env, dest=dest) is None
    lock = pm.hook.bundle_artifacts(spec=spec, env=env, dest=dest)
    names = {p["name"]: p for p in lock["packages"]}
    assert set(names) == {"allydemo-greet", "allydemo-shout"}
    for package in names.values():
        assert (dest / package["file"]).is_file()
        assert len(package["sha256"]) == 64
    json.dumps(lock)

    # A broken env is reported by the cheap check, still without a process.
    for leftover in python.parent.glob("python*"):
        leftover.unlink()
    with no_spawn():
        broken = pm.hook.health_check(spec=spec, env=env, deep=False)
    assert not broken.ok and broken.problems[0].repairable


def test_builtin_runtime_implements_every_hookspec() -> None:
    from ally_core.runtimes import python

    marker = f"{hookspecs.PROJECT_NAME}_impl"
    missing = [name for name in HOOKS if not hasattr(getattr(python, name, None), marker)]
    assert not missing, f"the built-in Python runtime lacks hookimpls: {missing}"
