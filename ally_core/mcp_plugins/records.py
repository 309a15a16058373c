"""A ready server's command line, and its launch record (what :mod:`.warm_launch` starts it
from).

The command points into the env: the executable ``uvx`` would run, the bin ``npx`` would run
(with the env's node), the env's interpreter for a plugin's script; the arguments and the
declared environment stay templates, expanded at each start.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

from ..errors import InstallFailed
from ..store import Marker, write_atomic
from .discovery import PINS, RECORD, ServerRef, state_dir
from .launchers import Launcher
from .warm_launch import RECORD_FORMAT, content_digest, dump_record, file_identity

if TYPE_CHECKING:
    from ..host import Host

__all__ = ["command_line", "make_record", "save_record"]

#: A user-edited file changed less than this long ago is recorded with its content's digest
#: in a launch record (its identity could repeat within one timestamp tick; see
#: loader.SETTLE_NS).
SETTLE_NS = 2_000_000_000


def _npx_bin(ref: ServerRef, launcher: Launcher, marker: Marker) -> str:
    """The file npx would run: the only bin of the package, or the one named after it."""
    from .launchers import npm_spec

    parsed = npm_spec(launcher.packages[0])
    assert parsed is not None
    name = parsed[0]
    modules = marker.env.path / "node_modules"
    if launcher.entry:
        path = modules / ".bin" / launcher.entry
        if not os.path.exists(path):
            raise InstallFailed(f"{ref.label}: no package provides the command {launcher.entry!r}")
        return os.path.realpath(path)
    try:
        data = json.loads((modules / name / "package.json").read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InstallFailed(f"{ref.label}: {name} is not installed in its env") from exc
    bins = data.get("bin")
    unscoped = name.rpartition("/")[2]
    if isinstance(bins, str):
        bins = {unscoped: bins}
    if not isinstance(bins, dict) or not bins:
        raise InstallFailed(f"{ref.label}: {name} has no bin to run")
    chosen = next(iter(bins.values())) if len(bins) == 1 else bins.get(unscoped)
    if not isinstance(chosen, str):
        raise InstallFailed(
            f"{ref.label}: {name} has several bins ({', '.join(sorted(bins))}) and none is "
            f"named {unscoped!r}: name one with npx -p {name} BIN"
        )
    return os.path.realpath(modules / name / chosen)


def _is_node_script(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            first = fh.readline(200)
    except OSError:
        return False
    return not first.startswith(b"#!") or b"node" in first


def command_line(
    ref: ServerRef, launcher: Launcher, marker: Optional[Marker]
) -> tuple[list[str], dict[str, str], list[str], list[str]]:
    """``(argv templates, runtime env, PATH prefix, files run)`` of a server.

    The arguments are the declared ones (``${VAR}`` is expanded at each start); the command
    points into the env: the executable uvx would run, the bin npx would run (with the env's
    node), the env's interpreter for a script.
    """
    args = list(launcher.args)
    if marker is None:
        return [ref.server.command, *args], {}, [], []
    env = marker.env
    prefix = list(env.bin_dirs)
    if launcher.kind == "uvx":
        exe = os.path.join(env.bin_dirs[0], launcher.entry)
        if not os.path.isfile(exe):
            have = sorted(
                n
                for n in os.listdir(env.bin_dirs[0])
                if not n.startswith(("python", "activate", "deactivate", "pip", "pydoc", "."))
            )
            raise InstallFailed(
                f"{ref.label}: {launcher.packages[0]} provides no executable {launcher.entry!r}"
                f" (it has: {', '.join(have) or 'none'}); name one with uvx --from PKG CMD"
            )
        return [exe, *args], {}, prefix, [exe]
    if launcher.kind == "npx":
        script = _npx_bin(ref, launcher, marker)
        node = env.interpreter.path
        if _is_node_script(script):
            return [node, script, *args], {}, prefix, [script]
        return [script, *args], {}, prefix, [script]
    command = env.commands.get("python3" if launcher.kind == "python" else "node", "")
    return [command, *args], dict(env.env_vars), prefix, [command]


def _watched(path: str, user_files: set[str]) -> list[Any]:
    """``[path, identity, sha256 or None]``: the content's digest too for a file people edit
    that changed in the last seconds (see :func:`.warm_launch.read_record`). ally's own files
    (markers, pins, env files) are replaced whole, never edited in place."""
    identity = file_identity(path)
    digest = None
    if (
        identity is not None
        and path in user_files
        and max(identity[1], identity[3]) >= time.time_ns() - SETTLE_NS
    ):
        digest = content_digest(path)
    return [path, identity, digest]


def make_record(
    host: Host, ref: ServerRef, launcher: Launcher, marker: Optional[Marker]
) -> dict[str, Any]:
    """The launch record of a ready server (see :mod:`.warm_launch`)."""
    from ..tools import LOCALE_VARS, PASSED_VARS

    argv, runtime_env, prefix, runs = command_line(ref, launcher, marker)
    watch = [*ref.plugin.files, str(host.paths.config_file)]
    user_files = set(watch)
    links: list[list[str]] = []
    if marker is not None:
        from ..bundle import ARTIFACTS_DIR

        pointer = host.store.pointer(ref.pointer)
        with contextlib.suppress(OSError):
            links.append([str(pointer), os.readlink(pointer)])
        watch += [
            str(marker.env.path / ".installed"),
            str(ref.plugin.plugin_dir / ARTIFACTS_DIR),
            *runs,
        ]
        if marker.env.interpreter.realpath:
            watch.append(marker.env.interpreter.realpath)
        if launcher.pinned:
            watch.append(str(state_dir(host, ref) / PINS))
        if launcher.dependency_file is not None:
            watch.append(str(launcher.dependency_file))
    return {
        "format": RECORD_FORMAT,
        "label": ref.label,
        "kind": launcher.kind,
        "root": str(ref.plugin.plugin_dir),
        "argv": argv,
        "env": dict(ref.server.env),
        "runtime_env": runtime_env,
        "path_prefix": prefix,
        "pass": sorted({*PASSED_VARS, *host.settings.pass_env}),
        "locale": sorted(LOCALE_VARS),
        "watch": [_watched(path, user_files) for path in dict.fromkeys(watch)],
        "links": links,
    }


def save_record(host: Host, ref: ServerRef, record: Mapping[str, Any]) -> bool:
    """Write the launch record (``False`` when the store is read-only: every start then takes
    the full path)."""
    path = state_dir(host, ref) / RECORD
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, dump_record(record))
    except OSError:
        return False
    return True
