"""The command line of MCP-server plugins: ``ally mcp launch``, ``ally mcp config``, and what
``install``, ``update``, ``reinstall``, ``doctor``, ``list`` and ``bundle`` do for them.

``ally_core.cli`` calls :func:`add_mcp_commands` once with its sub-command group, and the
helpers below from its own commands; everything else lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..envs import Health
    from ..host import Host
    from .servers import ServerOutcome

# The modules that read Claude-style plugins and build their servers' envs (discovery,
# servers, specs: a few dozen attrs classes) are imported by the functions that use them,
# after a look for any such plugin: every ally command builds this module's parser, and
# most homes have none.

#: Where a Claude-style plugin keeps its manifest (manifest.CLAUDE_MANIFEST, as path parts).
_CLAUDE_MANIFEST = (".claude-plugin", "plugin.json")


def any_claude_plugin(host: Host) -> bool:
    """Whether a plugin dir holds a Claude-style plugin (a ``stat`` per plugin, nothing
    imported): when none does, the other commands need nothing from this package."""
    for root in host.paths.plugin_dirs:
        try:
            entries = list(os.scandir(root))
        except OSError:
            continue
        for entry in entries:
            if not entry.name.startswith(".") and os.path.isfile(
                os.path.join(entry.path, *_CLAUDE_MANIFEST)
            ):
                return True
    return False


__all__ = [
    "add_mcp_commands",
    "doctor_servers",
    "ensure_plugins",
    "mcp_subparsers",
    "print_servers",
    "remove_servers",
    "server_json",
    "split_names",
]

EXIT_OK, EXIT_BLOCKED = 0, 4


def mcp_subparsers(sub: Any) -> Any:
    """The sub-command group of ``ally mcp``, created on first use.

    Every module that adds an ``ally mcp`` command goes through this, so the group exists once
    whichever adds to it first.
    """
    parser = sub.choices.get("mcp")
    if parser is None:
        parser = sub.add_parser(
            "mcp",
            help="MCP: serve plugins' tools to MCP clients; start plugins' MCP servers",
            description="ally and the Model Context Protocol: serve plugins' tools to MCP "
            "clients (docs/mcp.md); start and configure the MCP servers Claude-style plugins "
            "declare (docs/mcp-plugins.md).",
        )
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return parser.add_subparsers(dest="mcp_command", metavar="ACTION", required=True)


def add_mcp_commands(sub: Any) -> None:
    """Register ``ally mcp launch`` and ``ally mcp config`` on the CLI's sub-command group."""
    from ..cli_options import _build_options, _verbosity  # the same on every command

    group = mcp_subparsers(sub)
    p = group.add_parser(
        "launch",
        help="start a plugin's MCP server (build its env first if needed)",
        description="Make the server's env ready (progress on stderr), then replace this "
        "process with the server. What a host runs instead of npx -y PKG or uvx PKG.",
    )
    p.set_defaults(func=cmd_launch)
    _verbosity(p)
    p.add_argument("plugin", help="the Claude-style plugin's name")
    p.add_argument("server", help="the server's name in its .mcp.json")
    p.add_argument("--offline", action="store_true", help="never use the network")
    p.add_argument("--installer", choices=["auto", "uv", "pip"], help="Python installer backend")
    p = group.add_parser(
        "config",
        help="print an mcpServers JSON for plugins' MCP servers",
        description="Make the servers' envs ready and print an mcpServers object whose "
        "commands point straight into them (for Code Ally, Claude Code or Claude Desktop).",
    )
    p.set_defaults(func=cmd_config)
    p.add_argument("plugins", nargs="*", metavar="PLUGIN", help="plugins (default: all)")
    p.add_argument(
        "--via-launch",
        action="store_true",
        help="start each server through ally (self-healing) instead of pointing into its env",
    )
    _verbosity(p)
    _build_options(p)


def cmd_launch(args: argparse.Namespace) -> int:
    from ..cli_common import _host
    from ..paths import AllyPaths
    from .discovery import record_file
    from .launch import host_arguments, launch, start_record
    from .warm_launch import read_record

    # A ready server starts from its record: no Host, no runtime, no plugin read.
    paths = AllyPaths.from_env(args.home, args.plugins_dir or ())
    record = read_record(str(record_file(paths.envs_dir, args.plugin, args.server)))
    if record is not None:
        return start_record(record, f"{args.plugin}/{args.server}")
    return launch(
        _host(args),
        args.plugin,
        args.server,
        builder_args=host_arguments(
            args.home, args.plugins_dir or [], offline=args.offline, installer=args.installer
        ),
    )


def _ally_args(args: argparse.Namespace, host: Host) -> list[str]:
    """``ally`` options another process needs to see this home, whatever its environment."""
    out = []
    if args.home or os.environ.get("ALLY_HOME"):
        out += ["--home", str(host.paths.home)]
    for directory in args.plugins_dir or []:
        out += ["--plugins-dir", os.path.abspath(directory)]
    return out


def cmd_config(args: argparse.Namespace) -> int:
    from ..cli_common import _host, _reporter, _say
    from .config import config_document

    host = _host(args)
    from .discovery import server_refs
    from .servers import broken_outcome, ensure_servers

    refs, unreadable = server_refs(host, args.plugins or None)
    broken = [broken_outcome(b) for b in unreadable]
    reporter = _reporter(args)
    try:
        outcomes = ensure_servers(host, refs, progress=reporter)
    finally:
        if reporter is not None:
            reporter.close()
    document = config_document(
        host, outcomes, via_launch=args.via_launch, ally_args=_ally_args(args, host)
    )
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    problems = [*broken, *(o for o in outcomes if not o.ready)]
    for outcome in problems:
        _say(f"ally: {outcome.label}: {outcome.reason}", file=sys.stderr)
    return EXIT_BLOCKED if problems else EXIT_OK


