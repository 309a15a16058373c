"""``ally``: a thin command line over :class:`ally_core.Host`.

Every ``--json`` output is an object with ``"ally": JSON_VERSION`` so that non-Python hosts
can rely on its shape (documented in docs/reference/cli.md). Errors are one line on stderr and
a non-zero exit code; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional

from .__about__ import __version__
from .cli_common import (
    _HIDDEN,
    JSON_VERSION,
    _debug_causes,
    _emit,
    _hide,
    _logging,
    _note,
    _outcome_json,
    _print_outcomes,
    _print_traceback,
    _reporter,
    _say,
    _size,
)
from .cli_exec import run_in_env
from .cli_options import (
    _build_options,
    _json_flag,
    _Parser,
    _setting_arg,
    _subcommands,
    _verbosity,
)
from .errors import AllyError, ConfigError, PluginNotFound, ToolError

__all__ = ["JSON_VERSION", "main"]


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_TOOL_FAILED, EXIT_BLOCKED = 0, 1, 2, 3, 4


def _host(args: argparse.Namespace) -> Any:
    from .host import Host

    settings: dict[str, Any] = {}
    if getattr(args, "offline", False):
        settings["offline"] = True
    if getattr(args, "installer", None):
        settings["installer"] = args.installer
    if getattr(args, "jobs", None) is not None:
        settings["jobs"] = args.jobs
    return Host(args.home, plugin_dirs=args.plugins_dir or (), settings=settings)


def cmd_exec(args: argparse.Namespace) -> int:
    """``ally exec NAME -- CMD`` (:mod:`ally_core.cli_exec`: given its Host, it stays out
    of the imports of the modules that take one)."""
    return run_in_env(args, lambda: _host(args))


def cmd_list(args: argparse.Namespace) -> int:
    from .mcp_plugins.commands import print_servers, status_plugins

    host = _host(args)
    outcomes = host.status()
    _debug_causes(args, outcomes)
    servers = status_plugins(host)
    if args.json:
        _emit({"plugins": [_outcome_json(o) for o in outcomes], **_servers_json(servers)})
    elif not outcomes and not servers:
        _say("no plugins found")
    else:
        _print_outcomes(outcomes, args, host)
        print_servers(servers)
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


def _read_input(args: argparse.Namespace) -> Any:
    text = args.input
    if text is None and not sys.stdin.isatty():
        text = sys.stdin.read()
    if not text or not text.strip():
        return {}
    try:
        return json.loads(text)
    except RecursionError:
        raise ToolError("--input is nested too deeply", error_type="invalid_input") from None
    except ValueError as exc:
        raise ToolError(f"--input is not valid JSON: {exc}", error_type="invalid_input") from None


def _config_pairs(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config expects KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def _form_answerer(args: argparse.Namespace) -> Callable[[Any], Any]:
    """How ``ally run`` answers an interactive tool's forms: ``--form-response``, else field
    by field on a terminal, else a cancel that says so."""
    from .forms import merged_values

    given: Optional[dict[str, Any]] = None
    if args.form_response is not None:
        try:
            given = json.loads(args.form_response)
        except ValueError as exc:
            raise ConfigError(f"--form-response is not valid JSON: {exc}") from None
        if not isinstance(given, dict):
            raise ConfigError("--form-response must be a JSON object")

    def answer(request: Any) -> Any:
        if given is not None:
            return merged_values(request, given)
        if sys.stdin.isatty() and sys.stderr.isatty():
            return _ask_form(request)
        _say(
            f"ally: {request.plugin}: tool {request.tool!r} asked the form "
            f"{request.title!r}; cancelled (no terminal; answer it with --form-response JSON)",
            file=sys.stderr,
        )
        return None

    return answer


def _ask_form(request: Any) -> Any:
    """Ask each field of ``request`` on the terminal; ``None`` when the user cancels.

    Prompts go to stderr and answers come from stdin: stdout carries only the tool's reply.
    A choice is answered by its number or its value (several, comma-separated, for a
    ``multiSelect`` field); a ``label`` field is shown, not asked.
    """
    import attrs

    from .errors import ToolInputError
    from .forms import coerce_field, merged_values, validate_form_values
    from .text import printable

    values = merged_values(request)
    _say(
        f"{request.title}" + (f": {request.description}" if request.description else ""),
        file=sys.stderr,
    )
    prefix = f"{request.plugin}: form {request.title!r}: "
    for field in request.fields:
        name = field["name"]
        label = field.get("label") or name
        if field.get("type") == "label":
            text = field.get("description")
            _say(f"{label}: {text}" if isinstance(text, str) and text else label, file=sys.stderr)
            continue
        choices = field.get("choices") if field.get("type") == "choice" else None
        several = isinstance(choices, list) and field.get("multiSelect") is True
        if isinstance(choices, list):
            for i, choice in enumerate(choices, 1):
                shown = (
                    choice.get("label", choice.get("value")) if isinstance(choice, dict) else choice
                )
                _say(f"  {i}. {shown}", file=sys.stderr)
        # This field alone: the others are checked when their turn comes.
        one_field = attrs.evolve(request, schema={**request.schema, "fields": [field]})
        while True:
            default = values.get(name)
            if isinstance(default, list):
                default = ", ".join(str(d) for d in default)
            prompt = f"{label}" + (f" [{default}]" if default not in (None, "") else "") + ": "
            sys.stderr.write(printable(prompt))
            sys.stderr.flush()
            line = sys.stdin.readline()
            if not line:
                return None
            typed = line.rstrip("\r\n")
            value: Any = typed if typed else values.get(name)
            if isinstance(choices, list) and isinstance(value, str):
                picks = [p.strip() for p in value.split(",")] if several else [value]
                picked = [_choice_of(choices, p) for p in picks if p]
                value = picked if several else (picked[0] if picked else value)
            value = coerce_field(field, value)
            try:
                validate_form_values(one_field, {name: value})
            except ToolInputError as exc:
                _say(f"  {str(exc).removeprefix(prefix)}", file=sys.stderr)
                continue
            values[name] = value
            break
    return values


def _choice_of(choices: list[Any], typed: str) -> Any:
    """The value of the choice numbered ``typed``, else ``typed`` itself."""
    if typed.isdigit() and 0 < int(typed) <= len(choices):
        pick = choices[int(typed) - 1]
        return pick.get("value") if isinstance(pick, dict) else pick
    return typed


def _tool_result_json(result: Any) -> dict[str, Any]:
    return {
        "success": result.success,
        "reply": result.reply,
        "data": result.data,
        "message": result.message,
        "result": result.result,
        "error": result.error,
        "error_type": result.error_type,
        "exit_code": result.exit_code,
        "logs": result.logs,
        "stderr": result.stderr,
        "duration": round(result.duration, 6),
    }


def cmd_run(args: argparse.Namespace) -> int:
    host = _host(args)
    arguments = _read_input(args)
    reporter = _reporter(args)
    try:
        outcome = host.ensure(args.plugin, progress=reporter)
    finally:
        if reporter is not None:
            reporter.close()
    _debug_causes(args, [outcome])
    if not outcome.ready:
        raise PluginNotFound(f"{outcome.name}: blocked: {outcome.reason}")
    if outcome.reason:
        _note(args, f"warning: {outcome.name}: {outcome.reason}")
    tool = outcome.tool(args.tool)
    pairs = _config_pairs(args.config)
    from .plugin_config import secret_values

    _hide(*secret_values(outcome.manifest, pairs))

    def show_stderr(stream: str, text: str) -> None:
        from .text import printable

        if stream == "stderr":
            # Line breaks and tabs as they are; every other control character escaped.
            shown = "\n".join(
                "\t".join(map(printable, line.split("\t"))) for line in text.split("\n")
            )
            sys.stderr.write(shown)
            sys.stderr.flush()

    result = tool.call(
        arguments,
        timeout=args.timeout,
        config=pairs,
        on_form=_form_answerer(args) if tool.spec.interactive else None,
        on_output=show_stderr if args.verbose else None,
    ).masked()
    if args.json:
        _emit({"plugin": outcome.name, "tool": tool.name, **_tool_result_json(result)})
    else:
        print(json.dumps(result.to_json(), indent=2 if sys.stdout.isatty() else None))
        if not result.success:
            _note(args, _failure_line(outcome.name, tool.name, result.error))
    return EXIT_OK if result.success else EXIT_TOOL_FAILED


def _failure_line(plugin: str, tool: str, error: Optional[str]) -> str:
    """What ``ally run`` says on stderr when a call failed: the plugin and tool, once."""
    label = f"{plugin}: tool {tool!r}"
    text = " ".join((error or "failed").split())
    return text if text.startswith(label) else f"{label} failed: {text}"


def _exec_options(args: argparse.Namespace) -> None:
    """``ally exec NAME --json -v -- CMD``: the options between the name and ``--`` are
    ally's (everything after the plugin's name reaches ``args.argv`` unparsed)."""
    if "--" not in args.argv or not args.argv[0].startswith("-") or args.argv[0] == "--":
        return
    split = args.argv.index("--")
    head, tail = args.argv[:split], args.argv[split:]
    _subcommands(build_parser())["exec"].parse_args([*head, args.plugin], namespace=args)
    args.argv = tail


def cmd_runtimes(args: argparse.Namespace) -> int:
    host = _host(args)
    rows: dict[str, list[str]] = {}
    for value, plugin in host.runtimes().items():
        rows.setdefault(plugin, []).append(value)
    broken = host.dispatch.broken()
    unknown = host.dispatch.unknown_hooks()
    from .plugin_manager import runtime_distributions

    dists = runtime_distributions(host.index)
    for name in [*rows, *broken]:
        dists.setdefault(name, f"ally-core {__version__} (built in)")
    if args.json:
        _emit(
            {
                "runtimes": [
                    {"name": n, "serves": v, "distribution": dists[n]} for n, v in rows.items()
                ],
                "broken": [
                    {"name": n, "reason": why, "distribution": dists[n]}
                    for n, why in broken.items()
                ],
                "unknown_hooks": [{"runtime": u.runtime, "hook": u.hook} for u in unknown],
            }
        )
    else:
        for name, values in rows.items():
            _say(f"{name}: {', '.join(values)}  [{dists[name]}]")
        for name, why in broken.items():
            _say(f"{name}: broken: {why}  [{dists[name]}]")
        for hook in unknown:
            _say(f"warning: {hook.describe()}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from .schema import schema_text

    if args.json:
        _emit({"schema": json.loads(schema_text())})
    else:
        sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from .config import SETTINGS

    host = _host(args)
    action = args.action
    if action is None:
        from .plugin_config import secret_store

        settings = host.settings
        store = secret_store(host)
        paths = {
            "home": host.paths.home,
            "plugin_dirs": list(host.paths.plugin_dirs),
            "envs_dir": host.paths.envs_dir,
            "cache_dir": host.paths.cache_dir,
            "config_file": host.paths.config_file,
        }
        if args.json:
            _emit(
                {
                    "settings": {
                        k: {"value": settings.values[k], "source": settings.sources[k]}
                        for k in SETTINGS
                    },
                    "paths": {
                        k: str(v) if not isinstance(v, list) else [str(x) for x in v]
                        for k, v in paths.items()
                    },
                    "secrets": {
                        "backend": store.backend,
                        "available": store.available,
                        "detail": store.detail,
                        "reason": store.reason,
                    },
                }
            )
            return EXIT_OK
        for key, (var, _p, _d, doc) in SETTINGS.items():
            value = settings.values[key]
            _say(f"{key} = {value!r}  ({settings.sources[key]}; {var}: {doc})")
        for key, value in paths.items():
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            _say(f"{key}: {shown}")
        if store.backend == "file":
            where = f"0600 plain-text files in {store.detail}"
        else:
            where = f"the OS keyring ({store.detail})" if store.available else "none usable"
        _say(f"secrets: {where}  ({store.reason})")
        return EXIT_OK
    from . import plugin_config as pc

    source = host.source(args.plugin)
    if source.manifest is None:
        raise source.error or PluginNotFound(args.plugin)
    manifest = source.manifest
    where = source.plugin_dir
    if action == "set":
        key = pc.canonical_key(manifest, args.key)
        if pc.is_secret(manifest, key):
            _hide(args.value)
        pc.set_stored(host, manifest, key, args.value, plugin_dir=where)
        shown = pc.MASK if pc.is_secret(manifest, key) else args.value
        if args.json:
            stored = pc.stored_view(host, manifest, where).get(key, shown)
            _emit({"plugin": manifest.name, "key": key, "value": stored})
        else:
            _say(f"{manifest.name}: {key} = {shown}")
    elif action == "unset":
        found = pc.unset_stored(host, manifest, args.key, plugin_dir=where)
        if args.json:
            _emit({"plugin": manifest.name, "key": args.key, "removed": found})
        else:
            _say(f"{manifest.name}: {args.key} {'removed' if found else 'was not set'}")
    else:
        values = pc.stored_view(host, manifest, where)
        elsewhere = pc.stored_elsewhere(host, manifest.name, where)
        if args.json:
            _emit(
                {
                    "plugin": manifest.name,
                    "dir": str(where),
                    "config": values,
                    "not_used": elsewhere,
                }
            )
        else:
            for key, value in sorted(values.items()):
                _say(f"{key} = {value}")
            for other in elsewhere:
                _note(
                    args,
                    f"note: values stored for {other} are not used for {where} "
                    "(config belongs to the directory it was set for)",
                )
    return EXIT_OK


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


def cmd_mcp_serve(args: argparse.Namespace) -> int:
    from .mcp import INSTALL_HINT, sdk_missing

    try:
        from .mcp.server import serve
    except ImportError as exc:
        if not sdk_missing(exc):
            raise
        print(f"ally: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_ERROR
    return serve(
        lambda: _host(args),
        plugins=args.plugin or (),
        http=args.http,
        warm_workers=not args.no_warm_workers,
    )


def _add_mcp(sub: Any) -> None:
    """``ally mcp serve``: the plugins' tools over the Model Context Protocol (docs/mcp.md)."""
    from .mcp_plugins.commands import mcp_subparsers

    # One `ally mcp` group for serve (here) and launch/config (docs/mcp-plugins.md).
    msub = mcp_subparsers(sub)
    _verbosity(sub.choices["mcp"])
    s = msub.add_parser(
        "serve",
        help="serve every ready plugin's tools over MCP (stdio by default)",
        description="Serve every ready plugin's tools over MCP: stdio by default, or "
        "Streamable HTTP on a loopback address with a bearer token printed once to stderr.",
    )
    s.set_defaults(func=cmd_mcp_serve)
    _verbosity(s)
    s.add_argument(
        "--plugin",
        action="append",
        metavar="NAME",
        help="serve this plugin (repeatable; default: all)",
    )
    s.add_argument(
        "--http", metavar="127.0.0.1:PORT", help="Streamable HTTP on loopback, not stdio"
    )
    _build_options(s)
    s.add_argument(
        "--no-warm-workers",
        action="store_true",
        help="start a new interpreter for every Python tool call (no fork server per plugin)",
    )


