"""``ally``: a thin command line over :class:`ally_core.Host`.

Every ``--json`` output is an object with ``"ally": JSON_VERSION`` so that non-Python hosts
can rely on its shape (documented in docs/reference/cli.md). Errors are one line on stderr and
a non-zero exit code; ``--debug`` adds the traceback.

This module builds the parser and runs a command. The commands live by group, each module
imported only when one of its commands runs (``ally --help`` imports none):
:mod:`.cli_env` (``list``, ``install``, ``update``, ``reinstall``, ``remove``, ``gc``,
``doctor``, ``bundle``), :mod:`.cli_tools` (``run``, ``runtimes``, ``schema``, ``mcp
serve``), :mod:`.cli_config` (``config``), :mod:`.cli_exec` (``exec``) and
:mod:`.mcp_plugins.commands` (``mcp launch``, ``mcp config``); :mod:`.cli_common` holds what
they print and the Host they work on, :mod:`.cli_options` the options they share.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any, Callable, Optional

from .__about__ import __version__
from .cli_common import (
    _HIDDEN,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_USAGE,
    JSON_VERSION,
    _host,
    _logging,
    _print_traceback,
    _say,
)
from .cli_options import (
    _build_options,
    _json_flag,
    _Parser,
    _setting_arg,
    _subcommands,
    _verbosity,
)
from .errors import AllyError

__all__ = ["JSON_VERSION", "main"]

Command = Callable[[argparse.Namespace], int]


def _env(name: str) -> Command:
    """The command ``name`` of :mod:`.cli_env`, imported when it runs."""

    def command(args: argparse.Namespace) -> int:
        from . import cli_env

        return int(getattr(cli_env, name)(args))

    return command


def _tools(name: str) -> Command:
    """The command ``name`` of :mod:`.cli_tools`, imported when it runs."""

    def command(args: argparse.Namespace) -> int:
        from . import cli_tools

        return int(getattr(cli_tools, name)(args))

    return command


def _config(args: argparse.Namespace) -> int:
    """``ally config`` (:mod:`.cli_config`, imported when it runs)."""
    from .cli_config import cmd_config

    return cmd_config(args)


def cmd_exec(args: argparse.Namespace) -> int:
    """``ally exec NAME -- CMD`` (:mod:`ally_core.cli_exec`: given its Host, it stays out
    of the imports of the modules that take one)."""
    from .cli_exec import run_in_env

    return run_in_env(args, lambda: _host(args))


def _exec_options(args: argparse.Namespace) -> None:
    """``ally exec NAME --json -v -- CMD``: the options between the name and ``--`` are
    ally's (everything after the plugin's name reaches ``args.argv`` unparsed)."""
    if "--" not in args.argv or not args.argv[0].startswith("-") or args.argv[0] == "--":
        return
    split = args.argv.index("--")
    head, tail = args.argv[:split], args.argv[split:]
    _subcommands(build_parser())["exec"].parse_args([*head, args.plugin], namespace=args)
    args.argv = tail


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
    s.set_defaults(func=_tools("cmd_mcp_serve"))
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
    p.set_defaults(func=_config)
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


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``ally`` parser. With ``only`` (a command's name), the parser of that command
    alone: what parsing a command line of ``only`` needs, at a fraction of the cost
    (argparse looks a translation up for every option's texts). Its errors read as the
    whole parser's: the usage line names ``COMMAND``, not the list of commands."""
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
        func: Command,
        help: str,
        json_flag: bool = True,
        build: bool = False,
    ) -> Optional[argparse.ArgumentParser]:
        """The parser of command ``name``, or ``None`` when only another command's is built
        (then the caller adds none of its options)."""
        if only is not None and name != only:
            return None
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        _verbosity(p)
        if json_flag:
            _json_flag(p)
        if build:
            _build_options(p)
        return p

    add("list", _env("cmd_list"), "list plugins and the state of their envs")
    if p := add(
        "install", _env("cmd_install"), "make plugins' envs ready (all by default)", build=True
    ):
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
            help="let a bundle replace an existing plugin directory "
            "(the old one is kept as a backup)",
        )
    if p := add(
        "update",
        _env("cmd_update"),
        "re-resolve to the newest allowed versions; keep the old env on failure",
        build=True,
    ):
        p.add_argument("names", nargs="*", metavar="NAME", help="plugins to update")
        p.add_argument("--all", action="store_true", help="update every plugin")
    if p := add(
        "reinstall", _env("cmd_reinstall"), "rebuild plugins' envs from scratch", build=True
    ):
        p.add_argument("names", nargs="*", metavar="NAME", help="plugins to rebuild")
        p.add_argument("--all", action="store_true", help="rebuild every plugin's env")
    if p := add(
        "remove",
        _env("cmd_remove"),
        "remove plugins' envs, unless other plugins share them (never their source)",
    ):
        p.add_argument("names", nargs="+", metavar="NAME", help="plugins whose env to remove")
    if p := add(
        "gc", _env("cmd_gc"), "delete envs no plugin uses, leftovers of killed builds, backups"
    ):
        p.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    if p := add("doctor", _env("cmd_doctor"), "deep-check plugins' envs", build=True):
        p.add_argument("names", nargs="*", metavar="NAME", help="plugins to check (default: all)")
        p.add_argument("--fix", action="store_true", help="rebuild broken envs")
    if p := add(
        "run",
        _tools("cmd_run"),
        "run a plugin's tool with JSON input; print its JSON reply",
        build=True,
    ):
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
    if p := add("exec", cmd_exec, "run any command inside a plugin's env", build=True):
        p.add_argument("plugin", help="the plugin whose env to use")
        p.add_argument(
            "argv", nargs=argparse.REMAINDER, metavar="command", help="-- COMMAND [ARGS...]"
        )
    add("runtimes", _tools("cmd_runtimes"), "list installed runtimes and what they serve")
    add("schema", _tools("cmd_schema"), "print the JSON Schema of plugin.json")
    if only in (None, "config"):
        _add_config(sub)
    if p := add(
        "bundle",
        _env("cmd_bundle"),
        "write an offline bundle: plugin + dependency artifacts + lock",
        build=True,
    ):
        p.add_argument("name", help="the plugin to bundle")
        p.add_argument("-o", "--output", help="archive path (default: ./NAME-VERSION.ally.tar.gz)")
    if only in (None, "mcp"):
        _add_mcp(sub)
        from .mcp_plugins.commands import add_mcp_commands

        add_mcp_commands(sub)
    if p := add(
        "completion",
        cmd_completion,
        "print the shell completion script (commands, options, plugin and tool names)",
        json_flag=False,
    ):
        p.add_argument("shell", choices=["bash", "zsh", "fish"], help="the shell to complete for")
    if p := add("help", cmd_help, "show the help of a command (ally help run)", json_flag=False):
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


#: ``ally``'s own options before a command: those that take a value, and the flags.
_TOP_VALUES = frozenset({"--home", "--plugins-dir"})
_TOP_FLAGS = frozenset({"--debug", "-q", "--quiet", "-v", "--verbose"})
#: The commands ``main`` builds the parser of alone (``help`` prints the whole one anyway).
_COMMANDS = frozenset(
    {
        "list",
        "install",
        "update",
        "reinstall",
        "remove",
        "gc",
        "doctor",
        "run",
        "exec",
        "runtimes",
        "schema",
        "config",
        "bundle",
        "mcp",
        "completion",
    }
)


def _command_of(argv: Sequence[str]) -> Optional[str]:
    """The command of ``argv`` when it is sure to be one (else ``None``: the whole parser,
    for help, errors and their guesses)."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in _COMMANDS:
            return word
        if word in _TOP_VALUES:
            i += 2
        elif word in _TOP_FLAGS or word.startswith(("--home=", "--plugins-dir=")):
            i += 1
        else:
            return None
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["__complete"]:  # what a completion script asks on <TAB>
        from .completion import main as complete

        return complete(argv[1:], build_parser)
    parser = build_parser(_command_of(argv))
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
