"""``ally exec NAME -- CMD``: a command run inside a plugin's env (docs/reference/cli.md)."""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable

from .cli_common import _debug_causes, _emit, _reporter
from .errors import ConfigError, PluginNotFound, ToolError

__all__ = ["SYSTEM_DIRS", "run_in_env"]


def run_in_env(args: argparse.Namespace, make_host: Callable[[], Any]) -> int:
    """Run ``args.argv`` in the env of ``args.plugin`` (a Host from ``make_host``)."""
    import subprocess

    from .process import clean_environ

    command = list(args.argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("ally exec: give a command after '--'")
    host = make_host()
    outcome = host.ensure(args.plugin, progress=_reporter(args))
    _debug_causes(args, [outcome])
    if not outcome.ready:
        raise PluginNotFound(f"{outcome.name}: blocked: {outcome.reason}")
    env = outcome.env
    environ = clean_environ(
        path_prefix=env.bin_dirs if env else (), extra=dict(env.env_vars) if env else None
    )
    if env is not None:
        command[0] = _exec_command(command[0], env, outcome.name, environ.get("PATH", ""))
    try:
        if not args.json:
            return _exit_status(subprocess.call(command, env=environ))
        done = subprocess.run(command, env=environ, capture_output=True)
    except OSError as exc:
        raise ToolError(f"{outcome.name}: cannot run {command[0]}: {exc.strerror or exc}") from None
    _emit(
        {
            "plugin": outcome.name,
            "env": str(env.path) if env else None,
            "command": command,
            "exit_code": done.returncode,
            "stdout": done.stdout.decode("utf-8", "replace"),
            "stderr": done.stderr.decode("utf-8", "replace"),
        }
    )
    return _exit_status(done.returncode)


def _exit_status(returncode: int) -> int:
    """A child's exit status as a shell shows it: 128 + N for a child killed by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


#: Where ``ally exec`` takes a command the env lacks from: the system's own directories, never
#: another environment (a venv's or pyenv's ``pip`` would change that environment instead).
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _exec_command(name: str, env: Any, plugin: str, path: str) -> str:
    """The program ``ally exec`` runs for ``name``: the env's own first, else a system tool."""
    if os.sep in name:
        return name  # a path: exactly what was asked for
    if name in env.commands:
        program = str(env.commands[name])
        if not os.path.exists(program):
            raise ToolError(
                f"cannot run {name}: {program} is missing from {plugin}'s env "
                f"(ally doctor --fix {plugin} rebuilds it)"
            )
        return program
    for directory in env.bin_dirs:
        program = os.path.join(directory, name)
        if os.path.isfile(program) and os.access(program, os.X_OK):
            return program
    system = {os.path.realpath(d) for d in SYSTEM_DIRS}
    for directory in path.split(os.pathsep):
        program = os.path.join(directory, name)
        if directory and os.path.isfile(program) and os.access(program, os.X_OK):
            if os.path.realpath(directory) in system:
                return program
            raise ToolError(
                f"cannot run {name}: {plugin}'s env has no {name}, and the one on PATH "
                f"({program}) belongs to no system directory (give a path to run it anyway)"
            )
    raise ToolError(f"cannot run {name}: not in {plugin}'s env, nor a system tool on PATH")
