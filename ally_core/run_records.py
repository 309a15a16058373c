"""The records of the quick ``ally run`` path: what the full path found, and what it depends on.

After the full path of ``ally run PLUGIN TOOL`` found a plugin ready, it writes the plugin's
*run record* (:func:`save_run_record`): for each tool the quick path can run, its command
line and environment, and the identities of everything the full path's answer was derived
from. :mod:`ally_core.quick_run` runs the tool from the record, without importing the core,
for as long as all of it is unchanged:

* the same ally (version, record format) on the same interpreter, the same environment
  variables (:func:`ally_core.lean.environ_digest`) and, when a plugin dir is relative to
  it, the same working directory;
* every watched path has the identity it had (size, mtime, inode, ctime; or is still
  absent): the plugin dirs and every ``plugin.json`` in them (a second plugin of the same
  name blocks both), the remembered plugin dirs, ``config.toml``, the plugin's stored
  config, its dependency file and the files its runtime's ``identity_files`` names, its
  bundle artifacts, the env's marker and base interpreter, ally's own installation
  (``sys.path``), and what the runtime's ``watch_paths`` names;
* the env pointer still points where it did.

A plugin or tool the quick path cannot serve exactly as the full path does gets no record
(every run takes the full path): plugins with a config schema or stored config (secrets,
``PLUGIN_CONFIG_*``), tools with an input schema (checking it needs jsonschema) or forms
(``interactive``), plugins ready only on a kept env, runtimes without ``watch_paths``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .__about__ import __version__
from .lean import RUN_RECORD_HEADER, environ_digest, file_identity, run_record_path
from .paths import ARTIFACTS_DIR, relative_parts
from .store import write_atomic

if TYPE_CHECKING:
    from .host import Host
    from .manifest import Tool
    from .outcomes import PluginOutcome

__all__ = ["make_run_record", "save_run_record"]

#: A path changed less than this long ago may change again within one timestamp tick
#: without its identity changing (see discovery.SETTLE_NS): no record is written then.
SETTLE_NS = 2_000_000_000
#: Records kept per plugin (one per environment a host runs ally in).
KEEP = 4


def _tool_entry(outcome: PluginOutcome, tool: Tool, settings: Any) -> Optional[dict[str, Any]]:
    """How the quick path runs ``tool`` (``None``: it cannot, the full path must)."""
    if tool.interactive or tool.schema:
        return None
    timeout = tool.timeout or settings.tool_timeout
    if not timeout > 0:
        return None
    env = outcome.env
    command = tool.command
    entry: dict[str, Any] = {"args": list(tool.args), "timeout": float(timeout)}
    if env is not None and command in env.commands:
        entry["command"] = env.commands[command]
    elif os.path.isabs(command) or command.startswith("~") or "\\" in command:
        return None  # refused by the full path, with its message
    elif "/" in command:
        parts = relative_parts(command)
        if parts is None:
            return None
        # Checked again by the quick path: no component may have become a symlink.
        entry["command"] = os.path.join(str(outcome.plugin_dir), *parts)
        entry["inside"] = parts
    else:
        entry["command"] = command
        entry["lookup"] = True  # on the tool's PATH, at each run
    return entry


def make_run_record(host: Host, outcome: PluginOutcome) -> Optional[dict[str, Any]]:
    """The run record of a ready plugin, or ``None`` when the quick path cannot serve it."""
    from .plugin_config import store_path
    from .plugin_schema import config_schema
    from .tools import LOCALE_VARS, PASSED_VARS

    manifest = outcome.manifest
    if manifest is None or not outcome.ready or outcome.reason or outcome.stale:
        return None
    if config_schema(manifest):
        return None
    stored = store_path(host, manifest.name)
    if os.path.lexists(stored):
        return None
    settings = host.settings
    tools = {}
    for tool in manifest.tools:
        entry = _tool_entry(outcome, tool, settings)
        if entry is not None:
            tools[tool.name] = entry
    if not tools:
        return None
    plugin_dir = str(outcome.plugin_dir)
    watch: list[str] = [
        *host.discovery.watched_paths(),
        str(host.paths.config_file),
        str(stored),
        f"{plugin_dir}{os.sep}{ARTIFACTS_DIR}",
        *(p for p in sys.path[1:] if p and os.path.isdir(p)),
    ]
    links: list[list[str]] = []
    env = outcome.env
    if manifest.runtime is not None:
        if env is None:
            return None
        source = host.source(manifest.name)
        spec, _key = host.keys.spec_and_key(source)
        paths = host.dispatch.watch_paths(spec, env)
        if paths is None:
            return None
        current = host.store.current(manifest.name)
        if current is None:
            return None
        env_dir, marker = current
        pointer = host.store.pointer(manifest.name)
        links.append([str(pointer), os.readlink(pointer)])
        watch += [str(env_dir / ".installed"), *map(str, paths)]
        if spec.dependency_file is not None:
            watch.append(str(spec.dependency_file))
        watch += map(str, host.dispatch.identity_files(spec) or ())
        if marker.env.interpreter.realpath:
            watch.append(marker.env.interpreter.realpath)
    identities = [(path, file_identity(path)) for path in dict.fromkeys(watch)]
    fresh = time.time_ns() - SETTLE_NS
    if any(i is not None and max(i[1], i[3]) >= fresh for _p, i in identities):
        return None  # written by a later run, once nothing it watches is this fresh
    relative_dirs = any(not os.path.isabs(p) for p in settings.plugin_dirs)
    return {
        "version": __version__,
        "python": sys.executable,
        "environ": environ_digest(os.environ),
        "cwd": os.getcwd() if relative_dirs else None,
        "envs_dir": str(host.paths.envs_dir),
        "plugin": manifest.name,
        "plugin_dir": plugin_dir,
        "tools": tools,
        "pass": sorted({*PASSED_VARS, *settings.pass_env}),
        "locale": sorted(LOCALE_VARS),
        "env_vars": dict(env.env_vars) if env is not None else {},
        "bin_dirs": list(env.bin_dirs) if env is not None else [],
        "output_limit": settings.output_limit,
        "watch": [list(pair) for pair in identities],
        "links": links,
    }


def save_run_record(host: Host, outcome: PluginOutcome) -> Optional[Path]:
    """Write the run record of ``outcome`` (see :func:`make_run_record`); its path, or
    ``None`` when there is none to write or the store is read-only. Older records of the
    plugin beyond the :data:`KEEP` newest are removed."""
    import marshal

    try:
        record = make_run_record(host, outcome)
    except OSError:
        return None
    if record is None:
        return None
    envs_dir = str(host.paths.envs_dir)
    path = Path(run_record_path(envs_dir, record["plugin"], record["environ"]))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, RUN_RECORD_HEADER + marshal.dumps(record))
    except OSError:
        return None
    _prune(path.parent, record["plugin"])
    return path


def _prune(folder: Path, plugin: str) -> None:
    prefix = f"{plugin}."
    found = []
    try:
        for entry in os.scandir(folder):
            if entry.name.startswith(prefix) and entry.name[len(prefix) :].isalnum():
                found.append((entry.stat().st_mtime_ns, entry.path))
    except OSError:
        return
    for _mtime, stale in sorted(found, reverse=True)[KEEP:]:
        try:
            os.unlink(stale)
        except OSError:
            pass