def _add_config(sub: Any) -> None:
    """``ally config [show|set|unset]``."""
    p = sub.add_parser(
        "config",
        help="show settings, or show/set a plugin's config values",
        description="show settings, or show/set a plugin's config values",
    )
    p.set_defaults(func=cmd_config)
    _verbosity(p)
    _json_flag(p)
    csub = p.add_subparsers(dest="action", metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = csub.add_parser(name, help=help, description=help)
        c.add_argument("plugin", help="the plugin's name")
        _verbosity(c)
        # SUPPRESS: `ally config --json show X` keeps the --json given before the action.
        _json_flag(c, default=argparse.SUPPRESS)
        return c

    action("show", "show a plugin's stored config (secrets masked)")
    c = action("set", "store a plugin config value")
    c.add_argument("key", help="a property of the plugin's config schema")
    c.add_argument("value", help="the value (converted to the schema's type)")
    c = action("unset", "remove a stored plugin config value")
    c.add_argument("key", help="the config key to remove")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ally", description="Isolated, cached, self-healing environments for plugins."
    )
    parser.add_argument("--version", action="version", version=f"ally {__version__}")
    parser.add_argument("--home", help="ally home (default: $ALLY_HOME or the platform's dirs)")
    parser.add_argument(
        "--plugins-dir",
        action="append",
        metavar="DIR",
        help="another directory to discover plugins in (repeatable)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks, also of runtimes' hook errors"
    )
    _verbosity(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str,
        func: Callable[[argparse.Namespace], int],
        help: str,
        json_flag: bool = True,
        build: bool = False,
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        _verbosity(p)
        if json_flag:
            _json_flag(p)
        if build:
            _build_options(p)
        return p

    add("list", cmd_list, "list plugins and the state of their envs")
    p = add("install", cmd_install, "make plugins' envs ready (all by default)", build=True)
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME|PATH",
        help="plugins to install (default: all): names, plugin directories (remembered) "
        "or offline bundles (any file name)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="let a bundle replace an existing plugin directory (the old one is kept as a backup)",
    )
    p = add(
        "update",
        _each("ensure", upgrade=True),
        "re-resolve to the newest allowed versions; keep the old env on failure",
        build=True,
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="plugins to update")
    p.add_argument("--all", action="store_true", help="update every plugin")
    p = add(
        "reinstall", _each("ensure", force=True), "rebuild plugins' envs from scratch", build=True
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="plugins to rebuild")
    p.add_argument("--all", action="store_true", help="rebuild every plugin's env")
    p = add(
        "remove",
        cmd_remove,
        "remove plugins' envs, unless other plugins share them (never their source)",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="plugins whose env to remove")
    p = add("gc", cmd_gc, "delete envs no plugin uses, leftovers of killed builds, backups")
    p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    p = add("doctor", cmd_doctor, "deep-check plugins' envs", build=True)
    p.add_argument("names", nargs="*", metavar="NAME", help="plugins to check (default: all)")
    p.add_argument("--fix", action="store_true", help="rebuild broken envs")
    p = add(
        "run",
        cmd_run,
        "run a plugin's tool with JSON input; print its JSON reply",
        build=True,
    )
    p.add_argument("plugin", help="the plugin's name")
    p.add_argument("tool", help="the tool's name in plugin.json")
    p.add_argument("--input", help="the tool's JSON input (default: stdin, else {})")
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="plugin config value for this call (repeatable)",
    )
    p.add_argument(
        "--timeout", type=_setting_arg("tool_timeout"), help="seconds before the tool is killed"
    )
    p.add_argument(
        "--form-response",
        metavar="JSON",
        help="answer every form of an interactive tool with this object (over its defaults)",
    )
    p = add("exec", cmd_exec, "run any command inside a plugin's env", build=True)
    p.add_argument("plugin", help="the plugin whose env to use")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="command", help="-- COMMAND [ARGS...]")
    add("runtimes", cmd_runtimes, "list installed runtimes and what they serve")
    add("schema", cmd_schema, "print the JSON Schema of plugin.json")
    _add_config(sub)
    p = add(
        "bundle",
        cmd_bundle,
        "write an offline bundle: plugin + dependency artifacts + lock",
        build=True,
    )
    p.add_argument("name", help="the plugin to bundle")
    p.add_argument("-o", "--output", help="archive path (default: ./NAME-VERSION.ally.tar.gz)")
    _add_mcp(sub)
    from .mcp_plugins.commands import add_mcp_commands

    add_mcp_commands(sub)
    p = add(
        "completion",
        cmd_completion,
        "print the shell completion script (commands, options, plugin and tool names)",
        json_flag=False,
    )
    p.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell to complete for")
    p = add("help", cmd_help, "show the help of a command (ally help run)", json_flag=False)
    p.add_argument("topic", nargs="*", metavar="COMMAND", help="the command (default: all)")
    return parser


