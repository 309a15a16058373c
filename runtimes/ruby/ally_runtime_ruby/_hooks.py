"""The hook implementations of the ``ruby`` runtime.

ally imports every runtime at each start, so this module imports only the runtime's names
(``_names``): each hook that serves a ruby plugin imports ``_build``, where the work is
(Gemfiles, finding a Ruby, bundler), when it runs. A home without ruby plugins loads none of
it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ally_core import (
    EnvInfo,
    EnvOptions,
    EnvSpec,
    Health,
    InstallResult,
    Interpreter,
    hookimpl,
)

from .__about__ import __version__
from ._names import LAYOUT, LOCK_NAME, NAMES, RUBY_ENV_VAR

__all__ = [
    "LOCK_NAME",
    "NAMES",
    "bundle_artifacts",
    "create_env",
    "env_context",
    "env_identity",
    "health_check",
    "identity_files",
    "install_deps",
    "resolve_interpreter",
    "runtime_names",
    "watch_paths",
]


def _serves(spec: EnvSpec) -> bool:
    return spec.runtime in NAMES


@hookimpl
def runtime_names() -> Sequence[str]:
    return list(NAMES)


@hookimpl
def env_context(runtime: str, options: EnvOptions) -> Optional[Mapping[str, Any]]:
    if runtime not in NAMES:
        return None
    # What env_identity reads from outside the plugin.
    return {"runtime": __version__, "layout": LAYOUT, "ruby": os.environ.get(RUBY_ENV_VAR)}


@hookimpl
def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.identity_files(spec)


@hookimpl
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.env_identity(spec)


@hookimpl
def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.resolve_interpreter(spec)


@hookimpl
def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.create_env(spec, interpreter)


@hookimpl
def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.install_deps(spec, env)


@hookimpl
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.health_check(spec, env, deep)


@hookimpl
def watch_paths(spec: EnvSpec, env: EnvInfo) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.watch_paths(spec, env)


@hookimpl
def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    from . import _build

    return _build.bundle_artifacts(spec, env, dest)
