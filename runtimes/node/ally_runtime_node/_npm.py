"""Running npm for an env: its command line, its environment, its errors.

Every npm process of the runtime (installs, ``npm ls``, ``npm pack``) goes through
:func:`run_npm`, so all of them work on the env as a local project, with ally's npm cache and
without the host's Node.js variables.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from ally_core import (
    EnvInfo,
    EnvSpec,
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
    "write_npx_script",
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


#: The env's npx (see :func:`write_npx_script`).
_NPX_SCRIPT = """#!/bin/sh
# written by ally-runtime-node: npx that runs what this env holds and never downloads
env_dir=%(env_dir)s
cmd=
for arg do
  case $arg in
    -y|--yes|--yes=*|--no|--no-install|-q|--quiet) continue ;;
  esac
  cmd=$arg
  break
done
case $cmd in
  ''|-*|*@*@*|*:*|.*|~*) ;;
  @*/*) [ -e "$env_dir/node_modules/$cmd" ] || missing=1 ;;
  */*|*@*) ;;
  *) [ -e "$env_dir/node_modules/.bin/$cmd" ] || [ -e "$env_dir/node_modules/$cmd" ] || missing=1 ;;
esac
if [ -n "$missing" ]; then
  echo "npx: $cmd is not installed in this plugin's env: add the package that provides it" \\
    "to package.json (npx never downloads packages when a tool runs)" >&2
  exit 127
fi
exec %(npx)s "$@"
"""
#: What the env's npx passes to npm's, besides ``--prefix`` (npx looks for bins only in the
#: project of its working directory, the plugin's, never on PATH) and ``--cache``: no network,
#: no installing (a ``-y`` of the tool's comes later and wins, but offline with an empty cache
#: there is nothing to install from), no log files. Each value follows a ``=``: npx takes an
#: option it does not know as a switch to take the next word as its value.
NPX_FLAGS = ("--offline", "--yes=false", "--logs-max=0", "--update-notifier=false")


def write_npx_script(path: Path, node: str, npx_cli: str, env_dir: Path) -> None:
    """The env's ``npx``: runs the env's bins and packages, and fails rather than download.

    A plain name (``npx tsx``) that is neither a bin nor a package of the env is refused with
    one line before npm starts. Everything else (versions, ``-p``, paths) is npm's to resolve,
    offline and with an empty cache (``.ally/npx-cache``), so a package the env lacks is an
    npm error (``ENOTCACHED``), never a download.
    """
    cache = env_dir / ".ally" / "npx-cache"
    cache.mkdir(parents=True, exist_ok=True)
    argv = [node, npx_cli, "--prefix", str(env_dir), f"--cache={cache}", *NPX_FLAGS]
    text = _NPX_SCRIPT % {
        "env_dir": shlex.quote(str(env_dir)),
        "npx": " ".join(shlex.quote(a) for a in argv),
    }
    path.write_text(text, encoding="utf-8")
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
    progress. A failure's reason carries npm's own error lines (``run_installer`` picks them
    out of its boilerplate and usage help)."""
    return run_installer(
        argv,
        cwd=cwd or env.path,
        env=npm_environ(spec, env),
        timeout=timeout or spec.options.install_timeout,
        on_line=None if quiet else (lambda line: spec.progress("output", line)),
        what=f"{spec.plugin_name}: {what}",
    )