def cmd_completion(args: argparse.Namespace) -> int:
    from .completion import script

    sys.stdout.write(script(args.shell))
    return EXIT_OK


def cmd_help(args: argparse.Namespace) -> int:
    """``ally help [COMMAND [ACTION]]``: exactly what ``ally COMMAND [ACTION] --help`` prints."""
    parser = build_parser()
    target = parser
    for word in args.topic:
        sub: dict[str, argparse.ArgumentParser] = _subcommands(target)
        if word not in sub:
            from .text import did_you_mean

            where = target.prog.removeprefix("ally").strip() or "ally"
            raise UsageError(
                f"no command {word!r}"
                + (f" in {where!r}" if target is not parser else "")
                + did_you_mean(word, sub)
                + f" (commands: {', '.join(sub)})"
            )
        target = sub[word]
    target.print_help()
    return EXIT_OK


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class UsageError(AllyError):
    """Wrong use of the command line found after parsing (exit code 2)."""

    exit_code = EXIT_USAGE


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["__complete"]:  # what a completion script asks on <TAB>
        from .completion import main as complete

        return complete(argv[1:], build_parser)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.func is cmd_exec:
        _exec_options(args)
    if args.quiet and args.verbose:
        parser.error("argument -q/--quiet: not allowed with argument -v/--verbose")
    _HIDDEN.clear()
    _logging(args)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("ally: interrupted", file=sys.stderr)
        return 130
    except AllyError as exc:
        if args.debug:
            _print_traceback()
        _say(f"ally: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if args.debug:
            _print_traceback()
        _say(
            f"ally: internal error: {exc.__class__.__name__}: {exc} (rerun with --debug)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
