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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from .__about__ import __version__
from .lean import LIST, LIST_JSON, RUN_RECORD_HEADER, environ_digest, file_identity, run_record_path
from .paths import ARTIFACTS_DIR, relative_parts
from .store import MARKER, write_atomic

if TYPE_CHECKING:
    from .discovery import PluginSource
    from .host import Host
    from .manifest import Tool
    from .outcomes import PluginOutcome

__all__ = ["make_list_record", "make_run_record", "save_list_record", "save_run_record"]

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


def _home_watch(host: Host) -> list[str]:
    """What every record watches: which plugins there are, ally's settings and installation."""
    return [
        *host.discovery.watched_paths(),
        str(host.paths.config_file),
        *(p for p in sys.path[1:] if p and os.path.isdir(p)),
    ]


def _env_watch(
    host: Host, outcome: PluginOutcome, source: PluginSource
) -> Optional[tuple[list[str], list[list[str]]]]:
    """What a ready plugin's answer rests on: paths to watch and links to check (``None``:
    its runtime does not name its paths, the quick path cannot vouch for it)."""
    manifest = outcome.manifest
    assert manifest is not None
    watch = [f"{outcome.plugin_dir}{os.sep}{ARTIFACTS_DIR}"]
    if manifest.runtime is None:
        return watch, []
    env = outcome.env
    if env is None:
        return None
    spec, _key = host.keys.spec_and_key(source)
    paths = host.dispatch.watch_paths(spec, env)
    current = host.store.current(manifest.name)
    if paths is None or current is None:
        return None
    env_dir, marker = current
    pointer = host.store.pointer(manifest.name)
    watch += [str(env_dir / MARKER), *map(str, paths)]
    if spec.dependency_file is not None:
        watch.append(str(spec.dependency_file))
    files = host.keys.watched_files(source)  # what the warm key depends on, as it found it
    watch += files if files is not None else map(str, host.dispatch.identity_files(spec) or ())
    if marker.env.interpreter.realpath:
        watch.append(marker.env.interpreter.realpath)
    return watch, [[str(pointer), os.readlink(pointer)]]


def _settled(watch: list[str]) -> Optional[list[list[Any]]]:
    """``[path, identity]`` of each watched path; ``None`` when one changed too recently."""
    pairs = [(path, file_identity(path)) for path in dict.fromkeys(watch)]
    fresh = time.time_ns() - SETTLE_NS
    if any(i is not None and max(i[1], i[3]) >= fresh for _p, i in pairs):
        return None  # written by a later run, once nothing it watches is this fresh
    return [list(pair) for pair in pairs]


def _header(host: Host, key: str) -> dict[str, Any]:
    """What every record is checked against first: this ally, interpreter and environment."""
    relative_dirs = any(not os.path.isabs(p) for p in host.settings.plugin_dirs)
    return {
        "version": __version__,
        "python": sys.executable,
        "environ": environ_digest(os.environ),
        "cwd": os.getcwd() if relative_dirs else None,
        "envs_dir": str(host.paths.envs_dir),
        "plugin": key,
    }


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
    found = _env_watch(host, outcome, host.source(manifest.name))
    if found is None:
        return None
    watch, links = found
    identities = _settled([*_home_watch(host), str(stored), *watch])
    if identities is None:
        return None
    env = outcome.env
    return {
        **_header(host, manifest.name),
        "plugin_dir": str(outcome.plugin_dir),
        "tools": tools,
        "pass": sorted({*PASSED_VARS, *settings.pass_env}),
        "locale": sorted(LOCALE_VARS),
        "env_vars": dict(env.env_vars) if env is not None else {},
        "bin_dirs": list(env.bin_dirs) if env is not None else [],
        "output_limit": settings.output_limit,
        "watch": identities,
        "links": links,
    }


def make_list_record(
    host: Host, outcomes: Sequence[PluginOutcome], *, json: bool, text: str
) -> Optional[dict[str, Any]]:
    """The record of what ``ally list`` (``--json``) printed, ``text``; ``None`` unless
    every plugin is ready on its current env with nothing to warn about (what a plugin that
    is not ready shows can change with time alone: a failed build is retried)."""
    if any(
        o.manifest is None or not o.ready or o.reason or o.stale or o.warnings for o in outcomes
    ):
        return None
    sources = {str(s.plugin_dir): s for s in host.discover()}
    watch = [
        *_home_watch(host),
        # A Claude-style plugin's MCP servers are listed too.
        *(f"{d}{os.sep}.claude-plugin{os.sep}plugin.json" for d in host.discovery.candidate_dirs()),
    ]
    links: list[list[str]] = []
    for outcome in outcomes:
        source = sources.get(str(outcome.plugin_dir))
        found = _env_watch(host, outcome, source) if source is not None else None
        if found is None:
            return None
        watch += found[0]
        links += found[1]
    identities = _settled(watch)
    if identities is None:
        return None
    key = LIST_JSON if json else LIST
    return {**_header(host, key), "text": text, "watch": identities, "links": links}


def save_list_record(
    host: Host, outcomes: Sequence[PluginOutcome], *, json: bool, text: str
) -> Optional[Path]:
    """Write the record of an ``ally list`` (see :func:`make_list_record`); its path or
    ``None``."""
    try:
        record = make_list_record(host, outcomes, json=json, text=text)
    except OSError:
        return None
    return _write(host, record) if record is not None else None


def save_run_record(host: Host, outcome: PluginOutcome) -> Optional[Path]:
    """Write the run record of ``outcome`` (see :func:`make_run_record`); its path, or
    ``None`` when there is none to write or the store is read-only. Older records of the
    plugin beyond the :data:`KEEP` newest are removed."""
    try:
        record = make_run_record(host, outcome)
    except OSError:
        return None
    return _write(host, record) if record is not None else None


def _write(host: Host, record: dict[str, Any]) -> Optional[Path]:
    import marshal

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
