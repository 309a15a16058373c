"""The hook implementations of the ``node`` runtime.

The work is in the modules below them: ``_package`` (the plugin's package.json, lock and
``.npmrc``), ``_interpreters`` (which node), ``_layout`` (the env's names), ``_build`` (creating
and installing an env, the deep check), ``_npm`` (running npm), ``_bundle`` (offline
bundles). This module decides which of them a hook needs. ally imports every runtime when it
starts, so this module imports only the names of an env (``_layout``): every other module
is imported by the hooks that need it, and a home without node plugins never imports them.

Env layout (``spec.env_dir``, in ally's env store; the plugin's directory is never written)::

    package.json                the plugin's, without its own lifecycle scripts
    package-lock.json           the plugin's lock (or npm-shrinkwrap.json), else npm's new one
    .npmrc                      the plugin's, when it ships one
    node_modules/               what npm installed; NODE_PATH, and .bin first on PATH
    .ally/register.mjs          preloaded with NODE_OPTIONS=--import: registers the ESM hook
    .ally/resolve-hooks.mjs     lets ``import "pkg"`` fall back to the env's node_modules
    .ally/bin/node              symlink to the node the env was built with (for ``#!`` lines)
    .ally/bin/npm, npx          that node running its own npm; npx runs the env's bins, offline
    .ally/npx-cache/            npx's cache: always empty, so npx has nothing to install from
    .ally/installed-files.json  sha256 of every file below node_modules (see _record)
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
    InstallFailed,
    InstallResult,
    Interpreter,
    Problem,
    hookimpl,
)

from .__about__ import __version__
from ._layout import ESM_FILES, NAMES, ally_dir_of

__all__ = [
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


# ---------------------------------------------------------------------------------------------
# identity (warm path: no process, cached file reads)


@hookimpl
def env_context(runtime: str, options: EnvOptions) -> Optional[Mapping[str, Any]]:
    if runtime not in NAMES:
        return None
    # What env_identity reads from outside the plugin: the node it would find, npm's registry
    # settings from the environment, and this package's version.
    from ._interpreters import node_on_path
    from ._package import registry_identity

    return {"runtime": __version__, "node": node_on_path(), "registry": registry_identity()}


@hookimpl
def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    if spec.dependency_file is None:
        return []
    from ._package import LOCK_FILES

    folder = spec.dependency_file.parent
    return [folder / name for name in (*LOCK_FILES, ".npmrc")]


@hookimpl
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    # Asked when a plugin's key is not in the warm index (it changed).
    from ._interpreters import node_on_path
    from ._package import (
        LOCK_FILES,
        file_hash,
        include_dev,
        local_specs,
        read_package_json,
        registry_identity,
        run_scripts,
    )

    identity: dict[str, Any] = {
        "node": node_on_path(),
        "dev": include_dev(spec),
        "scripts": run_scripts(spec),
        "registry": "bundle" if spec.options.artifacts_dir else registry_identity(),
    }
    if spec.dependency_file is not None:
        folder = spec.dependency_file.parent
        identity["locks"] = {
            name: digest for name in LOCK_FILES if (digest := file_hash(folder / name))
        }
        identity["npmrc"] = file_hash(folder / ".npmrc")
        try:
            local = bool(local_specs(read_package_json(spec.dependency_file)))
        except InstallFailed:
            local = False  # the build reports the broken file
        if local:
            # The install reads other files of the plugin: this env belongs to it alone.
            identity["plugin_dir"] = str(spec.plugin_dir)
    if spec.install_command:
        identity["plugin_dir"] = str(spec.plugin_dir)
    return identity


@hookimpl
def resolve_interpreter(spec: EnvSpec) -> Optional[Interpreter]:
    if not _serves(spec):
        return None
    from ._interpreters import choose_node

    return choose_node(spec)


# ---------------------------------------------------------------------------------------------
# building: the work is in _build, imported only when a build needs it


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


# ---------------------------------------------------------------------------------------------
# health


@hookimpl
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    if not _serves(spec):
        return None
    env_dir = env.path
    ally_dir = ally_dir_of(env_dir)
    problems = []
    if not os.path.exists(env.interpreter.path):
        problems.append(Problem(f"node {env.interpreter.path} is gone"))
    elif not os.path.exists(ally_dir / "bin" / "node"):
        problems.append(Problem(f"{ally_dir / 'bin' / 'node'} is missing or dangling"))
    if not os.path.isdir(env_dir / "node_modules"):
        problems.append(Problem("node_modules is missing"))
    if env.data.get("esm_hooks") and not all(os.path.isfile(ally_dir / f) for f in ESM_FILES):
        problems.append(Problem("the ESM resolve hook files in .ally/ are missing"))
    npm_cli = str(env.data.get("npm_cli", ""))
    if not os.path.isfile(npm_cli):
        problems.append(Problem(f"npm {npm_cli or '?'} is gone"))
    if problems or not deep:
        return Health(tuple(problems))
    from . import _build

    return Health(tuple(problems + _build.deep_check(spec, env)))


@hookimpl
def watch_paths(spec: EnvSpec, env: EnvInfo) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    from ._interpreters import node_lookup_paths

    # What the quick health_check stats (exists/isdir/isfile follow symlinks, as the core's
    # stat does), then the lookup of node on PATH that env_context and env_identity make.
    # env_identity reads no other file outside the plugin: npm's registry settings come
    # from variables, and the plugin's lock files and .npmrc are identity_files.
    ally_dir = ally_dir_of(env.path)
    paths = [env.interpreter.path, str(ally_dir / "bin" / "node"), str(env.path / "node_modules")]
    if env.data.get("esm_hooks"):
        paths += [str(ally_dir / f) for f in ESM_FILES]
    npm_cli = str(env.data.get("npm_cli", ""))
    if npm_cli:
        paths.append(npm_cli)
    paths += node_lookup_paths()
    return [Path(p) for p in dict.fromkeys(paths) if p]


# ---------------------------------------------------------------------------------------------
# offline bundles


@hookimpl
def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    from . import _bundle

    return _bundle.collect(spec, env, dest)
