"""Claude-style plugins: ``.claude-plugin/plugin.json`` and the MCP servers they declare.

A plugin directory holds ``.claude-plugin/plugin.json`` (``name``; optional ``version``,
``description``, ``author``) and declares MCP servers in ``.mcp.json`` at its root, in either
form hosts read::

    {"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"]}}}
    {"time": {"command": "uvx", "args": ["mcp-server-time"]}}          (Code Ally's bare map)

or in ``plugin.json``'s ``mcpServers``: an object of servers, the path of another such file
inside the plugin, or a list of either. Every problem is reported with its file and JSON path
(``.mcp.json: $.mcpServers.time.args: expected a list of strings``). A server whose entry is
invalid is kept with its problems, so that the plugin's other servers still start.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import attrs

from ..errors import ManifestError, PluginNotFound
from ..paths import PLUGIN_NAME_RE, contained_path

__all__ = [
    "CLAUDE_MANIFEST",
    "MCP_CONFIG",
    "ClaudePlugin",
    "McpServer",
    "is_claude_plugin",
    "load_claude_plugin",
]

#: The manifest of a Claude-style plugin, relative to its directory.
CLAUDE_MANIFEST = ".claude-plugin/plugin.json"
#: The default MCP server file, at the plugin's root.
MCP_CONFIG = ".mcp.json"
#: Server names that can be used as they are in store names; others are hashed.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_TRANSPORTS = {
    "stdio": "stdio",
    "http": "http",
    "https": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamablehttp": "http",
    "sse": "sse",
}


@attrs.frozen
class McpServer:
    """One server of a plugin, as declared (nothing expanded yet)."""

    name: str
    #: ``"stdio"``, ``"http"`` or ``"sse"``.
    transport: str = "stdio"
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = attrs.field(factory=dict)
    #: The file that declares it, relative to the plugin (``.mcp.json``, …).
    source: str = MCP_CONFIG
    #: Its JSON path in that file (``$.mcpServers.time``).
    path: str = ""
    #: The entry as written, for ``ally mcp config`` to pass on what ally does not handle.
    raw: Mapping[str, Any] = attrs.field(factory=dict, repr=False)
    #: What is wrong with the entry (each with its JSON path); empty when it is valid.
    problems: tuple[str, ...] = ()

    @property
    def slug(self) -> str:
        """The name as a store name (see :func:`server_slug`)."""
        return server_slug(self.name)

    def error(self, plugin: str) -> ManifestError:
        return ManifestError(plugin, self.source, list(self.problems))


@attrs.frozen
class ClaudePlugin:
    """A Claude-style plugin and its MCP servers."""

    name: str
    plugin_dir: Path
    version: Optional[str] = None
    description: Optional[str] = None
    author: Optional[str] = None
    servers: tuple[McpServer, ...] = ()
    #: Absolute paths of every file the servers were read from (and of the default
    #: ``.mcp.json``, which may not exist): a launch record is valid while they are unchanged.
    files: tuple[str, ...] = ()

    def server(self, name: str) -> McpServer:
        for server in self.servers:
            if server.name == name:
                return server
        known = ", ".join(s.name for s in self.servers) or "none"
        raise PluginNotFound(f"{self.name}: no MCP server named {name!r} (servers: {known})")


def server_slug(name: str) -> str:
    """A server's name as a store name: itself when it is safe, else a hash of it."""
    if _SAFE_NAME.fullmatch(name):
        return name
    import hashlib

    return "x" + hashlib.sha256(name.encode()).hexdigest()[:12]


