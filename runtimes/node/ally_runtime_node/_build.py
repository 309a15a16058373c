"""Building a node env: ``create_env``, ``install_deps`` and the deep health check.

Imported by the hooks in :mod:`._hooks` when a build or a deep check needs it, not when ally
starts: loading plugins whose envs are ready never imports npm's machinery.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from ally_core import (
    EnvInfo,
    EnvSpec,
    InstallFailed,
    InstallResult,
    Interpreter,
    Problem,
    run_installer,
    strip_credentials,
)

from . import _bundle
from ._layout import (
    ENV_PATH_PLACEHOLDER,
    ESM_DIR,
    ESM_FILES,
    ESM_HOOKS_RANGE,
    LOCK_NAME,
    ally_dir_of,
)
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
from ._package import copy_inputs, include_dev, installed_packages, run_scripts
from ._record import verify_record, write_record
from ._semver import satisfies

__all__ = ["create_env", "deep_check", "install_deps"]


def _esm_hooks_supported(version: str) -> bool:
    return satisfies(version, ESM_HOOKS_RANGE)


def create_env(spec: EnvSpec, interpreter: Interpreter) -> EnvInfo:
    spec.progress("create", "Creating the node env")
    npm = npm_of(interpreter)
    env_dir = spec.env_dir
    ally_dir = ally_dir_of(env_dir)
    bin_dir = ally_dir / "bin"
    bin_dir.mkdir(parents=True)
    for name in ESM_FILES:
        shutil.copyfile(ESM_DIR / name, ally_dir / name)
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


def install_deps(spec: EnvSpec, env: EnvInfo) -> InstallResult:
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
# the deep health check


def deep_check(spec: EnvSpec, env: EnvInfo) -> list[Problem]:
    """``npm ls``, a node start with the env's options, and the installed files' hashes."""
    env_dir = env.path
    problems: list[Problem] = []
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
    return problems


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
