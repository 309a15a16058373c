"""Which of a plugin's calls a warm worker can run, and what identifies its worker."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import attrs

from ..paths import contained_path

if TYPE_CHECKING:
    from ..outcomes import PluginOutcome

#: Call environment variables that differ per call and never reach a worker's startup.
PER_CALL_PREFIX = "PLUGIN_CONFIG_"


@attrs.frozen
class Plan:
    """What a plugin's Python tools run: scripts (absolute) and ``-m`` modules."""

    python: str
    scripts: tuple[str, ...]
    modules: tuple[str, ...]
    watch_files: tuple[str, ...]


def supported() -> bool:
    return os.name == "posix" and hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")


def plan_for(plugin: PluginOutcome) -> tuple[Optional[Plan], str]:
    """The plugin's Python tools, or why none of its calls can use a worker."""
    env, manifest = plugin.env, plugin.manifest
    if manifest is None or env is None:
        return None, "the plugin has no env"
    if env.interpreter.kind != "python" or "python" not in env.commands:
        return None, f"its runtime is {env.interpreter.kind or 'not python'} (tools are spawned)"
    python = env.commands["python"]
    scripts: list[str] = []
    modules: list[str] = []
    for tool in manifest.tools:
        if env.commands.get(tool.command) != python:
            continue
        found = target(plugin.plugin_dir, tool.args)
        if found is None:
            continue
        (modules if found[0] == "-m" else scripts).append(found[1])
    if not scripts and not modules:
        return None, "no tool runs a script or module with the env's python"
    watch = [str(plugin.plugin_dir / "plugin.json"), *scripts]
    return Plan(python, tuple(scripts), tuple(modules), tuple(watch)), ""


def target(plugin_dir: Path, args: Sequence[str]) -> Optional[tuple[str, str]]:
    """``("-m", module)`` or ``("script", absolute path)`` for args a worker can run."""
    if len(args) >= 2 and args[0] == "-m" and args[1] and not args[1].startswith("-"):
        return "-m", args[1]
    if args and not args[0].startswith("-"):
        path = contained_path(plugin_dir, args[0])
        if path is not None and path.is_file():
            return "script", str(path)
    return None


def startup_environ(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not k.startswith(PER_CALL_PREFIX)}


def fingerprint(plan: Plan, env_path: str, environ: Mapping[str, str]) -> str:
    data = [plan.python, plan.scripts, plan.modules, env_path, sorted(environ.items())]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()