def is_claude_plugin(plugin_dir: Path) -> bool:
    return (plugin_dir / CLAUDE_MANIFEST).is_file()


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _read_json(path: Path, plugin: str, file: str) -> Any:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ManifestError(plugin, file, [f"cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(plugin, file, [f"not UTF-8 ({exc.reason})"]) from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            plugin, file, [f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise ManifestError(plugin, file, [f"invalid JSON: {exc}"]) from exc


def _string_map(value: Any, where: str, problems: list[str]) -> dict[str, str]:
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object of strings, got {_json_type(value)}")
        return {}
    out = {}
    for key, item in value.items():
        if isinstance(item, str):
            out[key] = item
        else:
            problems.append(f"{where}.{key}: expected a string, got {_json_type(item)}")
    return out


def parse_server(name: str, entry: Any, *, source: str, path: str) -> McpServer:
    """One server entry, with every problem found (never raises)."""
    if not isinstance(entry, dict):
        problem = f"{path}: expected an object, got {_json_type(entry)}"
        return McpServer(name, source=source, path=path, problems=(problem,))
    problems: list[str] = []
    kind = entry.get("type", entry.get("transport"))
    transport: Optional[str]
    if kind is None:
        transport = "http" if "url" in entry and "command" not in entry else "stdio"
    elif not isinstance(kind, str):
        problems.append(f"{path}.type: expected a string, got {_json_type(kind)}")
        transport = "stdio"
    else:
        transport = _TRANSPORTS.get(kind.strip().lower())
        if transport is None:
            problems.append(f"{path}.type: unknown transport {kind!r} (stdio, http or sse)")
            transport = "stdio"
    command, args, env = "", (), {}
    if transport == "stdio":
        value = entry.get("command")
        if not isinstance(value, str) or not value.strip():
            problems.append(
                f"{path}.command: required field missing"
                if value is None
                else f"{path}.command: expected a non-empty string, got "
                + (repr(value) if isinstance(value, str) else _json_type(value))
            )
        else:
            command = value
        raw_args = entry.get("args", [])
        if not isinstance(raw_args, list) or not all(isinstance(a, str) for a in raw_args):
            problems.append(f"{path}.args: expected a list of strings")
        else:
            args = tuple(raw_args)
        if "env" in entry:
            env = _string_map(entry["env"], f"{path}.env", problems)
        for part in (command, *args, *env.values()):
            if "\0" in part:
                problems.append(f"{path}: contains a NUL byte")
                break
    elif not isinstance(entry.get("url"), str):
        problems.append(f"{path}.url: required for a {transport} server")
    return McpServer(
        name,
        transport=transport,
        command=command,
        args=args,
        env=env,
        source=source,
        path=path,
        raw=entry,
        problems=tuple(problems),
    )


def parse_servers(data: Any, *, source: str, plugin: str, prefix: str = "$") -> list[McpServer]:
    """The servers of one decoded ``.mcp.json`` (either form) or ``mcpServers`` object."""
    if not isinstance(data, dict):
        raise ManifestError(
            plugin, source, [f"{prefix}: expected an object, got {_json_type(data)}"]
        )
    if "mcpServers" in data and prefix == "$":
        servers = data["mcpServers"]
        where = "$.mcpServers"
        if not isinstance(servers, dict):
            raise ManifestError(
                plugin, source, [f"{where}: expected an object, got {_json_type(servers)}"]
            )
    else:
        servers, where = data, prefix
    return [
        parse_server(name, entry, source=source, path=f"{where}.{name}")
        for name, entry in servers.items()
    ]


def _manifest_fields(data: Any, label: str) -> tuple[str, dict[str, Optional[str]]]:
    """The plugin's name and metadata from ``.claude-plugin/plugin.json``; raises with all
    problems."""
    if not isinstance(data, dict):
        raise ManifestError(
            label, CLAUDE_MANIFEST, [f"$: expected an object, got {_json_type(data)}"]
        )
    problems = []
    name = data.get("name")
    if name is None:
        problems.append("$.name: required field missing")
    elif not isinstance(name, str):
        problems.append(f"$.name: expected a string, got {_json_type(name)}")
    elif not PLUGIN_NAME_RE.fullmatch(name):
        problems.append(
            f"$.name: {name!r} is not a valid plugin name "
            "(start with a letter or digit; then letters, digits, '.', '_', '-')"
        )
    meta: dict[str, Optional[str]] = {}
    for key in ("version", "description"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            problems.append(f"$.{key}: expected a string, got {_json_type(value)}")
        meta[key] = value if isinstance(value, str) else None
    author = data.get("author")
    if isinstance(author, dict):
        who = author.get("name")
        if not isinstance(who, str):
            problems.append("$.author.name: expected a string")
        meta["author"] = who if isinstance(who, str) else None
    elif author is not None and not isinstance(author, str):
        problems.append(f"$.author: expected an object or a string, got {_json_type(author)}")
    else:
        meta["author"] = author
    servers = data.get("mcpServers")
    if servers is not None and not isinstance(servers, (dict, str, list)):
        problems.append(
            f"$.mcpServers: expected an object, a path or a list, got {_json_type(servers)}"
        )
    if problems:
        shown = name if isinstance(name, str) and name else label
        raise ManifestError(shown, CLAUDE_MANIFEST, problems)
    assert isinstance(name, str)
    return name, meta


def load_claude_plugin(plugin_dir: Path) -> ClaudePlugin:
    """Read a Claude-style plugin; raise :class:`ManifestError` when its manifest or a server
    file cannot be read at all (a bad server entry only marks that server)."""
    data = _read_json(plugin_dir / CLAUDE_MANIFEST, plugin_dir.name, CLAUDE_MANIFEST)
    name, meta = _manifest_fields(data, plugin_dir.name)
    files = [str(plugin_dir / CLAUDE_MANIFEST), str(plugin_dir / MCP_CONFIG)]
    servers: list[McpServer] = []
    default = plugin_dir / MCP_CONFIG
    if default.is_file():
        servers += parse_servers(
            _read_json(default, name, MCP_CONFIG), source=MCP_CONFIG, plugin=name
        )
    declared = data.get("mcpServers")
    items = declared if isinstance(declared, list) else [declared] if declared is not None else []
    for i, item in enumerate(items):
        where = f"$.mcpServers[{i}]" if isinstance(declared, list) else "$.mcpServers"
        if isinstance(item, dict):
            servers += parse_servers(item, source=CLAUDE_MANIFEST, plugin=name, prefix=where)
        elif isinstance(item, str):
            path = contained_path(plugin_dir, item)
            if path is None:
                raise ManifestError(
                    name, CLAUDE_MANIFEST, [f"{where}: {item!r} is outside the plugin directory"]
                )
            if path == default:
                continue
            if not path.is_file():
                raise ManifestError(name, CLAUDE_MANIFEST, [f"{where}: {item!r} does not exist"])
            files.append(str(path))
            servers += parse_servers(_read_json(path, name, item), source=item, plugin=name)
        else:
            raise ManifestError(
                name,
                CLAUDE_MANIFEST,
                [f"{where}: expected an object or a path, got {_json_type(item)}"],
            )
    index: dict[str, int] = {}
    unique: list[McpServer] = []
    for server in servers:
        if server.name in index:
            first = unique[index[server.name]]
            unique[index[server.name]] = attrs.evolve(
                first,
                problems=(
                    *first.problems,
                    f"{server.path}: the server {server.name!r} is declared twice "
                    f"({first.source} and {server.source})",
                ),
            )
            continue
        index[server.name] = len(unique)
        unique.append(server)
    return ClaudePlugin(
        name,
        plugin_dir,
        version=meta.get("version"),
        description=meta.get("description"),
        author=meta.get("author"),
        servers=tuple(unique),
        files=tuple(files),
    )
