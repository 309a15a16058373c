"""``ally list``, ``install``, ``update``, ``reinstall``, ``remove``, ``gc``, ``doctor`` and
``bundle``: the commands that look after plugins' envs (and their MCP servers').
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from .cli_common import (
    EXIT_BLOCKED,
    EXIT_OK,
    _debug_causes,
    _emit,
    _host,
    _outcome_json,
    _print_outcomes,
    _quick_home,
    _reporter,
    _say,
    _size,
    _Tee,
)
from .errors import ConfigError, PluginNotFound

__all__ = [
    "cmd_bundle",
    "cmd_doctor",
    "cmd_gc",
    "cmd_install",
    "cmd_list",
    "cmd_reinstall",
    "cmd_remove",
    "cmd_update",
    "is_archive",
]


def cmd_list(args: argparse.Namespace) -> int:
    from .mcp_plugins.commands import print_servers, status_plugins

    host = _host(args)
    outcomes = host.status()
    _debug_causes(args, outcomes)
    servers = status_plugins(host)
    out = sys.stdout = _Tee(sys.stdout)
    try:
        if args.json:
            _emit({"plugins": [_outcome_json(o) for o in outcomes], **_servers_json(servers)})
        elif not outcomes and not servers:
            _say("no plugins found")
        else:
            _print_outcomes(outcomes, args, host)
            print_servers(servers)
    finally:
        sys.stdout = out.out
    if not servers and not (args.verbose or args.debug) and _quick_home(args):
        from .run_records import save_list_record

        # The next `ally list` of this home prints it on the quick path (.quick_run).
        save_list_record(host, outcomes, json=args.json, text="".join(out.kept))
    return EXIT_OK


def _servers_json(servers: Sequence[Any]) -> dict[str, Any]:
    """The ``mcp_servers`` key of an output: only when Claude-style plugins were involved."""
    from .mcp_plugins.commands import server_json

    return {"mcp_servers": [server_json(o) for o in servers]} if servers else {}


def _load(
    args: argparse.Namespace,
    loader: Callable[[Any, Any], list[Any]],
    servers: Optional[list[Any]] = None,
    host: Any = None,
) -> int:
    """Run ``loader(host, reporter)`` and print its outcomes (then, if the loader filled
    ``servers``, the MCP servers' outcomes)."""
    host = host or _host(args)
    reporter = _reporter(args)
    servers = servers if servers is not None else []
    try:
        outcomes = loader(host, reporter)
    finally:
        if reporter is not None:
            reporter.close()
    _debug_causes(args, outcomes)
    if args.json:
        _emit({"plugins": [_outcome_json(o) for o in outcomes], **_servers_json(servers)})
    else:
        from .mcp_plugins.commands import print_servers

        _print_outcomes(outcomes, args, host)
        print_servers(servers)
    # A plugin kept on its previous env is usable, but not what was asked for.
    done = all(o.ready and not o.stale and o.action != "failed" for o in outcomes)
    return EXIT_OK if done and all(s.ready for s in servers) else EXIT_BLOCKED


def _looks_like_path(text: str) -> bool:
    return (
        os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith(("~", "."))
    )


def is_archive(path: Path) -> bool:
    """Whether ``path`` is a tar archive (any compression, any file name): what an ally
    bundle is. Checking the archive itself (bundle.json, hashes…) is install_bundle's job."""
    import tarfile

    try:
        with tarfile.open(path, "r:*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False


def _install_target(host: Any, arg: str, *, force: bool = False) -> str:
    """The plugin name ``ally install ARG`` means: a name, or a directory or bundle path
    (a directory is remembered, a bundle unpacked into the plugins dir)."""
    path = Path(arg).expanduser()
    if not _looks_like_path(arg):
        sources = host.discover()
        known = {s.name for s in sources} | {s.plugin_dir.name for s in sources}
        if arg in known or not os.path.lexists(path):
            return arg
    if path.is_dir():
        return str(host.add_plugin_dir(path).name)
    if path.is_file() and path.name == "plugin.json":
        return str(host.add_plugin_dir(path.parent).name)
    if path.is_file():
        if not is_archive(path):
            raise ConfigError(
                f"{arg}: neither a plugin directory (with plugin.json) nor an ally bundle "
                "(a tar archive with bundle.json)"
            )
        from .bundle import install_bundle

        done = install_bundle(host, path, force=force)
        if done.backup is not None:
            moved = f"the previous {done.plugin_dir} was moved to {done.backup}"
            _say(f"ally: {done.name}: {moved}", file=sys.stderr)
        return str(done.name)
    raise PluginNotFound(f"{arg}: no such plugin, directory or bundle")


def cmd_install(args: argparse.Namespace) -> int:
    from .mcp_plugins.commands import ensure_plugins, split_names

    host = _host(args)
    targets = [_install_target(host, arg, force=args.force) for arg in args.names]
    servers: list[Any] = []

    def install(host: Any, rep: Any) -> list[Any]:
        # Claude-style plugins' MCP servers too (all of them when no name is given).
        names, claude = split_names(host, targets)
        outcomes = host.load(names or None, progress=rep) if names or not targets else []
        servers.extend(
            ensure_plugins(host, claude or None, progress=rep) if claude or not targets else []
        )
        return list(outcomes)

    return _load(args, install, servers, host=host)


def _each(method: str, **kw: Any) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from .mcp_plugins.commands import ensure_plugins, split_names

        if bool(args.names) == args.all:
            raise ConfigError(
                f"ally {args.command}: give plugin names or --all"
                if not args.names
                else f"ally {args.command}: give plugin names or --all, not both"
            )
        servers: list[Any] = []

        def each(host: Any, rep: Any) -> list[Any]:
            if args.all:
                names = [s.name for s in host.discover()]
                servers.extend(ensure_plugins(host, None, progress=rep, **kw))
            else:
                names, claude = split_names(host, args.names)
                if claude:
                    servers.extend(ensure_plugins(host, claude, progress=rep, **kw))
            return [getattr(host, method)(name, progress=rep, **kw) for name in names]

        return _load(args, each, servers)

    return run


def _check_removable(host: Any, names: Sequence[str]) -> None:
    """Every name is a plugin, or the env pointer of one that is gone; else a guess."""
    from .discovery import not_found_message
    from .paths import check_plugin_name

    sources = None
    for name in names:
        check_plugin_name(name, source="argument")
        if host.store.current(name) is not None or os.path.lexists(host.store.pointer(name)):
            continue
        if any(d.name == name for d in host.linked_dirs()):
            continue  # a remembered plugin directory: remove forgets it
        sources = host.discover() if sources is None else sources
        if not any(s.name == name for s in sources):
            names_known = [*sources, *_gone_plugins(host, sources)]
            raise PluginNotFound(not_found_message(name, names_known, host.paths.plugin_dirs))


def _gone_plugins(host: Any, sources: Sequence[Any]) -> list[Any]:
    """Stand-ins (name only) for plugins that are gone but still have an env pointer."""
    from .discovery import PluginSource

    present = {s.name for s in sources}
    return [
        PluginSource(host.paths.envs_dir / n, None)
        for n in sorted(host.store.pointers())
        if n not in present
    ]


def cmd_remove(args: argparse.Namespace) -> int:
    from .mcp_plugins.commands import remove_servers, split_names

    host = _host(args)
    names, claude = split_names(host, args.names)
    _check_removable(host, names)
    done = [(name, host.remove(name)) for name in names]
    gone = remove_servers(host, claude)
    if args.json:
        _emit(
            {
                "envs": [
                    {"name": name, "removed": bool(removed), "freed_bytes": removed.freed}
                    for name, removed in done
                ]
                + [{"name": label, "removed": r, "freed_bytes": 0} for label, r in gone]
            }
        )
        return EXIT_OK
    for name, removed in done:
        if removed.deleted:
            _say(f"removed the env of {name} (freed {_size(removed.freed)})")
        elif removed:
            _say(f"removed the env of {name}")
        else:
            _say(f"{name} has no env")
        for env_dir in removed.shared:
            _say(f"    kept {env_dir}: other plugins use it")
        for plugin_dir in removed.forgot:
            _say(f"    forgot the plugin directory {plugin_dir} (its files are untouched)")
    for label, removed_server in gone:
        _say(f"removed the env of {label}" if removed_server else f"{label} has no env")
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    removed = _host(args).gc(dry_run=args.dry_run)
    total = sum(size for _, size, _ in removed)
    if args.json:
        _emit(
            {
                "removed": [{"path": str(p), "bytes": s, "why": w} for p, s, w in removed],
                "freed_bytes": total,
                "dry_run": args.dry_run,
            }
        )
        return EXIT_OK
    for path, size, why in removed:
        _say(f"{'would remove' if args.dry_run else 'removed'} {path} ({_size(size)}): {why}")
    _say(f"{'would free' if args.dry_run else 'freed'} {_size(total)}")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    from .mcp_plugins.commands import doctor_servers, server_json, split_names

    host = _host(args)
    reporter = _reporter(args) if args.fix else None
    names, claude = split_names(host, args.names)
    try:
        reports = (
            host.doctor(names or None, fix=args.fix, progress=reporter)
            if names or not args.names
            else []
        )
        servers = (
            doctor_servers(host, claude or None, fix=args.fix, progress=reporter)
            if claude or not args.names
            else []
        )
    finally:
        if reporter is not None:
            reporter.close()
    if args.json:
        _emit(
            {
                "plugins": [
                    {
                        **_outcome_json(o),
                        "healthy": h.ok,
                        "problems": [
                            {"message": p.message, "repairable": p.repairable} for p in h.problems
                        ],
                    }
                    for o, h in reports
                ],
                **(
                    {"mcp_servers": [{**server_json(o), **_health_json(h)} for o, h in servers]}
                    if servers
                    else {}
                ),
            }
        )
    else:
        for outcome, health in [*reports, *servers]:
            mark = "\u2713" if health.ok else "\u2717"
            fixed = " \u2192 repaired" if outcome.action == "repaired" else ""
            name = getattr(outcome, "label", None) or outcome.name
            _say(f"{mark} {name}: {health.describe()}{fixed}")
    bad = [o for o, h in [*reports, *servers] if not h.ok and o.action != "repaired"]
    return EXIT_BLOCKED if bad else EXIT_OK


def _health_json(health: Any) -> dict[str, Any]:
    return {
        "healthy": health.ok,
        "problems": [{"message": p.message, "repairable": p.repairable} for p in health.problems],
    }


def cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import make_bundle
    from .mcp_plugins.commands import split_names

    host = _host(args)
    reporter = _reporter(args)
    try:
        if split_names(host, [args.name])[1]:
            from .mcp_plugins.bundles import make_server_bundle

            output = Path(args.output) if args.output else None
            path = make_server_bundle(host, args.name, output, progress=reporter)
        else:
            path = make_bundle(
                host, args.name, Path(args.output) if args.output else None, progress=reporter
            )
    finally:
        if reporter is not None:
            reporter.close()
    if args.json:
        _emit({"plugin": args.name, "path": str(path.resolve()), "bytes": path.stat().st_size})
    else:
        _say(str(path))
    return EXIT_OK


cmd_update = _each("ensure", upgrade=True)
cmd_reinstall = _each("ensure", force=True)
