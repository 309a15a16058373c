"""The hook implementations of the ``node`` runtime.

The work is in the modules below them: ``_package`` (the plugin's package.json, lock and
``.npmrc``), ``_interpreters`` (which node), ``_npm`` (running npm), ``_bundle`` (offline
bundles). This module decides which of them a hook needs and lays out the env.

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
import shutil
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
    run_installer,
    strip_credentials,
)

from . import _bundle
from .__about__ import __version__
from ._bundle import LOCK_NAME
from ._interpreters import choose_node, node_on_path
from ._npm import (
    INSTALL_FLAGS,
    npm_argv,
    npm_environ,
    npm_of,
    omit_args,
    run_npm,
    write_npx_script,
    write_script,
)
from ._package import (
    LOCK_FILES,
    copy_inputs,
    file_hash,
    include_dev,
    installed_packages,
    local_specs,
    read_package_json,
    registry_identity,
    run_scripts,
)
from ._record import verify_record, write_record
from ._semver import satisfies

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
]

NAMES = ("node", "nodejs")
#: ``module.register`` (needed for the ESM resolve hook) exists from Node.js 20.6 and 18.19.
ESM_HOOKS_RANGE = ">=20.6.0 || >=18.19.0 <19.0.0-0"
_ESM_DIR = Path(__file__).parent / "esm"
_ESM_FILES = ("register.mjs", "resolve-hooks.mjs")
#: Replaced by the env directory in ``install_command`` (Code Ally's placeholder).
ENV_PATH_PLACEHOLDER = "{envPath}"


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
    return {"runtime": __version__, "node": node_on_path(), "registry": registry_identity()}


@hookimpl
def identity_files(spec: EnvSpec) -> Optional[Sequence[Path]]:
    if not _serves(spec):
        return None
    if spec.dependency_file is None:
        return []
    folder = spec.dependency_file.parent
    return [folder / name for name in (*LOCK_FILES, ".npmrc")]


@hookimpl
def env_identity(spec: EnvSpec) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
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
    return choose_node(spec)


# ---------------------------------------------------------------------------------------------
# building


def _ally_dir(env_dir: Path) -> Path:
    return env_dir / ".ally"


def _esm_hooks_supported(version: str) -> bool:
    return satisfies(version, ESM_HOOKS_RANGE)


@hookimpl
def create_env(spec: EnvSpec, interpreter: Interpreter) -> Optional[EnvInfo]:
    if not _serves(spec):
        return None
    spec.progress("create", "Creating the node env")
    npm = npm_of(interpreter)
    env_dir = spec.env_dir
    ally_dir = _ally_dir(env_dir)
    bin_dir = ally_dir / "bin"
    bin_dir.mkdir(parents=True)
    for name in _ESM_FILES:
        shutil.copyfile(_ESM_DIR / name, ally_dir / name)
    node = interpreter.realpath or interpreter.path
    os.symlink(node, bin_dir / "node")
    write_script(bin_dir / "npm", [node, npm.npm_cli])
    commands = {"node": interpreter.path, "nodejs": interpreter.path, "npm": str(bin_dir / "npm")}
    if npm.npx_cli:
        # Runs what the env holds, never downloads; see write_npx_script.
        write_npx_script(bin_dir / "npx", node, npm.npx_cli, env_dir)
        commands["npx"] = str(bin_dir / "npx")
    env_vars = {
        "NODE_PATH": str(env_dir / "node_modules"),
        # `npm exec` (and an npx other than the env's) in a tool: never install a package.
        "npm_config_yes": "false",
    }
    esm = _esm_hooks_supported(interpreter.version)
    if esm:
        # A file: URL needs no quoting inside NODE_OPTIONS, even with spaces in the path.
        env_vars["NODE_OPTIONS"] = f"--import={(ally_dir / 'register.mjs').as_uri()}"
    return EnvInfo(
        path=env_dir,
        interpreter=interpreter,
        bin_dirs=(str(env_dir / "node_modules" / ".bin"), str(bin_dir)),
        commands=commands,
        env_vars=env_vars,
        data={
            "npm_cli": npm.npm_cli,
            "npm_version": npm.version,
            "dev": include_dev(spec),
            "esm_hooks": esm,
        },
    )


def _install_command(spec: EnvSpec, env: EnvInfo) -> tuple[list[str], Path]:
    """The ``install_command`` to run, and where.

    ``{envPath}`` becomes the env directory, as in Code Ally (``npm install --prefix
    {envPath}``). Such a command says where to install, so it runs in the plugin directory as
    Code Ally ran it: relative paths in it are the plugin's. One without ``{envPath}`` runs in
    the env directory, so that npm never writes into the plugin. ``npm``, ``npx`` and ``node``
    are the env's.
    """
    assert spec.install_command
    argv = [arg.replace(ENV_PATH_PLACEHOLDER, str(env.path)) for arg in spec.install_command]
    argv[0] = env.commands.get(argv[0], argv[0])
    names_env = any(ENV_PATH_PLACEHOLDER in arg for arg in spec.install_command)
    return argv, spec.plugin_dir if names_env else env.path


@hookimpl
def install_deps(spec: EnvSpec, env: EnvInfo) -> Optional[InstallResult]:
    if not _serves(spec):
        return None
    if spec.dependency_file is None and not spec.install_command:
        # A plugin without dependencies: an empty env, whose node tools run on.
        (env.path / "node_modules").mkdir(exist_ok=True)
        write_record(env.path)
        return InstallResult()
    dev = include_dev(spec)
    common = list(INSTALL_FLAGS)
    if not run_scripts(spec):
        common.append("--ignore-scripts")
    artifacts = spec.options.artifacts_dir
    if spec.dependency_file is not None:
        lock, has_dirs = copy_inputs(spec)
    else:
        lock, has_dirs = None, False
        # Without one npm would look for a project in the env's parent directories.
        (env.path / "package.json").write_text('{"private": true}\n', "utf-8")
    if spec.install_command:
        argv, cwd = _install_command(spec, env)
        spec.progress("install", f"Running {strip_credentials(' '.join(spec.install_command))}")
        run_npm(spec, env, argv, "install_command", cwd=cwd)
    elif artifacts is not None and (artifacts / LOCK_NAME).is_file():
        argv = _bundle.install_argv(spec, env, artifacts) + common + omit_args(dev)
        spec.progress("install", "Installing npm packages from the bundle")
        run_npm(spec, env, argv, "npm ci (from the bundle)")
    else:
        verb = "ci" if lock is not None else "install"
        argv = [*npm_argv(env), verb, *common, *omit_args(dev)]
        if verb == "install":
            argv.append("--package-lock=true")  # the env keeps a lock: bundles are made from it
        if has_dirs:
            argv.append("--install-links")  # copy file: directories, never link into the plugin
        argv.append("--offline" if spec.options.offline else "--prefer-offline")
        source = lock.name if lock is not None else "package.json"
        spec.progress("install", f"Installing npm packages from {source} (npm {verb})")
        run_npm(spec, env, argv, f"npm {verb}")
    # npm creates no node_modules for a package.json without dependencies; the health check
    # expects one.
    (env.path / "node_modules").mkdir(exist_ok=True)
    write_record(env.path)
    return InstallResult(packages=installed_packages(env.path), command=tuple(argv))


# ---------------------------------------------------------------------------------------------
# health


@hookimpl
def health_check(spec: EnvSpec, env: EnvInfo, deep: bool) -> Optional[Health]:
    if not _serves(spec):
        return None
    env_dir = env.path
    ally_dir = _ally_dir(env_dir)
    problems = []
    if not os.path.exists(env.interpreter.path):
        problems.append(Problem(f"node {env.interpreter.path} is gone"))
    elif not os.path.exists(ally_dir / "bin" / "node"):
        problems.append(Problem(f"{ally_dir / 'bin' / 'node'} is missing or dangling"))
    if not os.path.isdir(env_dir / "node_modules"):
        problems.append(Problem("node_modules is missing"))
    if env.data.get("esm_hooks") and not all(os.path.isfile(ally_dir / f) for f in _ESM_FILES):
        problems.append(Problem("the ESM resolve hook files in .ally/ are missing"))
    npm_cli = str(env.data.get("npm_cli", ""))
    if not os.path.isfile(npm_cli):
        problems.append(Problem(f"npm {npm_cli or '?'} is gone"))
    if problems or not deep:
        return Health(tuple(problems))
    checks: list[tuple[list[str], str, Mapping[str, str]]] = [
        (
            [*npm_argv(env), "ls", "--all", *omit_args(bool(env.data.get("dev", True)))],
            "npm ls",
            {},
        ),
        # Starts node the way tools do: proves the preloaded ESM hook still loads.
        ([env.interpreter.path, "-e", "0"], "node", env.env_vars),
    ]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ally-node-check") as pool:
        # Hashing the installed files overlaps with npm ls and node starting.
        changed = pool.submit(verify_record, env_dir)
        problems += _run_checks(spec, env, checks)
        files = changed.result()
    if files is not None:
        problems.append(Problem(files))
    return Health(tuple(problems))


def _run_checks(
    spec: EnvSpec, env: EnvInfo, checks: Sequence[tuple[list[str], str, Mapping[str, str]]]
) -> list[Problem]:
    problems = []
    for argv, what, extra in checks:
        try:
            run_installer(
                argv,
                cwd=env.path,
                env={**npm_environ(spec, env), **extra},
                timeout=120,
                what=what,
            )
        except InstallFailed as exc:
            tail = " | ".join(line for line in exc.stderr_tail.splitlines() if line.strip())
            problems.append(Problem(f"{what} failed" + (f": {tail}" if tail else "")))
    return problems


# ---------------------------------------------------------------------------------------------
# offline bundles


@hookimpl
def bundle_artifacts(spec: EnvSpec, env: EnvInfo, dest: Path) -> Optional[Mapping[str, Any]]:
    if not _serves(spec):
        return None
    return _bundle.collect(spec, env, dest)
