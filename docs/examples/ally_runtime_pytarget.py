"""ally-runtime-pytarget: a plugin's packages installed into a plain directory, no venv.

Serves ``"runtime": "python-target"``. The env is ``<env>/site``, filled by
``uv pip install --target``; tools run the Python that ally runs on, with ``PYTHONPATH``
pointing at it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ally_core import (
    EnvInfo,
    EnvSpec,
    Health,
    InstallResult,
    Interpreter,
    InterpreterNotFound,
    Problem,
    clean_environ,
    hookimpl,
    run_installer,
)

NAMES = ("python-target",)


def _serves(spec: EnvSpec) -> bool:
    return spec.runtime in NAMES


@hookimpl
def runtime_names() -> Sequence[str]:
    return list(NAMES)


@hookimpl
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    # The core already hashes the dependency file, install_command and runtime_version.
    # Add what else changes the result of an install. No processes here: runs on every load.
    return {"layout": 1, "index": spec.options.index.identity()}


@hookimpl
def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    if not _serves(spec):
        return None
    version = "{}.{}.{}".format(*sys.version_info[:3])
    if spec.runtime_version:
        from packaging.specifiers import SpecifierSet

        if not SpecifierSet(spec.runtime_version).contains(version, prereleases=True):
            raise InterpreterNotFound(
                f"{spec.plugin_name}: Python {version} does not satisfy "
                f"runtime_version {spec.runtime_version!r}"
            )
    real = os.path.realpath(sys.executable)
    st = os.stat(real)
    return Interpreter(
        path=real,
        version=version,
        kind="python",
        realpath=real,
        signature=(st.st_size, st.st_mtime_ns, st.st_ino),
    )


@hookimpl
def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    if not _serves(spec):
        return None
    spec.progress("create", "Creating the package directory")
    site = spec.env_dir / "site"
    site.mkdir(parents=True)  # spec.env_dir does not exist yet; its parent does
    return EnvInfo(
        path=spec.env_dir,
        interpreter=interpreter,
        bin_dirs=(str(site / "bin"),),
        commands={"python": interpreter.path, "python3": interpreter.path},
        env_vars={"PYTHONPATH": str(site)},
    )


@hookimpl
def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    if not _serves(spec):
        return None
    if spec.install_command:
        argv, source = list(spec.install_command), "install_command"
    elif spec.dependency_file is not None:
        from uv import find_uv_bin

        index = spec.options.index
        argv = [find_uv_bin(), "pip", "install", "--no-config", "--quiet"]
        argv += ["--python", env.interpreter.path, "--target", str(env.path / "site")]
        argv += ["-r", str(spec.dependency_file)]
        argv += ["--index-url", index.index_url] if index.index_url else []
        argv += [arg for link in index.find_links for arg in ("--find-links", link)]
        argv += ["--no-index"] if index.no_index else []
        argv += ["--offline"] if spec.options.offline else []
        source = spec.dependency_file.name
    else:
        return InstallResult()
    spec.progress("install", f"Installing packages from {source}")
    run_installer(  # timeout, group kill on Ctrl-C, InstallFailed with the stderr tail
        argv,
        cwd=spec.plugin_dir,
        env=clean_environ(extra=dict(env.env_vars)),
        timeout=spec.options.install_timeout,
        on_line=lambda line: spec.progress("output", line),
        what="uv pip install --target",
    )
    return InstallResult(packages=_packages(env.path / "site"), command=tuple(argv))


def _packages(site: Path) -> dict[str, str]:
    found = {}
    for info in site.glob("*.dist-info"):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        found[name.lower().replace("_", "-")] = version
    return found


@hookimpl
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    if not _serves(spec):
        return None
    if not (env.path / "site").is_dir():
        return Health((Problem("the package directory is gone"),))
    if deep:
        import subprocess

        check = [env.interpreter.path, "-c", "import sys"]
        if subprocess.run(check, env=clean_environ(extra=dict(env.env_vars))).returncode:
            return Health((Problem(f"{env.interpreter.path} does not start"),))
    return Health()
