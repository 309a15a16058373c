"""Claude-style plugins in the host's plugin dirs, their servers, and where ally keeps each
server's state.

A server's env is published in the store as ``<plugin>+<server>`` (a ``+`` no ``plugin.json``
name can hold, so the two kinds of plugins never collide), and its pins and launch record are
kept in ``<envs_dir>/.mcp/<plugin>+<server>/`` (see :mod:`.pins` and :mod:`.records`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Protocol

import attrs

from ..errors import AllyError, ManifestError, PluginNotFound
from .manifest import (
    ClaudePlugin,
    McpServer,
    is_claude_plugin,
    load_claude_plugin,
    server_slug,
)

if TYPE_CHECKING:
    from ..paths import AllyPaths
    from ..store import EnvStore

__all__ = [
    "Home",
    "PluginEntry",
    "ServerRef",
    "claude_plugin_names",
    "discover",
    "find_plugin",
    "pointer_names",
    "record_path",
    "server_refs",
    "state_dir",
]

#: Where the servers' pins and launch records live, under ``envs_dir``.
STATE_DIR = ".mcp"
PINS = "pins.json"
RECORD = "launch.record"
#: Directory of a bundled plugin holding each server's artifacts (``<slug>/`` below it).
BUNDLE_SUBDIR = "mcp"


class Home(Protocol):
    """What finding servers and their state needs of a home: its directories and its store
    (a :class:`~ally_core.Host` is one). Taking no ``Host`` keeps this module below it, so
    that ``Host.gc`` can keep the servers' envs."""

    @property
    def paths(self) -> AllyPaths: ...

    @property
    def store(self) -> EnvStore: ...


def pointer_name(plugin: str, server: str) -> str:
    """The store name of a server's env (and of its state directory)."""
    return f"{plugin}+{server_slug(server)}"


@attrs.frozen
class PluginEntry:
    """A discovered Claude-style plugin, or why it cannot be read."""

    plugin_dir: Path
    plugin: Optional[ClaudePlugin]
    error: Optional[AllyError] = None

    @property
    def name(self) -> str:
        return self.plugin.name if self.plugin else self.plugin_dir.name


@attrs.frozen
class ServerRef:
    """One server of one plugin."""

    plugin: ClaudePlugin
    server: McpServer

    @property
    def label(self) -> str:
        return f"{self.plugin.name}/{self.server.name}"

    @property
    def pointer(self) -> str:
        """Its env's name in the store (``+`` keeps it apart from every plugin.json name)."""
        return pointer_name(self.plugin.name, self.server.name)


def discover(host: Home) -> list[PluginEntry]:
    """Every Claude-style plugin (``.claude-plugin/plugin.json``) in the host's plugin dirs."""
    out: list[PluginEntry] = []
    seen: dict[str, Path] = {}
    for root in host.paths.plugin_dirs:
        try:
            names = sorted(e.name for e in os.scandir(root) if not e.name.startswith("."))
        except OSError:
            continue
        for name in names:
            plugin_dir = root / name
            if not is_claude_plugin(plugin_dir):
                continue
            try:
                plugin = load_claude_plugin(plugin_dir)
            except ManifestError as exc:
                out.append(PluginEntry(plugin_dir, None, exc))
                continue
            if plugin.name in seen:
                error = ManifestError(
                    plugin.name,
                    ".claude-plugin/plugin.json",
                    [f"$.name: duplicate plugin name, also used by {seen[plugin.name]}"],
                )
                out.append(PluginEntry(plugin_dir, None, error))
                continue
            seen[plugin.name] = plugin_dir
            out.append(PluginEntry(plugin_dir, plugin))
    return out


def find_plugin(host: Home, name: str) -> ClaudePlugin:
    """The plugin called ``name`` (or in a directory of that name); raises if not found."""
    for root in host.paths.plugin_dirs:
        # The usual layout first: a directory named after the plugin (no scan).
        if is_claude_plugin(root / name):
            plugin = load_claude_plugin(root / name)
            if plugin.name == name:
                return plugin
    for entry in discover(host):
        if entry.name == name or entry.plugin_dir.name == name:
            if entry.plugin is None:
                assert entry.error is not None
                raise entry.error
            return entry.plugin
    raise PluginNotFound(f"no Claude-style plugin named {name!r} (with .claude-plugin/plugin.json)")


def claude_plugin_names(host: Home) -> set[str]:
    """Names (and directory names) of the Claude-style plugins, readable or not."""
    names = set()
    for entry in discover(host):
        names.add(entry.name)
        names.add(entry.plugin_dir.name)
    return names


def pointer_names(host: Home) -> set[str]:
    """The store names of every declared server's env (what ``ally gc`` keeps).

    A plugin that cannot be read right now (a typo being fixed) keeps what its servers have:
    every pointer and state directory named ``<its name>+…``.
    """
    names = set()
    unreadable = []
    for entry in discover(host):
        if entry.plugin is None:
            unreadable.append(f"{entry.name}+")
            continue
        names |= {ServerRef(entry.plugin, server).pointer for server in entry.plugin.servers}
    if unreadable:
        state = host.paths.envs_dir / STATE_DIR
        existing = [*host.store.pointers(), *(os.listdir(state) if state.is_dir() else ())]
        names |= {n for n in existing if n.startswith(tuple(unreadable))}
    return names


def server_refs(
    host: Home, plugins: Iterable[str] | None = None
) -> tuple[list[ServerRef], list[PluginEntry]]:
    """The servers of ``plugins`` (default: every Claude-style plugin), and the plugins that
    cannot be read."""
    wanted = set(plugins) if plugins is not None else None
    refs: list[ServerRef] = []
    broken: list[PluginEntry] = []
    found: set[str] = set()
    for entry in discover(host):
        if wanted is not None and not ({entry.name, entry.plugin_dir.name} & wanted):
            continue
        found |= {entry.name, entry.plugin_dir.name}
        if entry.plugin is None:
            broken.append(entry)
            continue
        refs += [ServerRef(entry.plugin, server) for server in entry.plugin.servers]
    if wanted is not None and wanted - found:
        missing = ", ".join(sorted(map(repr, wanted - found)))
        raise PluginNotFound(f"no Claude-style plugin named {missing}")
    return refs, broken


def state_dir(host: Home, ref: ServerRef) -> Path:
    return host.paths.envs_dir / STATE_DIR / ref.pointer


def record_file(envs_dir: Path, plugin: str, server: str) -> Path:
    """Where a server's launch record is, from names alone (no plugin is read)."""
    return envs_dir / STATE_DIR / pointer_name(plugin, server) / RECORD


def record_path(host: Home, ref: ServerRef) -> Path:
    return state_dir(host, ref) / RECORD
