"""Third-party runtimes: a wheel registering entry point group ``ally``, really pip-installed.

The ``toyrt`` runtime is built as a wheel in this session, installed with
``pip install --target DIR`` (no index, no network) and found by a real ``ally`` process
through ``PYTHONPATH=DIR``, exactly as a runtime package from PyPI would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ally_core.testing import build_wheel, hermetic_environ

TOY_RUNTIME = '''\
"""A toy runtime: its env is a directory with a shell tool and a log of the hooks called."""
import os
import stat
import sys

from ally_core import EnvInfo, Health, InstallResult, Interpreter, Problem, hookimpl

NAME = "toyrt"


def _log(env_dir, text):
    with open(os.path.join(env_dir, "hooks.log"), "a") as fh:
        fh.write(text + "\\n")


@hookimpl
def runtime_names():
    return [NAME]


@hookimpl
def env_identity(spec):
    return {"toy": 1} if spec.runtime == NAME else None


@hookimpl
def resolve_interpreter(spec):
    if spec.runtime != NAME:
        return None
    return Interpreter(path="/bin/sh", version="1.0", kind="toy")


@hookimpl
def create_env(spec, interpreter):
    if spec.runtime != NAME:
        return None
    spec.progress("create", "Creating toy environment")
    bin_dir = spec.env_dir / "bin"
    bin_dir.mkdir(parents=True)
    _log(spec.env_dir, "create_env")
    tool = bin_dir / "toy-tool"
    tool.write_text(
        "#!/bin/sh\\n"
        "cat > /dev/null\\n"
        "printf \\'{\\"success\\": true, \\"result\\": \\"%s\\"}\\' "
        "\\"$(cat $TOY_ENV/installed.txt)\\"\\n"
    )
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return EnvInfo(
        path=spec.env_dir,
        interpreter=interpreter,
        bin_dirs=(str(bin_dir),),
        commands={"toy": str(tool)},
        env_vars={"TOY_ENV": str(spec.env_dir)},
        data={"made_by": "toyrt"},
    )


@hookimpl
def install_deps(spec, env):
    if spec.runtime != NAME:
        return None
    spec.progress("install", "Installing toy packages")
    text = spec.dependency_file.read_text().strip()
    (env.path / "installed.txt").write_text(text)
    _log(env.path, "install_deps")
    return InstallResult(packages={"toylib": "1.0"})


@hookimpl
def health_check(spec, env, deep):
    if spec.runtime != NAME:
        return None
    if deep:
        _log(env.path, "health_check deep")
    if not (env.path / "installed.txt").is_file():
        return Health((Problem("installed.txt is missing"),))
    return Health()


@hookimpl
def bundle_artifacts(spec, env, dest):
    if spec.runtime != NAME:
        return None
    (dest / "toylib-1.0.toy").write_text("toy")
    return {"packages": [{"name": "toylib", "version": "1.0", "file": "toylib-1.0.toy"}]}
'''


def _dist_files(dist: str, module: str, source: str, entry_point: str) -> dict[str, str]:
    return {
        f"{module}.py": source,
        f"{dist.replace('-', '_')}-0.1.0.dist-info/entry_points.txt": f"[ally]\n{entry_point}\n",
    }


def _pip_install_target(wheel_dir: Path, target: Path, requirement: str) -> None:
    from virtualenv.seed.wheels.embed import get_embed_wheel

    pip = get_embed_wheel("pip", f"{sys.version_info[0]}.{sys.version_info[1]}")
    assert pip is not None
    subprocess.run(
        [
            sys.executable,
            str(pip.path) + "/pip",
            "install",
            "--no-index",
            "--find-links",
            str(wheel_dir),
            "--target",
            str(target),
            "--no-deps",
            "--disable-pip-version-check",
            requirement,
        ],
        check=True,
        capture_output=True,
        env=hermetic_environ(),
    )


@pytest.fixture(scope="session")
def runtime_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``--target`` dirs with the toy runtime installed, and with a runtime broken on import."""
    wheels = tmp_path_factory.mktemp("runtime-wheels")
    build_wheel(
        wheels,
        "ally-runtime-toy",
        "0.1.0",
        files=_dist_files(
            "ally-runtime-toy", "ally_runtime_toy", TOY_RUNTIME, "toyrt = ally_runtime_toy"
        ),
    )
    build_wheel(
        wheels,
        "ally-runtime-broken",
        "0.1.0",
        files=_dist_files(
            "ally-runtime-broken",
            "ally_runtime_broken",
            "raise ImportError('ally_runtime_broken needs libfoo')\n",
            "broken = ally_runtime_broken",
        ),
    )
    dirs = {}
    for name in ("toy", "broken"):
        target = tmp_path_factory.mktemp(f"site-{name}")
        _pip_install_target(wheels, target, f"ally-runtime-{name}")
        dirs[name] = target
    return dirs


@pytest.fixture
def toy_plugin(make_plugin: Callable[..., Path]) -> Path:
    return make_plugin(
        "toyplug",
        {
            "runtime": "toyrt",
            "dependencies": {"file": "deps.toy"},
            "tools": [{"name": "show", "command": "toy"}],
        },
        files={"deps.toy": "toylib==1.0\n"},
    )


def test_runtime_wheel_was_really_installed_with_its_entry_point(
    runtime_dirs: dict[str, Path],
) -> None:
    target = runtime_dirs["toy"]
    assert (target / "ally_runtime_toy.py").is_file()
    eps = (target / "ally_runtime_toy-0.1.0.dist-info" / "entry_points.txt").read_text()
    assert "[ally]" in eps and "toyrt = ally_runtime_toy" in eps
    assert (target / "ally_runtime_toy-0.1.0.dist-info" / "INSTALLER").read_text().strip() == "pip"


