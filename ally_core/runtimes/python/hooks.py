"""The Python runtime's hook implementations (:mod:`ally_core.hookspecs`): each answers for
the runtime names ``python3`` and ``python`` only, and leaves the installer to its backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from ...__about__ import __version__
from ...envs import EnvInfo, EnvOptions, EnvSpec, Health, InstallResult, Interpreter
from ...hookspecs import hookimpl
from ...paths import command_lookup_paths
from .checks import check_env, quick_check_paths
from .index import effective_index, index_context, index_identity, pip_config_candidates
from .layout import ENV_LAYOUT, NAMES, serves
from .uv_locate import uv_available, uv_package_found

__all__ = [
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


@hookimpl
def runtime_names() -> Sequence[str]:
    return list(NAMES)


# ---------------------------------------------------------------------------------------------
# identity


@hookimpl
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not serves(spec):
        return None
    # Asked when a plugin's key is not in the warm index: the installers' code only then.
    from .depfile import includes_of, refuse_outside
    from .installers import backend_for

    identity: dict[str, Any] = {
        "layout": ENV_LAYOUT,
        # (Envs built before the backend's identity left out its version are rebuilt once.)
        "backend": backend_for(spec).identity(),
        # A bundle installs from its own artifacts only: index settings do not matter then.
        "index": "bundle"
        if spec.options.artifacts_dir
        else index_identity(effective_index(spec.options.index)),
        "python": spec.options.default_interpreter,
    }
    includes = includes_of(spec)
    refuse_outside(spec, includes)
    if includes.digests:
        # Requirement and constraint files it includes: editing one rebuilds the env.
        identity["includes"] = includes.digests
    if spec.install_command or includes.local:
        # The install reads the plugin's own files: this env belongs to this plugin only.
        identity["plugin_dir"] = str(spec.plugin_dir)
    return identity


@hookimpl
def env_context(runtime: str, options: EnvOptions) -> Optional[Mapping[str, Any]]:
    if runtime not in NAMES:
        return None
    # Everything env_identity reads besides the spec: with the spec's own fields (the
    # install_command, the artifacts dir, the dependency file's bytes) it determines the key.
    return {
        "layout": ENV_LAYOUT,
        "runtime": __version__,
        "installer": options.installer,
        "uv": uv_available(),
        "index": index_context(options.index),
        "python": options.default_interpreter,
    }


@hookimpl
def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    # Besides the dependency file (which the core watches itself), env_identity reads the
    # files it includes.
    if not serves(spec):
        return None
    from .depfile import includes_of

    return list(includes_of(spec).files)


# ---------------------------------------------------------------------------------------------
# building


@hookimpl
def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    if not serves(spec):
        return None
    from .interpreters import find_interpreter

    return find_interpreter(spec)


# The work of a build is in .build, imported only when a build needs it.


@hookimpl
def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    if not serves(spec):
        return None
    from . import build

    return build.create_env(spec, interpreter)


@hookimpl
def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    if not serves(spec):
        return None
    from . import build

    return build.install_deps(spec, env)


# ---------------------------------------------------------------------------------------------
# checks and bundles


@hookimpl
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    return check_env(spec, env, deep) if serves(spec) else None


@hookimpl
def watch_paths(spec: EnvSpec, env: EnvInfo) -> Optional[Sequence[Path]]:
    if not serves(spec):
        return None
    # What a quick health check stats, then what env_context and env_identity read besides
    # variables and ally's own installation: every file pip's configuration may come from
    # (existing or not) and, when uv is not importable by ally, the lookup of uv on PATH.
    paths = quick_check_paths(spec, env)
    paths += pip_config_candidates()
    if not uv_package_found():
        paths += command_lookup_paths("uv")
    return [Path(p) for p in dict.fromkeys(paths)]


@hookimpl
def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    if not serves(spec):
        return None
    from . import build

    return build.bundle_artifacts(spec, env, dest)