# ---------------------------------------------------------------------------------------------
# what the other commands do for Claude-style plugins


def split_names(host: Host, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(plugin.json plugins, Claude-style plugins)`` among ``names``; a name that is both
    (a directory with both manifests) is in both lists, an unknown one in the first (whose
    command reports it)."""
    if not names or not any_claude_plugin(host):
        return list(names), []
    from .discovery import claude_plugin_names

    claude = claude_plugin_names(host)
    if not claude:
        return list(names), []
    ally = {n for s in host.discover() for n in (s.name, s.plugin_dir.name)}
    return [n for n in names if n in ally or n not in claude], [n for n in names if n in claude]


def ensure_plugins(
    host: Host,
    plugins: Optional[Iterable[str]],
    *,
    force: bool = False,
    upgrade: bool = False,
    progress: Any = None,
) -> list[ServerOutcome]:
    """Make every server of ``plugins`` (``None``: of every Claude-style plugin) ready."""
    if plugins is None and not any_claude_plugin(host):
        return []
    from .discovery import server_refs
    from .servers import broken_outcome, ensure_servers

    refs, broken = server_refs(host, plugins)
    return [broken_outcome(b) for b in broken] + ensure_servers(
        host, refs, force=force, upgrade=upgrade, progress=progress
    )


def remove_servers(host: Host, plugins: Sequence[str]) -> list[tuple[str, bool]]:
    """Remove the env pointers of every server of ``plugins`` (never their source, never an
    env another server or plugin shares): ``(plugin/server, whether one existed)`` each."""
    if not plugins:
        return []
    from .discovery import server_refs

    refs, _broken = server_refs(host, plugins)
    return [(ref.label, host.store.unpublish(ref.pointer)) for ref in refs]


def status_plugins(host: Host) -> list[ServerOutcome]:
    """Every server's state, building nothing (``ally list``)."""
    if not any_claude_plugin(host):
        return []
    from .discovery import server_refs
    from .servers import broken_outcome, server_status

    refs, broken = server_refs(host)
    return [broken_outcome(b) for b in broken] + [server_status(host, ref) for ref in refs]


def server_json(outcome: ServerOutcome) -> dict[str, Any]:
    launcher = outcome.launcher
    marker = outcome.marker
    return {
        "plugin": outcome.plugin,
        "server": outcome.server,
        "dir": str(outcome.plugin_dir),
        "status": outcome.status,
        "reason": outcome.reason or None,
        "transport": outcome.transport,
        "launcher": launcher.kind if launcher else None,
        "packages_declared": list(launcher.packages) if launcher else [],
        "env": str(marker.env.path) if marker else None,
        "packages": dict(outcome.packages),
        "action": outcome.action,
        "command": outcome.record["argv"] if outcome.record else None,
    }


def print_servers(outcomes: Sequence[ServerOutcome]) -> None:
    from ..cli_common import _say  # names and reasons come from plugins: shown escaped

    extra = {
        "built": " (installed)",
        "shared": " (shared env)",
        "repaired": " (repaired)",
        "updated": " (updated)",
    }
    for o in outcomes:
        if o.ready:
            what = o.launcher.describe() if o.launcher else o.reason or o.transport
            pinned = ""
            if o.launcher is not None and o.launcher.pinned and o.marker is not None:
                names = o.launcher.package_names()
                versions = [f"{n} {o.packages[n]}" for n in names if n in o.packages]
                pinned = f" [{', '.join(versions)}]" if versions else ""
            _say(f"\u2713 {o.label}: MCP server, {what}{pinned}{extra.get(o.action, '')}")
        elif o.status == "pending":
            _say(f"\u2026 {o.label}: {o.reason}")
        else:
            _say(f"\u2717 {o.label}: {o.reason}")


def doctor_servers(
    host: Host, plugins: Optional[Iterable[str]], *, fix: bool, progress: Any = None
) -> list[tuple[ServerOutcome, Health]]:
    """Deep-check each server's env (and that its command is there); ``fix`` rebuilds."""
    if plugins is None and not any_claude_plugin(host):
        return []
    from ..envs import Health, Problem
    from .discovery import server_refs
    from .servers import broken_outcome, ensure_server, server_status
    from .specs import server_spec

    refs, broken = server_refs(host, plugins)
    reports = [(o, Health((Problem(o.reason, False),))) for o in map(broken_outcome, broken)]
    for ref in refs:
        outcome = server_status(host, ref)
        health = Health()
        if outcome.status == "pending":
            health = Health((Problem(outcome.reason),))
        elif not outcome.ready:
            health = Health((Problem(outcome.reason, outcome.launcher is not None),))
        elif outcome.marker is not None and outcome.launcher is not None:
            import attrs

            spec = server_spec(host, ref, outcome.launcher)
            if spec is not None:
                spec = attrs.evolve(spec, env_dir=outcome.marker.env.path)
                health = (
                    host.hook.health_check(spec=spec, env=outcome.marker.env, deep=True) or Health()
                )
        if fix and not health.ok and any(p.repairable for p in health.problems):
            outcome = ensure_server(host, ref, force=True, progress=progress)
            if outcome.ready:
                outcome.action = "repaired"
        reports.append((outcome, health))
    return reports
