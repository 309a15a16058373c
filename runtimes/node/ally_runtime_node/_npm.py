"""Running npm for an env: its command line, its environment, its errors.

Every npm process of the runtime (installs, ``npm ls``, ``npm pack``) goes through
:func:`run_npm`, so all of them work on the env as a local project, with ally's npm cache and
without the host's Node.js variables.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ally_core import (
    EnvInfo,
    EnvSpec,
    InstallFailed,
    Interpreter,
    InterpreterNotFound,
    run_installer,
)

from ._interpreters import NpmInfo, find_npm, host_node_environ

__all__ = [
    "INSTALL_FLAGS",
    "npm_argv",
    "npm_environ",
    "npm_of",
    "omit_args",
    "run_npm",
    "write_script",
]

#: Options of every ``npm install``/``npm ci``. ``--global=false``: neither an
#: ``npm_config_global`` of the host nor an npmrc may send the install anywhere but the env.
INSTALL_FLAGS = (
    "--no-audit",
    "--no-fund",
    "--no-update-notifier",
    "--progress=false",
    "--global=false",
)
#: Boilerplate npm prints with every error: dropped from the tail shown to the user.
_NPM_NOISE = re.compile(
    r"^npm (?:error|ERR!)(?: \d{3})?\s*$|A complete log of this run|Note that you can also "
    r"install from a|tarball, folder, http url, or git url"
)
_FORCED_NPM_VARS = {"npm_config_global": "false", "npm_config_location": "project"}


def npm_of(interpreter: Interpreter) -> NpmInfo:
    """The npm installed with ``interpreter``; raises InterpreterNotFound."""
    npm = find_npm(interpreter.path, interpreter.realpath)
    if npm is None:
        raise InterpreterNotFound(
            f"npm not found for Node.js {interpreter.version} at {interpreter.path}; install npm"
        )
    return npm


def write_script(path: Path, argv: Sequence[str]) -> None:
    """A POSIX sh script that execs ``argv`` followed by its own arguments."""
    line = " ".join(shlex.quote(a) for a in argv)
    path.write_text(
        f'#!/bin/sh\n# written by ally-runtime-node\nexec {line} "$@"\n', encoding="utf-8"
    )
    path.chmod(0o755)


def _cache_dir(spec: EnvSpec) -> Optional[Path]:
    return spec.options.cache_dir / "npm" if spec.options.cache_dir else None


def npm_environ(spec: EnvSpec, env: EnvInfo) -> dict[str, str]:
    """The environment of npm processes: the env's node first on PATH, ally's cache."""
    extra = {
        "PATH": os.pathsep.join(
            [*env.bin_dirs[1:], *env.bin_dirs[:1], os.environ.get("PATH", os.defpath)]
        ),
        "npm_config_update_notifier": "false",
        "npm_config_fund": "false",
        "npm_config_audit": "false",
    }
    cache = _cache_dir(spec)
    if cache is not None:
        extra["npm_config_cache"] = str(cache)
    environ = {
        k: v
        for k, v in host_node_environ().items()
        # npm reads these case-insensitively: drop every spelling before setting ours.
        if k.lower() not in {*_FORCED_NPM_VARS, *(x.lower() for x in extra)}
    }
    # Every npm process works on the env as a local project, whatever the host says.
    environ.update(_FORCED_NPM_VARS)
    environ.update(extra)
    return environ


def npm_argv(env: EnvInfo) -> list[str]:
    """The env's node running its npm: the start of every npm command line."""
    return [env.interpreter.realpath or env.interpreter.path, str(env.data["npm_cli"])]


def omit_args(dev: bool) -> list[str]:
    """``--include=dev`` or ``--omit=dev``."""
    # Explicit either way: NODE_ENV=production or a user's npmrc would change npm's default.
    return ["--include=dev"] if dev else ["--omit=dev"]


def run_npm(
    spec: EnvSpec,
    env: EnvInfo,
    argv: Sequence[str],
    what: str,
    *,
    timeout: Optional[float] = None,
    quiet: bool = False,
    cwd: Optional[Path] = None,
) -> str:
    """Run npm (in the env dir unless ``cwd`` says otherwise) with its output streamed as
    progress; a tidy error on failure."""
    try:
        return run_installer(
            argv,
            cwd=cwd or env.path,
            env=npm_environ(spec, env),
            timeout=timeout or spec.options.install_timeout,
            on_line=None if quiet else (lambda line: spec.progress("output", line)),
            what=f"{spec.plugin_name}: {what}",
        )
    except InstallFailed as exc:
        raise InstallFailed(
            exc.message, command=exc.command, stderr_tail=without_noise(exc.stderr_tail)
        ) from exc


def without_noise(text: str) -> str:
    """``text`` without the boilerplate lines npm prints with every error."""
    return "\n".join(line for line in text.splitlines() if not _NPM_NOISE.search(line))