def test_entry_point_runtime_builds_envs_and_runs_tools(
    ally_cli: Any, ally_home: Path, runtime_dirs: dict[str, Path], toy_plugin: Path
) -> None:
    env = {"PYTHONPATH": str(runtime_dirs["toy"])}
    runtimes = ally_cli("runtimes", "--json", env=env)
    assert runtimes.returncode == 0, runtimes.stderr
    listed = {r["name"]: r for r in json.loads(runtimes.stdout)["runtimes"]}
    assert listed["toyrt"] == {
        "name": "toyrt",
        "serves": ["toyrt"],
        "distribution": "ally-runtime-toy 0.1.0",
    }
    assert "python" in listed

    install = ally_cli("install", env=env)
    assert install.returncode == 0, install.stderr + install.stdout
    assert "[PluginEnvironmentManager]   \u2192 Creating toy environment" in install.stderr
    assert "[PluginEnvironmentManager]   \u2192 Installing toy packages" in install.stderr
    env_dir = ally_home / "plugin-envs" / "toyplug"
    assert (env_dir / "hooks.log").read_text().splitlines() == [
        "create_env",
        "install_deps",
        "health_check deep",
    ]
    assert (env_dir / "installed.txt").read_text() == "toylib==1.0"

    again = ally_cli("install", "--json", env=env)
    (plugin,) = json.loads(again.stdout)["plugins"]
    assert plugin["status"] == "ready" and plugin["action"] == "none"
    assert plugin["packages"] == {"toylib": "1.0"}
    assert len((env_dir / "hooks.log").read_text().splitlines()) == 3

    run = ally_cli("run", "toyplug", "show", env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"success": True, "result": "toylib==1.0"}


def test_disabled_runtime_is_not_loaded_and_its_plugins_are_blocked(
    ally_cli: Any, runtime_dirs: dict[str, Path], toy_plugin: Path, make_plugin: Any
) -> None:
    make_plugin("plain")
    env = {"PYTHONPATH": str(runtime_dirs["toy"]), "ALLY_DISABLED_PLUGINS": "toyrt"}
    runtimes = ally_cli("runtimes", "--json", env=env)
    names = {r["name"] for r in json.loads(runtimes.stdout)["runtimes"]}
    assert "toyrt" not in names and "python" in names

    install = ally_cli("install", "--json", env=env)
    assert install.returncode == 4
    plugins = {p["name"]: p for p in json.loads(install.stdout)["plugins"]}
    assert plugins["plain"]["status"] == "ready"
    assert plugins["toyplug"]["status"] == "blocked"
    assert "unknown runtime 'toyrt'" in plugins["toyplug"]["reason"]


def test_builtin_python_runtime_can_be_disabled_like_any_other(
    ally_cli: Any, make_plugin: Any
) -> None:
    make_plugin(
        "needs-python",
        {"runtime": "python3", "dependencies": {"file": "requirements.txt"}},
        files={"requirements.txt": "allydemo-greet\n"},
    )
    env = {"ALLY_DISABLED_PLUGINS": "python"}
    runtimes = ally_cli("runtimes", "--json", env=env)
    assert "python" not in {r["name"] for r in json.loads(runtimes.stdout)["runtimes"]}
    install = ally_cli("install", "--json", env=env)
    assert install.returncode == 4
    (plugin,) = json.loads(install.stdout)["plugins"]
    assert "unknown runtime 'python3'" in plugin["reason"]


def test_trace_plugins_writes_hook_calls_to_stderr(
    ally_cli: Any, runtime_dirs: dict[str, Path], toy_plugin: Path
) -> None:
    env = {"PYTHONPATH": str(runtime_dirs["toy"]), "ALLY_TRACE_PLUGINS": "1"}
    proc = ally_cli("install", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    for hook in ("env_identity", "resolve_interpreter", "create_env", "install_deps"):
        assert f"{hook} [hook]" in proc.stderr, proc.stderr[:2000]
    assert "finish create_env --> EnvInfo(" in proc.stderr

    quiet = ally_cli("install", "--json", env={"PYTHONPATH": str(runtime_dirs["toy"])})
    assert "[hook]" not in quiet.stderr


def test_runtime_failing_to_import_is_skipped_with_a_warning(
    ally_cli: Any, runtime_dirs: dict[str, Path], toy_plugin: Path, make_plugin: Any
) -> None:
    make_plugin(
        "plain",
        {"runtime": "python3", "tools": [{"name": "t", "command": "python3", "args": ["t.py"]}]},
        files={"t.py": 'print(\'{"success": true, "result": 1}\')'},
    )
    env = {"PYTHONPATH": os.pathsep.join([str(runtime_dirs["broken"]), str(runtime_dirs["toy"])])}
    install = ally_cli("install", "--json", env=env)
    assert install.returncode == 0, install.stderr
    assert "runtime 'broken' (entry point ally_runtime_broken) failed to load" in install.stderr
    assert "ally_runtime_broken needs libfoo" in install.stderr
    assert "Traceback" not in install.stderr
    plugins = {p["name"]: p["status"] for p in json.loads(install.stdout)["plugins"]}
    assert plugins == {"plain": "ready", "toyplug": "ready"}

    run = ally_cli("run", "plain", "t", env=env)
    assert run.returncode == 0 and json.loads(run.stdout)["result"] == 1
    runtimes = ally_cli("runtimes", "--json", env=env)
    names = {r["name"] for r in json.loads(runtimes.stdout)["runtimes"]}
    assert "broken" not in names and "toyrt" in names
