"""The options every ``ally`` command spells the same way, and argparse without its costs.

``-q``/``-v`` (before or after the command), ``--json``, the build options (``--offline``,
``--installer``, ``-j``) whose values are checked by the rules of their settings, and a
parser whose help is sized without importing :mod:`shutil`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

__all__ = ["QUIET_HELP", "VERBOSE_HELP"]

QUIET_HELP = "print only results and errors: no progress, warnings or notes"


VERBOSE_HELP = "also print what installers and tools write to stderr, and ally's debug log"


def _verbosity(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``-q``/``-v``, the same on every command (also before it: ``ally -q list``)."""
    group = parser.add_mutually_exclusive_group()
    # A sub-command's default must not overwrite what was given before the command.
    default: Any = False if top else argparse.SUPPRESS
    group.add_argument("-q", "--quiet", action="store_true", default=default, help=QUIET_HELP)
    group.add_argument("-v", "--verbose", action="store_true", default=default, help=VERBOSE_HELP)


def _json_flag(parser: argparse.ArgumentParser, **kw: Any) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output", **kw)


def _setting_arg(key: str) -> Callable[[str], Any]:
    """An option's type: the value checked by the rules (and with the message) of the
    setting ``key``, so ``-j 0`` is refused as ``ALLY_JOBS=0`` is."""

    def parse(text: str) -> Any:
        from .config import SETTINGS

        try:
            return SETTINGS[key][1](text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = key
    return parse


def _build_options(parser: argparse.ArgumentParser) -> None:
    """The options of commands that may build envs."""
    parser.add_argument("--offline", action="store_true", help="never use the network")
    parser.add_argument(
        "--installer", choices=["auto", "uv", "pip"], help="Python installer backend"
    )
    parser.add_argument("-j", "--jobs", type=_setting_arg("jobs"), help="parallel builds")


def _terminal_width() -> int:
    """What :func:`shutil.get_terminal_size` says, without importing shutil (and the
    compression modules it imports) on every run: argparse asks on every ``add_argument``."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its help formatter sized without :mod:`shutil`."""

    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_terminal_width() - 2)  # type: ignore[call-arg]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of ``parser`` by name (none for a leaf command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}
