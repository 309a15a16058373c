"""A plugin's dependency file as the Python runtime reads it: the files it includes, the
dependency groups it asks for, and the requirements file an install is given."""

from __future__ import annotations

import os
from pathlib import Path

from ...envs import EnvSpec
from ...errors import InstallFailed
from .pyproject import dependency_groups, pyproject_requirements
from .requirements import Includes, scan_dependency_file, scan_requirement_strings


def includes_of(spec: EnvSpec) -> Includes:
    """What the dependency file reads besides itself (see :mod:`.requirements`)."""
    dep = spec.dependency_file
    if dep is None or spec.install_command:
        return Includes()
    if dep.name == "pyproject.toml":
        return scan_requirement_strings(pyproject_of(spec), dep, spec.plugin_dir)
    groups_of(spec)
    return scan_dependency_file(dep, spec.plugin_dir)


def groups_of(spec: EnvSpec) -> tuple[str, ...]:
    """``dependencies.groups``: PEP 735 groups to install from ``pyproject.toml``."""
    try:
        groups = dependency_groups(spec.dependency_options)
    except ValueError as exc:
        raise InstallFailed(f"{spec.plugin_name}: plugin.json: {exc}") from None
    dep = spec.dependency_file
    if groups and (dep is None or dep.name != "pyproject.toml"):
        raise InstallFailed(
            f"{spec.plugin_name}: plugin.json: $.dependencies.groups: dependency groups are "
            f"read from a pyproject.toml; the dependency file is "
            f"{dep.name if dep else 'not given'}"
        )
    return groups


def pyproject_of(spec: EnvSpec) -> list[str]:
    """The requirement strings of the plugin's ``pyproject.toml`` (raises one line)."""
    dep = spec.dependency_file
    assert dep is not None
    try:
        return pyproject_requirements(dep, groups_of(spec))
    except ValueError as exc:
        raise InstallFailed(f"{spec.plugin_name}: {dep.name}: {exc}") from None


def refuse_outside(spec: EnvSpec, includes: Includes) -> None:
    """Raise if the dependency file reaches outside the plugin directory."""
    if includes.problem:
        raise InstallFailed(f"{spec.plugin_name}: {includes.problem}")


def requirements_file(spec: EnvSpec) -> Path:
    """The dependency file as a requirements file (``pyproject.toml`` is translated)."""
    dep = spec.dependency_file
    assert dep is not None
    if dep.name != "pyproject.toml":
        return dep
    deps = pyproject_of(spec)
    refuse_outside(spec, scan_requirement_strings(deps, dep, spec.plugin_dir))
    out = spec.env_dir / "ally-requirements.txt"
    # 0600: never copy what may be a private file's content into a file others can read.
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(deps) + "\n")
    return out
